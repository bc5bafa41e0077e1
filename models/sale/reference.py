"""SALE reference operator: every step written out in PyTorch, O(T^2) memory.

This is the definition the fast kernel (kernel.cc) is tested against. Steps,
for each head and query block b (rows i) against key block c (keys j):

1. Mean-centre Q and K over the sequence, quantize each to symmetric int4
   with one scale per block (qi = round(qc / sq_b), |qi| <= 7).
2. Correction: q.k = qc.kc + q.kbar + qbar.k - qbar.kbar exactly, so the
   estimated logit is  s~_ij = scale * (sq_b sk_c (qi_i . ki_j) + r_i + c_j)
   with a per-row term r_i = q_i.kbar and a per-key term c_j = qbar.k_j -
   qbar.kbar, both computed in float (O(T D)).
3. Exact attention over the forced blocks (sink blocks + local window +
   diagonal) gives each row's max m_i and sum l_i.
4. Relative Attention Score test in logit space: key block c passes row i if
   max_j s~_ij >= m_i + ln(tau_h l_i)  (i.e. exp(s~ - m) / l >= tau).
5. Block selection: keep c if any row of the query block passes (OR-reduce).
6. Exact causal attention over forced + kept blocks only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from edgekit.errors import EdgekitError

from .config import SaleConfig

INT4_MAX = 7  # symmetric grid [-7, 7]: the int4 value -8 is never produced


@dataclass
class SaleStats:
    """What the block selection did: kept/causal block counts and the masks."""

    keep: torch.Tensor      # bool [B, H, nq, nk]: key blocks attended per query block
    causal: torch.Tensor    # bool [nq, nk]: blocks with at least one causal pair
    forced: torch.Tensor    # bool [nq, nk]: sink + window + diagonal blocks

    @property
    def density(self) -> float:
        """Kept blocks / causal blocks over all batches and heads."""
        total = self.causal.sum().item() * self.keep.shape[0] * self.keep.shape[1]
        return self.keep.sum().item() / max(total, 1)

    def head_density(self) -> torch.Tensor:
        """[H] density per head (averaged over the batch)."""
        kept = self.keep.float().sum(dim=(0, 2, 3))
        return kept / (self.causal.sum().item() * self.keep.shape[0])


def check_qkv(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise EdgekitError(f"SALE attention: {name} must be [B, H, T, Dh], got shape {tuple(t.shape)}")
    if q.shape != k.shape or k.shape != v.shape:
        raise EdgekitError(f"SALE attention: q, k, v shapes differ: {tuple(q.shape)}, "
                           f"{tuple(k.shape)}, {tuple(v.shape)}")


def block_masks(seq_len: int, cfg: SaleConfig):
    """(causal, forced) bool [nq, nk] block masks for a sequence of seq_len tokens."""
    nq = math.ceil(seq_len / cfg.block_q)
    nk = math.ceil(seq_len / cfg.block_k)
    b = torch.arange(nq)
    first_row = b * cfg.block_q
    last_row = torch.clamp((b + 1) * cfg.block_q, max=seq_len) - 1
    c = torch.arange(nk)
    causal = c[None, :] * cfg.block_k <= last_row[:, None]
    diag_lo = first_row // cfg.block_k - cfg.window_blocks  # local window start
    local = (c[None, :] >= diag_lo[:, None]) & causal
    sink = (c[None, :] < cfg.sink_blocks) & causal
    return causal, local | sink


def block_quantize_int4(x: torch.Tensor, block: int):
    """Symmetric int4 per block of `block` tokens: x [B,H,T,D] -> (ints as float, scales [B,H,nblk])."""
    B, H, T, D = x.shape
    nblk = math.ceil(T / block)
    pad = nblk * block - T
    xp = torch.nn.functional.pad(x, (0, 0, 0, pad)).view(B, H, nblk, block * D)
    amax = xp.abs().amax(dim=-1)
    scale = torch.where(amax > 0, amax / INT4_MAX, torch.ones_like(amax))
    # torch.round is round-half-even: the same grid as formats.quantize (ONNX QuantizeLinear).
    ints = torch.clamp(torch.round(xp / scale[..., None]), -INT4_MAX, INT4_MAX)
    return ints.view(B, H, nblk * block, D)[:, :, :T], scale


def centre(x: torch.Tensor):
    """Subtract the per-head mean over tokens (mean taken in float64, stored float32)."""
    mean = x.double().mean(dim=2, keepdim=True).float()
    return x - mean, mean


def estimate_logits(q, k, cfg: SaleConfig):
    """Step 1-2: the int4 estimate of the logits q.k / sqrt(D), [B, H, T, T] (no mask)."""
    D = q.shape[-1]
    qc, qbar = centre(q)
    kc, kbar = centre(k)
    qi, sq = block_quantize_int4(qc, cfg.block_q)
    ki, sk = block_quantize_int4(kc, cfg.block_k)
    # Integer dot products (exact in float64: |sum| <= 49 * D).
    dots = (qi.double() @ ki.double().transpose(-1, -2)).float()
    sq_rows = sq.repeat_interleave(cfg.block_q, dim=-1)[..., : q.shape[2]]
    sk_cols = sk.repeat_interleave(cfg.block_k, dim=-1)[..., : k.shape[2]]
    row_term = (q @ kbar.transpose(-1, -2))                     # [B,H,T,1]  q_i . kbar
    col_term = (qbar @ k.transpose(-1, -2)) - (qbar * kbar).sum(-1, keepdim=True)  # [B,H,1,T]
    est = dots * sq_rows[..., :, None] * sk_cols[..., None, :] + row_term + col_term
    return est / math.sqrt(D)


def _token_mask(block_mask, seq_len, cfg):
    """Expand a block mask [..., nq, nk] to a token mask [..., T, T]."""
    m = block_mask.repeat_interleave(cfg.block_q, dim=-2).repeat_interleave(cfg.block_k, dim=-1)
    return m[..., :seq_len, :seq_len]


def select_blocks(q, k, taus, cfg: SaleConfig):
    """Steps 1-5: bool keep mask [B, H, nq, nk] plus the masks it was built from."""
    B, H, T, D = q.shape
    causal_blk, forced_blk = block_masks(T, cfg)
    causal_tok = torch.ones(T, T, dtype=torch.bool).tril()
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    # Step 3: exact attention over the forced blocks -> row max m and row sum row_sum.
    forced_tok = _token_mask(forced_blk, T, cfg) & causal_tok
    s = logits.masked_fill(~forced_tok, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    row_sum = torch.exp(s - m).sum(dim=-1, keepdim=True)
    # Step 4: RAS test in logit space on the int4 estimate.
    tau = torch.as_tensor(taus, dtype=torch.float32).view(1, H, 1, 1)
    with torch.no_grad():
        threshold = m + torch.log(tau * row_sum)          # tau = 0 -> -inf: every block passes (dense head)
    est = estimate_logits(q, k, cfg)
    passes = (est >= threshold) & causal_tok
    # Step 5: OR over the rows of each query block and the keys of each key block.
    nq, nk = causal_blk.shape
    pad_t = (nq * cfg.block_q - T, nk * cfg.block_k - T)
    p = torch.nn.functional.pad(passes, (0, pad_t[1], 0, pad_t[0]))
    blk_pass = p.view(B, H, nq, cfg.block_q, nk, cfg.block_k).any(dim=5).any(dim=3)
    keep = (blk_pass | forced_blk) & causal_blk
    return keep, SaleStats(keep=keep, causal=causal_blk, forced=forced_blk), logits


def sale_attention_reference(q, k, v, cfg: SaleConfig | None = None, taus=None,
                             return_stats: bool = False):
    """SALE causal attention, q/k/v [B, H, T, Dh] float -> out [B, H, T, Dh] (+ SaleStats).

    `taus` overrides cfg.taus (one per head, 0 = dense head).
    """
    cfg = cfg or SaleConfig()
    check_qkv(q, k, v)
    q, k, v = q.float(), k.float(), v.float()
    H, T = q.shape[1], q.shape[2]
    taus = cfg.head_taus(H) if taus is None else [float(t) for t in taus]
    if len(taus) != H:
        raise EdgekitError(f"SALE attention: {len(taus)} thresholds for {H} heads")
    keep, stats, logits = select_blocks(q, k, taus, cfg)
    # Step 6: exact attention on kept blocks, causal inside them.
    attend = _token_mask(keep, T, cfg) & torch.ones(T, T, dtype=torch.bool).tril()
    probs = torch.softmax(logits.masked_fill(~attend, float("-inf")), dim=-1)
    out = probs @ v
    return (out, stats) if return_stats else out


def dense_causal_attention(q, k, v):
    """The dense baseline (what a dense head and the fallback compute)."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
