"""PyTorch -> ONNX export with checks: the first stage of every edgekit pipeline.

`export_module` exports any module at static shapes (batch 1) with torch's
ONNX exporter, folds every BatchNormalization into the convolution(s) that
feed it, checks the file with `onnx.checker` (full_check), runs it in
onnxruntime on a random input and compares with PyTorch. Above tolerance is
an error and nothing is written; the file appears atomically.

`export_zoo` does the same for a zoo model (names and shapes from the
registry, optional checkpoint, `prepare_for_export` hooks such as the
deblur model's matmul DFT).
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError, require
from edgekit.onnx_graph.model import consumers, producers

DEFAULT_OPSET = 21          # the quantizer needs >= 21 (int4 QDQ)
MIN_OPSET = 18              # the dynamo exporter's lowest
VISION_TOLERANCE = 1e-4
LM_TOLERANCE = 1e-3         # logits: larger magnitudes, long reductions


@dataclass
class ExportReport:
    path: str
    opset: int
    inputs: dict
    outputs: dict
    max_abs_diff: float
    tolerance: float
    folded_batchnorms: int
    op_counts: dict = field(default_factory=dict)
    weights: str = "as given"  # checkpoint path, or "random init"
    max_abs_output: float = 0.0  # scale of the PyTorch outputs, to read max_abs_diff against

    def summary(self) -> str:
        shapes = ", ".join(f"{k} {tuple(v)}" for k, v in self.inputs.items())
        return (f"wrote {self.path} (opset {self.opset}; inputs {shapes}; "
                f"{sum(self.op_counts.values())} nodes, {self.folded_batchnorms} BatchNorm folded; "
                f"weights: {self.weights}); "
                f"max abs diff vs PyTorch: {self.max_abs_diff:.3g} (tolerance {self.tolerance:g})")


# ---------------------------------------------------------------- inputs

def parse_shape(text: str) -> tuple:
    """'1,3,256,256' or '1x3x256x256' -> (1, 3, 256, 256)."""
    parts = text.replace("x", ",").replace("X", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        raise EdgekitError(f"bad input shape {text!r}: expected integers like 1,3,256,256") from None
    require(shape and all(d > 0 for d in shape), f"bad input shape {text!r}: dimensions must be positive")
    require(shape[0] == 1, f"bad input shape {text!r}: exports are static with batch 1")
    return shape


def random_inputs(specs, seed: int = 0, int_high: int = 2):
    """Random tensors for (name, shape, dtype) specs: floats in [0,1), ints in [0, int_high)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for spec in specs:
        dtype = getattr(torch, spec.dtype)
        if dtype.is_floating_point:
            out.append(torch.rand(spec.shape, generator=gen, dtype=dtype))
        else:
            out.append(torch.randint(0, int_high, spec.shape, generator=gen, dtype=dtype))
    return out


def check_writable(path: Path) -> None:
    import os

    parent = path.parent if str(path.parent) else Path(".")
    require(parent.is_dir(), f"cannot write {path}: folder {parent} does not exist")
    require(os.access(parent, os.W_OK), f"cannot write {path}: folder {parent} is not writable")
    require(not path.is_dir(), f"cannot write {path}: it is a folder")


# ---------------------------------------------------------------- graph passes

def _initializers(graph):
    return {init.name: init for init in graph.initializer}


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def fold_batchnorms(model) -> int:
    """Fold BatchNormalization (inference) into the Conv/ConvTranspose feeding it.

    Handles BN(conv(x)) and BN(conv_a(x) + conv_b(y)) — the LitePose fusion
    head sums two transposed convolutions before its BN. Each producer must
    feed only the BN (or the Add). Returns how many BNs were folded.
    """
    from onnx import numpy_helper

    graph = model.graph
    folded = 0
    changed = True
    while changed:
        changed = False
        inits = _initializers(graph)
        producer = producers(graph)
        users = consumers(graph, outputs_as_none=True)
        for bn in list(graph.node):
            if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
                continue
            if not all(name in inits for name in bn.input[1:5]):
                continue
            scale, bias, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
            eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
            gain = scale / np.sqrt(var + eps)
            shift = bias - mean * gain
            src = producer.get(bn.input[0])
            if src is None or len(users.get(bn.input[0], [])) != 1:
                continue
            if src.op_type in ("Conv", "ConvTranspose"):
                convs = [src]
                tail = src
            elif src.op_type == "Add" and all(
                    i in producer and producer[i].op_type in ("Conv", "ConvTranspose")
                    and len(users.get(i, [])) == 1 for i in src.input) and len(src.input) == 2:
                convs = [producer[i] for i in src.input]
                tail = src
            else:
                continue
            if not all(_foldable(c, inits) for c in convs):
                continue
            for index, conv in enumerate(convs):
                _scale_conv(graph, conv, inits, gain, shift if index == 0 else None)
            # Rewire: whatever read the BN output now reads the tail's output.
            tail.output[0] = bn.output[0]
            graph.node.remove(bn)
            folded += 1
            changed = True
            break
    _drop_unused_initializers(graph)
    return folded


def _foldable(conv, inits) -> bool:
    if conv.input[1] not in inits:
        return False
    if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits:
        return False
    # Transposed convs keep output channels on weight axis 1 per group: only group=1 here.
    return conv.op_type == "Conv" or _attr(conv, "group", 1) == 1


def _scale_conv(graph, conv, inits, gain, shift):
    from onnx import numpy_helper

    weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
    axis = 0 if conv.op_type == "Conv" else 1
    shape = [1] * weight.ndim
    shape[axis] = -1
    new_weight = (weight * gain.reshape(shape)).astype(np.float32)
    has_bias = len(conv.input) > 2 and conv.input[2]
    old_bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if has_bias else 0.0
    new_bias = old_bias * gain + (shift if shift is not None else 0.0)
    weight_name = _fresh_name(graph, conv.input[1] + "_bnfold")
    bias_name = _fresh_name(graph, (conv.input[2] if has_bias else conv.name + ".bias") + "_bnfold")
    graph.initializer.append(numpy_helper.from_array(new_weight, weight_name))
    graph.initializer.append(numpy_helper.from_array(np.asarray(new_bias, np.float32).reshape(-1), bias_name))
    conv.input[1] = weight_name
    if has_bias:
        conv.input[2] = bias_name
    else:
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[2] = bias_name
    inits[weight_name] = graph.initializer[-2]
    inits[bias_name] = graph.initializer[-1]


def _fresh_name(graph, base):
    taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _strip_stack_traces(model) -> None:
    """Drop the exporter's per-node Python stack traces (local paths, bulk); keep module names."""
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)


def _drop_unused_initializers(graph):
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


# ---------------------------------------------------------------- export

@contextlib.contextmanager
def _quiet():
    """The torch exporter prints progress and warnings; keep the CLI output to our summary."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _as_tuple(outputs):
    import torch

    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    return tuple(outputs)


def to_onnx(model, inputs, input_names, output_names, opset: int = DEFAULT_OPSET):
    """Trace `model` on `inputs` into an ONNX ModelProto (before BN folding and checks)."""
    import torch

    require(MIN_OPSET <= opset <= 23, f"opset {opset} is not supported: use {MIN_OPSET}..23 (default {DEFAULT_OPSET})")
    with _quiet():
        try:
            program = torch.onnx.export(model, tuple(inputs), dynamo=True, opset_version=opset,
                                        input_names=list(input_names), output_names=list(output_names),
                                        external_data=False, optimize=True, verbose=False)
        except EdgekitError:
            raise
        except Exception as exc:
            msg = " ".join(str(exc).split())[:300]
            raise EdgekitError(f"torch could not export {type(model).__name__}: {msg}") from None
    proto = program.model_proto
    if proto.opset_import[0].version != opset:
        from onnx import version_converter

        proto = version_converter.convert_version(proto, opset)
    return proto


def compare_with_onnxruntime(proto, inputs, expected, input_names):
    """Max abs difference between onnxruntime and PyTorch outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {name: t.detach().numpy() for name, t in zip(input_names, inputs)}
    got = session.run(None, feeds)
    return max(float(np.max(np.abs(g - e.detach().numpy()))) if g.size else 0.0
               for g, e in zip(got, expected))


def export_module(model, inputs, path, input_names, output_names=None, opset: int = DEFAULT_OPSET,
                  tolerance: float = VISION_TOLERANCE) -> ExportReport:
    """Export `model` (eval mode) called on `inputs` to `path`; verify; write atomically."""
    import onnx
    import torch

    from edgekit.fileio import atomic_path

    path = Path(path)
    check_writable(path)  # fail before the (slow) export, not after
    model = model.eval()
    prepare = getattr(model, "prepare_for_export", None)
    if callable(prepare):
        prepare(*inputs)
    try:
        with torch.no_grad():
            expected = _as_tuple(model(*inputs))
    except EdgekitError:
        raise
    except Exception as exc:
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(input_names, inputs))
        raise EdgekitError(f"{type(model).__name__} does not accept input {shapes}: "
                           f"{' '.join(str(exc).split())[:200]}") from None
    if output_names is None:
        output_names = ["output"] if len(expected) == 1 else [f"output_{i}" for i in range(len(expected))]
    require(len(output_names) == len(expected),
            f"{type(model).__name__} returns {len(expected)} outputs but {len(output_names)} names were given")

    proto = to_onnx(model, inputs, input_names, output_names, opset)
    folded = fold_batchnorms(proto)
    _strip_stack_traces(proto)
    proto.producer_name = "edgekit"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise EdgekitError(f"exported graph of {type(model).__name__} fails onnx.checker: "
                           f"{' '.join(str(exc).split())[:200]}") from None
    diff = compare_with_onnxruntime(proto, inputs, expected, input_names)
    if not diff <= tolerance:
        raise EdgekitError(f"ONNX export of {type(model).__name__} differs from PyTorch by {diff:.3g} "
                           f"(tolerance {tolerance:g}); nothing written to {path}")
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return ExportReport(
        path=str(path), opset=opset,
        inputs={n: list(t.shape) for n, t in zip(input_names, inputs)},
        outputs={n: list(t.shape) for n, t in zip(output_names, expected)},
        max_abs_diff=diff, tolerance=tolerance, folded_batchnorms=folded, op_counts=counts,
        max_abs_output=max(float(t.abs().max()) for t in expected))


def export_zoo(name: str, path, config: str = "tiny", input_shapes=None, opset: int = DEFAULT_OPSET,
               checkpoint=None, tolerance: float | None = None, random_init: bool = False) -> ExportReport:
    """Export zoo model `name`/`config`.

    Weights: `checkpoint` if given; else, for the tiny config, the committed
    reference checkpoint when it exists (what quantization and benchmarks
    want); else (or with random_init) the deterministic random init.
    """
    from edgekit import models
    from edgekit.models.registry import InputSpec

    entry = models.get(name)
    specs = entry.input_spec(config)
    require(not (checkpoint and random_init), "give --checkpoint or --random-init, not both")
    if checkpoint is None and not random_init and config == entry.default_config:
        reference = models.reference_checkpoint(name)
        checkpoint = reference if reference.is_file() else None
    model = entry.load(config, checkpoint)
    if input_shapes:
        require(len(input_shapes) == len(specs),
                f"{name} takes {len(specs)} input(s) ({', '.join(s.name for s in specs)}), "
                f"got {len(input_shapes)} --input-shape")
        for spec, shape in zip(specs, input_shapes):
            require(len(shape) == len(spec.shape),
                    f"bad input shape {shape} for {name} input {spec.name}: expected rank {len(spec.shape)} "
                    f"like {spec.shape}")
            require(len(shape) < 2 or spec.dtype.startswith("int") or shape[1] == spec.shape[1],
                    f"bad input shape {shape} for {name} input {spec.name}: expected {spec.shape[1]} channels")
        specs = [InputSpec(s.name, tuple(shape), s.dtype) for s, shape in zip(specs, input_shapes)]
    # Integer inputs are token ids: draw them over the whole vocabulary.
    vocab = getattr(entry.config(config), "vocab_size", 2)
    inputs = random_inputs(specs, int_high=vocab)
    if tolerance is None:
        tolerance = LM_TOLERANCE if entry.task == "lm" else VISION_TOLERANCE
    report = export_module(model, inputs, path, [s.name for s in specs], entry.output_names(config),
                           opset=opset, tolerance=tolerance)
    report.weights = str(checkpoint) if checkpoint is not None else "random init"
    return report


def load_factory(spec: str):
    """'package.module:factory' -> the factory callable (EdgekitError if it cannot be found)."""
    import importlib
    import os
    import sys

    module_name, _, attr = spec.partition(":")
    require(module_name and attr, f"bad --module {spec!r}: expected package.module:factory")
    # The console script does not put the working folder on sys.path; users expect it (as python -m does).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise EdgekitError(f"cannot import module {module_name!r} for --module {spec}: "
                           f"{' '.join(str(exc).split())[:200]}") from None
    factory = getattr(module, attr, None)
    require(callable(factory), f"--module {spec}: {module_name} has no callable {attr!r}")
    return factory


def export_user_module(spec: str, path, input_shapes, checkpoint=None, opset: int = DEFAULT_OPSET,
                       input_names=None, output_names=None, tolerance: float = VISION_TOLERANCE) -> ExportReport:
    """Export `factory()` from 'package.module:factory' with float32 inputs of `input_shapes`."""
    import torch

    from edgekit.models.checkpoint import load_state_file
    from edgekit.models.registry import InputSpec

    require(input_shapes, f"--module {spec} needs --input-shape (one per input), e.g. --input-shape 1,3,224,224")
    model = load_factory(spec)()
    require(isinstance(model, torch.nn.Module), f"--module {spec} returned {type(model).__name__}, not an nn.Module")
    if checkpoint is not None:
        load_state_file(model, checkpoint)
    if not input_names:
        input_names = ["input"] if len(input_shapes) == 1 else [f"input_{i}" for i in range(len(input_shapes))]
    require(len(input_names) == len(input_shapes),
            f"{len(input_names)} --input-name for {len(input_shapes)} --input-shape")
    specs = [InputSpec(n, tuple(s), "float32") for n, s in zip(input_names, input_shapes)]
    report = export_module(model, random_inputs(specs), path, input_names, output_names,
                           opset=opset, tolerance=tolerance)
    report.weights = str(checkpoint) if checkpoint is not None else "as built by the factory"
    return report
