"""SALE in ONNX: the `ai.edgekit::SaleAttention` custom op, its export and its onnxruntime kernel.

Node contract (domain ai.edgekit, version 1):
  inputs   q, k, v  float32 [B, H, T, Dh] (RoPE applied; causal attention)
           taus     float32 [H]  per-head thresholds (0 = dense head)
  output   out      float32 [B, H, T, Dh]
  attributes (int)  block_q, block_k, sink_blocks, window_blocks,
                    dense_fallback (1 = ignore taus and run dense causal attention)

Export: the zoo LM's attention slots are replaced by a module that runs the
torch custom op `torch.ops.edgekit.sale_attention` eagerly and emits the node
through `torch.onnx.ops.symbolic` under the dynamo exporter; the thresholds
become an initializer.
Run: onnxruntime-extensions registers a Python implementation of the op,
backed by the compiled kernel (kernel.cc); `make_session` builds an
InferenceSession with it. The dense fallback is the node attribute (flip it
in a file with `set_dense_fallback`) or, at run time, EDGEKIT_SALE_DENSE=1.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from edgekit.errors import EdgekitError

from .config import SaleConfig, SalePlan
from .reference import dense_causal_attention, sale_attention_reference

DOMAIN = "ai.edgekit"
OP_TYPE = "SaleAttention"
OP_VERSION = 1
INT_ATTRS = ("block_q", "block_k", "sink_blocks", "window_blocks", "dense_fallback")
DENSE_ENV = "EDGEKIT_SALE_DENSE"


def run_sale(q, k, v, taus, block_q, block_k, sink_blocks, window_blocks, dense_fallback) -> torch.Tensor:
    """The op's semantics on torch tensors (shared by the torch op and the onnxruntime kernel)."""
    if dense_fallback or os.environ.get(DENSE_ENV, "0") not in ("", "0"):
        return dense_causal_attention(q, k, v)
    from . import kernel

    cfg = SaleConfig(int(block_q), int(block_k), int(sink_blocks), int(window_blocks))
    taus = [float(t) for t in torch.as_tensor(taus).reshape(-1)]
    if kernel.supports(q, cfg):
        return kernel.sale_attention_fast(q, k, v, cfg, taus=taus)
    return sale_attention_reference(q, k, v, cfg, taus=taus)


# ------------------------------------------------------------------ torch op


@torch.library.custom_op("edgekit::sale_attention", mutates_args=())
def sale_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, taus: torch.Tensor,
                      block_q: int, block_k: int, sink_blocks: int, window_blocks: int,
                      dense_fallback: int) -> torch.Tensor:
    return run_sale(q, k, v, taus, block_q, block_k, sink_blocks, window_blocks, dense_fallback).contiguous()


@sale_attention_op.register_fake
def _(q, k, v, taus, block_q, block_k, sink_blocks, window_blocks, dense_fallback):
    return torch.empty_like(q)


class SaleOpAttention(torch.nn.Module):
    """Attention slot that calls the custom op (what gets exported)."""

    def __init__(self, cfg: SaleConfig, heads: int, dense_fallback: bool = False):
        super().__init__()
        self.cfg, self.dense_fallback = cfg, int(bool(dense_fallback))
        self.register_buffer("taus", torch.tensor(cfg.head_taus(heads), dtype=torch.float32))

    def forward(self, q, k, v):
        c = self.cfg
        if torch.onnx.is_in_onnx_export():  # the node itself, attributes carried as written
            attrs = {"block_q": c.block_q, "block_k": c.block_k, "sink_blocks": c.sink_blocks,
                     "window_blocks": c.window_blocks, "dense_fallback": self.dense_fallback}
            return torch.onnx.ops.symbolic(f"{DOMAIN}::{OP_TYPE}", (q, k, v, self.taus), attrs,
                                           dtype=q.dtype, shape=q.shape, version=OP_VERSION)
        return torch.ops.edgekit.sale_attention(q, k, v, self.taus, c.block_q, c.block_k, c.sink_blocks,
                                                c.window_blocks, self.dense_fallback)


def install_export_slots(model, plan: SalePlan, dense_fallback: bool = False) -> None:
    """Replace each layer's attention with the custom-op slot carrying that layer's thresholds."""
    from .attention import attention_slots

    slots = attention_slots(model)
    if len(slots) != plan.layers:
        raise EdgekitError(f"SALE plan has {plan.layers} layers but the model has {len(slots)}")
    for i, slot in enumerate(slots):
        slot.attention = SaleOpAttention(plan.layer(i), slot.heads, dense_fallback)


def export_sale_lm(model, plan: SalePlan, path, seq_len: int, dense_fallback: bool = False,
                   opset: int = 21, check: bool = True) -> dict:
    """Export a zoo-style LM with SALE custom-op attention to `path` (atomic); returns a summary.

    With `check`, the file is run in onnxruntime (custom op registered) on
    random tokens and compared with the PyTorch model using the same op.
    """
    import copy
    import logging
    import warnings

    import onnx

    from edgekit.fileio import atomic_path

    model = copy.deepcopy(model).eval()
    install_export_slots(model, plan, dense_fallback)
    vocab = model.cfg.vocab_size if hasattr(model, "cfg") else 128
    tokens = torch.randint(0, vocab, (1, int(seq_len)), generator=torch.Generator().manual_seed(0))
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (tokens,), dynamo=True, opset_version=opset,
                                        input_names=["tokens"], output_names=["logits"],
                                        external_data=False,
                                        optimize=True, verbose=False)
    except Exception as exc:  # the exporter raises many types; name the model and the cause
        raise EdgekitError(f"SALE LM export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    proto = program.model_proto
    onnx.checker.check_model(proto)
    nodes = [n for n in proto.graph.node if n.domain == DOMAIN]
    summary = {"path": str(path), "sale_nodes": len(nodes), "seq_len": int(seq_len),
               "dense_fallback": bool(dense_fallback)}
    if check:
        session = make_session(proto)
        got = session.run(None, {"tokens": tokens.numpy()})[0]
        with torch.no_grad():
            want = model(tokens).numpy()
        summary["max_abs_diff"] = float(np.abs(got - want).max())
        if not summary["max_abs_diff"] <= 1e-3:
            raise EdgekitError(f"SALE LM export: onnxruntime differs from PyTorch by "
                               f"{summary['max_abs_diff']:.3g} on logits [1, {seq_len}, {vocab}]")
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return summary


# ------------------------------------------------------------------ onnxruntime


_REGISTERED = False


def register_ort_op() -> str:
    """Register the Python implementation with onnxruntime-extensions; returns its library path."""
    global _REGISTERED
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError:
        raise EdgekitError("running ai.edgekit::SaleAttention in onnxruntime needs onnxruntime-extensions "
                           "(pip install onnxruntime-extensions==0.15.2)") from None
    if not _REGISTERED:
        f = PyCustomOpDef.dt_float

        @onnx_op(op_type=f"{DOMAIN}::{OP_TYPE}", inputs=[f, f, f, f], outputs=[f],
                 attrs={name: PyCustomOpDef.dt_int64 for name in INT_ATTRS})
        def sale_attention_ort(q, k, v, taus, **attrs):
            t = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in (q, k, v)]
            return run_sale(*t, taus, **{n: int(attrs.get(n, 0)) for n in INT_ATTRS}).numpy()

        _REGISTERED = True
    return get_library_path()


def make_session(model, threads: int | None = None):
    """onnxruntime InferenceSession (CPU) for a file/proto that may contain SaleAttention nodes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.register_custom_ops_library(register_ort_op())
    if threads:
        options.intra_op_num_threads = int(threads)
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def set_dense_fallback(src, dst, enabled: bool = True) -> int:
    """Copy ONNX file `src` to `dst` with every SaleAttention node's dense_fallback set; returns the count."""
    import onnx
    from onnx import helper

    from edgekit.fileio import atomic_path

    try:
        proto = onnx.load(str(src))
    except Exception as exc:
        raise EdgekitError(f"cannot read ONNX file {src}: {exc}") from None
    count = 0
    for node in proto.graph.node:
        if node.domain == DOMAIN and node.op_type == OP_TYPE:
            kept = [a for a in node.attribute if a.name != "dense_fallback"]
            del node.attribute[:]
            node.attribute.extend(kept + [helper.make_attribute("dense_fallback", int(bool(enabled)))])
            count += 1
    if count == 0:
        raise EdgekitError(f"{src} has no {DOMAIN}::{OP_TYPE} node")
    with atomic_path(Path(dst)) as tmp:
        onnx.save(proto, str(tmp))
    return count
