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


MSE_GRID = np.linspace(1.0, 0.3, 36)   # clipping ratios mse_scales tries (steps of 0.02)


def mse_scales(w2: np.ndarray, bits: int, grid=MSE_GRID, chunk_elements: int = 1 << 23) -> np.ndarray:
    """Per-channel clipping ratio minimising the weight's own squared error.

    At 4 bits the absmax range wastes most of the 15 levels on a few outliers; the best clipped
    range per channel is worth several dB of weight SQNR. The search is vectorized over the
    ratios (in chunks bounded by `chunk_elements`) and over the channels.
    """
    w2 = np.asarray(w2, np.float32)
    qt = weight_qtype(bits)
    base = absmax_scales(w2, bits)
    grid = np.asarray(grid, np.float32)
    errors = np.empty((len(grid), w2.shape[0]), np.float64)
    step = max(1, chunk_elements // max(w2.size, 1))
    for i in range(0, len(grid), step):
        s = (base[None, :] * grid[i:i + step, None]).astype(np.float32)[:, :, None]   # [R, C, 1]
        q = np.clip(np.rint(w2[None] / s), qt.qmin, qt.qmax)
        errors[i:i + step] = ((q * s - w2[None]) ** 2).sum(axis=2)
    best = errors.argmin(axis=0)          # the first (widest) ratio on ties, absmax when it is best
    return (base * grid[best]).astype(np.float32)


def quantize_codes(w2: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    qt = weight_qtype(bits)
    q = np.rint(np.asarray(w2, np.float32) / scales.reshape(-1, 1).astype(np.float32))
    return np.clip(q, qt.qmin, qt.qmax).astype(np.int64)


def dequantize_codes(q2: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return q2.astype(np.float32) * scales.reshape(-1, 1).astype(np.float32)


def output_scales(wg: np.ndarray, hc: np.ndarray, bits: int, grid=MSE_GRID,
                  chunk_elements: int = 1 << 24) -> np.ndarray:
    """Per-channel clipping ratio minimising the layer's output error, not the weight's own.

    wg [G, Cg, K]: the weight as rows of the layer's im2col product (features() of
    edgekit.quant.sequential), hc [G, K, K]: the centered second moment of the layer's inputs
    (bias-corrected output error: the mean of the error goes into the bias). For each channel
    the ratio of `grid` minimising e^T hc e, e = w - Q(w), is kept; returns scales [G * Cg].
    On a 3x3 depthwise conv over smooth images the inputs of one filter are strongly correlated,
    so rounding errors that add up matter and a weight-MSE scale can be the worse one.
    """
    wg = np.asarray(wg, np.float64)
    hc = np.asarray(hc, np.float64)
    g, cg, k = wg.shape
    qt = weight_qtype(bits)
    w2 = wg.reshape(g * cg, k)
    base = absmax_scales(w2, bits).astype(np.float64)
    errors = np.empty((len(grid), g * cg), np.float64)
    step = max(1, chunk_elements // max(cg * k * max(k, 1), 1))   # groups per chunk
    for r, ratio in enumerate(grid):
        s = (base * ratio).astype(np.float32).astype(np.float64).reshape(g, cg, 1)
        e = wg - np.clip(np.rint(wg / s), qt.qmin, qt.qmax) * s
        out = np.empty((g, cg))
        for i in range(0, g, step):
            ei = e[i:i + step]
            out[i:i + step] = (np.matmul(ei, hc[i:i + step]) * ei).sum(2)
        errors[r] = out.reshape(-1)
    best = errors.argmin(axis=0)
    return (base * np.asarray(grid)[best]).astype(np.float32)
