"""Per-head threshold calibration: the halving ladder, the dense cut-off, saving."""
import json

import pytest
import torch

from edgekit.errors import EdgekitError
from edgekit.models.sale import DENSE_TAU, TAU_START, SaleConfig, SalePlan, calibrate
from edgekit.models.sale.calibrate import calibrate_heads
from edgekit.models.sale.synthetic import structured_qkv


def test_ladder_and_dense_cutoff(monkeypatch):
    # Fake error model: head 0 meets the bound at once, head 1 after halving to 0.001,
    # head 2 never (-> dense).
    def fake_errors(samples, dense, cfg, heads, taus, backend):
        table = {0: lambda t: 0.0, 1: lambda t: 10 * t, 2: lambda t: 1.0}
        return torch.tensor([table[h](t) for h, t in zip(heads, taus)], dtype=torch.float64)

    monkeypatch.setattr(calibrate, "_head_errors", fake_errors)
    q = torch.zeros(1, 3, 64, 16)
    taus, errors = calibrate_heads([(q, q, q)], SaleConfig(block_q=16, block_k=16), error_bound=0.01)
    assert taus == [TAU_START, 0.001, 0.0]
    assert errors[0] == 0.0 and errors[1] == pytest.approx(0.01) and errors[2] == 0.0
    assert TAU_START / 2 ** 6 >= DENSE_TAU > TAU_START / 2 ** 7


def test_calibrated_heads_meet_the_bound():
    cal = structured_qkv(1024, heads=4, head_dim=32, seed=0)
    cfg = SaleConfig()
    bound = 0.01
    taus, errors = calibrate_heads([cal], cfg, error_bound=bound)
    assert all(e <= bound for e in errors)
    assert all(t == 0 or (TAU_START / t) in {2.0 ** i for i in range(7)} for t in taus)
    assert any(t > 0 for t in taus)


def test_plan_round_trip(tmp_path):
    plan = SalePlan(SaleConfig(block_q=32, block_k=32), [[0.008, 0.0], [0.002, 0.001]], 0.01, {"samples": 2})
    path = tmp_path / "plan.json"
    plan.save(path)
    back = SalePlan.load(path)
    assert back == plan and back.layer(1).taus == (0.002, 0.001) and back.dense_heads() == 1
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(EdgekitError, match="not an edgekit SALE plan"):
        SalePlan.load(tmp_path / "bad.json")
    with pytest.raises(EdgekitError, match="cannot read SALE plan"):
        SalePlan.load(tmp_path / "missing.json")


def test_calibrate_lm_cli_help_and_missing_checkpoint(tmp_path, monkeypatch, capsys):
    from edgekit.models.sale import lm
    from edgekit.train import sale

    with pytest.raises(SystemExit) as exc:
        sale.main(["--help"])
    assert exc.value.code == 0 and "calibrate-lm" in capsys.readouterr().out
    with pytest.raises(EdgekitError, match="SALE plan .* is missing"):
        lm.load_plan(tmp_path / "none.json")
