"""Loading an ONNX model, checking its op set, and normalising it for quantization.

`prepare_model` runs onnxruntime's *basic* (semantics-preserving, standard-op only)
graph optimisations — constant folding, Conv+BatchNorm folding, identity removal,
MatMul+Add -> Gemm — instead of hand-writing those passes, then converts the
model to opset 21 (the first opset with INT4 QuantizeLinear/DequantizeLinear).
"""
from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.errors import EdgekitError, require

QDQ_OPSET = 21


def load_model(model_or_path) -> onnx.ModelProto:
    """An onnx.ModelProto from a path or a ModelProto (copied, never mutated)."""
    if isinstance(model_or_path, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(model_or_path)
        return model
    path = Path(model_or_path)
    require(path.is_file(), f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf errors have multi-line messages
        raise EdgekitError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    check_structure(model, str(path))
    return model


def check_structure(model: onnx.ModelProto, where: str) -> None:
    """The graph is non-empty and every node reads a tensor defined before it (ONNX's topological order).

    An empty or garbage file often parses as a protobuf with no graph; a node reading an
    undefined tensor would otherwise fail deep inside a back-end.
    """
    graph = model.graph
    require(len(graph.node) > 0 and len(graph.output) > 0,
            f"{where}: not an ONNX model (no graph nodes or outputs); is it the right file?")
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    defined |= {i.name for i in graph.sparse_initializer}
    for i, node in enumerate(graph.node):
        for name in node.input:
            require(name in defined, f"{where}: node {node.name or '#' + str(i)} ({node.op_type}) reads tensor "
                                     f"{name!r}, which no input, initializer or earlier node defines")
        defined.update(node.output)
    for out in graph.output:
        require(out.name in defined, f"{where}: graph output {out.name!r} is not produced by any node")


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def check_supported(model: onnx.ModelProto, supported, where: str = "model") -> None:
    """Raise one EdgekitError naming every unsupported op type and its nodes."""
    bad: dict[str, list[str]] = defaultdict(list)
    for i, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in supported:
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            bad[op].append(node.name or f"#{i}")
    if bad:
        parts = "; ".join(f"{op} (nodes: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
                          for op, names in sorted(bad.items()))
        raise EdgekitError(f"{where}: unsupported ONNX ops: {parts}")


def _ort_basic_optimize(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "out.onnx")
        onnx.save(model, src)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = dst
        opts.log_severity_level = 3
        ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        return onnx.load(dst)


def _name_nodes(model: onnx.ModelProto) -> None:
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1 \
                and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LayerNormalization", "BatchNormalization",
              "InstanceNormalization", "PRelu")


def _check_finite_weights(model: onnx.ModelProto) -> None:
    """NaN anywhere, or Inf in a weight, is an error (an Inf mask constant for Where is fine)."""
    weights = {name for node in model.graph.node if node.op_type in WEIGHT_OPS for name in node.input[1:]}
    for init in model.graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            arr = numpy_helper.to_array(init)
            bad = ~np.isfinite(arr) if init.name in weights else np.isnan(arr)
            require(not bool(np.any(bad)),
                    f"weight {init.name} (shape {list(arr.shape)}) contains NaN or Inf")


def _unshare_weights(model: onnx.ModelProto) -> None:
    """Give every Conv/Gemm/MatMul its own copy of a shared weight initializer.

    Each layer then gets its own quantization (codes, scales, compensation)
    while the float function is unchanged.
    """
    inits = {i.name: i for i in model.graph.initializer}
    seen: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        for idx in range(1, len(node.input)):
            name = node.input[idx]
            if name not in inits:
                continue
            count = seen.get(name, 0)
            seen[name] = count + 1
            if count == 0:
                continue
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[name])
            copy.name = f"{name}__copy{count}"
            model.graph.initializer.append(copy)
            node.input[idx] = copy.name


def prepare_model(model_or_path, supported=None, optimize: bool = True) -> onnx.ModelProto:
    """Validated, optimised, opset-21 float model with named nodes and no Constant nodes."""
    model = load_model(model_or_path)
    require(len(model.graph.node) > 0, "model has no nodes")
    _check_finite_weights(model)
    original = model
    if optimize:
        try:
            model = _ort_basic_optimize(model)
        except Exception as exc:
            if supported is not None:  # an op nobody knows is the likelier cause: name it
                check_supported(model, set(supported) | {"Constant"})
            raise EdgekitError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from None
    # Checked after constant folding: shape arithmetic (Mod, Shape...) folds away.
    if supported is not None:
        try:
            check_supported(model, set(supported) | {"Constant"})
        except EdgekitError:
            # name the ops and nodes as the file has them (onnxruntime inlines function ops such as
            # Bernoulli into unnamed nodes); if they all pass, the inlined form is what is refused
            check_supported(original, set(supported) | {"Constant"})
            raise
    # Drop custom domains ORT lists but the graph does not use.
    used = {n.domain for n in model.graph.node}
    imports = [i for i in model.opset_import if i.domain in ("", "ai.onnx") or i.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(imports)
    if opset_of(model) < QDQ_OPSET:
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, QDQ_OPSET)
        except Exception:  # converter gaps: the op set we accept is unchanged up to 21
            for imp in model.opset_import:
                if imp.domain in ("", "ai.onnx"):
                    imp.version = QDQ_OPSET
    if model.ir_version < 10:
        model.ir_version = 10
    _constants_to_initializers(model)
    _unshare_weights(model)
    _name_nodes(model)
    if supported is not None:
        check_supported(model, supported)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass
    return model


def constant_first_matmuls_to_layers(model: onnx.ModelProto) -> list[str]:
    """Rewrite each MatMul(C, x) with a constant 2-D C on the left (deblur's DFT over the rows:
    C @ x over the last two axes) as Transpose(MatMul(Transpose(x), C^T)), in place; returns
    the new MatMuls' names. The quantizer and the integer back-ends take a constant weight on the right only:
    in this form the product is an ordinary layer (per-channel weights, one per row of C) and
    the two transposes move codes, so the product runs on the int8 kernels instead of staying a
    float island. Exact up to the order of the sum. Needs x's rank (from shape inference)."""
    inits = {i.name: i for i in model.graph.initializer}
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
             if v.type.tensor_type.HasField("shape")}
    nodes, replaced, names = [], set(), []
    for node in model.graph.node:
        c, x = (node.input[:2] if node.op_type == "MatMul" else (None, None))
        rank = ranks.get(x, 0)
        if c not in inits or x in inits or len(inits[c].dims) != 2 or rank < 2:
            nodes.append(node)
            continue
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        name, y = node.name or f"left_matmul_{len(replaced)}", node.output[0]
        weight = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(inits[c]).T), f"{name}_weight_t")
        model.graph.initializer.append(weight)
        nodes += [helper.make_node("Transpose", [x], [f"{name}_x_t"], name=f"{name}_x_t", perm=perm),
                  helper.make_node("MatMul", [f"{name}_x_t", weight.name], [f"{name}_y_t"], name=name),
                  helper.make_node("Transpose", [f"{name}_y_t"], [y], name=f"{name}_y_t", perm=perm)]
        replaced.add(c)
        names.append(name)
    if replaced:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {i for n in model.graph.node for i in n.input}
        keep = [i for i in model.graph.initializer if i.name in used or i.name not in replaced]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            del model.graph.value_info[:]
            model.graph.value_info.extend(inferred.graph.value_info)
        except Exception:
            pass
    return names


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _graph_of(model_or_graph) -> onnx.GraphProto:
    return model_or_graph.graph if isinstance(model_or_graph, onnx.ModelProto) else model_or_graph


def consumers(model_or_graph, outputs_as_none: bool = False) -> dict[str, list[onnx.NodeProto]]:
    """tensor -> the nodes reading it; `outputs_as_none`: a graph output also counts as a reader
    (None), so that a rewrite never removes a tensor the graph returns."""
    graph = _graph_of(model_or_graph)
    out: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                out[name].append(node)
    if outputs_as_none:
        for o in graph.output:
            out[o.name].append(None)
    return out


def static_dims(value_info) -> list[int | None]:
    """A value's shape as ints, None where the dimension is symbolic or unknown."""
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def producers(model_or_graph) -> dict[str, onnx.NodeProto]:
    """tensor -> the node writing it."""
    return {o: n for n in _graph_of(model_or_graph).node for o in n.output if o}


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}
