"""Build (g++, once, cached) and call the fast SALE CPU kernel in kernel.cc.

The kernel is a plain C ABI shared library compiled from source on first use
with the machine's g++ (-O3 -march=native -fopenmp) and loaded with ctypes, so
it needs neither torch headers nor downloads. The cache key is the source
hash + compiler flags + g++ version; builds write a temporary file and rename
it into place, so concurrent test workers never load a half-written library.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgekit.errors import EdgekitError

from .config import SaleConfig
from .reference import check_qkv

SOURCE = Path(__file__).with_name("kernel.cc")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC"]
_LOCK = threading.Lock()
_LIB = None


def cache_dir() -> Path:
    root = os.environ.get("EDGEKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgekit")
    return Path(root) / "sale"


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise EdgekitError("SALE fast kernel: no C++ compiler found (install g++ or set CXX)")
    return cxx


def library_path() -> Path:
    """Path of the compiled kernel, building it if needed."""
    cxx = _compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + version.encode()).hexdigest()[:16]
    target = cache_dir() / f"libsale_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".libsale.", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise EdgekitError(f"SALE fast kernel: {cxx} failed to compile {SOURCE.name}: {last}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load_library():
    global _LIB
    with _LOCK:
        if _LIB is None:
            lib = ctypes.CDLL(str(library_path()))
            ptr = ctypes.c_void_p
            lib.sale_forward.restype = ctypes.c_int
            lib.sale_forward.argtypes = [ptr, ptr, ptr, ptr] + [ctypes.c_int] * 8 + [ptr, ctypes.c_int, ptr, ptr, ptr]
            lib.sale_has_vnni.restype = ctypes.c_int
            _LIB = lib
    return _LIB


def has_vnni() -> bool:
    """Whether the estimation pass uses AVX512-VNNI int8 dot products on this machine."""
    return bool(load_library().sale_has_vnni())


@dataclass
class KernelStats:
    kept_blocks: np.ndarray   # [B*H] kept key blocks summed over query blocks
    causal_blocks: int        # causal blocks per head
    keep: np.ndarray | None   # [B, H, nq, nk] bool when requested
    prepare_s: float          # mean-centring + int4 quantization + layouts (wall)
    estimate_s: float         # int8 scoring + block selection (thread-seconds / threads)
    exact_s: float            # block-sparse exact attention (thread-seconds / threads)

    @property
    def density(self) -> float:
        return float(self.kept_blocks.sum()) / max(self.causal_blocks * len(self.kept_blocks), 1)

    def head_density(self, heads: int) -> np.ndarray:
        return self.kept_blocks.reshape(-1, heads).mean(axis=0) / max(self.causal_blocks, 1)


def supports(q: torch.Tensor, cfg: SaleConfig) -> bool:
    """Shapes the compiled kernel handles (head dim and key block multiples of 16)."""
    return q.shape[-1] % 16 == 0 and cfg.block_k % 16 == 0 and cfg.block_k <= 256


def causal_block_count(seq_len: int, cfg: SaleConfig) -> int:
    nq = -(-seq_len // cfg.block_q)
    return sum((min((b + 1) * cfg.block_q, seq_len) - 1) // cfg.block_k + 1 for b in range(nq))


def sale_attention_fast(q, k, v, cfg: SaleConfig | None = None, taus=None, threads: int | None = None,
                        return_stats: bool = False, return_mask: bool = False):
    """SALE causal attention with the compiled kernel; same contract as the reference."""
    cfg = cfg or SaleConfig()
    check_qkv(q, k, v)
    B, H, T, D = q.shape
    taus = cfg.head_taus(H) if taus is None else [float(t) for t in taus]
    if len(taus) != H:
        raise EdgekitError(f"SALE attention: {len(taus)} thresholds for {H} heads")
    if not supports(q, cfg):
        raise EdgekitError(f"SALE fast kernel needs head dim and block_k multiples of 16 (block_k <= 256), "
                           f"got head dim {D}, block_k {cfg.block_k}")
    lib = load_library()
    qc, kc, vc = (t.detach().float().contiguous() for t in (q, k, v))
    out = torch.empty_like(qc)
    tau_arr = np.ascontiguousarray(taus, dtype=np.float32)
    kept = np.zeros(B * H, np.int64)
    nq, nk = -(-T // cfg.block_q), -(-T // cfg.block_k)
    mask = np.zeros((B, H, nq, nk), np.uint8) if return_mask else None
    timings = np.zeros(3, np.float64)
    threads = threads or torch.get_num_threads()
    rc = lib.sale_forward(qc.data_ptr(), kc.data_ptr(), vc.data_ptr(), out.data_ptr(),
                          B * H, H, T, D, cfg.block_q, cfg.block_k, cfg.sink_blocks, cfg.window_blocks,
                          tau_arr.ctypes.data, int(threads), kept.ctypes.data,
                          mask.ctypes.data if mask is not None else None, timings.ctypes.data)
    if rc != 0:
        raise EdgekitError(f"SALE fast kernel failed (code {rc}) on q of shape {tuple(q.shape)}")
    out = out.to(q.dtype)
    if not return_stats:
        return out
    stats = KernelStats(kept, causal_block_count(T, cfg), mask.astype(bool) if mask is not None else None,
                        *timings.tolist())
    return out, stats
