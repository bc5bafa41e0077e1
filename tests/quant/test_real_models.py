"""Real-model inputs: calibration samples that differ on dynamic axes, and ops that stay in float."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from edgekit import api
from edgekit.cli import main
from edgekit.errors import EdgekitError
from edgekit.quant import pipeline as P

LENGTHS = (5, 7, 9)


def dynamic_model(path, extra_op=None):
    """x [1, T, 8], mask [1, T] int64: MatMul -> Relu -> MatMul [-> extra_op] -> * mask -> y."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 8)) / np.sqrt(8)).astype(np.float32)
    w2 = (rng.standard_normal((8, 8)) / np.sqrt(8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["z"], name="fc2"),
             helper.make_node("Cast", ["mask"], ["maskf"], name="cast", to=onnx.TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "axes"], ["mask3"], name="unsq"),
             helper.make_node("Mul", ["z" if extra_op is None else "e", "mask3"], ["y"], name="masked")]
    if extra_op is not None:  # reads the integer layer's (dequantized) output
        nodes.insert(3, helper.make_node(extra_op, ["z"], ["e"], name="extra"))
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    g = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, "T", 8]),
                                         helper.make_tensor_value_info("mask", onnx.TensorProto.INT64, [1, "T"])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, "T", 8])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def sample(t, seed):
    rng = np.random.default_rng(seed)
    mask = np.ones((1, t), np.int64)
    mask[0, -1] = 0
    return {"x": rng.standard_normal((1, t, 8)).astype(np.float32), "mask": mask}


def npz_folder(folder, lengths=LENGTHS):
    folder.mkdir()
    for i, t in enumerate(lengths):
        np.savez(folder / f"s{i}.npz", **sample(t, i))
    return str(folder)


def run_ort(path_or_model, feeds):
    m = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else str(path_or_model)
    return ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def close_to_float(float_path, q_path, t=12, tol=0.35):
    feeds = sample(t, 99)
    ref, got = run_ort(float_path, feeds), run_ort(q_path, feeds)
    assert got.shape == ref.shape == (1, t, 8)
    rel = float(np.sqrt(((got - ref) ** 2).mean() / (ref ** 2).mean()))
    assert rel < tol, rel


@pytest.mark.parametrize("method,fast", [("full", False), ("full", True), ("rtn", False)])
def test_dynamic_lengths_quantize_and_run(tmp_path, method, fast):
    model = dynamic_model(tmp_path / "m.onnx")
    calib = npz_folder(tmp_path / "calib")
    out = tmp_path / "m.q.onnx"
    report = api.quantize(model, out, method=method, fast=fast, calib=calib, iters=20)
    assert report["config"]["calibration_samples"] == len(LENGTHS)
    assert set(report["layers"]) == {"fc1", "fc2"}
    close_to_float(model, out)


def test_dynamic_lengths_statistics_cover_every_sample(tmp_path):
    """Ranges are the min/max over all samples, whatever their length."""
    model = dynamic_model(tmp_path / "m.onnx")
    feeds = [sample(t, i) for i, t in enumerate(LENGTHS)]
    _, report = P.quantize(model, feeds, P.QuantConfig.for_method("rtn", act_bits=8))
    plan = report["_plan"]
    lo = min(float(f["x"].min()) for f in feeds)
    hi = max(float(f["x"].max()) for f in feeds)
    qp = plan.qparams("x")
    assert qp.scale == pytest.approx((max(hi, 0) - min(lo, 0)) / 255, rel=1e-6)
    # the polish / compensate / reconstruct steps see every sample too (one group per length)
    _, report = P.quantize(model, feeds, P.QuantConfig.for_method("full", fast=True))
    assert [s["step"] for s in report["steps"]] == ["rtn", "polish", "compensate", "reconstruct"]
    assert set(report["steps"][-1]["details"]["rounding"].values()) == {"adaround-fast"}


def test_dynamic_lengths_cli(tmp_path, capsys):
    model = dynamic_model(tmp_path / "m.onnx")
    calib = npz_folder(tmp_path / "calib", lengths=(5, 9, 7, 5))
    out, rep = tmp_path / "m.q.onnx", tmp_path / "r.json"
    assert main(["quantize", model, "-o", str(out), "--calib", calib, "--fast", "--report", str(rep)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads(rep.read_text())["config"]["calibration_samples"] == 4
    close_to_float(model, out)


@pytest.mark.parametrize("op", ["Hardmax", "Erf", "Trilu"])
def test_op_outside_the_integer_grid_stays_float(tmp_path, op):
    model = dynamic_model(tmp_path / "m.onnx", extra_op=op)
    calib = npz_folder(tmp_path / "calib")
    out = tmp_path / "m.q.onnx"
    report = api.quantize(model, out, method="rtn", calib=calib)
    assert report["float_ops"][op] == 1
    assert "extra" in report["float_nodes"]
    q = onnx.load(str(out))
    node = next(n for n in q.graph.node if n.name == "extra")
    assert node.op_type == op
    producer = {o: n for n in q.graph.node for o in n.output}
    assert producer[node.input[0]].op_type == "DequantizeLinear"  # it reads the dequantized tensor
    feeds = sample(12, 99)
    assert run_ort(out, feeds).shape == run_ort(model, feeds).shape == (1, 12, 8)
    if op == "Hardmax":  # one-hot rows: most rows pick the same column as in float
        ref, got = run_ort(model, feeds), run_ort(out, feeds)
        assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.5


@pytest.mark.parametrize("op,domain,named", [("FancyOp", "com.example", "com.example.FancyOp"),
                                             ("Bernoulli", "", "Bernoulli")])  # ONNX, not in the table
def test_unknown_op_refused_before_any_work(tmp_path, monkeypatch, op, domain, named):
    model = dynamic_model(tmp_path / "m.onnx")
    m = onnx.load(model)
    m.graph.node.append(helper.make_node("Sigmoid", ["y"], ["p"], name="prob"))
    m.graph.node.append(helper.make_node(op, ["p"], ["y2"], name="odd", domain=domain))
    m.graph.output[0].name = "y2"
    if domain:
        m.opset_import.append(helper.make_opsetid(domain, 1))
    feeds = [sample(t, i) for i, t in enumerate(LENGTHS)]
    monkeypatch.setattr(P, "build_plan", None)  # refused before any calibration work
    with pytest.raises(EdgekitError) as e:
        P.quantize(m, feeds)
    msg = str(e.value)
    assert "\n" not in msg and named in msg and "odd" in msg, msg
