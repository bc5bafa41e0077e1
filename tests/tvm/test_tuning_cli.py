"""Tuning databases (a handful of trials on a tiny matmul) and the compile/run/bench commands."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tiny

from edgekit.cli import main


def test_tune_writes_a_database_that_later_compiles_reuse(tmp_path):
    from edgekit.compile import compile_model
    from edgekit.compile.tvm import tuning

    model = tiny.matmul_net(tmp_path / "mm.onnx")
    db = tmp_path / "db"
    meta = compile_model(model, "x86-64", tmp_path / "tuned", tune=4, tuning_db=db, committed_db=False,
                         tune_min_per_task=4)
    report = meta["tuning"]["report"]
    assert tuning.is_database(db)
    assert report["tasks"] == 1 and report["trials"] >= 1
    assert report["failed"] < report["trials"], report["first_errors"]
    assert meta["tuning"]["kernels_tuned"] == 1
    # a later compile with the same database applies the records without tuning
    again = compile_model(model, "x86-64", tmp_path / "reuse", tuning_db=db, committed_db=False)
    assert again["tuning"]["kernels_tuned"] == 1 and again["tuning"]["report"] is None
    untuned = compile_model(model, "x86-64", tmp_path / "plain", committed_db=False)
    assert untuned["tuning"]["kernels_tuned"] == 0
    # pruned to the fastest record per kernel (how committed databases are made): same coverage
    assert tuning.prune_database(db, tmp_path / "pruned") == (1, 1)
    best = min(json.loads(line)[1][1][0] for line in (db / tuning.DB_FILES[1]).read_text().splitlines())
    kept = json.loads((tmp_path / "pruned" / tuning.DB_FILES[1]).read_text())
    assert kept[0] == 0 and kept[1][1][0] == best
    pruned = compile_model(model, "x86-64", tmp_path / "from_pruned", tuning_db=tmp_path / "pruned",
                           committed_db=False)
    assert pruned["tuning"]["kernels_tuned"] == 1


def test_every_kernel_gets_the_trial_floor(tmp_path, capfd):
    """A budget smaller than the floor still tunes every kernel; extending the database later
    spends nothing on the floor again. MetaSchedule's step-by-step log stays in the log folder."""
    from edgekit.compile import compile_model

    model = tiny.two_matmul_net(tmp_path / "mm2.onnx")
    db = tmp_path / "db"
    meta = compile_model(model, "x86-64", tmp_path / "a", tune=1, tuning_db=db, committed_db=False,
                         tune_min_per_task=2)
    report = meta["tuning"]["report"]
    assert report["tasks"] == 2 and report["trials"] == 4, report
    assert meta["tuning"]["kernels_tuned"] == meta["tuning"]["kernels_total"] == 2
    again = compile_model(model, "x86-64", tmp_path / "b", tune=1, tuning_db=db, committed_db=False,
                          tune_min_per_task=2)
    assert again["tuning"]["report"]["trials"] <= 1
    console = capfd.readouterr()
    assert "[INFO]" not in console.out + console.err


def test_tune_without_database_folder_is_an_error(tmp_path, capsys):
    model = tiny.matmul_net(tmp_path / "mm.onnx")
    assert main(["compile", model, "-o", str(tmp_path / "o"), "--tune", "4"]) == 2
    assert "--tune needs --tuning-db" in capsys.readouterr().err
    assert main(["compile", model, "-o", str(tmp_path / "o"), "--tuning-db", str(tmp_path / "nope")]) == 2
    assert "not a tuning database" in capsys.readouterr().err


def test_cli_compile_run_bench(conv_onnx, tmp_path, capsys):
    out = tmp_path / "art"
    assert main(["compile", conv_onnx, "--target", "x86-64", "-o", str(out), "--no-committed-db", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["library"] == "model.so"

    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    assert np.load(tmp_path / "y.npy").shape == (1, 4)
    capsys.readouterr()

    assert main(["bench", str(out), "--compare", conv_onnx, "--repeat", "5", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runs"] == 5 and result["median_ms"] > 0 and result["ort_median_ms"] > 0
    assert result["p90_ms"] >= result["median_ms"]


def test_cli_errors_are_one_line(conv_artifact, tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 8, 8), np.float32))
    assert main(["run", str(conv_artifact), "--input", str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "expected shape [1, 3, 16, 16] float32, got shape [1, 3, 8, 8]" in err
    assert main(["run", str(tmp_path / "missing"), "--input", str(tmp_path / "bad.npy")]) == 2
    assert "no such artifact folder" in capsys.readouterr().err
    assert main(["bench", str(conv_artifact), "--device", "nohost"]) == 2
    assert "--device must be HOST:PORT" in capsys.readouterr().err


def test_run_image_input_writes_picture(conv_artifact, tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((40, 30, 3)) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    assert main(["run", str(conv_artifact), "--input", str(tmp_path / "in.png"),
                 "--output", str(tmp_path / "out.npz"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["outputs"]["y"]["shape"] == [1, 4]
    with np.load(tmp_path / "out.npz") as data:
        assert data["y"].shape == (1, 4)


def test_records_that_lose_to_the_default_schedule_give_way_to_its_trace(tmp_path, load_tool, capsys):
    """tools/prune_tuning_db.py --against-default: each record is timed against the default
    schedule; a replaced kernel keeps one record, the default schedule's trace, which later
    compiles apply as a tuned kernel, with outputs equal to onnxruntime's."""
    from pathlib import Path

    import onnxruntime as ort

    from edgekit.compile import compile_model
    from edgekit.compile.tvm import tuning
    from edgekit.runtime import open_session

    prune = load_tool("prune_tuning_db")
    model = tiny.matmul_net(tmp_path / "mm.onnx")
    db = tmp_path / "db"
    compile_model(model, "x86-64", tmp_path / "tuned", tune=2, tuning_db=db, committed_db=False,
                  tune_min_per_task=2)
    rows = prune.versus_default(db, [Path(model)], number=2, repeat=1)
    assert len(rows) == 1 and rows[0]["tuned_ms"] > 0 and rows[0]["default_ms"] > 0
    prune.replace_records(db, tmp_path / "replaced", {r["workload"]: r["record"] for r in rows})
    lines = (tmp_path / "replaced" / tuning.DB_FILES[1]).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])[1][1] == [rows[0]["default_ms"] / 1e3]
    meta = compile_model(model, "x86-64", tmp_path / "art", tuning_db=tmp_path / "replaced", committed_db=False)
    assert meta["tuning"]["kernels_tuned"] == meta["tuning"]["kernels_total"] == 1
    x = np.random.default_rng(0).standard_normal(meta["inputs"][0]["shape"]).astype(np.float32)
    with open_session(tmp_path / "art") as session:
        got = session.run({"x": x})
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(next(iter(got.values())), want, rtol=1e-5, atol=1e-5)
    # the command: the table, then the pruned copy (one kernel, one record, whichever won)
    assert prune.main([str(db), str(tmp_path / "out"), "--against-default", model]) == 0
    assert "keeps" in capsys.readouterr().out
    assert tuning.prune_database(tmp_path / "out", tmp_path / "again") == (1, 1)
