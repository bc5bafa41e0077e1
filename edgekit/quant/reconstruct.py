"""Step 3 — weight reconstruction: choose the 4-bit codes by the block's output error.

- learned rounding (AdaRound): W_soft = s * clamp(floor(W/s) + h(V), qmin, qmax),
  h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1), V optimised with Adam
  on the Fisher-weighted block-output error (inputs from the quantized upstream,
  targets from the float network) plus lam * sum(1 - |2h - 1|^beta), beta
  annealed 20 -> 2; final codes floor + (h >= 0.5).
  For Conv / Gemm / MatMul the error is the exact quadratic form of
  `quadratic_moments` over every calibration row (`adaround_quadratic`); the
  mini-batch loss on the block output (`adaround`) remains for ConvTranspose.
- fast mode: `adaround_quadratic` with FAST_ITERS steps and no Fisher weights;
  GPTQ/OBQ (sequential column rounding with error feedback through the inverse
  of the damped second moment of Q(x)) only for layers outside the quadratic form.
All start from per-channel MSE-searched scales.
"""
from __future__ import annotations

import numpy as np
import torch

from edgekit.onnx_graph.model import initializers
from edgekit.quant import weights as W
from edgekit.quant.plan import Layer, QuantPlan
from edgekit.quant.sequential import (
    as_groups,
    feature_rows,
    features,
    group_weight,
    moments,
    sampled_features,
    supports_features,
    ungroup_weight,
)
from edgekit.quant.simulate import layer_forward, weight_shape_scales

ZETA, GAMMA = 1.1, -0.1
FAST_ITERS = 50   # learned-rounding steps per layer with --fast


def _h(v):
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


class _LearnedRounding:
    """AdaRound's rounding variables and schedule (shared by both objectives below): codes
    clamp(floor(W/s) + h(V)), Adam on V, the annealed regulariser after a 20 % warm-up."""

    def __init__(self, w_over_s: torch.Tensor, qt, iters: int, lr: float, lam: float):
        self.base = torch.floor(w_over_s)
        rest = (w_over_s - self.base).clamp(0.01, 0.99)
        self.v = torch.log((rest - GAMMA) / (ZETA - rest)).clone().requires_grad_(True)  # h(v) == rest
        self.opt = torch.optim.Adam([self.v], lr=lr)
        self.qt, self.iters, self.lam, self.warm = qt, iters, lam, int(0.2 * iters)

    def soft_codes(self) -> torch.Tensor:
        return torch.clamp(self.base + _h(self.v), self.qt.qmin, self.qt.qmax)

    def step(self, it: int, loss: torch.Tensor) -> None:
        if it >= self.warm:
            beta = 20 + (2 - 20) * (it - self.warm) / max(1, self.iters - self.warm)
            loss = loss + self.lam * (1 - (2 * _h(self.v) - 1).abs().pow(beta)).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def codes(self) -> torch.Tensor:
        with torch.no_grad():
            return torch.clamp(self.base + (_h(self.v) >= 0.5).float(), self.qt.qmin, self.qt.qmax)


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
    rounding = _LearnedRounding(torch.from_numpy(np.array(w, np.float32)) / s, qt, iters, lr, lam)
    bias = torch.from_numpy(np.asarray(b, np.float32)) if b is not None else None
    gen = torch.Generator().manual_seed(seed)
    sizes = [x.shape[0] for x in xs]
    n = sum(sizes)
    if len(xs) == 1:
        ref = float((ts[0] ** 2).mean()) + 1e-12
    else:
        ref = float(sum((t.double() ** 2).sum() for t in ts) / sum(t.numel() for t in ts)) + 1e-12
    # global sample index -> (group, index in group)
    where = [(gi, j) for gi, size in enumerate(sizes) for j in range(size)]
    for it in range(iters):
        idx = torch.randperm(n, generator=gen)[:batch]
        w_soft = s * rounding.soft_codes()
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
        rounding.step(it, loss)
    return rounding.codes().numpy().astype(np.int64)


def quadratic_moments(layer: Layer, xq, xf, w_orig: np.ndarray, b_orig, fisher=None):
    """The layer's reconstruction error as a quadratic form in its (weight, bias), over every row.

    The pre-activation output is linear in the weight, so the mean squared error against the
    float layer's output t = W0 x_f + b0 is, per group g,
        tr(W'_g H_g W'_g^T) - 2 tr(W'_g C_g) + c_g,   W' = [W, b],  phi' = [phi(Q(x)), 1],
    H = E[f phi' phi'^T], C = E[f phi' t^T], c = E[f t^T t], with f the output-gradient (Fisher)
    weight of each row, averaged over the group's output channels (exact for depthwise layers).
    Returns (H, C, c, ref) with ref = E[t^2], all float64; one pass over the samples, whose
    shapes may differ.
    """
    w0 = group_weight(layer, torch.from_numpy(np.asarray(w_orig, np.float64)))      # [G, Cg, K]
    g, cg, k = w0.shape
    b0 = (torch.from_numpy(np.asarray(b_orig, np.float64)).reshape(g, 1, cg) if b_orig is not None
          else torch.zeros(g, 1, cg, dtype=torch.float64))
    fs = as_groups(fisher) if fisher is not None else None
    h = torch.zeros(g, k + 1, k + 1, dtype=torch.float64)
    c = torch.zeros(g, k + 1, cg, dtype=torch.float64)
    tt = torch.zeros(g, dtype=torch.float64)
    t_sq, t_count, rows = 0.0, 0, 0
    for gi, (xqg, xfg) in enumerate(zip(as_groups(xq), as_groups(xf))):
        for i in range(xqg.shape[0]):
            pq = features(layer, xqg[i:i + 1]).double()                               # [G, L, K]
            pq = torch.cat([pq, torch.ones(g, pq.shape[1], 1, dtype=torch.float64)], 2)
            t = features(layer, xfg[i:i + 1]).double() @ w0.transpose(1, 2) + b0        # [G, L, Cg]
            t_sq, t_count = t_sq + float((t ** 2).sum()), t_count + t.numel()
            wq = pq
            if fs is not None:
                f = _row_weights(layer, fs[gi][i:i + 1], g).double()                   # [G, L]
                wq = pq * f[:, :, None]
                tt += ((t ** 2).sum(2) * f).sum(1)
            else:
                tt += (t ** 2).sum((1, 2))
            h += wq.transpose(1, 2) @ pq
            c += wq.transpose(1, 2) @ t
            rows += pq.shape[1]
    return h / rows, c / rows, tt / rows, t_sq / max(t_count, 1) + 1e-12


def _row_weights(layer: Layer, f: torch.Tensor, groups: int) -> torch.Tensor:
    """A per-element output weight [1, Co, ...] (or [..., Co] for Gemm/MatMul) -> [G, L] rows."""
    if layer.op_type == "Conv":
        n, co = f.shape[:2]
        return f.reshape(n, groups, co // groups, -1).mean(2).permute(1, 0, 2).reshape(groups, -1)
    return f.reshape(-1, f.shape[-1]).mean(1).reshape(1, -1)


def _bias_column(b, groups: int, per_group: int, dtype) -> torch.Tensor:
    """The bias as the extra weight column [G, Cg, 1] of W' = [W, b] (zeros when there is none)."""
    if b is None:
        return torch.zeros(groups, per_group, 1, dtype=dtype)
    return torch.from_numpy(np.array(b, np.float64)).to(dtype).reshape(groups, per_group, 1)


def _dequantized_groups(layer: Layer, codes: np.ndarray, scales: np.ndarray) -> torch.Tensor:
    """codes * scales as the rows of the layer's grouped product, [G, Cg, K] float64."""
    wg = group_weight(layer, torch.from_numpy(np.asarray(codes, np.float64)))
    g, cg, _ = wg.shape
    return wg * torch.from_numpy(scales.astype(np.float64)).reshape(g, cg, 1)


def quadratic_error(layer: Layer, codes: np.ndarray, scales: np.ndarray, b, moments_) -> float:
    """The relative error (mean squared error / E[t^2]) of `codes` under `quadratic_moments`."""
    h, c, tt, ref = moments_
    wg = _dequantized_groups(layer, codes, scales)
    g, cg, _ = wg.shape
    wp = torch.cat([wg, _bias_column(b, g, cg, torch.float64)], 2)
    return float(((wp @ h) * wp).sum() - 2 * (wp * c.transpose(1, 2)).sum() + tt.sum()) / (g * cg) / ref


def free_bias_moments(moments_):
    """The quadratic form with the bias minimised out (closed form for any weight): the weight
    block's Schur complement, H_c = H_ww - h h^T / H_11 and C_c = C_w - h C_1 / H_11 with h = H_w1
    (the Fisher-weighted centered moments). Returns (H', C', c, ref) with zero bias rows, so
    that `adaround_quadratic` and `quadratic_error` with a zero bias column give the error of the
    best bias for the weights."""
    h, c, tt, ref = moments_
    k = h.shape[1] - 1
    h1, h11 = h[:, :k, k], h[:, k, k].clamp_min(1e-30)                    # [G, K], [G]
    c1 = c[:, k, :]                                                       # [G, Cg]
    hn, cn = torch.zeros_like(h), torch.zeros_like(c)
    hn[:, :k, :k] = h[:, :k, :k] - h1[:, :, None] * h1[:, None, :] / h11[:, None, None]
    cn[:, :k, :] = c[:, :k, :] - h1[:, :, None] * c1[:, None, :] / h11[:, None, None]
    ttn = tt - (c1 ** 2).sum(1) / h11
    return hn, cn, ttn, ref


def damped_moments(layer: Layer, moments_, w: np.ndarray, damp: float):
    """The quadratic form plus damp * mean(diag H) * ||W' - W||^2 (W: the layer's current float
    weight): a ridge pull that decides the directions the calibration rows do not span (a 1x1
    conv with more inputs than rows, the classifier on a few pooled vectors), where the plain
    form lets the rounding fit the seen rows at any cost elsewhere."""
    h, c, tt, ref = moments_
    k = h.shape[1] - 1
    wg = group_weight(layer, torch.from_numpy(np.asarray(w, np.float64))).to(h.dtype)   # [G, Cg, K]
    lam = damp * torch.diagonal(h[:, :k, :k], dim1=1, dim2=2).mean(1).clamp_min(1e-30)  # [G]
    h, c = h.clone(), c.clone()
    h[:, :k, :k] += lam[:, None, None] * torch.eye(k, dtype=h.dtype)
    c[:, :k, :] += lam[:, None, None] * wg.transpose(1, 2)
    return h, c, tt + lam * (wg ** 2).sum((1, 2)), ref


def best_bias(layer: Layer, codes: np.ndarray, scales: np.ndarray, moments_) -> np.ndarray:
    """The bias minimising the quadratic form of `quadratic_moments` for fixed weights:
    b = (C_1 - W H_w1) / H_11 per output channel (the Fisher-weighted mean of the target minus the
    weights' mean output on Q(x)); [Co] float32."""
    h, c, _, _ = moments_
    k = h.shape[1] - 1
    wg = _dequantized_groups(layer, codes, scales)
    h1, h11 = h[:, :k, k].double(), h[:, k, k].double().clamp_min(1e-30)
    b = (c[:, k, :].double() - (wg @ h1[:, :, None])[..., 0]) / h11[:, None]
    return b.reshape(-1).numpy().astype(np.float32)


def adaround_quadratic(layer: Layer, w: np.ndarray, b, scales: np.ndarray, moments_, iters: int = 200,
                       lr: float = 0.03, lam: float = 0.01) -> np.ndarray:
    """Learned rounding (the AdaRound schedule of `adaround`) on the exact full-batch quadratic
    error of `quadratic_moments`: each step costs a [Cg, K] x [K, K] product per group instead
    of the layer's forward and backward pass on a mini-batch of feature maps."""
    h, c, _, ref = (m.float() if torch.is_tensor(m) else m for m in moments_)
    qt = W.weight_qtype(layer.weight_bits)
    wg = group_weight(layer, torch.from_numpy(np.array(w, np.float32)))                 # [G, Cg, K]
    g, cg, _ = wg.shape
    s = torch.from_numpy(scales.astype(np.float32)).reshape(g, cg, 1)
    bias = _bias_column(b, g, cg, torch.float32)
    rounding = _LearnedRounding(wg / s, qt, iters, lr, lam)
    norm = float(g * cg) * ref
    for it in range(iters):
        w_soft = s * rounding.soft_codes()                                                # [G, Cg, K]
        with torch.no_grad():
            # d err / d W' = 2 (W' H - C^T), H symmetric: one product per step, then autograd
            # only carries it through the rounding variables (a surrogate with that gradient)
            wp = torch.cat([w_soft, bias], 2)
            grad = (2 / norm) * (wp @ h - c.transpose(1, 2))[:, :, :-1]
        rounding.step(it, (grad * w_soft).sum())
    return ungroup_weight(layer, rounding.codes(), w.shape).numpy().astype(np.int64)


def gptq(layer: Layer, w: np.ndarray, scales: np.ndarray, xq: torch.Tensor, damp: float = 0.01,
         max_rows: int = 16384) -> np.ndarray:
    """Hessian-based sequential rounding with error feedback; returns int codes."""
    qt = W.weight_qtype(layer.weight_bits)
    wg = group_weight(layer, torch.from_numpy(np.asarray(w, np.float64)).double()).clone()  # [G, Co, K]
    sg = torch.from_numpy(scales.astype(np.float64)).reshape(wg.shape[0], wg.shape[1], 1)
    h = moments(sampled_features(layer, xq, feature_rows(wg.shape[2], max_rows)))
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


def block_errors(layer: Layer, candidates, val, w_orig, b_orig) -> list[float]:
    """Relative error of the layer's block output (after its fused activation: what the next
    quantization point sees) for each candidate (codes, scales, bias) on the inputs `val` =
    (xq, xf), against the float layer on xf (computed once for all candidates). The quadratic
    form measures the pre-activation error, which counts errors that a fused ReLU/Clip removes."""
    w0 = torch.from_numpy(np.array(w_orig, np.float32))
    b0 = torch.from_numpy(np.array(b_orig, np.float32).reshape(-1)) if b_orig is not None else None
    weights = [(torch.from_numpy((codes.astype(np.float32) * weight_shape_scales(scales, codes.shape, layer.out_axis)
                                  ).astype(np.float32)),
                torch.from_numpy(np.array(b, np.float32)) if b is not None else None)
               for codes, scales, b in candidates]
    num, den = [0.0] * len(weights), 0.0
    with torch.no_grad():
        for xq, xf in zip(as_groups(val[0]), as_groups(val[1])):
            t = layer_forward(layer, xf, w0, b0)
            den += float((t.double() ** 2).sum())
            for i, (w, bt) in enumerate(weights):
                num[i] += float(((layer_forward(layer, xq, w, bt) - t).double() ** 2).sum())
    return [n / max(den, 1e-30) for n in num]


def reconstruct_layer(plan: QuantPlan, layer: Layer, xq, xf, w_orig, b_orig, fisher, fast: bool,
                      iters: int, free_bias: bool = True, output_scales: bool = True, damp: float = 0.0,
                      val=None) -> str:
    """Choose the layer's codes (and, with `free_bias`, its bias); returns how.

    `val`: (xq, xf) of held-out samples. When given (quadratic form only), the learned rounding is
    compared on them with the rounding the layer had before this step (its codes, scales and bias
    in the plan) and the one with the lower held-out error is kept: on few calibration samples a
    layer with more inputs than calibration rows (EfficientNet-Lite2's last 1x1 convs: 1248
    inputs, 16 x 49 rows) fits the rounding to those rows.
    """
    inits = initializers(plan.model)
    w = inits[layer.weight]
    b = inits[layer.bias].reshape(-1) if layer.bias else None
    if b is not None and layer.op_type != "MatMul":
        b = np.broadcast_to(b, (w.shape[layer.out_axis],)).astype(np.float32)
    w2 = W.channel_view(w, layer.out_axis)
    scales = W.mse_scales(w2, layer.weight_bits)
    channels = w.shape[layer.out_axis]
    quadratic = (supports_features(layer, w) and (b is None or b.size == channels)
                 and (b_orig is None or np.size(b_orig) == channels))
    if quadratic and (fast or iters > 0):
        # the exact quadratic AdaRound (with --fast: a short schedule, no Fisher weights). (GPTQ's
        # column-by-column error feedback, the earlier fast path, lowers each layer's error on
        # small models but collapsed EfficientNet-Lite2 at W4A8 to 3-8 % top-1 agreement, even
        # with every layer checked against nearest rounding; cause not found, so it is only
        # the fallback for layers the quadratic form does not cover.)
        mom = quadratic_moments(layer, xq, xf, w_orig, b_orig, None if fast else fisher)
        # with a bias of its own the layer's bias is re-fitted with the codes (closed form): the
        # rounding is chosen on the form with the bias minimised out
        free = free_bias and layer.bias is not None and b is not None
        fit = free_bias_moments(mom) if free else mom
        if damp > 0:
            fit = damped_moments(layer, fit, w, damp)
        if output_scales:
            k = fit[0].shape[1] - 1
            wg = group_weight(layer, torch.from_numpy(np.asarray(w, np.float64))).numpy()
            scales = W.output_scales(wg, fit[0][:, :k, :k].numpy(), layer.weight_bits)
        codes = adaround_quadratic(layer, w, None if free else b, scales, fit,
                                   iters=FAST_ITERS if fast else iters)
        how = "adaround-fast" if fast else "adaround"
        nb = best_bias(layer, codes, scales, mom) if free else b
        if free and not np.all(np.isfinite(nb)):
            free, nb = False, b
        if val is not None and layer.name in plan.weights_q:
            old_b = inits[layer.bias].reshape(-1) if layer.bias else None
            if old_b is not None and old_b.size != channels:
                old_b = None
            e_new, e_old = block_errors(layer, [(codes, scales, nb), (plan.weights_q[layer.name],
                                                plan.weight_scales[layer.name], old_b)], val, w_orig, b_orig)
            if e_old <= e_new:
                return f"kept (held-out error {e_old:.3g}, {how} {e_new:.3g})"
            how = f"{how} (held-out error {e_new:.3g}, was {e_old:.3g})"
        if free:
            plan.set_initializer(layer.bias, nb.reshape(inits[layer.bias].shape))
    elif fast and supports_features(layer, w):
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
