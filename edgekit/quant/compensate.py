"""Step 2 — activation compensation: closed-form ridge regression of W', b' on Q(x).

min_{W',b'} sum ||W x_f + b - (W' Q(x) + b')||^2 + lam ||[W' b'] - [W b]||^2
with x_f the float network's input to the layer and Q(x) the quantized
upstream network's. Pulling towards the original weights (not towards 0) keeps
W' in range for the 4-bit weight grid.
"""
from __future__ import annotations

import numpy as np
import torch

from edgekit.onnx_graph.model import initializers
from edgekit.quant import weights as W
from edgekit.quant.plan import Layer, QuantPlan
from edgekit.quant.sequential import (
    feature_rows,
    group_weight,
    moments,
    sampled_features,
    supports_features,
    ungroup_weight,
)


def ridge_update(layer: Layer, w: np.ndarray, b: np.ndarray | None, xq: torch.Tensor, xf: torch.Tensor,
                 damp: float = 0.01, max_rows: int = 16384):
    """New (weight, bias) for one layer; bias None stays None."""
    wt = torch.from_numpy(np.array(w, np.float32)).double()
    wg = group_weight(layer, wt)                                   # [G, Co, K]
    rows = feature_rows(wg.shape[2], max_rows)
    phi_q = sampled_features(layer, xq, rows)                      # [G, R, K]
    phi_f = sampled_features(layer, xf, rows)
    h = moments(phi_q)                                             # second moment of Q(x)
    cross = moments(phi_q, phi_f)                                  # E[Q(x) x_f^T]
    if b is not None:
        # a constant 1 feature carries the bias: [phi, 1]^T [phi, 1] / R from the means
        mq, mf = phi_q.mean(1).double(), phi_f.mean(1).double()   # [G, K]
        one = torch.ones(h.shape[0], 1, 1, dtype=torch.float64)
        h = torch.cat([torch.cat([h, mq[:, :, None]], 2), torch.cat([mq[:, None, :], one], 2)], 1)
        cross = torch.cat([torch.cat([cross, mq[:, :, None]], 2), torch.cat([mf[:, None, :], one], 2)], 1)
        bg = torch.from_numpy(np.asarray(b, np.float64)).reshape(wg.shape[0], wg.shape[1], 1)
        wg = torch.cat([wg, bg], 2)
    target = cross @ wg.transpose(1, 2)                            # E[Q(x) (W x_f + b)^T]
    diag = torch.diagonal(h, dim1=1, dim2=2)
    lam = damp * diag.mean(dim=1).clamp_min(1e-12)                 # per group
    eye = torch.eye(h.shape[1], dtype=torch.float64)
    a = h + lam[:, None, None] * eye
    sol = torch.linalg.solve(a, target + lam[:, None, None] * wg.transpose(1, 2))  # [G, K(+1), Co]
    new = sol.transpose(1, 2)
    new_b = None
    if b is not None:
        new_b = new[:, :, -1].reshape(-1).numpy().astype(np.float32)
        new = new[:, :, :-1]
    new_w = ungroup_weight(layer, new, w.shape).numpy().astype(np.float32)
    return new_w, new_b


def round_and_correct(layer: Layer, w: np.ndarray, b: np.ndarray | None, xq, max_rows: int = 16384):
    """Codes (at the layer's weight bits) for the float weight w with the output-error clipping of each channel, and the
    bias that absorbs their mean output error (empirical bias correction, on Q(x)).

    The scales minimise e^T H_c e per channel (`weights.output_scales`), H_c the centered second
    moment of the layer's quantized inputs (the uncentered one without a bias to absorb the mean);
    the new bias is b + (W - W_q) E[Q(x)], so that the layer's mean output on Q(x) is unchanged by
    the rounding. Returns (codes in w's layout, scales, new bias or None).
    """
    wt = torch.from_numpy(np.array(w, np.float64))
    wg = group_weight(layer, wt)                                       # [G, Cg, K]
    g, cg, k = wg.shape
    phi = sampled_features(layer, xq, feature_rows(k, max_rows))
    h = moments(phi)
    mu = phi.mean(1).double()                                          # [G, K]
    if b is not None:
        h = h - mu[:, :, None] * mu[:, None, :]
    scales = W.output_scales(wg.numpy(), h.numpy(), layer.weight_bits)
    s = torch.from_numpy(scales.astype(np.float64)).reshape(g, cg, 1)
    qt = W.weight_qtype(layer.weight_bits)
    codes_g = torch.clamp(torch.round(wg / s), qt.qmin, qt.qmax)
    new_b = None
    if b is not None:
        err = wg - codes_g * s                                         # [G, Cg, K]
        new_b = (np.asarray(b, np.float64).reshape(g, cg) + (err @ mu[:, :, None])[..., 0].numpy())
        new_b = new_b.reshape(-1).astype(np.float32)
    codes = ungroup_weight(layer, codes_g, w.shape).numpy().astype(np.int64)
    return codes, scales, new_b


def compensate_layer(plan: QuantPlan, layer: Layer, xq, xf, damp: float = 0.01,
                     bias_correct: bool = False) -> bool:
    """Ridge-fit the layer's float weights and bias on Q(x). With `bias_correct` also round them
    (`round_and_correct`: output-error scales, the bias absorbing the rounding's mean error) and
    set the plan's codes; otherwise the caller rounds the fitted weights."""
    inits = initializers(plan.model)
    w = inits[layer.weight]
    if not supports_features(layer, w):
        return False
    b = inits[layer.bias].reshape(-1) if layer.bias else None
    wg_shape = group_weight(layer, torch.from_numpy(np.array(w, np.float32))).shape
    if b is not None and b.size != wg_shape[0] * wg_shape[1]:
        b = None
    new_w, new_b = ridge_update(layer, w, b, xq, xf, damp)
    if not (np.all(np.isfinite(new_w)) and (new_b is None or np.all(np.isfinite(new_b)))):
        return False
    plan.set_initializer(layer.weight, new_w)
    if new_b is not None:
        plan.set_initializer(layer.bias, new_b.reshape(inits[layer.bias].shape))
    if bias_correct:
        codes, scales, cb = round_and_correct(layer, new_w, new_b, xq)
        if cb is not None and np.all(np.isfinite(cb)):
            plan.set_initializer(layer.bias, cb.reshape(inits[layer.bias].shape))
        plan.weights_q[layer.name] = codes
        plan.weight_scales[layer.name] = scales
    return True
