"""Parameter and multiply-accumulate counts: the one counting function.

MACs are counted by running the model once under torch's FlopCounterMode
(convolutions, linear layers, matmuls, attention) and halving its FLOPs.
One deliberate difference from torch's default: a transposed convolution is
counted at its *output* resolution (out_h*out_w*k*k*cin*cout/groups), the
convention of the LitePose paper's GMAC figures.
"""
from __future__ import annotations

from math import prod


def _conv_flops(x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed, *args,
                out_shape=None, **kwargs) -> int:
    # w_shape is [cout, cin/g, k...] for conv and [cin, cout/g, k...] for transposed conv:
    # either way prod(w_shape) = cin*cout/g*k*k.
    return 2 * x_shape[0] * prod(out_shape[2:]) * prod(w_shape)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model, inputs) -> int:
    """Multiply-accumulates of one forward pass on `inputs` (a list of tensors)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    mapping = {op: _conv_flops for op in (aten.convolution, aten._convolution,
                                         aten._slow_conv2d_forward)}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.no_grad(), counter:
        model(*inputs)
    return counter.get_total_flops() // 2


def model_stats(name: str, config: str) -> dict:
    """{'name', 'config', 'params', 'macs', 'inputs': {name: shape}} for one zoo config.

    Counts the graph as exported (after `prepare_for_export`, so the deblur
    model's DFTs count as the matmuls they become). The model is built on the
    meta device: shapes only, no memory, no arithmetic — fast even for the
    full-size configs.
    """
    import torch

    from . import get

    entry = get(name)
    specs = entry.input_spec(config)
    with torch.device("meta"):
        model = entry.factory(entry.config(config)).eval()
        inputs = [torch.empty(s.shape, dtype=getattr(torch, s.dtype)) for s in specs]
    prepare = getattr(model, "prepare_for_export", None)
    if callable(prepare):
        prepare(*inputs)
    return {"name": name, "config": config, "task": entry.task, "params": count_params(model),
            "macs": count_macs(model, inputs),
            "inputs": {s.name: list(s.shape) for s in specs},
            "input_dtypes": {s.name: s.dtype for s in specs}}
