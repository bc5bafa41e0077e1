"""ai.edgekit::SaleAttention for `edgekit compile` (TVM Relax ONNX import).

`SaleAttentionConverter` is listed in `edgekit.compile.tvm.converters`. Two lowerings:

- "dense" (default, any target incl. arm64): exact causal attention in Relax
  ops (matmul, additive causal mask, softmax, matmul). The compiled library
  is self-contained; SALE's sparsity is not used. This is also what a node
  with dense_fallback=1 always gets.
- "kernel" (x86-64 host only, opt in with EDGEKIT_SALE_TVM=kernel): a
  `call_dps_packed("edgekit.sale_attention", ...)` into the compiled SALE CPU
  kernel, registered as a TVM global function by `register_packed_kernel()`
  (called on import). The process that runs the artifact must import this
  module too; a library built this way does not run on a bare TVM runtime.
"""
from __future__ import annotations

import math
import os

import numpy as np

from edgekit.errors import EdgekitError

LOWERING_ENV = "EDGEKIT_SALE_TVM"
PACKED_NAME = "edgekit.sale_attention"
PARAM_NAMES = ("block_q", "block_k", "sink_blocks", "window_blocks")


def _int_attr(attr, name, default=0) -> int:
    value = attr.get(name, default)
    return int(value.decode() if isinstance(value, bytes) else value)


def lowering_mode() -> str:
    mode = os.environ.get(LOWERING_ENV, "dense")
    if mode not in ("dense", "kernel"):
        raise EdgekitError(f"{LOWERING_ENV}={mode!r}: expected 'dense' or 'kernel'")
    return mode


def dense_relax(bb, q, k, v):
    """Exact causal attention on static [B, H, T, D] Relax tensors."""
    from tvm import relax

    op = relax.op
    shape = [int(d) for d in q.ty.shape]
    T, D = shape[2], shape[3]
    scores = op.matmul(q, op.permute_dims(k, [0, 1, 3, 2]))
    scores = op.multiply(scores, relax.const(1.0 / math.sqrt(D), "float32"))
    mask = np.triu(np.full((T, T), -np.inf, np.float32), k=1)   # 0 on and below the diagonal
    scores = op.add(scores, relax.const(mask, "float32"))
    return op.matmul(op.nn.softmax(scores, axis=-1), v)


def packed_relax(bb, q, k, v, taus, attr):
    from tvm import relax

    params = np.array([_int_attr(attr, n) for n in PARAM_NAMES], np.int64)
    return relax.call_dps_packed(PACKED_NAME, relax.Tuple([q, k, v, taus, relax.const(params, "int64")]),
                                 out_ty=q.ty)


class SaleAttentionConverter:
    """OnnxOpConverter protocol used by edgekit's importer: get_converter(opset) -> fn."""

    @classmethod
    def get_converter(cls, opset):
        return cls.convert

    @staticmethod
    def convert(bb, inputs, attr, params):
        q, k, v, taus = (bb.normalize(x) for x in inputs[:4])
        shape = getattr(q.ty, "shape", None)
        if shape is None or len(shape) != 4 or not all(isinstance(int(d), int) for d in shape):
            raise EdgekitError(f"SaleAttention: q must be a static [B, H, T, D] tensor, got {shape}")
        if _int_attr(attr, "dense_fallback") or lowering_mode() == "dense":
            return dense_relax(bb, q, k, v)
        return packed_relax(bb, q, k, v, taus, attr)


def _sale_packed(q, k, v, taus, params, out):
    """TVM packed function body: tensors arrive as DLPack-capable TVM tensors."""
    import torch

    from .config import SaleConfig
    from .kernel import sale_attention_fast

    tq, tk, tv = (torch.from_dlpack(t) for t in (q, k, v))
    p = torch.from_dlpack(params).tolist()
    cfg = SaleConfig(*[int(x) for x in p])
    result = sale_attention_fast(tq, tk, tv, cfg, taus=torch.from_dlpack(taus).tolist())
    torch.from_dlpack(out).copy_(result)


def register_packed_kernel() -> bool:
    """Register `edgekit.sale_attention` as a TVM global function (False without TVM)."""
    try:
        import tvm
    except ImportError:
        return False
    tvm.register_global_func(PACKED_NAME, _sale_packed, override=True)
    return True


register_packed_kernel()
