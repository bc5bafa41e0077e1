"""Mixed precision with an accuracy gate (`--max-drop`): the gate holds on held-out data, the
fewest layers go to 8 bits, the method names the depthwise layers it promotes."""
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from edgekit.cli import main
from edgekit.eval.gate import TaskDrop
from edgekit.quant import pipeline as P
from edgekit.quant.mixed import CosineSimilarity, MixedPrecision, OutputError, Promotions, Top1Agreement, candidates
from edgekit.quant.ort import run, session


def dw_model(path):
    """conv 3->8, relu, depthwise 3x3 (8 groups), relu, conv 8->8: a MobileNet-style block."""
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    wd = rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.5
    wd[:2] *= 6.0  # a few strong depthwise filters: at 4 bits their channels lose the weak ones
    w3 = rng.standard_normal((8, 8, 1, 1)).astype(np.float32) * 0.3
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h1"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "wd", "bd"], ["h2"], name="dw", pads=[1, 1, 1, 1], group=8),
             helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="head")]
    inits = [numpy_helper.from_array(a, n) for n, a in
             (("w1", w1), ("b1", np.full(8, 0.1, np.float32)), ("wd", wd), ("bd", np.zeros(8, np.float32)),
              ("w3", w3), ("b3", np.zeros(8, np.float32)))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 3, 12, 12])],
                          [helper.make_tensor_value_info("y", 1, None)], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return str(path)


def calib_set(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(n)]


def ort_error(float_path, q_model, feeds) -> float:
    """Relative output error of the written QDQ model, run by onnxruntime."""
    fs, qs = session(float_path), session(q_model)
    num = sum(float(((run(fs, f)["y"] - run(qs, f)["y"]) ** 2).sum()) for f in feeds)
    den = sum(float((run(fs, f)["y"] ** 2).sum()) for f in feeds)
    return float(np.sqrt(num / den))


def rtn_config(**kw):
    return P.QuantConfig(steps=[P.RTN()], layer_samples=8, **kw)


def test_gate_holds_on_held_out_samples_of_the_written_model(tmp_path):
    path = dw_model(tmp_path / "dw.onnx")
    calib = calib_set(24)
    held_out = calib[8:]
    plain, _ = P.quantize(path, calib, rtn_config())
    before = ort_error(path, plain, held_out)
    gate = before / 2  # not met with every layer at 4 bits
    cfg = rtn_config()
    cfg.steps.append(MixedPrecision(max_drop=gate))
    q, rep = P.quantize(path, calib, cfg)
    d = rep["steps"][-1]["details"]
    assert d["met"] and d["samples"] == 16 and d["samples_kind"] == "held-out"
    assert d["drop_before"] == pytest.approx(before, rel=0.05) and d["drop_before"] > gate
    after = ort_error(path, q, held_out)
    assert after <= gate * 1.02 and after == pytest.approx(d["drop_after"], rel=0.05)
    # the fewest layers: one, the depthwise conv (the method finds it; nobody named it), and
    # the report says what kind of layer it is
    assert [(p["layer"], p["kinds"]) for p in d["promoted"]] == [("dw", ["@depthwise"])]
    assert d["promoted"][0]["gain"] > 0 and d["promoted"][0]["damage"] > 0
    assert rep["layers"]["dw"]["weight_bits"] == 8 and rep["layers"]["stem"]["weight_bits"] == 4
    assert d["weight_bytes"] < d["weight_bytes_all_8bit"]
    codes = {i.name: i.data_type for i in q.graph.initializer}
    assert codes["wd_quantized"] == onnx.TensorProto.INT8 if "wd_quantized" in codes else \
        sum(t == onnx.TensorProto.INT8 for t in codes.values()) >= 1


def test_a_gate_already_met_changes_nothing(tmp_path):
    path = dw_model(tmp_path / "dw.onnx")
    calib = calib_set(12)
    plain, _ = P.quantize(path, calib, rtn_config())
    cfg = rtn_config()
    cfg.steps.append(MixedPrecision(max_drop=0.99))
    q, rep = P.quantize(path, calib, cfg)
    d = rep["steps"][-1]["details"]
    assert d["met"] and d["promoted"] == [] and d["candidates"] == 0
    assert [numpy_helper.to_array(i).tobytes() for i in q.graph.initializer] == \
        [numpy_helper.to_array(i).tobytes() for i in plain.graph.initializer]


def test_promotions_undo_exactly(tmp_path):
    """Probing candidates leaves the plan as it was (weights, grids, bits, initializers)."""
    path = dw_model(tmp_path / "dw.onnx")
    calib = calib_set(12)
    cfg = P.QuantConfig.for_method("compensate", layer_samples=8)
    _, rep = P.quantize(path, calib, cfg)
    plan = rep["_plan"]
    snapshot = (dict(plan.params), {k: v.copy() for k, v in plan.weights_q.items()}, dict(plan.bits),
                {i.name: i.SerializeToString() for i in plan.model.graph.initializer})
    promo = Promotions(plan, onnx.load(path), {})
    every = candidates(plan)
    assert ("layer", "dw") in every
    promo.set(every)
    assert all(layer.weight_bits == 8 for layer in plan.layers.values())
    assert all(plan.bits[t] == 8 for t in plan.bits if t not in plan.inherit)
    promo.reset()
    assert plan.params == snapshot[0] and plan.bits == snapshot[2]
    assert all(np.array_equal(plan.weights_q[k], v) for k, v in snapshot[1].items())
    assert {i.name: i.SerializeToString() for i in plan.model.graph.initializer} == snapshot[3]


def test_metrics():
    f = [{"y": torch.tensor([[1.0, 3.0, 2.0], [5.0, 1.0, 0.0]])}]
    q = [{"y": torch.tensor([[1.0, 2.9, 2.0], [0.0, 1.0, 5.0]])}]
    assert OutputError().drop(f, f) == 0.0
    assert OutputError().drop(f, q) == pytest.approx(np.sqrt((0.01 + 25 + 25) / 40))
    assert Top1Agreement().drop(f, q) == 0.5
    assert CosineSimilarity().drop(f, f) == pytest.approx(0.0, abs=1e-12)
    assert 0 < CosineSimilarity().drop(f, q) < 1


def test_task_metric_scores_the_zoo_task_on_labelled_samples():
    """The deblur task's PSNR: the sharp image itself has no drop; the blurred input a large one."""
    from edgekit.data import samples

    got = samples("deblur", "calib", 3, start=5)
    rng = np.random.default_rng(0)
    near_sharp = [{"restored": torch.from_numpy((np.asarray(s.target)[None] + rng.normal(
        0, 0.01, np.shape(s.target))).astype(np.float32))} for s in got]   # ~40 dB
    blurred = [{"restored": torch.from_numpy(np.asarray(s.inputs["image"]))} for s in got]
    metric = TaskDrop("deblur", first=5)
    assert metric.drop(blurred, blurred) == pytest.approx(0.0, abs=1e-9)
    assert metric.drop(near_sharp, blurred) > 0.05  # a blurred "restoration" loses PSNR
    # the samples are the labelled ones the outputs came from: another start scores the blur differently
    assert TaskDrop("deblur", first=0).drop(near_sharp, blurred) != metric.drop(near_sharp, blurred)


def test_bad_settings_fail_before_work():
    with pytest.raises(Exception, match="unknown metric 'psnr'"):
        MixedPrecision(metric="psnr")
    with pytest.raises(Exception, match="between 0 and 1"):
        MixedPrecision(max_drop=1.5)
    with pytest.raises(Exception, match="needs the zoo model"):
        MixedPrecision(metric="task")


@pytest.mark.parametrize("args, message", [
    (["--metric", "top1"], "--metric only applies with --max-drop"),
    (["--max-drop", "150%"], "between 0 and 1"),
    (["--max-drop", "abc"], "not a fraction or percentage"),
    (["--max-drop", "1%", "--metric", "task"], "metric 'task' scores a zoo task"),
])
def test_cli_rejects_bad_gate_options(tmp_path, capsys, args, message):
    path = dw_model(tmp_path / "dw.onnx")
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, f in enumerate(calib_set(4)):
        np.save(folder / f"s{i}.npy", f["x"])
    out = tmp_path / "q.onnx"
    code = exit_code(["quantize", path, "-o", str(out), "--calib", str(folder), "--method", "rtn"] + args)
    assert code != 0 and message in capsys.readouterr().err and not out.exists()


def exit_code(argv) -> int:
    """main's return value, or the code it exits with (argparse's usage errors)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_cli_prints_and_reports_the_decision(tmp_path, capsys):
    path = dw_model(tmp_path / "dw.onnx")
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, f in enumerate(calib_set(24)):
        np.save(folder / f"s{i:02d}.npy", f["x"])
    out, rep = tmp_path / "q.onnx", tmp_path / "r.json"
    assert main(["quantize", path, "-o", str(out), "--calib", str(folder), "--method", "rtn", "--max-drop", "0.1%",
                 "--report", str(rep)]) == 0
    captured = capsys.readouterr()
    step = json.loads(rep.read_text())["steps"][-1]
    assert step["step"] == "mixed-precision" and step["details"]["max_drop"] == pytest.approx(0.001)
    assert "mixed precision:" in captured.out and "all-8-bit" in captured.out
    if not step["details"]["met"]:  # 0.1 % output error is beyond 8-bit activations: said so
        assert "--max-drop not met" in captured.err


def test_the_gate_runs_before_the_fits_and_checks_the_finished_model(tmp_path):
    """with_gate places the step after RTN/polish; compensate then fits the chosen bits, and the
    reported final drop is the written model's."""
    from edgekit.quant.mixed import with_gate

    path = dw_model(tmp_path / "dw.onnx")
    calib = calib_set(24)
    cfg = P.QuantConfig.for_method("compensate", layer_samples=8)
    plain, _ = P.quantize(path, calib, cfg)
    gate = ort_error(path, plain, calib[8:]) / 2
    cfg = P.QuantConfig.for_method("compensate", layer_samples=8)
    cfg.steps = with_gate(cfg.steps, MixedPrecision(max_drop=gate))
    q, rep = P.quantize(path, calib, cfg)
    assert [s["step"] for s in rep["steps"]] == ["rtn", "polish", "mixed-precision", "compensate"]
    d = rep["steps"][2]["details"]
    assert d["promoted"] and d["drop_final"] == pytest.approx(ort_error(path, q, calib[8:]), rel=0.05)
    assert d["met"] == (d["drop_final"] <= gate)


def test_with_a_gate_the_guard_judges_the_fits_by_the_gate_metric(tmp_path):
    """A fitting step after the gate is undone when it raises the gate's drop (measured by the
    gate's metric, reported as `gate_drop` [before, after])."""
    from tests.quant.test_steps import _SpoilWeights

    path = dw_model(tmp_path / "dw.onnx")
    cfg = rtn_config()
    cfg.steps += [MixedPrecision(max_drop=0.99, metric="top1"), _SpoilWeights()]
    _, rep = P.quantize(path, calib_set(24), cfg)
    spoil = rep["steps"][-1]
    before, after = spoil["gate_drop"]
    assert after > before and spoil["kept"] is False


def test_trimming_after_the_fits_keeps_the_gate(tmp_path):
    """After compensate, the chosen layers are trimmed to the shortest prefix that still meets the
    gate on the finished model; the written model's error is the reported final drop, within it."""
    from edgekit.quant.mixed import with_gate

    path = dw_model(tmp_path / "dw.onnx")
    calib = calib_set(24)
    plain, _ = P.quantize(path, calib, rtn_config())
    gate = ort_error(path, plain, calib[8:]) / 2
    cfg = P.QuantConfig.for_method("compensate", layer_samples=8)
    cfg.steps = with_gate(cfg.steps, MixedPrecision(max_drop=gate))
    q, rep = P.quantize(path, calib, cfg)
    d = rep["steps"][2]["details"]
    assert "trim_probes" in d and len(d["promoted"]) + len(d["trimmed"]) >= 1
    assert d["met"] and d["drop_final"] <= gate
    assert d["drop_final"] == pytest.approx(ort_error(path, q, calib[8:]), rel=0.05)
    assert {rep["layers"][p["layer"]]["weight_bits"] for p in d["promoted"]} <= {8}
    assert all(rep["layers"][t["layer"]]["weight_bits"] == 4 for t in d["trimmed"] if "layer" in t)


def test_cli_says_why_a_gated_fit_was_undone(tmp_path, capsys, monkeypatch):
    """With --max-drop, an undone fit is reported with the gate metric's drop, not the SQNR."""
    from tests.quant.test_steps import _SpoilWeights

    real = P.QuantConfig.for_method

    def with_spoiler(method="full", fast=False, **kw):
        cfg = real("rtn", **kw)
        cfg.steps.append(_SpoilWeights())
        return cfg
    monkeypatch.setattr(P.QuantConfig, "for_method", staticmethod(with_spoiler))
    path = dw_model(tmp_path / "dw.onnx")
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, f in enumerate(calib_set(24)):
        np.save(folder / f"s{i:02d}.npy", f["x"])
    assert main(["quantize", path, "-o", str(tmp_path / "q.onnx"), "--calib", str(folder), "--max-drop", "99%"]) == 0
    out = capsys.readouterr().out
    assert "undone: it raised the --max-drop metric's drop from" in out and "lowered the output SQNR" not in out
