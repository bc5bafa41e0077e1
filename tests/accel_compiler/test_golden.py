"""Compile small quantized CNNs for the accelerator and run them on the golden model, bit-exact vs intref."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.compile.accel import layout as L
from edgekit.compile.accel.compiler import compile_accel
from edgekit.errors import EdgekitError
from edgekit.hw.sim.model import CompiledModel, run_model


@pytest.mark.parametrize("name", ["mixed_w4a8", "mixed_w4a4", "wide_w4a8", "strips_w4a8", "channels_w4a8"])
@pytest.mark.parametrize("fusion", [True, False])
def test_bit_exact_on_golden(quantized, tmp_path, name, fusion):
    meta = compile_accel(quantized(name), tmp_path / "out", fusion=fusion)
    assert meta["fallback_ops"] == 0 and meta["segments"] >= 2
    result = run_model(tmp_path / "out", simulator="golden")
    assert result["first_mismatch"] is None
    assert result["bit_exact"] is True
    assert result["cycles"] > 0 and result["dram_bytes"] > 0
    for layer in result["layers"]:     # the array never does more useful work than it has steps for
        assert layer["macs"] <= layer["cycles"] * 64


def test_fusion_folds_residual_adds_and_cuts_dram(quantized, tmp_path):
    src = quantized("acts_w8a8")
    fused = compile_accel(src, tmp_path / "f")
    plain = compile_accel(src, tmp_path / "u", fusion=False)
    prog = CompiledModel(tmp_path / "f").meta
    assert len(prog["fused_adds"]) == 2 and plain["segments"] == fused["segments"] + 2
    a, b = run_model(tmp_path / "f"), run_model(tmp_path / "u")
    assert a["bit_exact"] and b["bit_exact"]
    assert b["dram_bytes"] >= 2 * a["dram_bytes"]
    assert a["cycles"] < b["cycles"]


def test_unsupported_ops_are_named_and_fallback_runs_them(quantized, tmp_path):
    src = quantized("sigmoid_w4a8")
    with pytest.raises(EdgekitError, match=r"Sigmoid.*n_sigmoid\d+.*--fallback cpu"):
        compile_accel(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    meta = compile_accel(src, tmp_path / "out", fallback="cpu")
    assert meta["fallback_ops"] == 1
    steps = CompiledModel(tmp_path / "out").meta["steps"]
    host = [s for s in steps if s["kind"] == "host" and s["fallback"]]
    assert [s["op_kind"] for s in host] == ["lut"]   # sigmoid: a table over its input codes
    # segments on both sides of the host step
    where = steps.index(host[0])
    assert any(s["kind"] == "accel" for s in steps[:where]) and any(s["kind"] == "accel" for s in steps[where:])
    assert run_model(tmp_path / "out")["bit_exact"]


def test_corrupted_weights_are_caught(quantized, tmp_path):
    """The check can fail: one flipped weight byte in the DRAM image breaks bit-exactness."""
    compile_accel(quantized("mixed_w4a8"), tmp_path / "out")
    prog = CompiledModel(tmp_path / "out")
    first = next(s for s in prog.meta["steps"] if s["kind"] == "accel")
    image = np.fromfile(tmp_path / "out" / "dram.bin", np.uint8)
    # byte 0 of the first weight tile: output channel 0 from input channel 0
    w = first["weights_addr"]
    image[w] = (int(image[w]) + 5) & 0xFF
    image.tofile(tmp_path / "out" / "dram.bin")
    result = run_model(tmp_path / "out")
    assert first["name"] and result["bit_exact"] is False and result["first_mismatch"] is not None


def test_array_option_changes_the_hardware(quantized, tmp_path):
    compile_accel(quantized("mixed_w4a8"), tmp_path / "a16", array=16)
    model = CompiledModel(tmp_path / "a16")
    assert model.program.hw["N"] == 16
    assert run_model(tmp_path / "a16")["bit_exact"]
    with pytest.raises(EdgekitError, match="array size"):
        compile_accel(quantized("mixed_w4a8"), tmp_path / "bad", array=5)


def test_layout_round_trip_and_tiles():
    rng = np.random.default_rng(0)
    codes = rng.integers(-8, 8, (1, 13, 3, 5))
    raw = L.to_device(codes, 8, fill=-3)
    assert raw.shape == (2, 3, 5, 8) and np.all(raw[1, :, :, 5:].view(np.int8) == -3)
    assert np.array_equal(L.from_device(raw, 13, 3, 5, 8, signed=True), codes)
    w = rng.integers(-8, 8, (12, 1, 3, 3))
    t = L.depthwise_tiles(w, 8)                    # tap-row tiles: tile t row r = tap 8t + r
    assert t.shape == (2, 2, 8, 8)
    assert t[1, 0, 4, 3] == w[11, 0, 1, 1] and t[1, 1, 0, 3] == w[11, 0, 2, 2]
    assert np.all(t[:, 1, 1:] == 0) and np.all(t[1, :, :, 4:] == 0)   # rows past tap 8, padding channels
    dense = L.dense_tiles(rng.integers(-8, 8, (9, 10, 1, 1)), 8)
    assert dense.shape == (2, 2, 1, 8, 8)


def test_cli_compile_and_simulate_json(quantized, tmp_path, capsys):
    from edgekit.cli import main

    src = quantized("mixed_w4a8")
    assert main(["compile", src, "--target", "accel", "-o", str(tmp_path / "f")]) == 0
    assert main(["compile", src, "--target", "accel", "--no-fusion", "-o", str(tmp_path / "u")]) == 0
    x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    capsys.readouterr()
    code = main(["simulate", str(tmp_path / "f"), "--golden", "--input", str(tmp_path / "x.npy"), "--json",
                 "--compare", str(tmp_path / "u"), "--plot", str(tmp_path / "layers.png")])
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert code == 0 and doc["bit_exact"] is True
    for key in ("cycles", "mac_utilization", "dram_bytes", "layers"):
        assert key in doc
    assert doc["compare"]["fusion"] is False and doc["dram_ratio_compare_over_this"] > 1
    assert (tmp_path / "layers.png").stat().st_size > 1000


def test_cli_errors_are_one_line(quantized, tmp_path, capsys):
    from edgekit.cli import main

    src = quantized("mixed_w4a8")
    assert main(["compile", src, "--target", "accel", "-o", str(tmp_path / "f")]) == 0
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 8, 8), np.float32))
    capsys.readouterr()
    assert main(["simulate", str(tmp_path / "f"), "--golden", "--input", str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[1, 3, 8, 8]" in err[0] and "[1, 3, 16, 16]" in err[0]
    assert main(["compile", quantized("sigmoid_w4a8"), "--target", "accel", "-o", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "n_sigmoid" in err[0] and not (tmp_path / "s").exists()
    assert main(["compile", src, "--target", "accel", "-o", str(tmp_path / "no" / "such" / "dir")]) == 2


def test_tilings_cover_bands_strips_groups_and_chunks(quantized, tmp_path):
    tilings = []
    for name in ("wide_w4a8", "strips_w4a8"):
        compile_accel(quantized(name), tmp_path / name)
        model = CompiledModel(tmp_path / name)
        out_of = {op.name: op.outputs[0] for op in model.qgraph.ops}
        for s in model.meta["steps"]:
            if "tiling" in s:
                tilings.append((s["tiling"], model.tensors[out_of[s["name"]]]))
    assert any(t["rows"] < shp.h for t, shp in tilings)         # several row bands
    assert any(t["cols"] < shp.w for t, shp in tilings)         # column strips
    assert any(t["out_blocks"] < -(-shp.c // 8) for t, shp in tilings)  # output-block groups


def test_static_cost_equals_golden_counters(quantized, tmp_path):
    from edgekit.compile.accel.cost import program_cost

    compile_accel(quantized("mixed_w4a8"), tmp_path / "out")
    static = program_cost(tmp_path / "out")
    run = run_model(tmp_path / "out", check=False)
    assert len(static["layers"]) == len(run["layers"])
    for s, g in zip(static["layers"], run["layers"]):
        assert (s["cycles"], s["dram_rd_bytes"], s["dram_wr_bytes"], s["insns"]) == \
            (g["cycles"], g["dram_read"], g["dram_written"], g["instructions"])


def test_w4_weights_travel_packed_and_w8_as_bytes(quantized, tmp_path):
    """4-bit weights sit in DRAM two per byte and are unpacked by the load unit (half the weight
    traffic); 8-bit weights stay bytes. Both stay bit-exact."""
    for name, packed in (("mixed_w4a8", True), ("acts_w8a8", False)):
        compile_accel(quantized(name), tmp_path / name)
        convs = [s for s in CompiledModel(tmp_path / name).meta["steps"] if "weights_addr" in s]
        assert convs and all(s["weights_packed_int4"] is packed for s in convs), name
        assert run_model(tmp_path / name)["bit_exact"] is True


def test_16_bit_wide_points_run_on_the_host(tmp_path):
    """polish's 16-bit wide points (tests/quant/test_wide_points.py): the ops reading or writing
    them are refused by name, and with --fallback cpu the host runs them bit-exactly."""
    import sys
    from pathlib import Path

    import onnx
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quant"))
    from tiny_models import OutlierBlock, export, outlier_feeds

    from edgekit.quant import pipeline as P

    torch.manual_seed(0)
    src = export(OutlierBlock(), (1, 12, 16), tmp_path / "outlier.onnx")
    q, _ = P.quantize(src, outlier_feeds(16), P.QuantConfig(weight_bits=4, act_bits=8, steps=[P.RTN(), P.Polish()]))
    onnx.save(q, tmp_path / "outlier.q.onnx")
    with pytest.raises(EdgekitError, match=r"gemm/Gemm \(16-bit activations.*add/Add \(16-bit activations"):
        compile_accel(tmp_path / "outlier.q.onnx", tmp_path / "out")
    meta = compile_accel(tmp_path / "outlier.q.onnx", tmp_path / "out", fallback="cpu")
    assert sum("16-bit" in r for r in meta["fallback_op_list"]) == 2
    assert run_model(tmp_path / "out")["bit_exact"]
