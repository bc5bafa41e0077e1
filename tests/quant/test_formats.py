import numpy as np
import pytest

from edgekit.quant import formats as F


def test_grids():
    assert (F.INT4.qmin, F.INT4.qmax) == (-8, 7)
    assert (F.UINT4.qmin, F.UINT4.qmax) == (0, 15)
    assert (F.INT8.qmin, F.INT8.qmax) == (-128, 127)
    assert (F.UINT8.qmin, F.UINT8.qmax) == (0, 255)


@pytest.mark.parametrize("scale", [1e-9, 3.1e-5, 0.00123, 0.5, 0.75, 1.0, 3.999, 1000.0])
def test_multiplier_approximates_scale(scale):
    m, s = F.quantize_multiplier(scale)
    assert (1 << (F.MULT_BITS - 1)) <= m < (1 << F.MULT_BITS) or s == F.MAX_SHIFT
    assert abs(float(m) * 2.0 ** -float(s) - scale) <= scale * 2.0 ** -(F.MULT_BITS - 1)


def test_multiplier_rejects_bad_scales():
    with pytest.raises(ValueError):
        F.quantize_multiplier(-1.0)
    with pytest.raises(ValueError):
        F.quantize_multiplier(2.0 ** 20)


def test_rshift_ties_to_even_both_signs():
    x = np.array([5, 6, 7, -5, -6, -7, 2, -2, 3, -3])  # shift 1: 2.5 3 3.5 -2.5 -3 -3.5 1 -1 1.5 -1.5
    assert F.rshift_half_even(x, 1).tolist() == [2, 3, 4, -2, -3, -4, 1, -1, 2, -2]
    assert F.rshift_half_even(np.array([7]), 0).tolist() == [7]


def test_rshift_matches_float_rint_random():
    rng = np.random.default_rng(0)
    x = rng.integers(-(1 << 40), 1 << 40, size=10000)
    s = rng.integers(0, 20, size=10000)
    ref = np.rint(x.astype(np.float64) / 2.0 ** s).astype(np.int64)  # exact: |x| < 2^53
    assert np.array_equal(F.rshift_half_even(x, s), ref)


def test_requantize_saturates_and_wraps():
    acc = np.array([2**31 - 1, -(2**31), 0, 100])
    out = F.requantize(acc, bias=np.array([1, 0, 0, 0]), mult=1 << 14, shift=15, zero_point=3, out=F.UINT4)
    # 2^31-1 + 1 wraps to -2^31 -> clamps to 0; -2^31 -> 0; 0 -> zp; 100*0.5=50 -> 15
    assert out.tolist() == [0, 0, 3, 15]


def test_requantize_close_to_float_path():
    rng = np.random.default_rng(1)
    acc = rng.integers(-5000, 5000, size=2000)
    scale = 0.0137
    m, s = F.quantize_multiplier(scale)
    q = F.requantize(acc, 0, m, s, 128, F.UINT8)
    ref = F.quantize(acc * scale, 1.0, 128, F.UINT8)
    assert np.max(np.abs(q - ref)) <= 1


def test_activation_bounds():
    assert F.activation_bounds("relu", 0.1, 5, F.UINT8) == (5, 255)
    assert F.activation_bounds("relu6", 0.1, 5, F.UINT8) == (5, 65)
    assert F.activation_bounds(None, 0.1, 5, F.UINT4) == (0, 15)


def test_int4_pack_roundtrip():
    rng = np.random.default_rng(2)
    v = rng.integers(-8, 8, size=33)
    assert np.array_equal(F.unpack_int4(F.pack_int4(v), 33, signed=True), v)
    u = rng.integers(0, 16, size=8)
    assert np.array_equal(F.unpack_int4(F.pack_int4(u), 8, signed=False), u)
