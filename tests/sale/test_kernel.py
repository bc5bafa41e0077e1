"""The compiled SALE kernel computes what the reference computes."""
import pytest
import torch

from edgekit.errors import EdgekitError
from edgekit.models.sale import SaleConfig, dense_causal_attention, sale_attention, sale_attention_reference
from edgekit.models.sale.kernel import causal_block_count, has_vnni, library_path
from edgekit.models.sale.synthetic import structured_qkv

CASES = [
    (700, 64, SaleConfig(block_q=64, block_k=64, sink_blocks=1, window_blocks=1)),
    (777, 32, SaleConfig(block_q=32, block_k=48, sink_blocks=2, window_blocks=2)),
    (520, 16, SaleConfig(block_q=128, block_k=64, sink_blocks=0, window_blocks=0)),
    (300, 64, SaleConfig(block_q=16, block_k=16, sink_blocks=1, window_blocks=3)),
]


@pytest.mark.parametrize("T,D,cfg", CASES)
def test_kernel_matches_reference(T, D, cfg):
    q, k, v = structured_qkv(T, heads=3, head_dim=D, seed=T)
    taus = [0.02, 0.002, 0.0]
    ref, rstats = sale_attention_reference(q, k, v, cfg, taus=taus, return_stats=True)
    out, kstats = sale_attention(q, k, v, cfg, taus=taus, threads=2, return_stats=True, return_mask=True)
    keep = torch.from_numpy(kstats.keep)
    # float rounding may flip a borderline block; the selections must agree almost everywhere
    assert (keep == rstats.keep).float().mean() > 0.99
    assert int(kstats.kept_blocks.sum()) == int(keep.sum())
    assert kstats.causal_blocks == int(rstats.causal.sum()) == causal_block_count(T, cfg)
    if torch.equal(keep, rstats.keep):
        torch.testing.assert_close(out, ref, atol=5e-5, rtol=1e-4)
    assert float((out - ref).norm() / ref.norm()) < 0.01


def test_dense_heads_match_sdpa_and_threads_agree():
    q, k, v = structured_qkv(640, heads=2, head_dim=64, seed=9)
    cfg = SaleConfig(taus=(0.0, 0.0))
    out1 = sale_attention(q, k, v, cfg, threads=1)
    out2 = sale_attention(q, k, v, cfg, threads=2)
    torch.testing.assert_close(out1, dense_causal_attention(q, k, v), atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(out1, out2)


def test_sparse_run_keeps_fewer_blocks_and_reports_phases():
    q, k, v = structured_qkv(2048, heads=2, head_dim=64, seed=11)
    _, stats = sale_attention(q, k, v, SaleConfig(taus=(0.008, 0.008)), threads=2, return_stats=True)
    assert 0 < stats.density < 0.9
    assert stats.estimate_s >= 0 and stats.exact_s > 0 and stats.prepare_s >= 0


def test_kernel_library_is_built_and_cached():
    path = library_path()
    assert path.is_file() and path == library_path()
    assert isinstance(has_vnni(), bool)


def test_unsupported_shapes_are_named():
    q = torch.randn(1, 1, 64, 24)
    with pytest.raises(EdgekitError, match="head dim 24"):
        sale_attention(q, q, q, SaleConfig())
