"""A documented synthetic model of LLM prefill attention (peaked + local + sinks).

Random Q/K give near-uniform attention where nothing can be skipped, which is
not what long-context LLM heads look like. This generator reproduces the
structure SALE exploits, with seeded randomness:

- a large shared key offset (LLM keys have a big mean component; it is why
  SALE mean-centres before quantizing) and a query offset;
- RoPE on a content vector shared by Q and K: q_i.k_j ~ sum_f cos(w_f (i-j)),
  a peak at short distances that decays (local attention);
- an attention sink: token 0's key points along the mean query;
- retrieval: every query copies (with weight `needle`) the content of one of
  a few "needle" keys far back, so some distant blocks matter;
- per-token noise.

It is what the benchmark calls "synthetic" attention; the alternative is Q/K/V
captured from the trained tiny LM (see tools/bench_sparse_attention.py).
"""
from __future__ import annotations

import math

import torch


def structured_qkv(seq_len: int, heads: int = 8, head_dim: int = 64, batch: int = 1, seed: int = 0,
                   local: float = 7.0, needle: float = 19.0, sink: float = 19.0, needles: int = 32,
                   noise: float = 0.22, key_offset: float = 20.0, periods=(8.0, 512.0), head_seed: int = 0):
    """Q, K, V [batch, heads, seq_len, head_dim] float32 with LLM-like attention structure.

    `local`, `needle`, `sink` are the peak logits (after the 1/sqrt(Dh) scale)
    of each component; `noise` is the per-dim std of Q and K noise; RoPE
    periods are log-spaced over `periods` tokens (local decay length). Heads
    get strengths scaled by 0.5..1.1 so that per-head calibration has
    something to find (weaker heads are more diffuse).
    """
    if head_dim % 8:
        raise ValueError("structured_qkv needs head_dim divisible by 8")
    g = torch.Generator().manual_seed(seed)
    B, H, T, D = batch, heads, seq_len, head_dim
    s = math.sqrt(D)
    # Head identity (how peaked each head is) is part of the "model", fixed by
    # `head_seed`; `seed` draws the "input" (phases, needles, noise).
    strength = (0.5 + 0.6 * torch.rand(H, generator=torch.Generator().manual_seed(head_seed))).view(1, H, 1, 1)
    d_loc, d_ndl = D // 2, D // 4          # subspaces: local | needles | sink
    q = torch.zeros(B, H, T, D)
    k = torch.zeros(B, H, T, D)
    # Local: q_i = a R(i) c, k_j = a R(j) c  ->  logit = a^2/s * mean_p cos(w_p (i - j)).
    half = d_loc // 2
    omega = 2 * math.pi / torch.logspace(math.log10(periods[0]), math.log10(periods[1]), half, dtype=torch.float64)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * omega[None, :]
    phase = 2 * math.pi * torch.rand(B, H, 1, half, generator=g, dtype=torch.float64)
    rot = torch.cat([torch.cos(ang + phase), torch.sin(ang + phase)], dim=-1).float() / math.sqrt(half)
    a = torch.sqrt(local * s * strength)
    q[..., :d_loc] = a * rot
    k[..., :d_loc] = a * rot
    # Needles: unit directions; needle keys carry one, each query asks for one.
    u = torch.randn(B, H, needles, d_ndl, generator=g)
    u = u / u.norm(dim=-1, keepdim=True)
    b = torch.sqrt(needle * s * strength)
    pos = torch.randint(1, max(T, 2), (B, H, needles), generator=g)
    sub = k[..., d_loc:d_loc + d_ndl]
    sub.scatter_add_(2, pos[..., None].expand(B, H, needles, d_ndl), (b * u).expand(B, H, needles, d_ndl).contiguous())
    pick = torch.randint(0, needles, (B, H, T), generator=g)
    q[..., d_loc:d_loc + d_ndl] = b * torch.gather(u, 2, pick[..., None].expand(B, H, T, d_ndl))
    # Sink: every query shares one direction that only token 0's key carries.
    e = torch.randn(B, H, 1, D - d_loc - d_ndl, generator=g)
    e = e / e.norm(dim=-1, keepdim=True)
    c = torch.sqrt(sink * s * strength)
    q[..., d_loc + d_ndl:] = c * e
    k[:, :, :1, d_loc + d_ndl:] += c * e
    # Noise, a large shared key offset (softmax-invariant, but it stretches the
    # int4 grid unless K is mean-centred), and a random basis so no
    # component sits on its own channels.
    q = q + noise * torch.randn(B, H, T, D, generator=g)
    k = k + noise * torch.randn(B, H, T, D, generator=g)
    k = k + key_offset * torch.randn(B, H, 1, D, generator=g) / s
    basis, _ = torch.linalg.qr(torch.randn(H, D, D, generator=g))
    q, k = q @ basis, k @ basis
    v = torch.randn(B, H, T, D, generator=g)
    return q.contiguous(), k.contiguous(), v.contiguous()
