"""Per-head SALE threshold calibration.

For every head: start at tau = TAU_START (0.008) and halve it until the
head's relative output error against dense attention, pooled over the
calibration samples (sqrt(sum ||o - o_dense||^2 / sum ||o_dense||^2)), is
under the bound; a head that would need tau below DENSE_TAU (1e-4) becomes
dense (tau = 0). All heads are searched together, one sparse pass per
halving step over the heads still searching.
"""
from __future__ import annotations

import torch

from edgekit.errors import EdgekitError
from edgekit.progress import progress

from .config import DENSE_TAU, TAU_START, SaleConfig, SalePlan
from .reference import dense_causal_attention, sale_attention_reference


def _sparse(q, k, v, cfg, taus, backend):
    from . import kernel

    if backend == "kernel" or (backend == "auto" and kernel.supports(q, cfg)):
        return kernel.sale_attention_fast(q, k, v, cfg, taus=taus)
    return sale_attention_reference(q, k, v, cfg, taus=taus)


def _head_errors(samples, dense, cfg, heads, taus, backend):
    """Pooled relative error per selected head for thresholds `taus` (one per selected head)."""
    num = torch.zeros(len(heads), dtype=torch.float64)
    den = torch.zeros(len(heads), dtype=torch.float64)
    for (q, k, v), ref in zip(samples, dense):
        out = _sparse(q[:, heads], k[:, heads], v[:, heads], cfg, taus, backend)
        diff = (out - ref[:, heads]).double()
        num += diff.pow(2).sum(dim=(0, 2, 3))
        den += ref[:, heads].double().pow(2).sum(dim=(0, 2, 3))
    return (num / den.clamp_min(1e-30)).sqrt()


def calibrate_heads(samples, cfg: SaleConfig, error_bound: float = 0.01, backend: str = "auto",
                    desc: str = "SALE calibration") -> tuple[list[float], list[float]]:
    """Per-head taus for one attention layer from samples [(q, k, v) [B, H, T, Dh], ...].

    Returns (taus, errors): each head's threshold and its calibrated error.
    """
    if not samples:
        raise EdgekitError("SALE calibration needs at least one (q, k, v) sample")
    if not 0 < error_bound < 1:
        raise EdgekitError(f"SALE calibration error bound must lie in (0, 1), got {error_bound}")
    H = samples[0][0].shape[1]
    dense = [dense_causal_attention(q.float(), k.float(), v.float()) for q, k, v in samples]
    taus = [TAU_START] * H
    errors = [float("nan")] * H
    searching = list(range(H))
    steps = 0
    while searching:
        steps += 1
        errs = _head_errors(samples, dense, cfg, searching, [taus[h] for h in searching], backend)
        still = []
        for h, err in zip(searching, errs.tolist()):
            if err <= error_bound:
                errors[h] = err
                continue
            taus[h] /= 2
            if taus[h] < DENSE_TAU:   # this head does not tolerate skipping: run it dense
                taus[h], errors[h] = 0.0, 0.0
            else:
                still.append(h)
        searching = still
    return taus, errors


def calibrate_model(model, token_batches, cfg: SaleConfig | None = None, error_bound: float = 0.01,
                    backend: str = "auto", info: dict | None = None) -> SalePlan:
    """Calibrate every layer of a zoo-style model on `token_batches` (tokens [1, T] each)."""
    from .attention import capture_qkv

    cfg = cfg or SaleConfig()
    token_batches = list(token_batches)
    per_layer = capture_qkv(model, token_batches)
    layer_taus, layer_errors = [], []
    for samples in progress(per_layer, desc="SALE calibration (layers)", total=len(per_layer)):
        taus, errs = calibrate_heads(samples, cfg, error_bound, backend)
        layer_taus.append(taus)
        layer_errors.append([round(e, 6) for e in errs])
    calibration = {"samples": len(token_batches),
                   "length": int(token_batches[0].shape[-1]) if token_batches else 0,
                   "head_errors": layer_errors, **(info or {})}
    return SalePlan(cfg, layer_taus, error_bound, calibration)
