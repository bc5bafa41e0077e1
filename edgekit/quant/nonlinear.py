"""Integer definitions of the non-linear ops: the single definition every back-end follows.

Float regions round differently on every back-end (torch, TVM's LLVM code, a host CPU next to
the accelerator), so a graph with a float softmax or GELU cannot be bit-exact across them. The
ops here are defined on integer codes only, with integer arithmetic (int64) whose every step
any back-end can repeat exactly:

* lut -- any element-wise region with one quantized input (GELU, SiLU, sigmoid, tanh, exp,
  a lone ReLU, ...): the output code is table[x_q - qmin]. The table holds the float region
  evaluated once, at parse time, on every input code, so it *is* the float function on the
  grid (an 8-bit input has 256 codes); the accelerator's LUT unit and TVM's `take` read it.
* softmax -- I-BERT style: d = max(x_q) - x_q along the row, e = EXP[d] with
  EXP[d] = round(2^EXP_BITS * exp(-d * s_x * c)) (c: a folded positive scale such as
  attention's 1/sqrt(d)), S = sum(e), y_q = zp_y + floor((e * M + S * 2^(P-1)) / (S * 2^P))
  with M = round(2^P / s_y).
* resize -- separable: along each resized axis, output = sum over taps of W[o, t] * x_c[idx[o, t]]
  with the weights W in Q.RESIZE_BITS (each row sums to exactly 2^RESIZE_BITS, so a constant
  image stays constant), then one requantization by s_x / s_y * 2^-(RESIZE_BITS * axes). The
  taps are onnx's coordinate rules (torch_ops.resize_taps) for the input's static shape.
* layernorm -- over the last axis of N elements: x_c = x_q - zp_x, D = N * x_c - sum(x_c)
  (N times the deviation from the mean, exact), V = floor(sum(D^2) / N) (= N^2 var),
  R = isqrt(V + E) with E = round(N^2 * eps / s_x^2), n = floor((D * 2^F + floor(R / 2)) / R)
  (the normalized value in Q.F), y_q = zp_y + ((n * G_c + B_c + 2^(F+G-1)) >> (F+G)) with
  G_c = round(gamma_c / s_y * 2^G), B_c = round(beta_c / s_y * 2^(F+G)).

Every product stays below 2^52 for rows of up to 2^12 8-bit elements, where the floor of the
float64 square root is the exact integer square root.
"""
from __future__ import annotations

import numpy as np

from edgekit.quant import formats as F

EXP_BITS = 16          # softmax: exp table entries in Q.16 (1.0 = 65536)
SOFTMAX_BITS = 16      # softmax: P, the fraction bits of the output multiplier
NORM_BITS = 12         # layernorm: F, fraction bits of the normalized value
GAIN_BITS = 16         # layernorm: G, fraction bits of the per-channel gain
MAX_ROW = 1 << 12      # layernorm rows longer than this stay float (int64 headroom for sum(D^2))
RESIZE_BITS = 10       # resize: fraction bits of the interpolation weights


# -- tables and constants, computed once when the graph is parsed -----------------------------

def code_range(q) -> np.ndarray:
    """Every code of a grid, in order (the LUT's index is code - qmin)."""
    return np.arange(q.qtype.qmin, q.qtype.qmax + 1, dtype=np.int64)


def exp_table(in_q, factor: float) -> np.ndarray:
    """EXP[d] = round(2^EXP_BITS * exp(-d * s_x * factor)) for every code distance d."""
    d = np.arange(in_q.qtype.qmax - in_q.qtype.qmin + 1, dtype=np.float64)
    return np.rint(np.exp(-d * float(in_q.scale) * float(factor)) * (1 << EXP_BITS)).astype(np.int64)


def softmax_multiplier(out_q) -> int:
    return int(np.rint((1 << SOFTMAX_BITS) / np.float64(out_q.scale)))


def layernorm_constants(in_q, out_q, gamma, beta, eps: float) -> dict:
    """E, G_c and B_c of the integer LayerNorm (see the module docstring)."""
    gamma = np.asarray(gamma, np.float64).reshape(-1)
    beta = np.zeros_like(gamma) if beta is None else np.broadcast_to(np.asarray(beta, np.float64).reshape(-1),
                                                                         gamma.shape)
    n = gamma.size
    eps_codes = int(np.clip(np.rint(n * n * float(eps) / np.float64(in_q.scale) ** 2), 1, 1 << 50))
    gain = np.rint(gamma / np.float64(out_q.scale) * (1 << GAIN_BITS)).astype(np.int64)
    offset = np.rint(beta / np.float64(out_q.scale) * float(1 << (GAIN_BITS + NORM_BITS))).astype(np.int64)
    return {"n": n, "eps_codes": eps_codes, "gain": gain, "offset": offset}


def integer_taps(coeffs: np.ndarray) -> np.ndarray:
    """Interpolation coefficients [out, taps] -> Q.RESIZE_BITS integers whose rows sum to 2^RESIZE_BITS."""
    w = np.rint(np.asarray(coeffs, np.float64) * (1 << RESIZE_BITS)).astype(np.int64)
    w[np.arange(len(w)), np.abs(coeffs).argmax(axis=-1)] += (1 << RESIZE_BITS) - w.sum(axis=-1)
    return w


def resize_plan(attrs: dict, shape, roi=None, scales=None, sizes=None) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """[(axis, source indices [out, taps], integer weights [out, taps])] of a Resize of `shape`."""
    from edgekit.onnx_graph import torch_ops as T

    def tensor(v):
        return None if v is None or np.size(v) == 0 else T.to_torch(np.asarray(v))

    plan = []
    for axis, scale, out_n, rv in T.resize_axes(attrs, list(shape), tensor(roi), tensor(scales), tensor(sizes)):
        index, coeffs, _ = T.resize_taps(int(shape[axis]), scale, out_n, attrs, rv)
        plan.append((axis, index, integer_taps(coeffs)))
    return plan


# -- the integer ops on codes (numpy int64); back-ends repeat these steps exactly ------------

def isqrt(v: np.ndarray) -> np.ndarray:
    """floor(sqrt(v)) of non-negative int64 values below 2^52: the float64 root rounds correctly,
    and below 2^52 no root of a non-square comes within half an ulp of the next integer, so
    its floor is exact with no correction step (one expression: back-ends inline it cheaply)."""
    return np.floor(np.sqrt(np.asarray(v, np.int64).astype(np.float64))).astype(np.int64)


def lut(x, table: np.ndarray, qmin: int) -> np.ndarray:
    return np.asarray(table, np.int64)[np.asarray(x, np.int64) - qmin]


def softmax(x, table: np.ndarray, mult: int, zero_point: int, lo: int, hi: int, axis: int = -1,
            mask=None) -> np.ndarray:
    """`mask` (optional, broadcast to x, non-zero = masked out, every row keeping one entry): the
    masked entries weigh 0 and the row max is taken over the others (attention's causal mask)."""
    x = np.asarray(x, np.int64)
    table = np.asarray(table, np.int64)
    if mask is None or np.size(mask) == 0:
        e = table[x.max(axis=axis, keepdims=True) - x]
    else:
        shape = np.broadcast_shapes(x.shape, np.shape(mask))   # Where broadcasts both sides
        x, keep = np.broadcast_to(x, shape), np.broadcast_to(np.asarray(mask) == 0, shape)
        top = np.where(keep, x, np.iinfo(np.int64).min).max(axis=axis, keepdims=True)
        e = np.where(keep, table[np.where(keep, top - x, 0)], 0)
    total = e.sum(axis=axis, keepdims=True)
    y = (e * int(mult) + (total << (SOFTMAX_BITS - 1))) // (total << SOFTMAX_BITS)
    return np.clip(y + zero_point, lo, hi)


def layernorm(x, in_zero_point: int, n: int, eps_codes: int, gain, offset, zero_point: int, lo: int,
              hi: int) -> np.ndarray:
    xc = np.asarray(x, np.int64) - in_zero_point
    dev = n * xc - xc.sum(axis=-1, keepdims=True)
    var = (dev * dev).sum(axis=-1, keepdims=True) // n
    root = np.maximum(isqrt(var + eps_codes), 1)
    norm = (dev * (1 << NORM_BITS) + (root >> 1)) // root
    total_bits = NORM_BITS + GAIN_BITS
    y = (norm * np.asarray(gain, np.int64) + np.asarray(offset, np.int64) + (1 << (total_bits - 1))) >> total_bits
    return np.clip(y + zero_point, lo, hi)


def resize(x, in_zero_point: int, plan, mult, shift, zero_point: int, qtype, lo: int, hi: int) -> np.ndarray:
    acc = np.asarray(x, np.int64) - in_zero_point
    for axis, index, weight in plan:
        gathered = np.take(acc, index.reshape(-1), axis=axis)
        gathered = gathered.reshape(acc.shape[:axis] + index.shape + acc.shape[axis + 1:])
        acc = (gathered * weight.reshape((1,) * axis + weight.shape + (1,) * (acc.ndim - axis - 1))).sum(axis=axis + 1)
    return F.requantize(acc, 0, mult, np.asarray(shift) + RESIZE_BITS * len(plan), zero_point, qtype, lo, hi)


def quantize_table(values, out_q) -> np.ndarray:
    """Float region outputs on every input code -> output codes (QuantizeLinear semantics)."""
    return F.quantize(np.asarray(values, np.float32), out_q.scale, out_q.zero_point, out_q.qtype).astype(np.int64)
