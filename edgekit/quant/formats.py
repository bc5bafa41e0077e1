"""Number formats and requantization math: the single definition every back-end imports.

The integer reference, the TVM integer lowering and the accelerator's golden
model (and therefore its RTL) all compute exactly what this module computes:

  acc  = sum((x_q - zp_x) * w_q)                  int32, wraps modulo 2^32
  y_q  = clamp(rshift_half_even((acc + bias) * M, s) + zp_y, lo, hi)

with M an integer multiplier in [2^(MULT_BITS-1), 2^MULT_BITS) (or 0) and s a
right shift in [0, MAX_SHIFT] such that M * 2^-s approximates the float
requantization scale  s_x * s_w / s_y.  (acc + bias) wraps at 32 bits, the
product is exact in 64 bits (|int32 * M| < 2^47).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MULT_BITS = 15  # M fits a signed 16-bit field: cheap multiplier in hardware.
MAX_SHIFT = 62


@dataclass(frozen=True)
class QType:
    """An integer grid: bit width and signedness."""

    name: str
    bits: int
    signed: bool

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def onnx_type(self) -> int:
        import onnx

        return getattr(onnx.TensorProto, self.name.upper())


INT4 = QType("int4", 4, True)
UINT4 = QType("uint4", 4, False)
INT8 = QType("int8", 8, True)
UINT8 = QType("uint8", 8, False)
# 16-bit activations: the tensors polish.widen_outliers keeps wider (outlier-dominated residual
# streams read only by adds and LayerNorm); no layer or table op reads them
INT16 = QType("int16", 16, True)
UINT16 = QType("uint16", 16, False)
QTYPES = {q.name: q for q in (INT4, UINT4, INT8, UINT8, INT16, UINT16)}


def qtype_of_onnx(tensor_type: int) -> QType:
    """The grid of an ONNX integer tensor type (INT4, UINT4, INT8, UINT8, INT16, UINT16)."""
    for q in QTYPES.values():
        if q.onnx_type == tensor_type:
            return q
    import onnx

    from edgekit.errors import EdgekitError

    raise EdgekitError(f"unsupported quantized type {onnx.TensorProto.DataType.Name(tensor_type)}")


def qtype(bits: int, signed: bool) -> QType:
    for q in QTYPES.values():
        if q.bits == bits and q.signed == signed:
            return q
    raise ValueError(f"no {bits}-bit {'signed' if signed else 'unsigned'} format")


class ScaleRangeError(ValueError):
    """A requantization scale no (M, shift) pair represents: the caller names the op."""


def quantize_multiplier(scale) -> tuple[np.ndarray, np.ndarray]:
    """Float scale(s) -> (M, s) with scale ~= M * 2^-s, M in [2^(MULT_BITS-1), 2^MULT_BITS).

    Works element-wise on arrays (per-channel scales). A zero scale gives M=0.
    """
    scale = np.asarray(scale, dtype=np.float64)
    if np.any(scale < 0) or not np.all(np.isfinite(scale)):
        raise ScaleRangeError("requantization scales must be finite and non-negative")
    mant, exp = np.frexp(scale)  # scale = mant * 2^exp, mant in [0.5, 1)
    mult = np.rint(mant * (1 << MULT_BITS)).astype(np.int64)
    carry = mult == (1 << MULT_BITS)
    mult = np.where(carry, mult >> 1, mult)
    exp = exp + carry
    shift = MULT_BITS - exp.astype(np.int64)
    # Very small scales: shift past MAX_SHIFT by shrinking M (round half even).
    excess = np.maximum(shift - MAX_SHIFT, 0)
    if np.any(excess):
        mult = rshift_half_even(mult, np.minimum(excess, 63))
        shift = np.minimum(shift, MAX_SHIFT)
    if np.any(shift < 0):
        raise ScaleRangeError(f"requantization scale too large: max {float(scale.max()):g} >= 2^{MULT_BITS}")
    zero = scale == 0
    mult = np.where(zero, 0, mult)
    shift = np.where(zero, 0, shift)
    return mult.astype(np.int64), shift.astype(np.int64)


def rshift_half_even(x, shift) -> np.ndarray:
    """Arithmetic right shift of int64 `x` by `shift` bits, rounding ties to even."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    s = np.maximum(shift, 1)
    q = x >> s
    rem = x - (q << s)
    half = np.int64(1) << (s - 1)
    up = (rem > half) | ((rem == half) & ((q & 1) == 1))
    return np.where(shift > 0, q + up, x)


def wrap_int32(x) -> np.ndarray:
    """Two's-complement wraparound to int32 (what a 32-bit accumulator does)."""
    x = np.asarray(x, dtype=np.int64)
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def requantize(acc, bias, mult, shift, zero_point: int, out: QType,
               lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """int32 accumulators -> quantized output on the `out` grid.

    `bias`, `mult`, `shift` broadcast against `acc` (per-channel: shape [C,1,1]
    for NCHW or [C] for a trailing channel axis). `lo`/`hi` narrow the clamp
    further for fused ReLU / ReLU6 / clip (already in the quantized domain).
    """
    total = wrap_int32(np.asarray(acc, np.int64) + np.asarray(bias, np.int64))
    y = rshift_half_even(total * np.asarray(mult, np.int64), shift) + int(zero_point)
    qlo = out.qmin if lo is None else max(out.qmin, int(lo))
    qhi = out.qmax if hi is None else min(out.qmax, int(hi))
    return np.clip(y, qlo, qhi)


def quantize(x, scale, zero_point, out: QType) -> np.ndarray:
    """ONNX QuantizeLinear: saturate(round_half_even(x / scale) + zero_point), in float32."""
    x = np.asarray(x, np.float32)
    q = np.rint(x / np.asarray(scale, np.float32)) + np.asarray(zero_point, np.float32)
    return np.clip(q, out.qmin, out.qmax).astype(np.int64)


def dequantize(q, scale, zero_point) -> np.ndarray:
    """ONNX DequantizeLinear: (q - zero_point) * scale, in float32."""
    return ((np.asarray(q, np.int64) - np.asarray(zero_point, np.int64)).astype(np.float32)
            * np.asarray(scale, np.float32))


def activation_bounds(kind: str | None, scale: float, zero_point: int, out: QType,
                      clip: tuple[float, float] | None = None) -> tuple[int, int]:
    """Quantized clamp bounds for a fused activation (None/'relu'/'relu6'/'clip')."""
    lo, hi = out.qmin, out.qmax
    if kind in ("relu", "relu6", "clip"):
        lo = max(lo, int(zero_point))
    if kind == "relu6":
        hi = min(hi, int(zero_point) + int(np.rint(6.0 / scale)))
    if kind == "clip" and clip is not None:
        lo = max(out.qmin, int(zero_point) + int(np.rint(clip[0] / scale)))
        hi = min(out.qmax, int(zero_point) + int(np.rint(clip[1] / scale)))
    return lo, hi


def pack_int4(values) -> np.ndarray:
    """Pack 4-bit values (signed or unsigned) two per byte, element 2i in the low nibble (ONNX order)."""
    flat = np.asarray(values, np.int64).reshape(-1) & 0xF
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int64)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed, count: int, signed: bool) -> np.ndarray:
    """Inverse of pack_int4: `count` values, sign-extended when `signed`."""
    packed = np.asarray(packed, np.uint8).astype(np.int64)
    flat = np.stack([packed & 0xF, packed >> 4], axis=1).reshape(-1)[:count]
    if signed:
        flat = np.where(flat >= 8, flat - 16, flat)
    return flat
