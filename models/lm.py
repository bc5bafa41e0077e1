"""A small causal transformer language model with replaceable attention.

Pre-norm decoder blocks (LayerNorm, multi-head attention with rotary
position embeddings, GELU MLP). There is no learned position table and no
maximum length: RoPE angles are computed for whatever length comes in, so a
model trained at T tokens can be evaluated at 4T (the SALE work does).

Attention is a plain function `fn(q, k, v) -> out` on [B, H, T, Dh] tensors,
causal, applying its own 1/sqrt(Dh) scale. `model.set_attention(fn)` swaps
it in every layer (sparse attention, instrumentation); the default is
explicit dense causal attention that exports to plain ONNX ops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .registry import InputSpec, ZooEntry, register


@dataclass(frozen=True)
class LMConfig:
    vocab_size: int = 128
    dim: int = 128
    layers: int = 4
    heads: int = 8
    mlp_ratio: int = 4
    rope_base: float = 10000.0
    # Q/K/V biases (as in Qwen): a content-independent query/key component lets a head
    # attend by relative position alone (the previous-token heads retrieval is built on)
    qkv_bias: bool = True
    # token shift (RWKV's "time mix", the short causal conv of H3/Mamba): each position's
    # attention input also sees the previous token, so key-value retrieval needs one
    # attention layer instead of a two-layer induction circuit, which a tiny model on
    # 2 CPU cores did not form within thousands of steps
    token_shift: bool = True
    seq_len: int = 256  # the exported graph's (static) length; not a limit of the model


def dense_causal_attention(q, k, v):
    """softmax(q k^T / sqrt(Dh) + causal mask) v, written as plain ops.

    q, k, v: [B, H, T, Dh] (k and v may be longer than q: queries are then the
    last positions). Returns [B, H, Tq, Dh].
    """
    tq, tk = q.shape[-2], k.shape[-2]
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    query_pos = torch.arange(tk - tq, tk, device=q.device).unsqueeze(1)
    key_pos = torch.arange(tk, device=q.device).unsqueeze(0)
    scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def sdpa_causal(q, k, v):
    """Causal attention through torch's fused kernel: the same maths as `dense_causal_attention`,
    in O(T) memory (used for training and long-context evaluation)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[-2] == k.shape[-2])


def rope_tables(length: int, head_dim: int, base: float, device=None, dtype=torch.float32):
    """cos/sin tables [T, Dh] for rotate-half RoPE."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.dim // cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=cfg.qkv_bias)
        self.shift = nn.Parameter(torch.full((cfg.dim,), 0.5)) if cfg.token_shift else None
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attention: Callable = dense_causal_attention

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        if self.shift is not None:  # x_t + shift * x_{t-1}, per channel
            x = x + self.shift * F.pad(x, (0, 0, 1, 0))[:, :-1]
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = self.attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim))

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class CausalLM(nn.Module):
    """tokens int64 [B, T] -> logits float32 [B, T, V]."""

    output_names = ("logits",)

    def __init__(self, cfg: LMConfig):
        super().__init__()
        assert cfg.dim % cfg.heads == 0 and (cfg.dim // cfg.heads) % 2 == 0
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def set_attention(self, fn: Callable | None = None):
        """Use `fn(q, k, v) -> out` ([B, H, T, Dh], causal) in every layer; None = dense."""
        for block in self.blocks:
            block.attn.attention = fn or dense_causal_attention
        return self

    def forward(self, tokens):
        x = self.embed(tokens)
        head_dim = self.cfg.dim // self.cfg.heads
        cos, sin = rope_tables(tokens.shape[-1], head_dim, self.cfg.rope_base, x.device, x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.norm(x))


CONFIGS = {
    "tiny": LMConfig(),
    "small": LMConfig(vocab_size=8192, dim=512, layers=8, heads=8, seq_len=1024),
}


def _inputs(cfg: LMConfig):
    return [InputSpec("tokens", (1, cfg.seq_len), "int64")]


ENTRY = register(ZooEntry(
    name="lm", task="lm", configs=CONFIGS, factory=CausalLM, inputs=_inputs,
    outputs=lambda cfg: list(CausalLM.output_names),
    description="causal transformer LM (RoPE, replaceable attention function)"))
