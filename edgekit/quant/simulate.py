"""Fake-quantized execution of a QuantPlan in torch (what the QDQ file computes)."""
from __future__ import annotations

import numpy as np
import torch

from edgekit.onnx_graph.torch_ops import to_torch
from edgekit.quant import formats as F
from edgekit.quant.kinds import bias_scale
from edgekit.quant.plan import Layer, QParams, QuantPlan
from edgekit.quant.qdq import layer_bias, quantize_bias


def fake_quant(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """QuantizeLinear then DequantizeLinear, float32, ties to even (torch.round)."""
    s = torch.tensor(qp.scale, dtype=torch.float32)
    q = torch.clamp(torch.round(x / s) + qp.zero_point, qp.qtype.qmin, qp.qtype.qmax)
    return (q - qp.zero_point) * s


def weight_shape_scales(scales: np.ndarray, shape, axis: int) -> np.ndarray:
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return scales.reshape(view)


def dequantized_weight(plan: QuantPlan, layer: Layer) -> np.ndarray:
    codes, scales = plan.weights_q[layer.name], plan.weight_scales[layer.name]
    return codes.astype(np.float32) * weight_shape_scales(scales, codes.shape, layer.out_axis).astype(np.float32)


def dequantized_bias(plan: QuantPlan, layer: Layer, inits: dict) -> np.ndarray | None:
    b = layer_bias(plan, layer, inits)
    if b is None:
        return None
    s_x = plan.qparams(layer.input).scale
    scales = plan.weight_scales[layer.name]
    shape = inits[layer.bias].shape
    return (quantize_bias(b, s_x, scales).astype(np.float32) * bias_scale(s_x, scales)).reshape(
        shape if np.prod(shape) == b.size else b.shape)


def quantized_overrides(plan: QuantPlan, layers=None) -> dict:
    """Initializer overrides: dequantized weights, biases and constant operands."""
    from edgekit.onnx_graph.model import initializers

    inits = initializers(plan.model)
    out = {}
    for layer in plan.layers.values():
        if layers is not None and layer.name not in layers:
            continue
        if layer.name not in plan.weights_q:
            continue
        out[layer.weight] = to_torch(dequantized_weight(plan, layer))
        b = dequantized_bias(plan, layer, inits)
        if b is not None:
            out[layer.bias] = to_torch(b)
    for name in plan.constants:
        qp = plan.const_params[name]
        out[name] = to_torch(F.dequantize(F.quantize(inits[name], qp.scale, qp.zero_point, qp.qtype),
                                          qp.scale, qp.zero_point))
    return out


def act_hook(plan: QuantPlan, only=None):
    """TorchGraph hook fake-quantizing the activation points: all of them, or those in `only` and
    the tensors that inherit their grids."""
    if only is None:
        points = set(plan.points)
    else:
        points = set(only) | {t for t in plan.inherit if plan.source(t) in only}

    def hook(name, value):
        if name in points:
            return fake_quant(value, plan.qparams(name))
        return value
    return hook


def layer_forward(layer: Layer, x: torch.Tensor, weight: torch.Tensor, bias, with_act: bool = True,
                  model_node=None) -> torch.Tensor:
    """The layer's own computation (main op, bias Add, fused activation) on a batch."""
    from edgekit.onnx_graph import torch_ops as T

    a = layer.attrs
    if layer.op_type == "Conv":
        y = T.conv(a, x, weight, bias)[0]
    elif layer.op_type == "ConvTranspose":
        y = T.conv_transpose(a, x, weight, bias)[0]
    elif layer.op_type == "Gemm":
        y = T.gemm(a, x, weight, bias)[0]
    else:
        y = torch.matmul(x, weight)
        if bias is not None:
            y = y + bias
    if with_act and layer.act is not None:
        lo, hi = layer.clip
        y = torch.clamp(y, min=None if lo == -float("inf") else lo, max=None if hi == float("inf") else hi)
    return y
