"""ONNX -> Relax import, with what the stock frontend lacks for quantized graphs.

`tvm.relax.frontend.onnx.from_onnx` does the work. Around it edgekit:
  * checks every op before any work starts and names the first node whose op
    the frontend cannot import (one line, `EdgekitError`);
  * widens INT4/UINT4 initializers to 8 bits (the frontend expects packed
    bytes but onnx hands it one byte per value) and keeps the 4-bit range of
    every QuantizeLinear that produced a 4-bit tensor with an explicit clamp
    (otherwise a uint4 activation would silently saturate at 255, not 15);
  * adds edgekit's own ops (domain ``edgekit``: the integer kernels the
    lowering in `qlower.py` emits, SALE attention) to the frontend's op table
    while it imports: the caller passes the table, `converters.CONVERTERS`.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

EDGEKIT_DOMAIN = "edgekit"

@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def load_onnx(path):
    import onnx

    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises several types for garbage input
        raise EdgekitError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise EdgekitError(f"{path}: the ONNX graph has no nodes")
    return model


def _dims(value_info) -> list:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims


def graph_io(model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Real inputs (not initializers) and outputs with static shapes and numpy dtypes."""
    import onnx

    inits = {t.name for t in model.graph.initializer}
    def to_np(elem_type) -> str:
        name = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
        # 4-bit tensors travel in 8-bit containers (widen_int4): the artifact holds the container's
        return {"int4": "int8", "uint4": "uint8"}.get(name, name)
    inputs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = _dims(vi)
        bad = [d for d in shape if not isinstance(d, int) or d <= 0]
        if bad:
            raise EdgekitError(f"input {vi.name!r} has a dynamic shape {shape}: export the model with "
                               "fixed input shapes (edgekit compiles for static shapes)")
        inputs.append(TensorSpec(vi.name, shape, to_np(vi.type.tensor_type.elem_type)))
    outputs = [TensorSpec(vo.name, _dims(vo), to_np(vo.type.tensor_type.elem_type))
               for vo in model.graph.output]
    return inputs, outputs


def check_ops(model, converters: dict) -> None:
    """One-line error naming the first node whose op cannot be imported."""
    from tvm.relax.frontend.onnx import onnx_frontend

    known = set(onnx_frontend._get_convert_map()) | set(converters) | {"Constant", "If"}
    for index, node in enumerate(model.graph.node):
        if node.op_type not in known:
            name = node.name or f"#{index}"
            hint = ""
            if node.op_type in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulNBits"):
                hint = " (export QDQ format instead: DequantizeLinear/QuantizeLinear around float ops)"
            raise EdgekitError(f"ONNX op {node.op_type} (node {name!r}) is not supported by the TVM "
                               f"Relax ONNX frontend{hint}")


_FOUR_BIT = {"INT4": "int8", "UINT4": "uint8"}


def widen_int4(model) -> dict[str, tuple[int, int]]:
    """Rewrite 4-bit initializers/constants as 8-bit, in place.

    Returns {tensor name: (qmin, qmax)} for every tensor produced by a
    QuantizeLinear whose zero point was 4-bit: those need a clamp after import.
    """
    import onnx
    from onnx import numpy_helper

    int4_types = {onnx.TensorProto.INT4: onnx.TensorProto.INT8, onnx.TensorProto.UINT4: onnx.TensorProto.UINT8}
    widened: dict[str, int] = {}

    def widen_tensor(t):
        if t.data_type not in int4_types:
            return None
        arr = numpy_helper.to_array(t)  # onnx unpacks one value per element
        wide = np.asarray(arr).astype(np.int8 if t.data_type == onnx.TensorProto.INT4 else np.uint8)
        new = numpy_helper.from_array(wide, t.name)
        widened[t.name] = t.data_type
        return new

    graph = model.graph
    for i, t in enumerate(list(graph.initializer)):
        new = widen_tensor(t)
        if new is not None:
            graph.initializer[i].CopyFrom(new)
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in int4_types:
                    new = widen_tensor(attr.t)
                    new.name = attr.t.name
                    attr.t.CopyFrom(new)
                    widened[node.output[0]] = widened.pop(attr.t.name, None) or widened.get(node.output[0])
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        tt = vi.type.tensor_type
        if tt.elem_type in int4_types:
            tt.elem_type = int4_types[tt.elem_type]

    clamps: dict[str, tuple[int, int]] = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in widened:
            signed = widened[node.input[2]] == onnx.TensorProto.INT4
            clamps[node.output[0]] = (-8, 7) if signed else (0, 15)
        if node.op_type == "QuantizeLinear" and any(a.name == "output_dtype" and a.i in int4_types
                                                   for a in node.attribute):
            raise EdgekitError(f"QuantizeLinear node {node.name!r}: 4-bit output_dtype without a zero point "
                               "is not supported (give an explicit int4/uint4 zero point)")
    return clamps


def clamp_four_bit_quantizers(model, clamps: dict[str, tuple[int, int]]) -> None:
    """Replace each 4-bit QuantizeLinear by edgekit.QuantizeLinearClamped (saturates at the 4-bit range)."""
    from onnx import helper

    for index, node in enumerate(model.graph.node):
        if node.op_type == "QuantizeLinear" and node.output[0] in clamps:
            lo, hi = clamps[node.output[0]]
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            new = helper.make_node("QuantizeLinearClamped", list(node.input), list(node.output),
                                   name=node.name, domain=EDGEKIT_DOMAIN, qmin=lo, qmax=hi,
                                   axis=int(attrs.get("axis", 1)))
            model.graph.node[index].CopyFrom(new)
    if clamps and not any(o.domain == EDGEKIT_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(EDGEKIT_DOMAIN, 1))


class _NamedConverter:
    """Wraps a frontend converter so a failure names the ONNX op and node (the k-th call of an
    op type converts the k-th node of that type: the frontend walks nodes in graph order)."""

    def __init__(self, op_type: str, converter, nodes: dict[str, list[str]], calls: dict[str, int]):
        self.op_type, self.converter, self.nodes, self.calls = op_type, converter, nodes, calls

    def get_converter(self, opset):
        convert = self.converter.get_converter(opset)

        def run(*args, **kwargs):
            index = self.calls.get(self.op_type, 0)
            self.calls[self.op_type] = index + 1
            try:
                return convert(*args, **kwargs)
            except EdgekitError:
                raise
            except Exception as exc:
                names = self.nodes.get(self.op_type, [])
                node = names[index] if index < len(names) else "?"
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise EdgekitError(f"ONNX op {self.op_type} (node {node!r}) cannot be imported by the TVM "
                                   f"Relax ONNX frontend: {first}") from None

        return run


@contextlib.contextmanager
def _frontend_with_edgekit_ops(model, converters: dict):
    """Temporarily add edgekit's converters to the frontend's op table (all of them named)."""
    from tvm.relax.frontend.onnx import onnx_frontend

    original = onnx_frontend._get_convert_map
    nodes: dict[str, list[str]] = {}
    for index, node in enumerate(model.graph.node):
        nodes.setdefault(node.op_type, []).append(node.name or f"#{index}")
    calls: dict[str, int] = {}

    def extended():
        table = original()
        table.update(converters)
        return {op: _NamedConverter(op, conv, nodes, calls) for op, conv in table.items()}

    onnx_frontend._get_convert_map = extended
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original


def to_relax(model, inputs: list[TensorSpec], converters: dict):
    """ONNX ModelProto (already rewritten) -> Relax IRModule with weights as constants."""
    from tvm.relax.frontend.onnx import from_onnx

    check_ops(model, converters)
    shape_dict = {t.name: list(t.shape) for t in inputs}
    dtype_dict = {t.name: t.dtype for t in inputs}
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
    with _frontend_with_edgekit_ops(model, converters), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the frontend warns about every shape-less value_info
        try:
            return from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict, opset=opset,
                             keep_params_in_input=False)
        except EdgekitError:
            raise
        except Exception as exc:  # failures outside a converter (graph-level checks)
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise EdgekitError(f"TVM Relax ONNX frontend failed: {first}") from None


def is_quantized(model) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
