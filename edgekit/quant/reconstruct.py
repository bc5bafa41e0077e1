"""Step 3 — weight reconstruction: choose the 4-bit codes by the block's output error.

- learned rounding (AdaRound): W_soft = s * clamp(floor(W/s) + h(V), qmin, qmax),
  h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1), V optimised with Adam
  on the Fisher-weighted block-output error (inputs from the quantized upstream,
  targets from the float network) plus lam * sum(1 - |2h - 1|^beta), beta
  annealed 20 -> 2; final codes floor + (h >= 0.5).
- fast mode (GPTQ/OBQ): sequential column rounding with error feedback through
  the inverse of the damped second moment of Q(x), no iterations.
Both start from per-channel MSE-searched scales.
"""
from __future__ import annotations

import numpy as np
import torch

from edgekit.onnx_graph.model import initializers
from edgekit.quant import weights as W
from edgekit.quant.plan import Layer, QuantPlan
from edgekit.quant.sequential import as_groups, group_weight, sampled_features, supports_features, ungroup_weight
from edgekit.quant.simulate import layer_forward, weight_shape_scales

ZETA, GAMMA = 1.1, -0.1


def _h(v):
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def adaround(layer: Layer, w: np.ndarray, b: np.ndarray | None, scales: np.ndarray, xq,
             target, weight, iters: int = 200, batch: int = 4,
             lr: float = 0.03, lam: float = 0.01, seed: int = 0) -> np.ndarray:
    """Learned rounding; returns int codes in the weight's layout.

    xq, target, weight (or None): batched tensors, or lists of them, one per group of
    samples of equal shape (calibration samples that differ on dynamic axes).
    """
    xs, ts = as_groups(xq), as_groups(target)
    ws = as_groups(weight) if weight is not None else None
    qt = W.weight_qtype(layer.weight_bits)
    s = torch.from_numpy(weight_shape_scales(scales, w.shape, layer.out_axis).astype(np.float32))
    wt = torch.from_numpy(np.array(w, np.float32))
    base = torch.floor(wt / s)
    rest = (wt / s - base).clamp(0.01, 0.99)
    v = torch.log((rest - GAMMA) / (ZETA - rest)).clone().requires_grad_(True)  # h(v) == rest
    bias = torch.from_numpy(np.asarray(b, np.float32)) if b is not None else None
    opt = torch.optim.Adam([v], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    sizes = [x.shape[0] for x in xs]
    n = sum(sizes)
    if len(xs) == 1:
        ref = float((ts[0] ** 2).mean()) + 1e-12
    else:
        ref = float(sum((t.double() ** 2).sum() for t in ts) / sum(t.numel() for t in ts)) + 1e-12
    # global sample index -> (group, index in group)
    where = [(gi, j) for gi, size in enumerate(sizes) for j in range(size)]
    warm = int(0.2 * iters)
    for it in range(iters):
        idx = torch.randperm(n, generator=gen)[:batch]
        w_soft = s * torch.clamp(base + _h(v), qt.qmin, qt.qmax)
        if len(xs) == 1:
            y = layer_forward(layer, xs[0][idx], w_soft, bias)
            err = (y - ts[0][idx]) ** 2
            if ws is not None:
                err = err * ws[0][idx]
            loss = err.mean() / ref
        else:
            total, count = 0, 0
            for gi in range(len(xs)):
                sel = torch.tensor([j for g, j in (where[int(i)] for i in idx) if g == gi], dtype=torch.long)
                if len(sel) == 0:
                    continue
                y = layer_forward(layer, xs[gi][sel], w_soft, bias)
                err = (y - ts[gi][sel]) ** 2
                if ws is not None:
                    err = err * ws[gi][sel]
                total, count = total + err.sum(), count + err.numel()
            loss = total / count / ref
        if it >= warm:
            beta = 20 + (2 - 20) * (it - warm) / max(1, iters - warm)
            loss = loss + lam * (1 - (2 * _h(v) - 1).abs().pow(beta)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        codes = torch.clamp(base + (_h(v) >= 0.5).float(), qt.qmin, qt.qmax)
    return codes.numpy().astype(np.int64)


def gptq(layer: Layer, w: np.ndarray, scales: np.ndarray, xq: torch.Tensor, damp: float = 0.01,
         max_rows: int = 16384) -> np.ndarray:
    """Hessian-based sequential rounding with error feedback; returns int codes."""
    qt = W.weight_qtype(layer.weight_bits)
    wg = group_weight(layer, torch.from_numpy(np.asarray(w, np.float64)).double()).clone()  # [G, Co, K]
    sg = torch.from_numpy(scales.astype(np.float64)).reshape(wg.shape[0], wg.shape[1], 1)
    phi = sampled_features(layer, xq, max_rows).double()
    h = phi.transpose(1, 2) @ phi / phi.shape[1]
    diag = torch.diagonal(h, dim1=1, dim2=2)
    dead = diag <= 0
    h = h + torch.diag_embed(dead.double())
    wg[dead.unsqueeze(1).expand_as(wg)] = 0
    lam = damp * torch.diagonal(h, dim1=1, dim2=2).mean(dim=1)
    h = h + lam[:, None, None] * torch.eye(h.shape[1], dtype=torch.float64)
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    u = torch.linalg.cholesky(hinv, upper=True)                     # [G, K, K]
    codes = torch.zeros_like(wg)
    for i in range(wg.shape[2]):
        col = wg[:, :, i]
        q = torch.clamp(torch.round(col / sg[:, :, 0]), qt.qmin, qt.qmax)
        codes[:, :, i] = q
        err = (col - q * sg[:, :, 0]) / u[:, i, i].unsqueeze(1)
        wg[:, :, i:] -= err.unsqueeze(2) * u[:, i, i:].unsqueeze(1)
    return ungroup_weight(layer, codes, w.shape).numpy().astype(np.int64)


def reconstruct_layer(plan: QuantPlan, layer: Layer, xq, xf, w_orig, b_orig, fisher, fast: bool,
                      iters: int) -> str:
    inits = initializers(plan.model)
    w = inits[layer.weight]
    b = inits[layer.bias].reshape(-1) if layer.bias else None
    if b is not None and layer.op_type != "MatMul":
        b = np.broadcast_to(b, (w.shape[layer.out_axis],)).astype(np.float32)
    w2 = W.channel_view(w, layer.out_axis)
    scales = W.mse_scales(w2, layer.weight_bits)
    if fast and supports_features(layer, w):
        codes, how = gptq(layer, w, scales, xq), "gptq"
    elif iters > 0:
        with torch.no_grad():
            bias_o = torch.from_numpy(np.array(b_orig)) if b_orig is not None else None
            w_o = torch.from_numpy(np.array(w_orig))
            target = [layer_forward(layer, x, w_o, bias_o) for x in as_groups(xf)]
        codes = adaround(layer, w, b, scales, xq, target, fisher, iters=iters)
        how = "adaround"
    else:
        codes, how = W.from_channel_view(W.quantize_codes(w2, scales, layer.weight_bits), w.shape,
                                         layer.out_axis), "mse-rtn"
    plan.weights_q[layer.name] = codes
    plan.weight_scales[layer.name] = scales
    return how
