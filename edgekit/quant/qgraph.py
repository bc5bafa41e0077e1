"""Integer view of a QDQ ONNX model: what integer hardware executes.

`parse(model_or_path) -> QGraph`. Every QuantizeLinear node closes one *region*:
the float nodes between the DequantizeLinear outputs they read and the Q's
input. A region is classified into an integer op when it matches one of the
patterns in docs/quantization.md (conv, gemm, linear, matmul, add, concat,
pools, layout); anything else is a `float` op (dequantize inputs, run the ONNX
nodes in float32, quantize). Integer ops carry everything a back-end needs:
int weights, int32 bias, input/output (scale, zero point, type), the per-channel
requantization (M, shift) from formats.quantize_multiplier and the fused
activation clamp (lo, hi) from formats.activation_bounds.

Requantization scale of conv/gemm/linear channel c:
    float64(float32(s_x) * float32(s_w[c])) / float64(s_y)
(the float32 product is exactly the int32 bias DequantizeLinear scale).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.errors import EdgekitError
from edgekit.onnx_graph.model import attrs as node_attrs
from edgekit.onnx_graph.model import load_model
from edgekit.quant import formats as F
from edgekit.quant.kinds import MOVE_KINDS, MOVE_OPS, NONLINEAR_KINDS, PARSE_ORDER, Clamp, Params, fused_activation


@dataclass
class QTensor:
    """Quantization parameters of one tensor (per-tensor activations)."""

    scale: float
    zero_point: int
    qtype: F.QType

    def to_json(self):
        return {"scale": self.scale, "zero_point": self.zero_point, "type": self.qtype.name}


@dataclass
class QOp:
    """One op of the integer view: its kind (edgekit.quant.kinds), where it reads and writes, the
    grids of its inputs and output, and its kind's parameters (`params`, a kinds.Params subclass)."""

    kind: str                       # a name in edgekit.quant.kinds.KINDS
    name: str                       # the main ONNX node's name
    inputs: list[str]               # names in the integer environment
    outputs: list[str]
    in_q: list[QTensor | None] = field(default_factory=list)   # None: a float input
    out_q: QTensor | None = None    # None: a float output (graph output of a float op)
    params: Params = field(default_factory=Params)
    attrs: dict = field(default_factory=dict)   # attributes of the main node (stride, pads, group...)
    op_type: str = ""                      # main ONNX op type
    nodes: list = field(default_factory=list)   # the region's ONNX nodes (float/layout ops)
    region_inputs: list[str] = field(default_factory=list)  # names the region's nodes read
    region_output: str = ""                # the region tensor that the Q quantizes

    def to_json(self) -> dict:
        """The op as program.json and reports show it (weight codes named by their initializer)."""
        return {"kind": self.kind, "name": self.name, "op_type": self.op_type, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "in_q": [q.to_json() if q else None for q in self.in_q],
                "out_q": self.out_q.to_json() if self.out_q else None, "params": self.params.to_json()}


@dataclass
class QGraph:
    ops: list[QOp]
    inputs: list[str]
    outputs: list[str]
    constants: dict                 # name -> (int codes, QTensor) for DQ'd constant operands
    initializers: dict              # name -> np.ndarray (float / shape constants)
    model: onnx.ModelProto

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.kind] = counts.get(op.kind, 0) + 1
        return counts


def _initializer(node, index: int, floats: dict, what: str) -> np.ndarray:
    """The constant feeding input `index` of a Q/DQ node; edgekit reads quantization
    parameters only from initializers, so a computed scale is a user-facing error."""
    name = node.input[index]
    if name not in floats:
        raise EdgekitError(f"node {node.name} ({node.op_type}): {what} {name} is not an initializer")
    return np.asarray(floats[name])


def _checked_scale(node, floats: dict) -> np.ndarray:
    """A zero, negative or non-finite scale makes every integer kernel divide by
    it (requantization multipliers become inf/NaN), so refuse it here, by name."""
    scale = _initializer(node, 1, floats, "scale")
    if scale.dtype.kind != "f":
        raise EdgekitError(f"node {node.name} ({node.op_type}): scale {node.input[1]} has type {scale.dtype}, "
                           "expected a float type")
    if scale.size == 0:
        raise EdgekitError(f"node {node.name} ({node.op_type}): scale {node.input[1]} is empty")
    bad = ~np.isfinite(scale) | (scale <= 0) | (scale.astype(np.float32) <= 0)
    if bad.any():
        value = scale.reshape(-1)[np.argmax(bad.reshape(-1))]
        raise EdgekitError(f"node {node.name} ({node.op_type}): scale {node.input[1]} holds {float(value):g}; "
                           "scales must be finite and positive")
    return scale


def _check_zero_point(node, zp: np.ndarray, qt: F.QType) -> None:
    outside = (zp < qt.qmin) | (zp > qt.qmax)
    if outside.any():
        raise EdgekitError(f"node {node.name} ({node.op_type}): "
                           f"zero point {int(zp.reshape(-1)[np.argmax(outside.reshape(-1))])} "
                           f"is outside the {qt.name} range [{qt.qmin}, {qt.qmax}]")


def _checked_axis(node, codes: np.ndarray, scale: np.ndarray) -> None:
    """Per-channel scales must match the quantized axis, or kernels index past them."""
    axis = int(node_attrs(node).get("axis", 1))
    if scale.size == 1:
        return
    if scale.ndim != 1:
        raise EdgekitError(f"node {node.name} (DequantizeLinear): per-channel scale {node.input[1]} has shape "
                           f"{list(scale.shape)}; blocked quantization is not supported")
    if not -codes.ndim <= axis < codes.ndim:
        raise EdgekitError(f"node {node.name} (DequantizeLinear): axis {axis} is out of range for "
                           f"{node.input[0]} of shape {list(codes.shape)}")
    axis %= codes.ndim
    if codes.shape[axis] != scale.size:
        raise EdgekitError(f"node {node.name} (DequantizeLinear): {scale.size} scales in {node.input[1]} for "
                           f"{codes.shape[axis]} channels of {node.input[0]} (shape {list(codes.shape)}, axis {axis})")


def check_qdq_parameters(model) -> None:
    """Refuse, naming node and initializer, every quantization parameter no integer kernel
    (nor TVM's float QDQ) can use: scales that are not finite positive constants, zero
    points off their grid or of another shape than the scale, per-channel scales that do
    not match the quantized axis. Run before any work on a QDQ model."""
    protos = {i.name: i for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    wanted = {name for n in qdq for name in n.input[:3] if name in protos}
    arrays = {name: numpy_helper.to_array(protos[name]) for name in wanted}
    for node in qdq:
        scale = _checked_scale(node, arrays)
        zp = _initializer(node, 2, arrays, "zero point") if len(node.input) > 2 and node.input[2] else None
        if zp is not None and zp.shape != scale.shape:
            raise EdgekitError(f"node {node.name} ({node.op_type}): zero point {node.input[2]} has shape "
                               f"{list(zp.shape)}, its scale {node.input[1]} {list(scale.shape)}")
        weight = protos.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if weight is None:
            continue
        _checked_axis(node, arrays[node.input[0]], scale)
        if zp is not None and weight.data_type != onnx.TensorProto.INT32:
            _check_zero_point(node, zp.astype(np.int64), F.qtype_of_onnx(weight.data_type))


def parse(model_or_path, integer_nonlinear: bool = True) -> QGraph:
    """QDQ ONNX -> QGraph. Phases: validate every Q/DQ parameter, classify the DequantizeLinear
    nodes (constants / activations), turn value-moving ops into integer moves, close each
    QuantizeLinear's region into one integer op, then the graph outputs.

    `integer_nonlinear=False` leaves softmax, layernorm and element-wise regions as float ops
    (the float definition the integer ones are measured against)."""
    model = load_model(model_or_path)
    check_qdq_parameters(model)
    parser = _Parser(model, skip_kinds=frozenset() if integer_nonlinear else NONLINEAR_KINDS)
    parser.classify_dequantizers()
    ops = parser.value_moves() + parser.closed_regions() + parser.graph_outputs()
    ops.sort(key=lambda t: t[0])
    init_arrays = {n: v for n, v in parser.floats.items() if n not in parser.ints}
    return QGraph([op for _, op in ops], parser.graph_inputs, parser.outputs, parser.constants, init_arrays,
                  model)


class _Parser:
    """The state `parse` builds up phase by phase over one QDQ graph."""

    def __init__(self, model, skip_kinds: frozenset = frozenset()):
        graph = model.graph
        self.nodes = list(graph.node)
        self.protos = {i.name: i for i in graph.initializer}
        self.floats, self.ints = {}, {}
        for name, proto in self.protos.items():
            arr = numpy_helper.to_array(proto)
            if proto.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.INT8,
                                   onnx.TensorProto.UINT8):
                self.ints[name] = (arr.astype(np.int64), proto.data_type)
            self.floats[name] = arr
        self.producer = {o: (i, n) for i, n in enumerate(self.nodes) for o in n.output if o}
        self.graph_inputs = [i.name for i in graph.input if i.name not in self.protos]
        self.outputs = [o.name for o in graph.output]
        self.dq_const: dict[str, dict] = {}   # DQ output -> {codes, scale, zp, axis, type, init}
        self.dq_act: dict[str, tuple[str, QTensor]] = {}  # DQ output -> (quantized tensor name, params)
        self.constants: dict = {}
        self.skip_kinds = skip_kinds   # kinds the regions are not matched against
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)

    def qtensor(self, node) -> QTensor:
        """The (per-tensor) grid of a Q or DQ node of an activation."""
        scale = self.floats[node.input[1]]
        if scale.size != 1:
            raise EdgekitError(f"node {node.name}: per-axis activation quantization is not supported")
        if len(node.input) > 2 and node.input[2]:
            zp_name = node.input[2]
            zp, dt = self.ints[zp_name] if zp_name in self.ints else \
                (self.floats[zp_name].astype(np.int64), self.protos[zp_name].data_type)
            qt = F.qtype_of_onnx(dt)
            zp = int(np.asarray(zp).reshape(-1)[0])
        else:
            qt, zp = F.UINT8, 0
            if node.op_type == "QuantizeLinear":
                od = node_attrs(node).get("output_dtype", 0)
                qt = F.qtype_of_onnx(od) if od else F.UINT8
        return QTensor(float(np.float32(scale.reshape(-1)[0])), zp, qt)

    def classify_dequantizers(self) -> None:
        """Each DequantizeLinear reads a constant (weight / bias / operand) or an activation."""
        for node in self.nodes:
            if node.op_type != "DequantizeLinear":
                continue
            src = node.input[0]
            if src not in self.protos:
                self.dq_act[node.output[0]] = (src, self.qtensor(node))
                continue
            codes = numpy_helper.to_array(self.protos[src]).astype(np.int64)
            scale = self.floats[node.input[1]].astype(np.float32)
            axis = int(node_attrs(node).get("axis", 1)) % max(codes.ndim, 1)
            zp = self.floats[node.input[2]].astype(np.int64) if len(node.input) > 2 and node.input[2] else None
            data_type = self.protos[src].data_type
            self.dq_const[node.output[0]] = {"codes": codes, "scale": scale, "zp": zp, "init": src,
                                             "axis": axis, "type": data_type}
            if scale.size == 1 and data_type != onnx.TensorProto.INT32:
                self.constants[src] = (codes, QTensor(float(scale.reshape(-1)[0]),
                                                      int(zp.reshape(-1)[0]) if zp is not None else 0,
                                                      F.qtype_of_onnx(data_type)))

    def value_moves(self) -> list[tuple[int, QOp]]:
        """Value-moving ops fed by a dequantized activation keep its grid: they become integer
        'layout' / 'maxpool' ops producing a virtual quantized tensor."""
        moves = []
        for idx, node in enumerate(self.nodes):
            if node.op_type not in MOVE_OPS or not node.input or node.input[0] not in self.dq_act:
                continue
            src_q, qt = self.dq_act[node.input[0]]
            kind = next(k.name for k in MOVE_KINDS if node.op_type in k.onnx_ops)
            for out in node.output:
                if not out:
                    continue
                vname = out + "__moved"
                op = QOp(kind, node.name, [src_q] + [i for i in node.input[1:] if i], [vname], [qt], qt,
                         attrs=node_attrs(node), op_type=node.op_type, nodes=[node],
                         region_inputs=[node.input[0]] + [i for i in node.input[1:] if i], region_output=out)
                op.in_q += [None] * (len(op.inputs) - 1)
                moves.append((idx, op))
                self.dq_act[out] = (vname, qt)
        return moves

    def region_of(self, tensor: str):
        """Float nodes computing `tensor` from DQ outputs, graph inputs and initializers."""
        nodes, inputs, seen = {}, [], set()
        stack = [tensor]
        while stack:
            t = stack.pop()
            if t in seen or not t:
                continue
            seen.add(t)
            if t in self.dq_act or t in self.dq_const or t in self.graph_inputs:
                inputs.append(t)
                continue
            if t in self.protos:
                continue
            if t not in self.producer:
                raise EdgekitError(f"tensor {t} has no producer")
            idx, node = self.producer[t]
            if node.op_type == "QuantizeLinear":
                raise EdgekitError(f"node {node.name}: a QuantizeLinear output read without DequantizeLinear")
            nodes[idx] = node
            stack.extend(node.input)
        return [nodes[i] for i in sorted(nodes)], inputs

    def closed_regions(self) -> list[tuple[int, QOp]]:
        """Every QuantizeLinear closes a region: a graph input's quantizer, or one integer op."""
        ops = []
        for idx, node in enumerate(self.nodes):
            if node.op_type != "QuantizeLinear":
                continue
            out_q = self.qtensor(node)
            src = node.input[0]
            if src in self.graph_inputs:
                ops.append((idx, QOp("quantize", node.name, [src], [node.output[0]], [None], out_q)))
                continue
            region, inputs = self.region_of(src)
            try:
                op = _classify(region, inputs, src, node.output[0], out_q, self.dq_act, self.dq_const, self.floats,
                               self.opset, self.skip_kinds)
            except F.ScaleRangeError as exc:
                raise EdgekitError(f"node {node.name} ({node.op_type}): {exc}: its scale {node.input[1]} and the "
                                   "scales of its inputs give a ratio the integer kernels cannot represent") from None
            ops.append((idx, op))
        return ops

    def graph_outputs(self) -> list[tuple[int, QOp]]:
        """A dequantized output, or a float region computing it."""
        ops = []
        for name in self.outputs:
            if name in self.dq_act:
                qname, qt = self.dq_act[name]
                ops.append((self.producer[name][0], QOp("dequantize", name, [qname], [name], [qt], None)))
            elif name in self.producer and self.producer[name][1].op_type != "QuantizeLinear":
                region, inputs = self.region_of(name)
                ops.append((self.producer[name][0], _float_op(region, inputs, name, name, None, self.dq_act)))
        return ops


def _float_op(region, inputs, region_out, out_name, out_q, dq_act, kind="float") -> QOp:
    names, in_q = [], []
    for t in inputs:
        if t in dq_act:
            names.append(dq_act[t][0])
            in_q.append(dq_act[t][1])
        else:
            names.append(t)
            in_q.append(None)
    main = region[-1] if region else None
    return QOp(kind, main.name if main is not None else out_name, names, [out_name], in_q, out_q,
               nodes=region, region_inputs=list(inputs), region_output=region_out,
               op_type=main.op_type if main is not None else "Identity",
               attrs=node_attrs(main) if main is not None else {})


def fused_bounds(act, clip, out_q: QTensor) -> tuple[int, int]:
    if act is None:
        return out_q.qtype.qmin, out_q.qtype.qmax
    if act == "relu":
        return F.activation_bounds("relu", out_q.scale, out_q.zero_point, out_q.qtype)
    lo, hi = clip
    qt = out_q.qtype
    lo_q = qt.qmin if lo == -np.inf else max(qt.qmin, out_q.zero_point + int(np.rint(lo / out_q.scale)))
    hi_q = qt.qmax if hi == np.inf else min(qt.qmax, out_q.zero_point + int(np.rint(hi / out_q.scale)))
    if lo != -np.inf and hi != np.inf:
        return F.activation_bounds("clip", out_q.scale, out_q.zero_point, qt, clip=(lo, hi))
    return lo_q, hi_q


@dataclass
class Region:
    """A QuantizeLinear's region as the kinds' `match` sees it (see edgekit.quant.kinds)."""

    nodes: list                 # the float nodes, graph order
    inputs: list[str]           # DQ outputs, graph inputs and initializers they read
    output: str                 # the tensor the Q quantizes
    out_name: str               # the Q's output
    out_q: QTensor
    dq_act: dict
    dq_const: dict
    act: str | None = None      # a fused Relu/Clip at the end of the region
    clip: tuple | None = None
    core: list = field(default_factory=list)  # the nodes before that activation
    floats: dict = field(default_factory=dict)   # the model's initializers (numpy)
    opset: int = 13             # the default domain's opset (attribute defaults change with it)

    @property
    def produced(self) -> set:
        return {o for n in self.nodes for o in n.output}

    def constant(self, name: str):
        """The value of a constant operand: an initializer, a dequantized constant or a Constant
        node's value; None for an activation."""
        if name in self.dq_const:
            c = self.dq_const[name]
            if c["scale"].size != 1:
                return None
            zp = 0 if c["zp"] is None else int(np.asarray(c["zp"]).reshape(-1)[0])
            return F.dequantize(c["codes"], float(c["scale"].reshape(-1)[0]), zp)
        if name in self.floats:
            return np.asarray(self.floats[name])
        for node in self.nodes:
            if node.op_type == "Constant" and node.output[0] == name:
                return self.node_constant(node)
        return None

    @staticmethod
    def node_constant(node):
        a = node_attrs(node)
        for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
            if key in a:
                v = a[key]
                return numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else np.asarray(v)
        return None

    @property
    def main(self):
        return self.core[0]

    @property
    def attrs(self) -> dict:
        return node_attrs(self.main)

    @property
    def single(self) -> bool:
        return len(self.core) == 1

    @property
    def act_inputs(self) -> list[str]:
        return [t for t in self.main.input if t in self.dq_act]

    def int_op(self, kind, acts: list[str], **params) -> QOp:
        """The QOp of integer kind `kind` (a kinds.Kind) reading the quantized activations `acts`;
        `params` are its kind's parameters, the output clamp added here."""
        main = self.main
        if issubclass(kind.params_type, Clamp):
            lo, hi = fused_bounds(self.act, self.clip, self.out_q)
            params.update(lo=lo, hi=hi, act=self.act)
        return QOp(kind.name, main.name, [self.dq_act[t][0] for t in acts], [self.out_name],
                   [self.dq_act[t][1] for t in acts], self.out_q, kind.params_type(**params), attrs=self.attrs,
                   op_type=main.op_type, nodes=self.nodes, region_inputs=list(self.inputs),
                   region_output=self.output)

    def fallback(self, kind: str = "float") -> QOp:
        return _float_op(self.nodes, self.inputs, self.output, self.out_name, self.out_q, self.dq_act, kind)


def _classify(region, inputs, region_out, out_name, out_q, dq_act, dq_const, floats, opset: int = 13,
              skip_kinds: frozenset = frozenset()) -> QOp:
    """The QOp of the first kind (kinds.PARSE_ORDER) matching the region; a float op otherwise."""
    r = Region(region, inputs, region_out, out_name, out_q, dq_act, dq_const, core=region, floats=floats,
               opset=opset)
    if not region:
        return r.fallback()
    if len(region) >= 2:
        fused = fused_activation(region[-1], floats)
        if fused is not None and region[-1].input[0] == region[-2].output[0]:
            r.act, r.clip, r.core = fused[0], (fused[1] if fused[0] == "clip" else None), region[:-1]
    for kind in PARSE_ORDER:
        if kind.name not in skip_kinds and kind.accepts(r):
            op = kind.match(r)
            if op is not None:
                return op
    return r.fallback()
