"""Round-to-nearest baseline: min-max activation ranges, absmax per-channel weights."""
from __future__ import annotations

import numpy as np
import torch

from edgekit.onnx_graph.model import initializers
from edgekit.onnx_graph.torch_ops import TorchGraph
from edgekit.progress import progress
from edgekit.quant import formats as F
from edgekit.quant import weights as W
from edgekit.quant.plan import QParams, QuantPlan


def act_qtype(bits: int) -> F.QType:
    return F.qtype(bits, False)


def collect_ranges(plan: QuantPlan, calib: list[dict], desc: str = "calibrating") -> dict:
    """Float min/max of every (non-inherited) quantization point over the calibration set."""
    graph = TorchGraph(plan.model)
    own = [p for p in plan.points if p not in plan.inherit]
    lo = {p: np.inf for p in own}
    hi = {p: -np.inf for p in own}
    with torch.no_grad():
        for feeds in progress(calib, desc=desc):
            env = graph.run(feeds, keep=set(own))
            for p in own:
                v = env[p]
                lo[p] = min(lo[p], float(v.min()))
                hi[p] = max(hi[p], float(v.max()))
    return {p: (lo[p], hi[p]) for p in own}


def set_params_from_ranges(plan: QuantPlan, ranges: dict) -> None:
    for p, (lo, hi) in ranges.items():
        plan.params[p] = QParams.from_range(lo, hi, act_qtype(plan.bits[p]))


def quantize_constants(plan: QuantPlan) -> None:
    inits = initializers(plan.model)
    for name in plan.constants:
        v = inits[name]
        plan.const_params[name] = QParams.from_range(float(v.min()), float(v.max()), F.UINT8)


def rtn_weights(plan: QuantPlan, layers=None, mse: bool = False) -> None:
    inits = initializers(plan.model)
    for layer in plan.layers.values():
        if layers is not None and layer.name not in layers:
            continue
        w = inits[layer.weight]
        w2 = W.channel_view(w, layer.out_axis)
        scales = W.mse_scales(w2, layer.weight_bits) if mse else W.absmax_scales(w2, layer.weight_bits)
        codes = W.quantize_codes(w2, scales, layer.weight_bits)
        plan.weights_q[layer.name] = W.from_channel_view(codes, w.shape, layer.out_axis)
        plan.weight_scales[layer.name] = scales
