"""How the compiler lays tensors out in DRAM and in the on-chip buffers.

Activations live in DRAM as `[CB][H][W][N]` bytes (layout tag "CBHWN"): N
channels of one pixel form one buffer row (one N-byte act row), channel
blocks are planes. One channel block of a band of image rows is then a
plain 2-D region (lines of W rows), which is exactly what a `load` with
zero-point padding fetches for a convolution tile. Channels past C (the
last block's padding) hold the tensor's zero point.

Weights are N x N int8 tiles, `tile[j, k]` = weight from input channel k to
output channel j of one block pair and one kernel tap (the golden model's
`W . act` order). Parameters are one row per output block: N x {bias int32,
mult int16, shift uint8, pad} little-endian.
"""
from __future__ import annotations

import numpy as np

from . import isa


def blocks(channels: int, n: int) -> int:
    return -(-int(channels) // n)


def to_device(codes, n: int, fill: int) -> np.ndarray:
    """int codes [1, C, H, W] -> bytes [CB, H, W, N] (padding channels = `fill`)."""
    codes = np.asarray(codes, np.int64)
    _, c, h, w = codes.shape
    cb = blocks(c, n)
    full = np.full((cb * n, h, w), int(fill), np.int64)
    full[:c] = codes[0]
    return (full.reshape(cb, n, h, w).transpose(0, 2, 3, 1) & 0xFF).astype(np.uint8)


def from_device(raw, c: int, h: int, w: int, n: int, signed: bool) -> np.ndarray:
    """bytes [CB, H, W, N] -> int codes [1, C, H, W]."""
    cb = blocks(c, n)
    arr = np.asarray(raw, np.uint8).reshape(cb, h, w, n)
    vals = arr.view(np.int8) if signed else arr
    return vals.astype(np.int64).transpose(0, 3, 1, 2).reshape(1, cb * n, h, w)[:, :c]


def param_rows(bias, mult, shift, n: int) -> np.ndarray:
    """Per-channel (bias, M, shift) -> parameter rows [CB, N*8] bytes (padding channels: M = 0)."""
    bias, mult, shift = (np.asarray(v, np.int64).reshape(-1) for v in (bias, mult, shift))
    c = bias.size
    cb = blocks(c, n)
    rows = np.zeros((cb * n, isa.PARAM_ENTRY_BYTES), np.uint8)
    for name, values in (("bias", bias), ("mult", mult), ("shift", shift)):
        at, size, _ = isa.PARAM_FIELDS[name]
        rows[:c, at:at + size] = values.astype(f"<i{size}").view(np.uint8).reshape(-1, size)
    return rows.reshape(cb, n * isa.PARAM_ENTRY_BYTES)


def dense_tiles(weight, n: int) -> np.ndarray:
    """Conv weight [Co, Ci, kh, kw] -> tiles [CBo, CBi, kh*kw, N, N] int8 (tile[j, k] = w[o=j, i=k])."""
    co, ci, kh, kw = weight.shape
    cbo, cbi = blocks(co, n), blocks(ci, n)
    full = np.zeros((cbo * n, cbi * n, kh, kw), np.int64)
    full[:co, :ci] = weight
    t = full.reshape(cbo, n, cbi, n, kh * kw).transpose(0, 2, 4, 1, 3)
    return t.astype(np.int8)


def depthwise_tiles(weight, n: int) -> np.ndarray:
    """Depthwise weight [C, 1, kh, kw] -> tap-row tiles [CB, ceil(kh*kw / N), N, N] int8.

    Row r of tile t of a channel block holds tap t*N + r for the block's N channels (`tile[r, c]`),
    the weight row the depthwise gemm mode (`dw=1`, `dw_row=r`) broadcasts over N output pixels;
    rows past the last tap are zero. A 7x7 kernel takes 7 tiles per block instead of 49."""
    c, _, kh, kw = weight.shape
    cb, taps = blocks(c, n), kh * kw
    rows = np.zeros((cb * n, blocks(taps, n) * n), np.int64)       # [channel, tap row]
    rows[:c, :taps] = np.asarray(weight).reshape(c, taps)
    return rows.reshape(cb, n, -1, n).transpose(0, 2, 3, 1).astype(np.int8)   # [cb, tile, row, lane]


def transposed_tiles(weight, n: int) -> np.ndarray:
    """ConvTranspose weight [Ci, Co, kh, kw] -> tiles [CBo, CBi, kh*kw, N, N] int8."""
    return dense_tiles(np.asarray(weight).transpose(1, 0, 2, 3), n)


def words(nbytes: int) -> int:
    return -(-int(nbytes) // isa.WORD_BYTES)
