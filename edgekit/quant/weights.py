"""Per-output-channel symmetric weight quantization (codes + float32 scales)."""
from __future__ import annotations

import numpy as np

from edgekit.quant import formats as F


def channel_view(w: np.ndarray, axis: int) -> np.ndarray:
    """Weight as [out_channels, everything else]."""
    return np.moveaxis(np.asarray(w, np.float32), axis, 0).reshape(w.shape[axis], -1)


def from_channel_view(w2: np.ndarray, shape, axis: int) -> np.ndarray:
    moved = [shape[axis]] + [s for i, s in enumerate(shape) if i != axis]
    return np.moveaxis(w2.reshape(moved), 0, axis)


def weight_qtype(bits: int) -> F.QType:
    return F.qtype(bits, True)


def absmax_scales(w2: np.ndarray, bits: int) -> np.ndarray:
    qmax = weight_qtype(bits).qmax
    amax = np.abs(w2).max(axis=1)
    return np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)


MSE_GRID = np.linspace(1.0, 0.45, 12)   # clipping ratios mse_scales tries


def mse_scales(w2: np.ndarray, bits: int, grid=MSE_GRID) -> np.ndarray:
    """Per-channel clipping ratio minimising the weight's own squared error."""
    base = absmax_scales(w2, bits)
    best, best_err = base.copy(), np.full(base.shape, np.inf)
    for r in grid:
        s = (base * r).astype(np.float32)
        err = ((dequantize_codes(quantize_codes(w2, s, bits), s) - w2) ** 2).sum(axis=1)
        better = err < best_err
        best[better], best_err[better] = s[better], err[better]
    return best


def quantize_codes(w2: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    qt = weight_qtype(bits)
    q = np.rint(np.asarray(w2, np.float32) / scales.reshape(-1, 1).astype(np.float32))
    return np.clip(q, qt.qmin, qt.qmax).astype(np.int64)


def dequantize_codes(q2: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return q2.astype(np.float32) * scales.reshape(-1, 1).astype(np.float32)
