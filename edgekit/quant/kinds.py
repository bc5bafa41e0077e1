"""The integer-op kinds: the one place that says which ONNX patterns run on the integer grid.

Both sides of the QDQ file read these definitions. The writer (`plan.py`) decides from them
which nodes become integer ops and where the quantization points go; the parser (`qgraph.py`)
closes each QuantizeLinear's region into a QOp of the first kind whose `match` accepts it.
Each back-end lists one handler per kind it runs, in an explicit table:
`edgekit.quant.intref.KERNELS`, `edgekit.compile.tvm.qlower.HANDLERS` and
`edgekit.compile.accel.compiler.LOWERINGS`; a kind without a handler is refused, naming the
kind and the back-end.

Adding a kind: one class here (its ONNX ops, its role for the writer, its parameter class, its
`match` for the parser), listed in KINDS and PARSE_ORDER, plus one handler in each back-end that
runs it.

Each kind names its parameter class (`params_type`): what a QOp of that kind carries beyond its
inputs' and output's grids, with its JSON form (`to_json` / `from_json`; program.json's steps use it).

Roles, as the writer uses them:
- ``layer``: a node with a constant weight (per-channel symmetric int weights, int32 bias);
- ``binary``: two quantized activations in, requantized out (Add, activation x activation MatMul);
- ``requant``: inputs requantized onto the output's grid (Concat, average pools);
- ``move``: codes move unchanged (layout ops, max pools): the output reuses the input's grid;
- ``io`` / ``float``: graph-edge (de)quantizers, and float regions between DQ and Q.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields

import numpy as np
import onnx

from edgekit.onnx_graph.model import attrs as node_attrs
from edgekit.quant import formats as F

ADD_ACCUM_BITS = 12  # add: common accumulator scale s_u = max(s_a, s_b) * 2^-12
FUSABLE_ACTS = frozenset({"Relu", "Clip"})


# -- the rules both sides apply ------------------------------------------------------------------

def fused_activation(node, constants: dict) -> tuple[str, tuple[float, float]] | None:
    """('relu' | 'clip', (lo, hi)) of a Relu/Clip whose bounds are constants, else None."""
    if node.op_type == "Relu":
        return "relu", (0.0, float("inf"))
    if node.op_type != "Clip":
        return None
    a = node_attrs(node)
    lo, hi = float(a.get("min", -np.inf)), float(a.get("max", np.inf))
    for i, name in enumerate(node.input[1:3], start=1):
        if not name:
            continue
        if name not in constants:
            return None
        v = float(np.asarray(constants[name]).reshape(-1)[0])
        lo, hi = (v, hi) if i == 1 else (lo, v)
    return "clip", (lo, hi)


def gemm_on_grid(attrs: dict) -> bool:
    """A Gemm runs on the grid as y = x W (+ b): no transposed input, unit alpha and beta."""
    return not attrs.get("transA", 0) and float(attrs.get("alpha", 1.0)) == 1.0 \
        and float(attrs.get("beta", 1.0)) == 1.0


def bias_scale(s_x: float, s_w) -> np.ndarray:
    """Float32 product s_x * s_w: the exact scale DequantizeLinear applies to the int32 bias."""
    with np.errstate(over="ignore"):  # an overflow to inf is refused, by name, by quantize_multiplier
        return (np.float32(s_x) * np.asarray(s_w, np.float32)).astype(np.float32)


def requant_scale(s_x: float, s_w, s_y: float) -> np.ndarray:
    """Requantization scale of a weighted op's channel: float64(bias scale) / float64(s_y)."""
    return bias_scale(s_x, s_w).astype(np.float64) / np.float64(s_y)


def avgpool_multiplier(s_x: float, s_y: float, count) -> tuple[np.ndarray, np.ndarray]:
    """(M, shift) of an average pool at a position averaging `count` elements: s_x / (s_y * count)."""
    ratio = np.float64(s_x) / np.float64(s_y)
    return F.quantize_multiplier(ratio / np.asarray(count, np.float64))


# -- the kinds' parameters ------------------------------------------------------------------------

def _array(dtype: str):
    """A numpy array field: a nested list in the JSON form, `dtype` when read back."""
    return field(metadata={"array": dtype})


@dataclass(kw_only=True)
class Params:
    """Parameters of an op with none of its own (quantize, dequantize, value moves, float regions).

    The JSON form lists every number exactly (float32 values survive a float64 round trip); weight
    codes are named by their initializer, and `from_json` reads them from `codes` ({name: int codes})."""

    def to_json(self) -> dict:
        doc = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("codes"):
                doc[f.name] = {"shape": list(np.shape(value))}   # the numbers are in the model
            elif "array" in f.metadata:
                doc[f.name] = np.asarray(value).tolist()
            elif isinstance(value, F.QType):
                doc[f.name] = value.name
            else:   # numpy scalars as Python numbers
                doc[f.name] = value.item() if isinstance(value, np.generic) else value
        return doc

    @classmethod
    def from_json(cls, doc: dict, codes: dict | None = None) -> "Params":
        values = {}
        for f in fields(cls):
            if f.name not in doc and f.default_factory is not MISSING:
                continue   # a field added later, with a default: documents written before it
            value = doc[f.name]
            if f.metadata.get("codes"):
                value = np.asarray(codes[doc[f.metadata["codes"]]], np.int64).reshape(value["shape"])
            elif "array" in f.metadata:
                value = np.asarray(value, f.metadata["array"])
            elif f.metadata.get("qtype"):
                value = F.QTYPES[value]
            values[f.name] = value
        return cls(**values)


@dataclass(kw_only=True)
class Clamp(Params):
    """The output clamp every integer op ends with, in output codes: a fused Relu/Clip's bounds,
    else the output type's range."""

    lo: int
    hi: int
    act: str | None = None   # the fused activation: None, 'relu' or 'clip'


@dataclass(kw_only=True)
class Requant(Clamp):
    """One fixed-point requantization y = (acc * mult) >> shift, per tensor or per output channel."""

    mult: np.ndarray = _array("int64")
    shift: np.ndarray = _array("int64")


@dataclass(kw_only=True)
class LayerParams(Requant):
    """A weighted layer: symmetric int weight codes (ONNX layout), int32 bias, per-channel (mult, shift)."""

    weight: np.ndarray = field(metadata={"codes": "weight_init"})
    weight_init: str                         # the initializer holding the weight codes
    weight_scale: np.ndarray = _array("float32")   # per output channel
    weight_qtype: F.QType = field(metadata={"qtype": True})
    weight_axis: int                         # output-channel axis of `weight`
    bias: np.ndarray = _array("int64")       # int32 values, per output channel


@dataclass(kw_only=True)
class AddParams(Requant):
    """Both inputs scaled onto a common accumulator scale by the integers k = [k_a, k_b]."""

    k: list[int]
    accum_scale: float


@dataclass(kw_only=True)
class ScaleParams(Requant):
    """The constant factor as symmetric int16 codes (`factor`, shaped and broadcast like the Mul's
    operand) on the grid `factor_scale`; (mult, shift) per tensor for s_x * factor_scale / s_y."""

    factor: np.ndarray = _array("int64")
    factor_scale: float


@dataclass(kw_only=True)
class PadParams(Requant):
    """Zero padding in ONNX order (every axis's begin, then every axis's end), after the input's
    requantization onto the output grid."""

    pads: list[int]


@dataclass(kw_only=True)
class ConcatParams(Clamp):
    """Each input requantized onto the output grid by its own (mult, shift)."""

    mults: list[int]
    shifts: list[int]


@dataclass(kw_only=True)
class LutParams(Clamp):
    """Output code of every input code: table[x_q - qmin] (edgekit.quant.nonlinear)."""

    table: np.ndarray = _array("int64")


@dataclass(kw_only=True)
class SoftmaxParams(Clamp):
    """Integer softmax over the last axis: exp table by code distance, output multiplier, and a
    constant mask (1 = masked out, broadcast to the input; empty: none)."""

    table: np.ndarray = _array("int64")
    mult: int
    mask: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), metadata={"array": "int64"})


@dataclass(kw_only=True)
class ResizeParams(Requant):
    """Resize's own constant inputs (the taps follow from them and the input shape) and the
    requantization by s_x / s_y (nonlinear.resize adds the weights' fraction bits to the shift)."""

    roi: np.ndarray = _array("float64")
    scales: np.ndarray = _array("float64")
    sizes: np.ndarray = _array("int64")


@dataclass(kw_only=True)
class LayerNormParams(Clamp):
    """Integer LayerNorm over the last axis of `n` elements (edgekit.quant.nonlinear)."""

    n: int
    eps_codes: int
    gain: np.ndarray = _array("int64")
    offset: np.ndarray = _array("int64")


# -- the kinds -----------------------------------------------------------------------------------

class Kind:
    """One integer-op kind. `match(region)` (the parser's side) returns a QOp or None; region is
    qgraph's `Region` (the float nodes a QuantizeLinear closes, with `int_op` to build the QOp)."""

    name = ""
    role = "float"
    onnx_ops: frozenset = frozenset()
    params_type: type = Params
    takes_fused_activation = False   # may a Relu/Clip between the op and its Q be folded in

    def accepts(self, r) -> bool:
        """Whether `match` should look at region `r` (by default: its main node's op type)."""
        return r.main.op_type in self.onnx_ops and (r.act is None or self.takes_fused_activation)

    def match(self, r):
        return None


class _WeightLayer(Kind):
    """Activation x constant symmetric int weight (+ int32 bias), per-channel requantization."""

    role = "layer"
    takes_fused_activation = True
    params_type = LayerParams

    def weight_out_axis(self, attrs: dict) -> int:
        raise NotImplementedError

    def match(self, r):
        main, a = r.main, r.attrs
        if len(main.input) < 2 or main.input[0] not in r.dq_act or main.input[1] not in r.dq_const:
            return None
        w = r.dq_const[main.input[1]]
        if w["zp"] is not None and np.any(w["zp"] != 0) or w["type"] not in (F.INT4.onnx_type, F.INT8.onnx_type):
            return None
        if main.op_type == "Gemm" and not gemm_on_grid(a):
            return None
        bias_name = main.input[2] if len(main.input) > 2 and main.input[2] else None
        if main.op_type == "MatMul" and len(r.core) == 2 and r.core[1].op_type == "Add":
            other = [t for t in r.core[1].input if t != main.output[0]]
            bias_name = other[0] if other else None
        elif len(r.core) != 1:
            return None
        axis = w["axis"] % w["codes"].ndim
        expect = self.weight_out_axis(a)
        n_out = w["codes"].shape[expect]
        if w["scale"].size not in (1, n_out) or (w["scale"].size > 1 and axis != expect):
            return None
        s_w = np.broadcast_to(w["scale"].reshape(-1), (n_out,)).astype(np.float32)
        x_q = r.dq_act[main.input[0]][1]
        bias = np.zeros(n_out, np.int64)
        if bias_name is not None:
            if bias_name not in r.dq_const or r.dq_const[bias_name]["type"] != onnx.TensorProto.INT32:
                return None
            bq = r.dq_const[bias_name]
            b = np.broadcast_to(bq["codes"].reshape(-1), (n_out,)).astype(np.int64)
            b_scale = np.broadcast_to(bq["scale"].reshape(-1), (n_out,)).astype(np.float32)
            expect_scale = bias_scale(x_q.scale, s_w)
            if not np.array_equal(b_scale, expect_scale):  # a file from elsewhere: rescale exactly once
                b = np.rint(b * (b_scale.astype(np.float64) / expect_scale.astype(np.float64))).astype(np.int64)
            bias = b
        mult, shift = F.quantize_multiplier(requant_scale(x_q.scale, s_w, r.out_q.scale))
        return r.int_op(self, acts=[main.input[0]], weight=w["codes"], weight_init=w["init"], weight_scale=s_w,
                        weight_qtype=F.qtype_of_onnx(w["type"]), weight_axis=expect, bias=bias, mult=mult,
                        shift=shift)


class Conv(_WeightLayer):
    name, onnx_ops = "conv", frozenset({"Conv"})

    def weight_out_axis(self, attrs):
        return 0


class ConvTranspose(_WeightLayer):
    name, onnx_ops = "conv_transpose", frozenset({"ConvTranspose"})

    def weight_out_axis(self, attrs):
        return 1


class Gemm(_WeightLayer):
    name, onnx_ops = "gemm", frozenset({"Gemm"})

    def weight_out_axis(self, attrs):
        return 0 if attrs.get("transB", 0) else 1


class Linear(_WeightLayer):
    """MatMul with a constant 2-D weight, and its bias Add."""

    name, onnx_ops = "linear", frozenset({"MatMul"})

    def weight_out_axis(self, attrs):
        return 1


class MatMul(Kind):
    """Activation x activation (attention): one per-tensor requantization."""

    name, role, onnx_ops = "matmul", "binary", frozenset({"MatMul"})
    takes_fused_activation = True
    params_type = Requant

    def match(self, r):
        main = r.main
        if not r.single or len(r.act_inputs) != 2 or main.input[0] == main.input[1]:
            return None
        qa, qb = r.dq_act[main.input[0]][1], r.dq_act[main.input[1]][1]
        mult, shift = F.quantize_multiplier(requant_scale(qa.scale, np.array([qb.scale]), r.out_q.scale))
        return r.int_op(self, acts=list(main.input), mult=mult, shift=shift)


class Add(Kind):
    """Two activations brought onto a common accumulator scale by integer multipliers k_a, k_b
    (a Sub is an add with k_b negated)."""

    name, role, onnx_ops = "add", "binary", frozenset({"Add", "Sub"})
    takes_fused_activation = True
    params_type = AddParams

    def match(self, r):
        main = r.main
        if not r.single or len(r.act_inputs) != 2:
            return None
        qa, qb = r.dq_act[main.input[0]][1], r.dq_act[main.input[1]][1]
        s_u = max(qa.scale, qb.scale) * 2.0 ** -ADD_ACCUM_BITS
        ka, kb = int(np.rint(qa.scale / s_u)), int(np.rint(qb.scale / s_u))
        if main.op_type == "Sub":
            kb = -kb
        mult, shift = F.quantize_multiplier(s_u / r.out_q.scale)
        return r.int_op(self, acts=list(main.input), mult=mult, shift=shift, k=[ka, kb], accum_scale=float(s_u))


class Mul(Kind):
    """Element-wise product of two activations: acc = (a - zp_a) * (b - zp_b), one per-tensor
    requantization by s_a * s_b / s_y (the matmul rule, element by element)."""

    name, role, onnx_ops = "mul", "binary", frozenset({"Mul"})
    takes_fused_activation = True
    params_type = Requant

    def match(self, r):
        main = r.main
        if not r.single or len(r.act_inputs) != 2 or len(main.input) != 2:
            return None
        qa, qb = r.dq_act[main.input[0]][1], r.dq_act[main.input[1]][1]
        mult, shift = F.quantize_multiplier(requant_scale(qa.scale, np.array([qb.scale]), r.out_q.scale))
        return r.int_op(self, acts=list(main.input), mult=mult, shift=shift)


class Scale(Kind):
    """An activation times a constant tensor (rotary embeddings' per-position sin / cos tables, a
    per-channel gain): acc = (x - zp_x) * c with c the constant's symmetric int16 codes, one
    requantization by s_x * s_c / s_y. int16 keeps the factor's rounding error under 2^-16 of its
    largest value, and |acc| <= 255 * 32767 fits int32. A scalar factor is the table kind's (one
    function of the code)."""

    name = "scale"
    params_type = ScaleParams
    FACTOR_QMAX = (1 << 15) - 1

    def accepts(self, r) -> bool:
        return r.main.op_type == "Mul" and r.act is None

    def match(self, r):
        main = r.main
        if not r.single or len(main.input) != 2:
            return None
        acts = [t for t in main.input if t in r.dq_act]
        if len(acts) != 1:   # x * x lists x twice: two activations
            return None
        factor = r.constant(main.input[1] if main.input[0] == acts[0] else main.input[0])
        if factor is None or np.size(factor) <= 1 or not np.all(np.isfinite(factor)):
            return None
        factor = np.asarray(factor, np.float64)
        s_c = float(np.abs(factor).max()) / self.FACTOR_QMAX or 1.0
        codes = np.rint(factor / s_c).astype(np.int64)
        q = r.dq_act[acts[0]][1]
        mult, shift = F.quantize_multiplier(np.array([q.scale * s_c / r.out_q.scale]))
        return r.int_op(self, acts=acts, mult=mult, shift=shift, factor=codes, factor_scale=s_c)


class Pad(Kind):
    """Constant zero padding (the LM's token shift): the input requantized onto the output grid by
    s_x / s_y, padded with the output's zero point (a real 0). Other modes, non-zero values,
    cropping (negative pads) and an `axes` input stay float."""

    name = "pad"
    params_type = PadParams

    def accepts(self, r) -> bool:
        return r.main.op_type == "Pad" and r.act is None

    def match(self, r):
        main = r.main
        mode = node_attrs(main).get("mode", "constant")
        if not r.single or main.input[0] not in r.dq_act or mode not in ("constant", b"constant"):
            return None
        operands = list(main.input[1:])
        operands += [""] * (3 - len(operands))   # pads, constant value, axes
        if not operands[0] or operands[2]:
            return None   # opset < 11 (pads as an attribute) or an axes input
        pads = r.constant(operands[0])
        value = r.constant(operands[1]) if operands[1] else np.zeros(1)
        if pads is None or value is None or np.any(np.asarray(pads) < 0) or np.any(np.asarray(value) != 0):
            return None
        mult, shift = F.quantize_multiplier(np.array([r.dq_act[main.input[0]][1].scale / r.out_q.scale]))
        return r.int_op(self, acts=[main.input[0]], mult=mult, shift=shift,
                        pads=[int(p) for p in np.asarray(pads).reshape(-1)])


class Concat(Kind):
    """Each input requantized onto the output grid: per-input (M, shift)."""

    name, role, onnx_ops = "concat", "requant", frozenset({"Concat"})
    params_type = ConcatParams

    def match(self, r):
        main = r.main
        if not r.single or not all(t in r.dq_act for t in main.input):
            return None
        rq = [F.quantize_multiplier(r.dq_act[t][1].scale / r.out_q.scale) for t in main.input]
        return r.int_op(self, acts=list(main.input), mults=[int(m) for m, _ in rq], shifts=[int(s) for _, s in rq])


class AvgPool(Kind):
    """Window sum of (x - zp_x), requantized by `avgpool_multiplier` with each position's count."""

    name, role, onnx_ops = "avgpool", "requant", frozenset({"AveragePool"})
    params_type = Requant

    def match(self, r):
        if not r.single or r.main.input[0] not in r.dq_act:
            return None
        q = r.dq_act[r.main.input[0]][1]
        mult, shift = F.quantize_multiplier(q.scale / r.out_q.scale)  # divisor applied per position
        return r.int_op(self, acts=[r.main.input[0]], mult=mult, shift=shift)


class GlobalAvgPool(AvgPool):
    name, onnx_ops = "global_avgpool", frozenset({"GlobalAveragePool"})


class MaxPool(Kind):
    name, role, onnx_ops = "maxpool", "move", frozenset({"MaxPool", "GlobalMaxPool"})

    def match(self, r):
        if not r.single or r.main.input[0] not in r.dq_act:
            return None
        return r.int_op(self, acts=[r.main.input[0]])


class Layout(Kind):
    """Value-moving ops (reshape, transpose, slice...): the codes move unchanged."""

    name, role = "layout", "move"
    onnx_ops = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Gather", "Slice",
                          "Split", "Identity", "DepthToSpace", "SpaceToDepth"})

    def match(self, r):
        if not r.single or r.main.input[0] not in r.dq_act:
            return None
        return r.fallback(self.name)


# element-wise ops: a region of these reading one quantized tensor (and scalar constants) is a
# function of that tensor's code alone, so a table over the codes computes it exactly
ELEMENTWISE_OPS = frozenset({
    "Abs", "Add", "And", "Cast", "Ceil", "Celu", "Clip", "Constant", "Cos", "Div", "Elu", "Equal", "Erf", "Exp",
    "Floor", "Gelu", "Greater", "GreaterOrEqual", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "Max", "Min", "Mish", "Mul", "Neg", "Not", "Or", "Pow",
    "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Sin", "Softplus", "Softsign", "Sqrt", "Sub",
    "Tanh", "ThresholdedRelu", "Where", "Xor"})


class Lut(Kind):
    """An element-wise region of one quantized input: a table over its codes (nonlinear.lut)."""

    name = "lut"
    params_type = LutParams

    def accepts(self, r) -> bool:
        return all(n.op_type in ELEMENTWISE_OPS for n in r.nodes)

    def match(self, r):
        from edgekit.onnx_graph import torch_ops as T
        from edgekit.quant import nonlinear as NL

        acts = [t for t in r.inputs if t in r.dq_act]
        if len(acts) != 1:
            return None
        consts = {}
        for node in r.nodes:
            if node.op_type == "Constant" and np.size(r.node_constant(node)) > 1:
                return None
            for name in node.input:
                if name and name != acts[0] and name not in r.produced:
                    value = r.constant(name)
                    if value is None or np.size(value) != 1:
                        return None   # a per-channel or per-position operand: not one function of the code
                    consts[name] = value
        in_q = r.dq_act[acts[0]][1]
        codes = NL.code_range(in_q)
        x = F.dequantize(codes, in_q.scale, in_q.zero_point).astype(np.float32)
        y = T.run_nodes(r.nodes, {acts[0]: T.to_torch(x)}, consts, r.output)
        if not y.is_floating_point() or y.numel() != codes.size:
            return None
        table = NL.quantize_table(y.detach().reshape(-1).numpy(), r.out_q)
        return r.int_op(self, acts=acts, table=table)


class Softmax(Kind):
    """Softmax over the last axis, optionally after a multiplication by a positive scalar
    (attention's 1/sqrt(d)): integer softmax (nonlinear.softmax)."""

    name = "softmax"
    params_type = SoftmaxParams

    def accepts(self, r) -> bool:
        return r.nodes[-1].op_type == "Softmax" and len(r.nodes) <= 3

    def match(self, r):
        from edgekit.quant import nonlinear as NL

        softmax, *before = r.nodes[::-1]
        axis = int(node_attrs(softmax).get("axis", -1 if r.opset >= 13 else 1))
        if axis != -1:
            return None
        x, factor, mask = softmax.input[0], 1.0, np.zeros(0, np.int64)
        if before and before[0].op_type == "Where":
            where = before.pop(0)
            if where.output[0] != x or (masked := _constant_mask(r, where)) is None:
                return None
            x, mask, fill = masked
        if len(before) > 1:
            return None
        if before:
            scaled = _scaled_by_constant(r, before[0])
            if scaled is None or before[0].output[0] != x:
                return None
            x, factor = scaled
        if x not in r.dq_act or not factor > 0:
            return None
        in_q = r.dq_act[x][1]
        if mask.size:
            lowest = factor * float(in_q.scale) * (in_q.qtype.qmin - int(in_q.zero_point))
            # a masked entry weighs exp(fill - row max) in float: below e^-30 of the row max, it
            # is 0 at any output step; and each row must keep an entry to normalize over
            if not fill - lowest < -30 or not np.all(np.any(mask == 0, axis=-1)):
                return None
        return r.int_op(self, acts=[x], table=NL.exp_table(in_q, factor), mult=NL.softmax_multiplier(r.out_q),
                        mask=mask)


class Resize(Kind):
    """Resize with constant scales or sizes (any mode but tf_crop_and_resize): integer taps
    (nonlinear.resize)."""

    name, onnx_ops = "resize", frozenset({"Resize"})
    params_type = ResizeParams

    def match(self, r):
        node, a = r.main, r.attrs
        ctm = a.get("coordinate_transformation_mode", b"half_pixel")
        if not r.single or node.input[0] not in r.dq_act or ctm in (b"tf_crop_and_resize", "tf_crop_and_resize"):
            return None
        operands = []
        for i in (1, 2, 3):
            name = node.input[i] if len(node.input) > i else ""
            value = r.constant(name) if name else np.zeros(0)
            if value is None:
                return None   # computed scales or sizes: the taps are not known before run time
            operands.append(np.asarray(value).reshape(-1))
        roi, scales, sizes = operands
        mult, shift = F.quantize_multiplier(np.float64(r.dq_act[node.input[0]][1].scale) / np.float64(r.out_q.scale))
        return r.int_op(self, acts=[node.input[0]], mult=mult, shift=shift, roi=roi.astype(np.float64),
                        scales=scales.astype(np.float64), sizes=sizes.astype(np.int64))


def _constant_mask(r, where) -> tuple[str, np.ndarray, float] | None:
    """(tensor, mask, fill) when `where` = Where(constant condition, ...) puts one constant scalar
    `fill` where the mask (int64, 1 = filled) says and the tensor elsewhere."""
    cond, a, b = where.input
    condition = r.constant(cond)
    if condition is None:
        return None
    for fill_name, tensor, filled in ((a, b, condition), (b, a, np.logical_not(condition))):
        fill = r.constant(fill_name)
        if fill is not None and np.size(fill) == 1 and r.constant(tensor) is None:
            return tensor, np.asarray(filled, bool).astype(np.int64), float(np.asarray(fill).reshape(-1)[0])
    return None


def _scaled_by_constant(r, node) -> tuple[str, float] | None:
    """(tensor, c) when `node` computes tensor * c or tensor / c with a scalar constant c."""
    if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
        return None
    for i, name in enumerate(node.input):
        other = r.constant(node.input[1 - i])
        if name in r.dq_act and other is not None and np.size(other) == 1:
            c = float(np.asarray(other).reshape(-1)[0])
            if node.op_type == "Div":
                if i != 0 or c == 0:
                    return None
                c = 1.0 / c
            return name, c
    return None


class LayerNorm(Kind):
    """LayerNormalization over the last axis with constant scale (and bias): integer LayerNorm
    (nonlinear.layernorm)."""

    name, onnx_ops = "layernorm", frozenset({"LayerNormalization"})
    params_type = LayerNormParams

    def match(self, r):
        from edgekit.quant import nonlinear as NL

        node = r.main
        a = node_attrs(node)
        if not r.single or int(a.get("axis", -1)) != -1 or node.input[0] not in r.dq_act:
            return None
        gamma = r.constant(node.input[1])
        beta_name = node.input[2] if len(node.input) > 2 else ""
        beta = r.constant(beta_name) if beta_name else None
        if gamma is None or np.ndim(gamma) != 1 or not 2 <= np.size(gamma) <= NL.MAX_ROW:
            return None
        if beta_name and beta is None:   # a computed bias: not a constant the kernel can fold
            return None
        in_q = r.dq_act[node.input[0]][1]
        return r.int_op(self, acts=[node.input[0]],
                        **NL.layernorm_constants(in_q, r.out_q, gamma, beta, float(a.get("epsilon", 1e-5))))


class Quantize(Kind):
    name, role = "quantize", "io"


class Dequantize(Kind):
    name, role = "dequantize", "io"


class Float(Kind):
    name = "float"


# the order the parser tries them in (the first match wins)
PARSE_ORDER = (Conv(), ConvTranspose(), Gemm(), Linear(), MatMul(), Add(), Mul(), Concat(), AvgPool(), GlobalAvgPool(),
               MaxPool(), Layout(), Softmax(), LayerNorm(), Resize(), Scale(), Pad(), Lut())
# integer definitions of ops the QDQ file computes in float (--float-nonlinear leaves them float)
NONLINEAR_KINDS = frozenset({"lut", "softmax", "layernorm", "resize", "scale", "pad"})
KINDS = {k.name: k for k in PARSE_ORDER + (Quantize(), Dequantize(), Float())}


def ops_with_role(role: str) -> frozenset:
    return frozenset(op for k in KINDS.values() if k.role == role for op in k.onnx_ops)


MOVE_KINDS = tuple(k for k in KINDS.values() if k.role == "move")
MOVE_OPS = ops_with_role("move")          # the writer's inherited points, the parser's value moves
REQUANT_OPS = ops_with_role("requant")
