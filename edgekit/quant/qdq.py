"""Write a QuantPlan as a standard QDQ ONNX model (opset 21, packed int4 weights).

Patterns emitted (see docs/quantization.md for the full contract):
- weight:  W_q (INT4/INT8 initializer, packed) --DequantizeLinear(axis=out_axis, W_scale[C])--> W
- bias:    B_q (INT32 initializer) --DequantizeLinear(axis=0, B_scale[C] = float32(s_x)*float32(s_w))--> B
- value-moving ops (Reshape, Transpose, MaxPool, Gather, Slice...) between a
  DequantizeLinear and their consumers: no Q/DQ of their own (same grid)
- activation point t: producer -> t__f --QuantizeLinear(s, zp)--> t__q --DequantizeLinear(s, zp)--> t
  (graph inputs: t --Q--> t__q --DQ--> t__dq, consumers rewired to t__dq)
- a float operand constant C: C__q (UINT8) --DequantizeLinear--> C
Original node names and tensor names are kept, so the QDQ graph is the float
graph plus Q/DQ nodes.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.onnx_graph.model import QDQ_OPSET, consumers, producers
from edgekit.quant import formats as F
from edgekit.quant import weights as W
from edgekit.quant.kinds import bias_scale, fused_activation
from edgekit.quant.plan import QParams, QuantPlan


def int_tensor(name: str, values: np.ndarray, qtype: F.QType) -> onnx.TensorProto:
    values = np.asarray(values, np.int64)
    if qtype.bits == 4:
        return helper.make_tensor(name, qtype.onnx_type, list(values.shape),
                                  F.pack_int4(values).tobytes(), raw=True)
    dtype = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16}[qtype.name]
    return numpy_helper.from_array(values.astype(dtype), name)


def zp_tensor(name: str, qp: QParams) -> onnx.TensorProto:
    return int_tensor(name, np.array(qp.zero_point), qp.qtype)


def quantize_bias(b: np.ndarray, s_x: float, s_w: np.ndarray) -> np.ndarray:
    scale = bias_scale(s_x, s_w)
    q = np.rint(np.asarray(b, np.float32).reshape(-1) / scale)
    return np.clip(q, -(2 ** 31), 2 ** 31 - 1).astype(np.int64)


def layer_bias(plan: QuantPlan, layer, inits) -> np.ndarray | None:
    if layer.bias is None:
        return None
    b = inits[layer.bias].reshape(-1)
    n = plan.weights_q[layer.name].shape[layer.out_axis]
    return np.broadcast_to(b, (n,)).astype(np.float32)


def _act_redundant(clip, qp: QParams) -> bool:
    """True when Q(clip(x)) == Q(x) for every x: the clip's codes lie outside the Q's range."""
    lo, hi = clip
    q = qp.qtype
    lo_ok = lo == -np.inf or qp.zero_point + np.rint(np.float32(lo) / np.float32(qp.scale)) <= q.qmin
    hi_ok = hi == np.inf or qp.zero_point + np.rint(np.float32(hi) / np.float32(qp.scale)) >= q.qmax
    return bool(lo_ok and hi_ok)


def to_qdq(plan: QuantPlan) -> onnx.ModelProto:
    """The plan as a standard QDQ ONNX model. Phases: dequantized constants (int4/int8 weights,
    int32 biases, quantized operands) -> fused Relu/Clip the output grid already enforces dropped ->
    a Quantize/Dequantize pair at every quantization point -> initializers and opset tidied."""
    model = onnx.ModelProto()
    model.CopyFrom(plan.model)
    graph = model.graph
    out = _QDQWriter()
    out.dequantized_constants(plan, {i.name: numpy_helper.to_array(i) for i in graph.initializer})
    _drop_redundant_activations(graph, plan)
    input_nodes, body = out.activation_pairs(graph, plan)
    used = {name for node in out.head_nodes + input_nodes + body for name in node.input}
    kept = [i for i in graph.initializer if i.name not in out.drop and i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + out.new_inits)
    del graph.node[:]
    graph.node.extend(out.head_nodes + input_nodes + body)
    del graph.value_info[:]
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = max(imp.version, QDQ_OPSET)
    model.ir_version = max(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model


class _QDQWriter:
    """What `to_qdq` adds: new initializers, the DequantizeLinear nodes of constants (head of the
    graph), and the float initializers they replace."""

    def __init__(self):
        self.new_inits: list[onnx.TensorProto] = []
        self.head_nodes: list[onnx.NodeProto] = []
        self.drop: set[str] = set()

    def dequantized_constants(self, plan: QuantPlan, inits: dict) -> None:
        for layer in plan.layers.values():
            codes, scales = plan.weights_q[layer.name], plan.weight_scales[layer.name]
            wq = layer.weight + "__q"
            self.new_inits += [int_tensor(wq, codes, W.weight_qtype(layer.weight_bits)),
                               numpy_helper.from_array(scales.astype(np.float32), layer.weight + "__scale")]
            self.head_nodes.append(helper.make_node("DequantizeLinear", [wq, layer.weight + "__scale"],
                                                    [layer.weight], name=layer.weight + "__dq", axis=layer.out_axis))
            self.drop.add(layer.weight)
            b = layer_bias(plan, layer, inits)
            if b is not None:
                s_x = plan.qparams(layer.input).scale
                bq = layer.bias + "__q"
                self.new_inits += [numpy_helper.from_array(quantize_bias(b, s_x, scales).astype(np.int32), bq),
                                   numpy_helper.from_array(bias_scale(s_x, scales), layer.bias + "__scale")]
                self.head_nodes.append(helper.make_node("DequantizeLinear", [bq, layer.bias + "__scale"],
                                                        [layer.bias], name=layer.bias + "__dq", axis=0))
                self.drop.add(layer.bias)
        for name in plan.constants:
            qp = plan.const_params[name]
            value = F.quantize(inits[name], qp.scale, qp.zero_point, qp.qtype)
            self.new_inits += [int_tensor(name + "__q", value, qp.qtype),
                               numpy_helper.from_array(np.array(qp.scale, np.float32), name + "__scale"),
                               zp_tensor(name + "__zp", qp)]
            self.head_nodes.append(helper.make_node(
                "DequantizeLinear", [name + "__q", name + "__scale", name + "__zp"], [name], name=name + "__dq"))
            self.drop.add(name)

    def qdq_nodes(self, src: str, dst: str, base: str, qp: QParams) -> list[onnx.NodeProto]:
        self.new_inits.extend([numpy_helper.from_array(np.array(qp.scale, np.float32), base + "__scale"),
                               zp_tensor(base + "__zp", qp)])
        return [helper.make_node("QuantizeLinear", [src, base + "__scale", base + "__zp"], [base + "__q"],
                                 name=base + "__quantize"),
                helper.make_node("DequantizeLinear", [base + "__q", base + "__scale", base + "__zp"], [dst],
                                 name=base + "__dequantize")]

    def activation_pairs(self, graph, plan: QuantPlan) -> tuple[list, list]:
        """A Q/DQ pair after every quantization point: (nodes for graph inputs, the graph body).

        Value-moving ops (reshape, transpose, max-pool...) get no Q/DQ of their own: they run
        in float on the DequantizeLinear output, whose grid they keep. (onnxruntime would
        otherwise drop the pair and run them on uint4, which its kernels reject.) The integer
        view treats them as code moves."""
        points = {p for p in plan.points if p not in plan.inherit}
        graph_inputs = {i.name for i in graph.input}
        input_nodes = []
        for name in plan.points:
            if name in graph_inputs:
                input_nodes += self.qdq_nodes(name, name + "__dq", name, plan.qparams(name))
        rewired_inputs = {name: name + "__dq" for name in plan.points if name in graph_inputs}
        body = []
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in rewired_inputs:
                    node.input[i] = rewired_inputs[name]
            after = []
            for i, name in enumerate(node.output):
                if name in points:
                    node.output[i] = name + "__f"
                    after += self.qdq_nodes(name + "__f", name, name, plan.qparams(name))
            body.append(node)
            body += after
        for o in graph.output:
            if o.name in rewired_inputs:  # an input passed straight through
                o.name = rewired_inputs[o.name]
        return input_nodes, body


def _drop_redundant_activations(graph, plan: QuantPlan) -> None:
    """A fused Relu/Clip whose bounds the output quantizer's own clamp already enforces is
    dropped (what onnxruntime's ClipQuantFusion does; that pass also crashes on uint4 zero
    points, so the Relu/Clip -> Q(uint4) pattern must not reach it). The block output is then
    produced by the layer itself."""
    renamed = {}
    inits_now = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = producers(graph)
    point_set = set(plan.points)
    readers = consumers(graph)
    graph_outs = {o.name for o in graph.output}
    for name in plan.points:
        node = producer.get(name)
        if node is None or node.op_type not in ("Relu", "Clip") or name in plan.inherit:
            continue
        fused = fused_activation(node, inits_now)
        bounds = fused[1] if fused is not None else None
        if bounds is not None and _act_redundant(bounds, plan.qparams(name)) and node.input[0] not in point_set \
                and len(readers.get(node.input[0], ())) == 1 and node.input[0] not in graph_outs \
                and node.input[0] in producer:
            renamed[name] = node.input[0]
    act_nodes = {producer[n].name for n in renamed}
    keep_nodes = [n for n in graph.node if n.name not in act_nodes]
    for node in keep_nodes:
        for i, name in enumerate(node.output):
            for out, raw in renamed.items():
                if name == raw:
                    node.output[i] = out
    del graph.node[:]
    graph.node.extend(keep_nodes)
