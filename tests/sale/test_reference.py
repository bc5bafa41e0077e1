"""SALE reference operator: every step behaves as the algorithm says."""
import numpy as np
import pytest
import torch

from edgekit.errors import EdgekitError
from edgekit.models.sale import SaleConfig, dense_causal_attention, sale_attention_reference
from edgekit.models.sale.reference import block_masks, block_quantize_int4, estimate_logits, select_blocks
from edgekit.models.sale.synthetic import structured_qkv
from edgekit.quant.formats import INT4, quantize


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_int4_block_quantizer_matches_formats():
    x = torch.randn(1, 2, 100, 16)
    ints, scale = block_quantize_int4(x, 32)
    for h in range(2):
        for b in range(scale.shape[-1]):
            rows = x[0, h, b * 32:(b + 1) * 32].numpy()
            want = quantize(rows, scale[0, h, b].item(), 0, INT4)
            np.testing.assert_array_equal(ints[0, h, b * 32:(b + 1) * 32].numpy(), want)
    assert ints.abs().max() <= 7


def test_estimate_tracks_exact_logits_despite_key_offset():
    q, k, _ = structured_qkv(256, heads=2, head_dim=32, seed=3, key_offset=200.0)
    exact = q @ k.transpose(-1, -2) / 32 ** 0.5
    est = estimate_logits(q, k, SaleConfig(block_q=32, block_k=32))
    assert rel(est, exact) < 0.15  # int4 estimate, mean-centred: the huge offset does not hurt


def test_correction_term_is_exact_without_quantization_error():
    # Centred Q and K that lie exactly on the int4 grid (rows paired with their negatives:
    # mean exactly 0, amax 7 -> scale 1), shifted by offsets representable in float32:
    # the only approximation left is the correction term, which must then be exact.
    g = torch.Generator().manual_seed(0)

    def on_grid():
        half = torch.randint(-7, 8, (1, 1, 32, 16), generator=g).float()
        half[..., 0, 0] = 7.0
        return torch.cat([half, -half], dim=2)

    qi, ki = on_grid(), on_grid()
    offset_q = torch.randint(-8, 8, (16,), generator=g).float() / 4
    offset_k = 3 + torch.randint(-8, 8, (16,), generator=g).float() / 4
    est = estimate_logits(qi + offset_q, ki + offset_k, SaleConfig(block_q=64, block_k=64))
    exact = (qi + offset_q) @ (ki + offset_k).transpose(-1, -2) / 4
    torch.testing.assert_close(est, exact, atol=1e-4, rtol=1e-5)


def test_zero_threshold_is_dense_attention():
    q, k, v = structured_qkv(300, heads=3, head_dim=16, seed=1)
    out = sale_attention_reference(q, k, v, SaleConfig(block_q=32, block_k=32, taus=(0, 0, 0)))
    torch.testing.assert_close(out, dense_causal_attention(q, k, v), atol=2e-5, rtol=1e-4)


def test_huge_threshold_keeps_only_sink_window_and_diagonal():
    q, k, v = (0.3 * torch.randn(1, 2, 512, 16, generator=torch.Generator().manual_seed(2)) for _ in range(3))
    cfg = SaleConfig(block_q=32, block_k=32, sink_blocks=2, window_blocks=1, taus=(0.99, 0.99))
    _, stats = sale_attention_reference(q, k, v, cfg, return_stats=True)
    causal, forced = block_masks(512, cfg)
    assert torch.equal(stats.keep[0, 0], forced) and torch.equal(stats.keep[0, 1], forced)
    # forced = causal blocks that are sinks or within one block before the diagonal
    b = 10
    assert forced[b].nonzero().flatten().tolist() == [0, 1, 9, 10]
    assert not causal[3, 4] and causal[4, 4]


def test_block_selection_is_or_over_query_rows():
    q, k, v = structured_qkv(1024, heads=1, head_dim=16, seed=4)
    tau = 0.03
    cfg = SaleConfig(block_q=64, block_k=64, taus=(tau,))
    keep, stats, logits = select_blocks(q, k, [tau], cfg)
    causal, forced = block_masks(1024, cfg)
    est = estimate_logits(q, k, cfg)
    outcomes = set()
    for b in (5, 11, 15):  # recompute the row-level RAS test and OR it by hand
        rows = slice(b * 64, (b + 1) * 64)
        allowed = forced[b].repeat_interleave(64)[None, :] & torch.ones(64, 1024, dtype=torch.bool).tril(b * 64)
        s = logits[0, 0, rows].masked_fill(~allowed, float("-inf"))
        m = s.amax(-1, keepdim=True)
        row_sum = torch.exp(s - m).sum(-1, keepdim=True)
        passes = est[0, 0, rows] >= m + np.log(tau) + torch.log(row_sum)
        for c in range(b + 1):
            if forced[b, c]:
                assert keep[0, 0, b, c]
            else:
                want = bool(passes[:, c * 64:(c + 1) * 64].any())
                assert bool(keep[0, 0, b, c]) == want
                outcomes.add(want)
    assert outcomes == {True, False}
    assert 0 < stats.density < 1


def test_causal_and_partial_blocks():
    q, k, v = structured_qkv(200, heads=2, head_dim=16, seed=5)
    cfg = SaleConfig(block_q=48, block_k=32, sink_blocks=1, window_blocks=0, taus=(0.004, 0.004))
    out = sale_attention_reference(q, k, v, cfg)
    v2 = v.clone()
    v2[:, :, 120:] += 10.0  # the future must not leak into rows < 120
    out2 = sale_attention_reference(q, k, v2, cfg)
    torch.testing.assert_close(out[:, :, :120], out2[:, :, :120])
    assert torch.isfinite(out).all()


def test_small_threshold_small_error_on_structured_attention():
    q, k, v = structured_qkv(1024, heads=4, head_dim=32, seed=6)
    out, stats = sale_attention_reference(q, k, v, SaleConfig(taus=(0.001,) * 4), return_stats=True)
    assert rel(out, dense_causal_attention(q, k, v)) < 0.05
    assert stats.density < 1.0


def test_bad_inputs_raise_one_line_errors():
    q = torch.randn(1, 2, 64, 16)
    with pytest.raises(EdgekitError, match="shapes differ"):
        sale_attention_reference(q, q, torch.randn(1, 2, 32, 16))
    with pytest.raises(EdgekitError, match="2 heads"):
        sale_attention_reference(q, q, q, SaleConfig(taus=(0.1, 0.1, 0.1)))
    with pytest.raises(EdgekitError, match="block_q"):
        SaleConfig(block_q=0)
    with pytest.raises(EdgekitError, match="taus"):
        SaleConfig(taus=(1.5,))
