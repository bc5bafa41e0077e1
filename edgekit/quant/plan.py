"""Which tensors get quantized, how, and the per-layer integer weights.

A QuantPlan is built from the prepared float model and one calibration run.
Rules (documented in docs/quantization.md; the op sets and the Gemm and Relu/Clip rules are the
integer-op kinds' own, from edgekit.quant.kinds, which the parser reads too):
- layers: Conv, ConvTranspose, Gemm (transA=0, alpha=beta=1) and MatMul with a
  constant 2-D weight (MatMul + Add(constant 1-D bias) counts as one layer);
  weights are quantized per output channel, symmetric.
- integer ops: layers, activation x activation MatMul, Add of two activations,
  Concat, AveragePool, GlobalAveragePool and the value-moving ops in INHERIT.
  Every float activation input of an integer op, and every integer op's
  output, is a quantization point (one QuantizeLinear/DequantizeLinear pair).
- a layer or Add whose only consumer is Relu/Clip with constant bounds has
  that activation fused: the quantization point is the activation's output.
- INHERIT ops (reshape, transpose, max-pool...) reuse their input's
  quantization parameters: integer hardware moves the codes unchanged.
- everything else runs in float between DequantizeLinear and QuantizeLinear:
  any op the torch op table runs (Softmax, Erf, Hardmax, Trilu, ...) is
  accepted and stays a float op reading dequantized tensors; `float_nodes`
  lists those nodes (the report's float_ops / float_nodes).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.onnx_graph.model import attrs, consumers, initializers
from edgekit.quant import formats as F
from edgekit.quant.kinds import FUSABLE_ACTS, REQUANT_OPS, fused_activation, gemm_on_grid
from edgekit.quant.kinds import MOVE_OPS as INHERIT  # value moves: their outputs inherit the input's grid


@dataclass
class QParams:
    """Per-tensor asymmetric activation quantizer."""

    scale: float
    zero_point: int
    qtype: F.QType

    @classmethod
    def from_range(cls, lo: float, hi: float, qtype: F.QType) -> "QParams":
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)  # real zero must be exact (padding)
        span = hi - lo
        if span <= 0 or not np.isfinite(span):
            span = 1e-8
        scale = float(np.float32(span / (qtype.qmax - qtype.qmin)))
        zp = int(np.clip(np.rint(qtype.qmin - lo / scale), qtype.qmin, qtype.qmax))
        return cls(scale, zp, qtype)

    def to_json(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point, "type": self.qtype.name}


@dataclass
class Layer:
    """A node with a constant weight that becomes an integer GEMM/conv."""

    name: str
    op_type: str
    input: str            # activation input tensor
    weight: str           # initializer name
    bias: str | None
    out_axis: int         # output-channel axis of the weight array
    in_axis: int          # input-channel axis of the weight array
    output: str           # pre-activation output (after the bias Add if any)
    block_output: str     # quantization point (after a fused Relu/Clip)
    act: str | None = None  # None / 'relu' / 'clip'
    clip: tuple | None = None
    bias_node: str | None = None
    weight_bits: int = 4
    attrs: dict = field(default_factory=dict)


@dataclass
class QuantPlan:
    model: onnx.ModelProto                 # float model; steps may rewrite its weights
    layers: dict[str, Layer]               # by node name, topological order
    points: list[str]                      # quantization points, topological order
    inherit: dict[str, str]                # tensor -> tensor whose params it reuses
    bits: dict[str, int]                   # activation bits per (non-inherited) point
    constants: list[str]                   # float initializers quantized as 8-bit operands
    params: dict[str, QParams] = field(default_factory=dict)
    weights_q: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> int codes
    weight_scales: dict[str, np.ndarray] = field(default_factory=dict)
    const_params: dict[str, QParams] = field(default_factory=dict)
    float_nodes: list[str] = field(default_factory=list)  # nodes left in float, graph order

    def source(self, tensor: str) -> str:
        while tensor in self.inherit:
            tensor = self.inherit[tensor]
        return tensor

    def qparams(self, tensor: str) -> QParams:
        return self.params[self.source(tensor)]

    def weight(self, layer: str) -> np.ndarray:
        return initializers_by_name(self.model)[self.layers[layer].weight]

    def set_initializer(self, name: str, value: np.ndarray) -> None:
        for init in self.model.graph.initializer:
            if init.name == name:
                init.CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32), name))
                return
        raise KeyError(name)


def initializers_by_name(model) -> dict[str, np.ndarray]:
    return initializers(model)


def _layer_of(node, inits, cons, graph_outputs) -> Layer | None:
    a = attrs(node)
    op = node.op_type
    if op in ("Conv", "ConvTranspose"):
        if len(node.input) < 2 or node.input[1] not in inits or node.input[0] in inits:
            return None
        w = inits[node.input[1]]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and bias not in inits:
            return None
        out_axis, in_axis = (0, 1) if op == "Conv" else (1, 0)
        group = int(a.get("group", 1))
        if op == "ConvTranspose" and group != 1:
            return None
        a["_wshape"] = list(w.shape)
        return Layer(node.name, op, node.input[0], node.input[1], bias, out_axis, in_axis,
                     node.output[0], node.output[0], attrs=a)
    if op == "Gemm":
        if not gemm_on_grid(a):
            return None
        if node.input[1] not in inits or node.input[0] in inits or inits[node.input[1]].ndim != 2:
            return None
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and (bias not in inits or inits[bias].size not in (
                1, inits[node.input[1]].shape[0 if a.get("transB", 0) else 1])):
            return None
        out_axis, in_axis = (0, 1) if a.get("transB", 0) else (1, 0)
        return Layer(node.name, op, node.input[0], node.input[1], bias, out_axis, in_axis,
                     node.output[0], node.output[0], attrs=a)
    if op == "MatMul":
        if node.input[1] not in inits or node.input[0] in inits or inits[node.input[1]].ndim != 2:
            return None
        n_out = inits[node.input[1]].shape[1]
        layer = Layer(node.name, op, node.input[0], node.input[1], None, 1, 0, node.output[0],
                      node.output[0], attrs=a)
        users = cons.get(node.output[0], [])
        if len(users) == 1 and users[0].op_type == "Add" and node.output[0] not in graph_outputs:
            add = users[0]
            other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
            if other in inits and inits[other].shape == (n_out,):
                layer.bias, layer.bias_node, layer.output = other, add.name, add.output[0]
                layer.block_output = add.output[0]
        return layer
    return None


def _is_float(name: str, env: dict) -> bool:
    v = env.get(name)
    return v is not None and hasattr(v, "is_floating_point") and v.is_floating_point()


# keep_8bit tokens besides fnmatch patterns: the network's first and last layers, and its
# depthwise convolutions (one input channel per output channel: a handful of weights each, and
# at 4 bits these are the layers MobileNet-style networks lose most on)
FIRST, LAST, DEPTHWISE = "@first", "@last", "@depthwise"
TOKENS = (FIRST, LAST, DEPTHWISE)


def is_depthwise_conv(op_type: str, group: int, weight_shape) -> bool:
    """A convolution with one input channel per filter and one group per output channel."""
    return (op_type == "Conv" and len(weight_shape) >= 3 and weight_shape[1] == 1
            and int(group) == weight_shape[0] > 1)


def edge_layers(model: onnx.ModelProto, layer_names: set) -> tuple[set, set]:
    """(first, last): layers no other layer feeds / layers that feed no other layer.

    "Feeds" is transitive through non-layer ops, so on a residual transformer only the
    first block's projections are first (later blocks read the residual stream after
    layers wrote to it) and only the output head is last.
    """
    def unreached(nodes, reads, writes) -> set:
        # layers none of whose reads were written, directly or through non-layer ops, by a layer
        reached, found = set(), set()
        for node in nodes:
            hit = any(t in reached for t in reads(node))
            if node.name in layer_names and not hit:
                found.add(node.name)
            if node.name in layer_names or hit:
                reached.update(writes(node))
        return found

    nodes = list(model.graph.node)
    first = unreached(nodes, lambda n: n.input, lambda n: n.output)
    last = unreached(reversed(nodes), lambda n: n.output, lambda n: n.input)
    return first, last


def build_plan(model: onnx.ModelProto, env: dict, act_bits: int = 4, weight_bits: int = 4,
               io_bits: int = 8, keep_8bit: tuple = ()) -> QuantPlan:
    """Decide layers and quantization points. `env`: one float run, tensor name -> torch tensor."""
    inits = initializers(model)
    cons = consumers(model)
    graph_outputs = {o.name for o in model.graph.output}
    graph_inputs = [i.name for i in model.graph.input if i.name not in inits]
    layers: dict[str, Layer] = {}
    absorbed: set[str] = set()  # bias Add nodes and fused activations
    integer_nodes = []
    for node in model.graph.node:
        if node.name in absorbed:
            continue
        layer = _layer_of(node, inits, cons, graph_outputs)
        is_int = layer is not None
        if node.op_type == "MatMul" and layer is None:
            is_int = all(i not in inits and _is_float(i, env) for i in node.input)
        if node.op_type == "Add" and layer is None:
            is_int = all(i not in inits and _is_float(i, env) for i in node.input)
        if node.op_type in REQUANT_OPS or node.op_type in INHERIT:
            is_int = (node.input[0] not in inits and _is_float(node.input[0], env)
                      and all(_is_float(o, env) for o in node.output if o))
        if not is_int:
            continue
        out = layer.output if layer else node.output[0]
        if layer and layer.bias_node:
            absorbed.add(layer.bias_node)
        act = None
        if node.op_type not in INHERIT and node.op_type not in REQUANT_OPS:
            users = cons.get(out, [])
            if len(users) == 1 and users[0].op_type in FUSABLE_ACTS and out not in graph_outputs:
                fused = fused_activation(users[0], inits)
                if fused is not None:
                    act = (users[0], fused[1])
                    absorbed.add(users[0].name)
        if layer:
            if act:
                layer.act = "relu" if act[0].op_type == "Relu" else "clip"
                layer.clip = act[1]
                layer.block_output = act[0].output[0]
            layer.weight_bits = 8 if any(fnmatch.fnmatch(layer.name, p) for p in keep_8bit) else weight_bits
            layers[layer.name] = layer
        integer_nodes.append((node, layer, act))
    unmatched = [p for p in keep_8bit if p not in TOKENS
                 and not any(fnmatch.fnmatch(name, p) for name in layers)]
    if unmatched:
        from edgekit.errors import warn

        some = ", ".join(sorted(layers)[:4]) + (", ..." if len(layers) > 4 else "")
        warn(f"--keep-8bit: no layer matches {', '.join(map(repr, unmatched))} (layers are named like {some})")
    if FIRST in keep_8bit or LAST in keep_8bit:
        first, last = edge_layers(model, set(layers))
        for name in (first if FIRST in keep_8bit else set()) | (last if LAST in keep_8bit else set()):
            layers[name].weight_bits = 8
    if DEPTHWISE in keep_8bit:
        for layer in layers.values():
            if is_depthwise_conv(layer.op_type, layer.attrs.get("group", 1), inits[layer.weight].shape):
                layer.weight_bits = 8

    points: list[str] = []
    inherit: dict[str, str] = {}
    bits: dict[str, int] = {}
    constants: list[str] = []

    def add_point(name, nbits):
        if name not in points:
            points.append(name)
        if name not in inherit:
            bits[name] = max(bits.get(name, 0), nbits)

    for node, layer, act in integer_nodes:
        wide = 8 if (layer and layer.weight_bits == 8) else act_bits
        if layer:
            data_inputs = [layer.input]
        elif node.op_type in INHERIT:
            data_inputs = [node.input[0]]
        else:
            data_inputs = [i for i in node.input if i]
        for name in data_inputs:
            if name in inits:
                if inits[name].dtype.kind == "f" and name not in constants:
                    constants.append(name)
                continue
            add_point(name, io_bits if name in graph_inputs else wide)
        outs = [act[0].output[0]] if act else ([layer.output] if layer else [o for o in node.output if o])
        for out in outs:
            if node.op_type in INHERIT:
                inherit[out] = node.input[0]
                add_point(out, 0)
            else:
                add_point(out, io_bits if out in graph_outputs else wide)
    # Topological order of points: graph inputs first, then by producing node.
    order = {name: -1 for name in graph_inputs}
    for i, node in enumerate(model.graph.node):
        for o in node.output:
            order[o] = i
    points.sort(key=lambda n: order.get(n, -1))
    on_grid = {node.name for node, _, _ in integer_nodes} | absorbed
    float_nodes = [node.name for node in model.graph.node if node.name not in on_grid]
    return QuantPlan(model, layers, points, inherit, bits, constants, float_nodes=float_nodes)
