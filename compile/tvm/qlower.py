"""Integer lowering of QDQ graphs, driven by the integer view `edgekit.quant.qgraph`.

The Relax ONNX frontend computes QDQ graphs in float (dequantize, float op,
quantize). Before import, edgekit parses the file into a QGraph (the same
parse the bit-exact integer reference `edgekit.quant.intref` executes) and
replaces the ONNX nodes of every integer op it supports -- the float region
between the DequantizeLinear outputs and the closing QuantizeLinear, and that
QuantizeLinear -- by one node ``edgekit.QLinearInteger`` reading the integer
input tensors and producing the quantized output tensor:

    conv / conv_transpose / gemm / linear / matmul:
        acc = op(x_q - zp_x, w_q)            int16 operands, int32 accumulation
    add:  acc = (a_q - zp_a) * k_a + (b_q - zp_b) * k_b     (sub: k_b < 0)
    mul:  acc = (a_q - zp_a) * (b_q - zp_b)
    global_avgpool: acc = sum over H, W of (x_q - zp_x)
    then  y_q = clamp(rshift_half_even((acc + bias) * M, s) + zp_y, lo, hi)
    lut / softmax / layernorm / resize: the integer definitions of edgekit.quant.nonlinear

Weights, bias, M, s and [lo, hi] are taken from the QOp, so they are the
reference's numbers by construction. Concat requantizes each input onto the
output grid. Everything else (layout moves, max pools, float regions such as
resize) stays QDQ-in-float, computed by the frontend's ops, as
the reference computes it in float32.

Each lowered kind has one handler in HANDLERS (`supports` / `attributes` build the node,
`emit` the Relax); two frontend converters carry the nodes into Relax:
`QLinearIntegerConverter` (dispatching on the node's `kind` to its handler) and
`QuantizeLinearClampedConverter`; both are listed in `converters.CONVERTERS`.
"""
from __future__ import annotations

import numpy as np

from edgekit.compile.tvm import dotprod
from edgekit.compile.tvm.importer import EDGEKIT_DOMAIN
from edgekit.onnx_graph.model import consumers, static_dims
from edgekit.quant import formats as F
from edgekit.quant import nonlinear as NL
from edgekit.quant.kinds import avgpool_multiplier


# --------------------------------------------------------------------------- the ONNX rewrite
def _key(node) -> str:
    return node.output[0]


def _tensor_attr(value, name):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(value), name)


def _node_for(op, index: int, input_names: list[str], shapes: dict, dot: str | None = None) -> object | None:
    """The QLinearInteger node computing QOp `op`, or None when its kind's handler declines it.
    `dot`: the int8 dot-product kernels the target has (a dotprod.ISAS name), for the kinds that use them."""
    from onnx import helper

    handler = HANDLERS[op.kind]
    if not handler.supports(op, input_names, shapes):
        return None
    attrs = dict(kind=op.kind, in_zero_points=[int(q.zero_point) for q in op.in_q],
                 y_zero_point=int(op.out_q.zero_point),
                 qmin=int(op.params.lo), qmax=int(op.params.hi),
                 out_signed=int(op.out_q.qtype.signed), out_bits=int(op.out_q.qtype.bits))
    if handler.weighted:
        attrs["weight"] = _tensor_attr(op.params.weight.astype(np.int16), "weight")
        attrs["bias"] = _tensor_attr(F.wrap_int32(op.params.bias).astype(np.int32), "bias")
    if handler.op_multiplier:
        attrs["mult"] = _tensor_attr(np.asarray(op.params.mult, np.int64).reshape(-1), "mult")
        attrs["shift"] = _tensor_attr(np.asarray(op.params.shift, np.int64).reshape(-1), "shift")
    attrs.update(handler.attributes(op, input_names, shapes))
    if dot and handler.dot_product:
        attrs["dot"] = dot
    return helper.make_node("QLinearInteger", input_names, [op.outputs[0]],
                            name=f"{op.name or 'q'}_int{index}", domain=EDGEKIT_DOMAIN, **attrs)


def _known_shapes(model) -> dict:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is a help here, not a requirement
        inferred = model
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        shapes[vi.name] = static_dims(vi)
    return shapes


def lower(model, dot: str | None = None, integer_nonlinear: bool = True) -> dict:
    """Rewrite the integer ops of QDQ `model` in place (before int4 widening). `dot`: the name of the
    target's int8 dot-product step (a dotprod.ISAS name, from dotprod.detect; linear, gemm, conv and
    activation-product layers then run on compile/tvm/dotprod.py's kernels).
    `integer_nonlinear=False` leaves softmax, layernorm, resize and element-wise regions in float
    (as the QDQ file writes them; then not bit-exact with the integer reference).

    Returns {kind: count} of lowered ops (empty when nothing matched).
    """
    from onnx import helper

    from edgekit.quant.qgraph import parse

    qgraph = parse(model, integer_nonlinear=integer_nonlinear)
    graph = model.graph
    users = consumers(graph)
    outputs = {o.name for o in graph.output}
    shapes = _known_shapes(model)
    quantizers = {n.output[0]: n for n in graph.node if n.op_type == "QuantizeLinear"}
    # Nodes are keyed by their first output (unique in SSA form): qgraph.parse may work on a copy
    # of the model, so object identity does not carry over.
    removed: set[str] = set()
    insert_at: dict[str, list] = {}  # key of the QuantizeLinear replaced -> new nodes
    added_quantizers: dict[str, str] = {}   # a layout op's float output -> its codes tensor
    moves = {op.outputs[0]: op for op in qgraph.ops if op.kind == "layout"}
    counts: dict[str, int] = {}
    for index, op in enumerate(qgraph.ops):
        if op.kind not in HANDLERS or op.out_q is None or op.outputs[0] not in quantizers:
            continue
        q_node = quantizers[op.outputs[0]]
        region = list(op.nodes) + [q_node]
        region_ids = {_key(n) for n in region}
        # Every region tensor must stay inside the region (the Q output is the op's output).
        leaks = any(out in outputs or any(_key(u) not in region_ids for u in users.get(out, []))
                    for n in region[:-1] for out in n.output)
        if leaks or any(_key(n) in removed for n in region):
            continue
        inputs, extra = [], []
        for name, q in zip(op.inputs, op.in_q):
            if name.endswith("__moved"):
                name = _codes_of_move(graph, name, q, moves, added_quantizers, extra)
            inputs.append(name)
        node = _node_for(op, index, inputs, shapes, dot)
        if node is None:
            continue
        insert_at.setdefault(_key(q_node), []).extend(extra + [node])
        removed |= region_ids
        counts[op.kind] = counts.get(op.kind, 0) + 1
    if not counts:
        return {}
    # Each new node takes its QuantizeLinear's place: in a topologically sorted graph every
    # input of the op (earlier codes, layout outputs) is defined before that point.
    nodes = []
    for node in graph.node:
        nodes.extend(insert_at.get(_key(node), []))
        if _key(node) not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == EDGEKIT_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(EDGEKIT_DOMAIN, 1))
    return counts


# layout ops that move codes as they move floats (one output, any element type)
CODE_MOVES = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Identity",
                        "DepthToSpace", "SpaceToDepth"})


def code_dtype(signed: bool, bits: int) -> str:
    """The tensor type codes travel in: 4-bit codes in 8-bit tensors, 16-bit codes in 16-bit ones."""
    return ("int" if signed else "uint") + ("16" if bits > 8 else "8")


def _codes_of_move(graph, moved: str, q, moves: dict, added: dict, extra: list) -> str:
    """The codes of a layout op's output (`moved`: the parser's virtual name), made once per
    tensor; the nodes it adds go to `extra`. The layout op is repeated on its input's codes
    (a chain of them, recursively), so the codes move as bytes; an op that cannot (Split,
    Gather) requantizes its float output instead (exact: the values are on the grid, but a
    float multiply, divide and round per element, as costly as the op it feeds)."""
    from onnx import helper

    float_name = moved[: -len("__moved")]
    if float_name in added:
        return added[float_name]
    codes = f"{float_name}__codes"
    move = moves.get(moved)
    node = move.nodes[0] if move is not None else None
    source = move.inputs[0] if move is not None else ""
    if node is not None and node.op_type in CODE_MOVES and len(node.output) == 1:
        if source.endswith("__moved"):
            source = _codes_of_move(graph, source, move.in_q[0], moves, added, extra)
        copy = helper.make_node(node.op_type, [source] + list(node.input[1:]), [codes], name=f"{codes}_move")
        copy.attribute.extend(node.attribute)
        extra.append(copy)
    else:
        dtype = code_dtype(q.qtype.signed, q.qtype.bits)
        scale = _tensor_attr(np.float32(q.scale), f"{codes}_scale")
        zp = _tensor_attr(np.asarray(q.zero_point, dtype=dtype), f"{codes}_zp")
        graph.initializer.extend([scale, zp])
        extra.append(helper.make_node("QuantizeLinear", [float_name, scale.name, zp.name], [codes], name=f"{codes}_q"))
    added[float_name] = codes
    return codes


# --------------------------------------------------------------------------- Relax converters
def _relax():
    from tvm import relax

    return relax


def rshift_half_even_relax(prod, shift: np.ndarray):
    """Relax version of formats.rshift_half_even for int64 `prod` and constant shifts.

    Written so that `prod` is read twice, not six times as before: (x + 2^(s-1) - 1 + bit s of x)
    >> s rounds x / 2^s half to even (the added bit turns a tie's carry on exactly when the
    quotient is odd). Fused element-wise kernels inline a chain of requantizations into one
    expression; with six reads it grew sixfold per requantization and the LM's kernels took
    minutes to lower. A zero shift (no rounding) is a doubled product shifted by one: ((2x + x's bit 0) >> 1
    = x), so every element takes the same expression. |prod| < 2^62 (int32 accumulator times
    a 31-bit multiplier), so neither the doubling nor the added half leaves int64."""
    relax = _relax()
    op = relax.op
    shift = np.asarray(shift, np.int64)
    if not np.all(shift > 0):
        prod = op.multiply(prod, relax.const(np.where(shift > 0, 1, 2).astype(np.int64), "int64"))
    s = np.maximum(shift, 1)
    s_c = relax.const(s, "int64")
    odd = op.bitwise_and(op.right_shift(prod, s_c), relax.const(1, "int64"))
    half_less_one = relax.const(np.left_shift(np.int64(1), s - 1) - 1, "int64")
    return op.right_shift(op.add(op.add(prod, half_less_one), odd), s_c)


def requantize_relax(acc, bias, mult, shift, zero_point: int, lo: int, hi: int, out_dtype: str):
    """formats.requantize in Relax: int32 acc (+ int32 bias, wrapping) -> clamped codes."""
    relax = _relax()
    op = relax.op
    total = acc if bias is None else op.add(acc, relax.const(bias, "int32"))
    prod = op.multiply(op.astype(total, "int64"), relax.const(mult, "int64"))
    return codes_relax(rshift_half_even_relax(prod, shift), zero_point, lo, hi, out_dtype)


def codes_relax(y, zero_point: int, lo: int, hi: int, out_dtype: str):
    """int64 values on the output grid -> codes: + zero point, clamp to [lo, hi], cast."""
    op = _relax().op
    y = op.add(y, _param(zero_point, "int64"))
    y = op.minimum(op.maximum(y, _param(lo, "int64")), _param(hi, "int64"))
    return op.astype(y, out_dtype)


def _param(value, dtype: str):
    """A quantization parameter as a one-element tensor, not a scalar: Relax turns scalar
    constants into immediates inside the kernels, which would make every zero point, clamp and
    multiplier part of the kernel's structure, so tuning records (matched by structure) would
    stop applying as soon as a model is re-calibrated. As a tensor it is a kernel argument."""
    relax = _relax()
    return relax.const(np.array([value], dtype=dtype), dtype)


def _centered(x, zero_point: int, dtype: str = "int16"):
    relax = _relax()
    return relax.op.subtract(relax.op.astype(x, dtype), _param(zero_point, dtype))


def _channel(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    values = np.asarray(values)
    if values.size == 1:
        return values.reshape((1,))
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def _ints(attr, key):
    return [int(v) for v in attr[key]]


def _arr(attr, key):
    from onnx import numpy_helper

    return numpy_helper.to_array(attr[key])


# float32 holds every integer of magnitude <= 2^24 exactly: when no partial sum of an integer
# dot product can exceed that, computing it with float32 multiply-adds (in any order, FMA or
# not) gives exactly the int32 result, and float32 kernels are what CPUs (and TVM's schedules)
# are fastest at (one FMA per lane instead of widen + multiply + add in int32).
FLOAT_EXACT_LIMIT = float(1 << 24)


def _input_range(bb, x) -> tuple[int, int]:
    dtype = str(bb.normalize(x).ty.dtype)
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def float_exact(bb, x, zero_point: int, weight: np.ndarray, reduce_axes) -> bool:
    return exact_in_float32(*_input_range(bb, x), zero_point, weight, reduce_axes)


def exact_in_float32(lo: int, hi: int, zero_point: int, weight: np.ndarray, reduce_axes) -> bool:
    """True when |sum of (x - zp) * w| over any reduction stays <= 2^24 for every x in [lo, hi]."""
    x_max = max(abs(lo - int(zero_point)), abs(hi - int(zero_point)))
    w_sum = np.abs(weight.astype(np.int64)).sum(axis=tuple(reduce_axes))
    return float(w_sum.max(initial=0)) * x_max <= FLOAT_EXACT_LIMIT


def _operands(bb, x, zero_point: int, weight: np.ndarray, reduce_axes):
    """(centered x, weight constant, accumulation dtype): float32 when exact, else int16 -> int32."""
    relax = _relax()
    if float_exact(bb, x, zero_point, weight, reduce_axes):
        return _centered(x, zero_point, "float32"), relax.const(weight.astype(np.float32), "float32"), "float32"
    return _centered(x, zero_point), relax.const(weight.astype(np.int16), "int16"), "int32"


def _to_int32(acc, dtype: str):
    relax = _relax()
    return acc if dtype == "int32" else relax.op.astype(acc, "int32")


def _dot(attr):
    """The dotprod.DotIsa the node's `dot` attribute names, or None."""
    dot = attr.get("dot", b"")
    return dotprod.ISAS.get(dot.decode() if isinstance(dot, bytes) else dot)


def _product_step(attr, weights=None):
    """The dot-product step exact for a product with int8 `weights` (None: with an activation):
    the target's, its wide one (AVX2's int16 step), or None."""
    isa = _dot(attr)
    return isa.for_operand(weights) if isa is not None else None


def conv_acc(bb, x, attr):
    relax = _relax()
    xc, w, dtype = _operands(bb, x, _ints(attr, "in_zero_points")[0], _arr(attr, "weight"), (1, 2, 3))
    acc = relax.op.nn.conv2d(xc, w, strides=tuple(_ints(attr, "strides")), padding=tuple(_ints(attr, "pads")),
                             dilation=tuple(_ints(attr, "dilations")), groups=int(attr["group"]),
                             out_dtype=dtype)
    return _to_int32(acc, dtype), 4, 1


def conv_transpose_acc(bb, x, attr):
    relax = _relax()
    # weight [I, O/g, kh, kw]: an output channel sums over (at most) all inputs and taps
    xc, w, dtype = _operands(bb, x, _ints(attr, "in_zero_points")[0], _arr(attr, "weight"), (0, 2, 3))
    acc = relax.op.nn.conv2d_transpose(xc, w, strides=tuple(_ints(attr, "strides")),
                                       padding=tuple(_ints(attr, "pads")),
                                       output_padding=tuple(_ints(attr, "output_padding")),
                                       dilation=tuple(_ints(attr, "dilations")), groups=int(attr["group"]),
                                       out_dtype=dtype)
    return _to_int32(acc, dtype), 4, 1


def _weight_kn(attr) -> np.ndarray:
    """The linear / gemm weight as [K, N] codes."""
    w = _arr(attr, "weight")
    return np.ascontiguousarray(w.T) if int(attr.get("trans_b", 0)) else w


def linear_acc(bb, x, attr):
    relax = _relax()
    xc, wc, dtype = _operands(bb, x, _ints(attr, "in_zero_points")[0], _weight_kn(attr), (0,))
    return _to_int32(relax.op.matmul(xc, wc, out_dtype=dtype), dtype), None, -1


def matmul_acc(bb, a, b, zps):
    """Product of two quantized activations: float32 when the reduction length keeps it exact."""
    relax = _relax()
    (alo, ahi), (blo, bhi) = _input_range(bb, a), _input_range(bb, b)
    reduce = bb.normalize(a).ty.shape[-1]
    bound = None
    if isinstance(reduce, int) or hasattr(reduce, "value"):
        bound = (int(getattr(reduce, "value", reduce)) * max(abs(alo - zps[0]), abs(ahi - zps[0]))
                 * max(abs(blo - zps[1]), abs(bhi - zps[1])))
    dtype = "float32" if bound is not None and bound <= FLOAT_EXACT_LIMIT else "int16"
    acc = relax.op.matmul(_centered(a, zps[0], dtype), _centered(b, zps[1], dtype),
                          out_dtype="float32" if dtype == "float32" else "int32")
    return _to_int32(acc, "float32" if dtype == "float32" else "int32")


# --------------------------------------------------------------------------- one handler per kind
class KindHandler:
    """How one integer-op kind (edgekit.quant.kinds) is lowered: `supports` and `attributes` build
    its edgekit.QLinearInteger node from the QOp, `emit` turns that node into Relax."""

    weighted = False        # carries int weights and an int32 bias
    op_multiplier = True    # the QOp's (M, shift) requantize the accumulator
    dot_product = False     # runs on an int8 dot-product kernel where the target has one

    def supports(self, op, input_names: list[str], shapes: dict) -> bool:
        return True

    def attributes(self, op, input_names: list[str], shapes: dict) -> dict:
        return {}

    def emit(self, bb, inputs, attr, out):
        raise NotImplementedError


class _Requant:
    """The output side every kind shares: zero points in, clamp and grid out."""

    def __init__(self, attr):
        self.zps = _ints(attr, "in_zero_points")
        self.lo, self.hi, self.zp_y = int(attr["qmin"]), int(attr["qmax"]), int(attr["y_zero_point"])
        self.dtype = code_dtype(bool(int(attr["out_signed"])), int(attr.get("out_bits", 8)))

    def __call__(self, acc, bias, mult, shift):
        return requantize_relax(acc, bias, mult, shift, self.zp_y, self.lo, self.hi, self.dtype)


class _Weighted(KindHandler):
    """acc = op(x_q - zp_x, w_q), requantized per output channel."""

    weighted = True

    def accumulate(self, bb, x, attr):
        raise NotImplementedError

    def emit(self, bb, inputs, attr, out):
        mult, shift = _arr(attr, "mult"), _arr(attr, "shift")
        acc, ndim, axis = self.accumulate(bb, inputs[0], attr)
        ndim = ndim or bb.normalize(acc).ty.ndim
        axis = axis % ndim
        bias = _channel(_arr(attr, "bias"), ndim, axis).astype(np.int32)
        return out(acc, bias, _channel(mult, ndim, axis), _channel(shift, ndim, axis))


class ConvHandler(_Weighted):
    """conv: with a `dot` instruction and a batch-1 convolution of stride 1 or 2, of groups 1 or depthwise, the
    product and its requantization are one kernel of compile/tvm/dotprod.py; other convolutions
    (grouped, dilated) stay Relax conv2d.
    conv_transpose (below) runs there too, as a stride-1 convolution and a pixel shuffle."""

    dot_product = True

    def supports(self, op, input_names, shapes):
        return op.attrs.get("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET") and len(op.params.weight.shape[2:]) == 2

    def attributes(self, op, input_names, shapes):
        a = op.attrs
        return dict(strides=list(a.get("strides", [1, 1])), pads=list(a.get("pads", [0, 0, 0, 0])),
                    dilations=list(a.get("dilations", [1, 1])), group=int(a.get("group", 1)))

    def emit(self, bb, inputs, attr, out):
        weight = _arr(attr, "weight")
        geometry = (dotprod.static_shape(bb, inputs[0]), weight.shape, _ints(attr, "strides"), _ints(attr, "dilations"),
                    int(attr["group"]))
        emit, isa = None, _dot(attr)
        if isa is not None and isa.exact_for(weight):
            emit = (dotprod.emit_conv if dotprod.conv_supported(*geometry)
                    else dotprod.emit_depthwise if dotprod.depthwise_supported(*geometry) else None)
        if emit is None:
            return super().emit(bb, inputs, attr, out)
        return emit(bb, inputs[0], weight, _ints(attr, "pads"), _ints(attr, "strides")[0], out.zps[0],
                    _arr(attr, "bias"), _arr(attr, "mult"), _arr(attr, "shift"), out.zp_y, out.lo, out.hi, out.dtype,
                    isa)

    def accumulate(self, bb, x, attr):
        return conv_acc(bb, x, attr)


class ConvTransposeHandler(ConvHandler):
    def supports(self, op, input_names, shapes):
        return super().supports(op, input_names, shapes) and op.attrs.get("output_shape") is None

    def emit(self, bb, inputs, attr, out):
        weight, isa = _arr(attr, "weight"), _dot(attr)
        if isa is None or not isa.exact_for(weight) or not dotprod.conv_transpose_supported(
                dotprod.static_shape(bb, inputs[0]), weight.shape, _ints(attr, "pads"), _ints(attr, "dilations"),
                int(attr["group"])):
            return _Weighted.emit(self, bb, inputs, attr, out)
        return dotprod.emit_conv_transpose(bb, inputs[0], weight, _ints(attr, "strides"), _ints(attr, "pads"),
                                           _ints(attr, "output_padding"), out.zps[0], _arr(attr, "bias"),
                                           _arr(attr, "mult"), _arr(attr, "shift"), out.zp_y, out.lo, out.hi, out.dtype,
                                           isa)

    def attributes(self, op, input_names, shapes):
        return super().attributes(op, input_names, shapes) | {
            "output_padding": list(op.attrs.get("output_padding", [0, 0]))}

    def accumulate(self, bb, x, attr):
        return conv_transpose_acc(bb, x, attr)


class LinearHandler(_Weighted):
    """linear: MatMul with a constant weight. With a `dot` step exact for the weights (`_product_step`)
    and a static shape, the product and its requantization are one kernel of compile/tvm/dotprod.py."""

    dot_product = True

    def emit(self, bb, inputs, attr, out):
        weight = _weight_kn(attr)
        isa = _product_step(attr, weight)
        if isa is None or dotprod.static_shape(bb, inputs[0]) is None:
            return super().emit(bb, inputs, attr, out)
        return dotprod.emit_dense(bb, inputs[0], weight, out.zps[0], _arr(attr, "bias"), _arr(attr, "mult"),
                                  _arr(attr, "shift"), out.zp_y, out.lo, out.hi, out.dtype, isa)

    def accumulate(self, bb, x, attr):
        return linear_acc(bb, x, attr)


class GemmHandler(LinearHandler):
    """gemm: the same product, with the weight transposed when transB is set."""

    def attributes(self, op, input_names, shapes):
        return {"trans_b": int(op.attrs.get("transB", 0))}


class MatMulHandler(KindHandler):
    """matmul: the product of two activations (attention). With a `dot` instruction and static shapes
    of 8-bit codes with the same batch dimensions, one kernel of compile/tvm/dotprod.py."""

    dot_product = True

    def emit(self, bb, inputs, attr, out):
        a, b = inputs
        isa = _product_step(attr)
        if isa is not None and dotprod.matmul_supported(
                dotprod.static_shape(bb, a), dotprod.static_shape(bb, b), str(bb.normalize(a).ty.dtype),
                str(bb.normalize(b).ty.dtype)):
            return dotprod.emit_matmul(bb, a, b, out.zps, _arr(attr, "mult"), _arr(attr, "shift"), out.zp_y,
                                       out.lo, out.hi, out.dtype, isa)
        acc = matmul_acc(bb, inputs[0], inputs[1], out.zps)
        return out(acc, None, _arr(attr, "mult").reshape((1,)), _arr(attr, "shift").reshape((1,)))


class AddHandler(KindHandler):
    """acc = (a_q - zp_a) * k_a + (b_q - zp_b) * k_b."""

    def attributes(self, op, input_names, shapes):
        return {"k": [int(k) for k in op.params.k]}

    def emit(self, bb, inputs, attr, out):
        op = _relax().op
        ka, kb = _ints(attr, "k")
        acc = op.add(op.multiply(_centered(inputs[0], out.zps[0], "int32"), _param(ka, "int32")),
                     op.multiply(_centered(inputs[1], out.zps[1], "int32"), _param(kb, "int32")))
        return out(acc, None, _arr(attr, "mult").reshape((1,)), _arr(attr, "shift").reshape((1,)))


class MulHandler(KindHandler):
    """acc = (a_q - zp_a) * (b_q - zp_b), element by element."""

    def emit(self, bb, inputs, attr, out):
        acc = _relax().op.multiply(_centered(inputs[0], out.zps[0], "int32"), _centered(inputs[1], out.zps[1], "int32"))
        return out(acc, None, _arr(attr, "mult").reshape((1,)), _arr(attr, "shift").reshape((1,)))


class ScaleHandler(KindHandler):
    """acc = (x_q - zp_x) * factor codes (int16 values, broadcast like the Mul), in int32."""

    def attributes(self, op, input_names, shapes):
        return {"factor": _tensor_attr(op.params.factor.astype(np.int32), "factor")}

    def emit(self, bb, inputs, attr, out):
        relax = _relax()
        factor = relax.const(_arr(attr, "factor").astype(np.int32), "int32")
        acc = relax.op.multiply(_centered(inputs[0], out.zps[0], "int32"), factor)
        return out(acc, None, _arr(attr, "mult").reshape((1,)), _arr(attr, "shift").reshape((1,)))


class PadHandler(KindHandler):
    """(x_q - zp_x) padded with zeros in int32, then the requantization."""

    def attributes(self, op, input_names, shapes):
        return {"pads": [int(v) for v in op.params.pads]}

    def emit(self, bb, inputs, attr, out):
        relax = _relax()
        pads = _ints(attr, "pads")
        n = len(pads) // 2
        centered = _centered(inputs[0], out.zps[0], "int32")
        acc = relax.op.nn.pad(centered, [v for i in range(n) for v in (pads[i], pads[i + n])])
        return out(acc, None, _arr(attr, "mult").reshape((1,)), _arr(attr, "shift").reshape((1,)))


class ConcatHandler(KindHandler):
    """Each input requantized onto the output grid, then concatenated."""

    op_multiplier = False

    def attributes(self, op, input_names, shapes):
        return dict(axis=int(op.attrs["axis"]), mults=[int(m) for m in op.params.mults],
                    shifts=[int(s) for s in op.params.shifts])

    def emit(self, bb, inputs, attr, out):
        parts = [out(_centered(x, zp, "int32"), None, np.array([m], np.int64), np.array([s], np.int64))
                 for x, zp, m, s in zip(inputs, out.zps, _ints(attr, "mults"), _ints(attr, "shifts"))]
        return _relax().op.concat(parts, axis=int(attr["axis"]))


class GlobalAvgPoolHandler(KindHandler):
    """acc = sum over H, W of (x_q - zp_x); (M, shift) of s_x / (s_y * H * W) from the static shape."""

    op_multiplier = False

    def supports(self, op, input_names, shapes):
        shape = shapes.get(input_names[0])
        return bool(shape) and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape)

    def attributes(self, op, input_names, shapes):
        shape = shapes[input_names[0]]
        mult, shift = avgpool_multiplier(op.in_q[0].scale, op.out_q.scale, shape[2] * shape[3])
        return {"mult": _tensor_attr(np.asarray(mult, np.int64).reshape(-1), "mult"),
                "shift": _tensor_attr(np.asarray(shift, np.int64).reshape(-1), "shift")}

    def emit(self, bb, inputs, attr, out):
        acc = _relax().op.sum(_centered(inputs[0], out.zps[0], "int32"), axis=[2, 3], keepdims=True)
        return out(acc, None, _arr(attr, "mult").reshape((1,)), _arr(attr, "shift").reshape((1,)))


def _int64(value):
    return _param(int(value), "int64")


FLOAT64_EXACT = 1 << 53   # float64 holds every integer below this exactly


def floor_divide_relax(num, den, bound: int | None):
    """num // den for int64 `num` and positive `den` (a per-row divisor, broadcast). x86 has no
    vector integer division, so int64 `floor_divide` runs one scalar `idiv` per element (depth's
    attention softmax spent 0.3 ms per block in it). When |num| and den stay below `bound` <=
    2^53, floor(num / den) in float64 is the integer quotient, in vector instructions: both are
    exact in float64, and for a quotient x that is not an integer the next integer lies at least
    1/den away while rounding moves x by at most |x| 2^-53 < 1/den, so no rounding crosses it.
    `bound` None: not known (a dynamic shape), int64 division."""
    op = _relax().op
    if bound is None or bound > FLOAT64_EXACT:
        return op.floor_divide(num, den)
    return op.astype(op.floor(op.divide(op.astype(num, "float64"), op.astype(den, "float64"))), "int64")


class _Nonlinear(KindHandler):
    """The integer definitions of edgekit.quant.nonlinear, step for step in int64."""

    op_multiplier = False

    @staticmethod
    def finish(y, out):
        return codes_relax(y, out.zp_y, out.lo, out.hi, out.dtype)


class LutHandler(_Nonlinear):
    """y_q = table[x_q - qmin]."""

    def attributes(self, op, input_names, shapes):
        return {"table": _tensor_attr(op.params.table.astype(np.int64), "table"),
                "in_qmin": int(op.in_q[0].qtype.qmin)}

    def emit(self, bb, inputs, attr, out):
        relax = _relax()
        index = relax.op.subtract(relax.op.astype(inputs[0], "int32"), _param(int(attr["in_qmin"]), "int32"))
        table = relax.const(_arr(attr, "table").astype(out.dtype), out.dtype)
        return relax.op.take(table, index, axis=0)


class SoftmaxHandler(_Nonlinear):
    """nonlinear.softmax: exp table by distance to the row max, integer normalisation."""

    def attributes(self, op, input_names, shapes):
        attrs = {"table": _tensor_attr(op.params.table.astype(np.int64), "table"), "softmax_mult": int(op.params.mult)}
        if op.params.mask.size:
            attrs["mask"] = _tensor_attr(op.params.mask.astype(np.bool_), "mask")
        return attrs

    def emit(self, bb, inputs, attr, out):
        relax = _relax()
        op = relax.op
        # the table holds e <= 2^EXP_BITS, so a row sums to at most row * 2^EXP_BITS: below 2^31,
        # the max, the distances, the table and the row sum run on int32 (twice the vector lanes)
        dims, unit = dotprod.static_shape(bb, inputs[0]), 1 << NL.EXP_BITS
        narrow = "int32" if dims is not None and dims[-1] * unit < 1 << 31 else "int64"
        x = op.astype(inputs[0], narrow)
        table = relax.const(_arr(attr, "table").astype(narrow), narrow)
        if "mask" not in attr:
            e = op.take(table, op.subtract(op.max(x, axis=[-1], keepdims=True), x), axis=0)
        else:   # masked entries: out of the row max, weight 0 (nonlinear.softmax)
            keep = relax.const(np.logical_not(_arr(attr, "mask")), "bool")
            top = op.max(op.where(keep, x, _param(np.iinfo(narrow).min, narrow)), axis=[-1], keepdims=True)
            distance = op.where(keep, op.subtract(top, x), _param(0, narrow))
            e = op.where(keep, op.take(table, distance, axis=0), _param(0, narrow))
        e, total = op.astype(e, "int64"), op.astype(op.sum(e, axis=[-1], keepdims=True), "int64")
        num = op.add(op.multiply(e, _int64(attr["softmax_mult"])),
                     op.left_shift(total, _int64(NL.SOFTMAX_BITS - 1)))
        bound = None if dims is None else (unit * abs(int(attr["softmax_mult"]))
                                           + (dims[-1] * unit << (NL.SOFTMAX_BITS + 1)))
        return self.finish(floor_divide_relax(num, op.left_shift(total, _int64(NL.SOFTMAX_BITS)), bound), out)


class LayerNormHandler(_Nonlinear):
    """nonlinear.layernorm: integer mean and variance, isqrt, per-channel gain and offset."""

    def attributes(self, op, input_names, shapes):
        p = op.params
        return {"n": int(p.n), "eps_codes": int(p.eps_codes), "gain": _tensor_attr(p.gain.astype(np.int64), "gain"),
                "offset": _tensor_attr(p.offset.astype(np.int64), "offset")}

    def emit(self, bb, inputs, attr, out):
        relax = _relax()
        op = relax.op
        n = _int64(attr["n"])
        xc = _centered(inputs[0], out.zps[0], "int64")
        dev = op.subtract(op.multiply(xc, n), op.sum(xc, axis=[-1], keepdims=True))
        var = op.add(op.floor_divide(op.sum(op.multiply(dev, dev), axis=[-1], keepdims=True), n),
                     _int64(attr["eps_codes"]))
        root = op.maximum(_isqrt_relax(var), _int64(1))
        # |dev| <= 2 n max|x - zp|, root <= that too (the square root of a mean of dev^2, + eps)
        lo, hi = _input_range(bb, inputs[0])
        spread = 2 * int(attr["n"]) * max(abs(lo - out.zps[0]), abs(hi - out.zps[0])) + int(attr["eps_codes"]) + 1
        norm = floor_divide_relax(op.add(op.left_shift(dev, _int64(NL.NORM_BITS)), op.right_shift(root, _int64(1))),
                                  root, spread << (NL.NORM_BITS + 1))
        bits = NL.NORM_BITS + NL.GAIN_BITS
        y = op.add(op.add(op.multiply(norm, relax.const(_arr(attr, "gain"), "int64")),
                          relax.const(_arr(attr, "offset"), "int64")), _int64(1 << (bits - 1)))
        return self.finish(op.right_shift(y, _int64(bits)), out)


class ResizeHandler(KindHandler):
    """nonlinear.resize: integer taps gathered along each resized axis, one requantization.
    The taps follow from the input's shape, so it must be static."""

    def supports(self, op, input_names, shapes):
        shape = shapes.get(input_names[0])
        return bool(shape) and all(isinstance(d, int) and d > 0 for d in shape)

    def attributes(self, op, input_names, shapes):
        p = op.params
        shape = shapes[input_names[0]]
        plan = NL.resize_plan(op.attrs, shape, p.roi, p.scales, p.sizes)
        attrs = {"in_shape": list(shape)}
        if plan:   # (a Resize to the same size has no taps: a pure requantization)
            attrs["resize_axes"] = [axis for axis, _, _ in plan]
        for i, (_, index, weight) in enumerate(plan):
            attrs[f"index{i}"] = _tensor_attr(index.astype(np.int64), f"index{i}")
            attrs[f"weight{i}"] = _tensor_attr(weight.astype(np.int64), f"weight{i}")
        return attrs

    def emit(self, bb, inputs, attr, out):
        relax = _relax()
        op = relax.op
        shape = _ints(attr, "in_shape")
        axes = _ints(attr, "resize_axes") if "resize_axes" in attr else []
        # int32 (twice the lanes of int64, and no 64-bit multiplies) when no sum can leave it
        taps = [(axis, _arr(attr, f"index{i}"), _arr(attr, f"weight{i}")) for i, axis in enumerate(axes)]
        lo, hi = _input_range(bb, inputs[0])
        bound = max(abs(lo - out.zps[0]), abs(hi - out.zps[0]))
        for _, _, weight in taps:
            bound *= int(np.abs(weight).sum(axis=1).max(initial=1))
        dtype = "int32" if bound < 2 ** 31 else "int64"
        acc = _centered(inputs[0], out.zps[0], dtype)
        for axis, index, weight in taps:
            gathered = op.take(acc, relax.const(index.reshape(-1), "int64"), axis=axis)
            gathered = op.reshape(gathered, shape[:axis] + list(index.shape) + shape[axis + 1:])
            w = weight.reshape((1,) * axis + weight.shape + (1,) * (len(shape) - axis - 1))
            acc = op.sum(op.multiply(gathered, relax.const(w, dtype)), axis=[axis + 1])
            shape[axis] = index.shape[0]
        shift = _arr(attr, "shift").reshape((1,)) + NL.RESIZE_BITS * len(axes)
        return out(acc, None, _arr(attr, "mult").reshape((1,)), shift)


def _isqrt_relax(v):
    """nonlinear.isqrt: floor of the float64 square root (exact below 2^52)."""
    op = _relax().op
    return op.astype(op.floor(op.sqrt(op.astype(v, "float64"))), "int64")


# the kinds TVM lowers to integer kernels; every other kind (layout moves, max pools, float
# regions) stays QDQ-in-float, computed by the frontend's ops as the reference computes it
HANDLERS = {"conv": ConvHandler(), "conv_transpose": ConvTransposeHandler(), "gemm": GemmHandler(),
            "linear": LinearHandler(), "matmul": MatMulHandler(), "add": AddHandler(), "mul": MulHandler(),
            "concat": ConcatHandler(),
            "global_avgpool": GlobalAvgPoolHandler(), "lut": LutHandler(), "softmax": SoftmaxHandler(),
            "layernorm": LayerNormHandler(), "resize": ResizeHandler(), "scale": ScaleHandler(),
            "pad": PadHandler()}


class _EdgekitConverter:
    """The frontend's converter protocol: get_converter(opset) -> fn(bb, inputs, attr, params)."""

    @classmethod
    def get_converter(cls, opset):
        return cls.convert


class QLinearIntegerConverter(_EdgekitConverter):
    @staticmethod
    def convert(bb, inputs, attr, params):
        kind = attr["kind"].decode() if isinstance(attr["kind"], bytes) else attr["kind"]
        handler = HANDLERS.get(kind)
        if handler is None:
            raise ValueError(f"TVM integer lowering: no handler for op kind {kind!r}")
        return handler.emit(bb, inputs, attr, _Requant(attr))


class QuantizeLinearClampedConverter(_EdgekitConverter):
    """QuantizeLinear onto a 4-bit grid stored in 8 bits: quantize, then saturate to [qmin, qmax]."""

    @staticmethod
    def convert(bb, inputs, attr, params):
        relax = _relax()
        op = relax.op
        x, scale, zp = inputs[0], inputs[1], inputs[2]
        axis = int(attr.get("axis", 1))
        if hasattr(x.ty, "ndim") and x.ty.ndim <= 1 and axis == 1:
            axis = 0
        out_dtype = str(zp.ty.dtype.dtype) if hasattr(zp.ty.dtype, "dtype") else str(zp.ty.dtype)
        q = op.quantize(x, scale, zp, axis=axis, out_dtype=out_dtype)
        lo, hi = relax.const(int(attr["qmin"]), out_dtype), relax.const(int(attr["qmax"]), out_dtype)
        return op.minimum(op.maximum(q, lo), hi)
