"""SALE as a drop-in attention function `fn(q, k, v) -> out` for models.

`SaleAttention(cfg)` picks the compiled kernel when the shapes allow it and
the reference otherwise; `apply_plan(model, plan)` installs one per layer
(per-layer thresholds) in a model with `blocks[i].attn.attention` slots, the
zoo LM's layout, falling back to `model.set_attention` for a one-layer plan.
"""
from __future__ import annotations

import torch

from edgekit.errors import EdgekitError

from .config import SaleConfig, SalePlan
from .reference import dense_causal_attention, sale_attention_reference

BACKENDS = ("auto", "kernel", "reference", "dense")


class SaleAttention:
    """Causal SALE attention with fixed config; accumulates kept/causal block counts."""

    def __init__(self, cfg: SaleConfig, backend: str = "auto", threads: int | None = None):
        if backend not in BACKENDS:
            raise EdgekitError(f"unknown SALE backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        self.cfg, self.backend, self.threads = cfg, backend, threads
        self.kept_blocks = 0
        self.causal_blocks = 0

    @property
    def density(self) -> float:
        return self.kept_blocks / max(self.causal_blocks, 1)

    def _use_kernel(self, q) -> bool:
        from . import kernel

        if self.backend == "kernel":
            return True
        return self.backend == "auto" and not q.requires_grad and kernel.supports(q, self.cfg)

    def __call__(self, q, k, v):
        if self.backend == "dense":
            return dense_causal_attention(q, k, v)
        if self._use_kernel(q):
            from .kernel import sale_attention_fast

            out, stats = sale_attention_fast(q, k, v, self.cfg, threads=self.threads, return_stats=True)
            self.kept_blocks += int(stats.kept_blocks.sum())
            self.causal_blocks += stats.causal_blocks * len(stats.kept_blocks)
            return out
        out, stats = sale_attention_reference(q, k, v, self.cfg, return_stats=True)
        self.kept_blocks += int(stats.keep.sum())
        self.causal_blocks += int(stats.causal.sum()) * q.shape[0] * q.shape[1]
        return out


def attention_slots(model) -> list:
    """The per-layer attention modules of a zoo-style model (`blocks[i].attn`)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(b, "attn") and hasattr(b.attn, "attention") for b in blocks):
        raise EdgekitError(f"{type(model).__name__} has no per-layer attention slots "
                           "(expected model.blocks[i].attn.attention)")
    return [b.attn for b in blocks]


def apply_plan(model, plan: SalePlan | SaleConfig | None, backend: str = "auto",
               threads: int | None = None) -> list[SaleAttention]:
    """Install SALE attention per layer (None = restore dense); returns the installed functions."""
    if plan is None:
        model.set_attention(None)
        return []
    if isinstance(plan, SaleConfig):
        fn = SaleAttention(plan, backend, threads)
        model.set_attention(fn)
        return [fn]
    slots = attention_slots(model)
    if len(slots) != plan.layers:
        raise EdgekitError(f"SALE plan has {plan.layers} layers but the model has {len(slots)}")
    fns = [SaleAttention(plan.layer(i), backend, threads) for i in range(plan.layers)]
    for slot, fn in zip(slots, fns):
        slot.attention = fn
    return fns


def plan_density(fns: list[SaleAttention]) -> float:
    kept = sum(f.kept_blocks for f in fns)
    return kept / max(sum(f.causal_blocks for f in fns), 1)


@torch.no_grad()
def capture_qkv(model, token_batches) -> list[list[tuple]]:
    """Run `model` densely on each tokens tensor; return per layer the (q, k, v) it saw."""
    slots = attention_slots(model)
    captured: list[list[tuple]] = [[] for _ in slots]
    saved = [s.attention for s in slots]

    def recorder(i):
        def fn(q, k, v):
            captured[i].append((q.detach().clone(), k.detach().clone(), v.detach().clone()))
            return dense_causal_attention(q, k, v)
        return fn

    try:
        for i, slot in enumerate(slots):
            slot.attention = recorder(i)
        for tokens in token_batches:
            model(tokens)
    finally:
        for slot, fn in zip(slots, saved):
            slot.attention = fn
    return captured
