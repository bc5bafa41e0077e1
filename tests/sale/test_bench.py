"""tools/bench_sparse_attention.py: JSON and table output on a small length (no timing checks)."""
import json

import pytest


@pytest.fixture(scope="module")
def bench(load_tool):
    return load_tool("bench_sparse_attention")


SMALL = ["--heads", "2", "--head-dim", "16", "--block", "32", "--repeats", "1", "--threads", "1"]


def test_json_for_one_length(bench, capsys):
    assert bench.main(["--seq", "512", "--json", *SMALL]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("speedup", "rel_error", "density", "overhead", "dense_ms", "sparse_ms", "taus"):
        assert key in result
    assert result["seq"] == 512 and 0 < result["density"] <= 1
    assert 0 <= result["rel_error"] <= result["error_bound"] * 2
    assert result["speedup"] > 0 and result["overhead"] >= 0


def test_markdown_table_and_bad_arguments(bench, capsys):
    assert bench.main(["--seq", "256,384", "--no-lm", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "| tokens | dense ms |" in out and "| 384 |" in out
    assert bench.main(["--seq", "abc", *SMALL]) == 2
    assert "expected integers" in capsys.readouterr().err
