"""`edgekit quantize` end to end and its one-line errors (exit 2, no partial file)."""
import json
import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgekit.cli import main


def tiny_model(path, op="Relu", domain=""):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op, ["h"], ["y"], name="act", domain=domain)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", 1, None)], [numpy_helper.from_array(w, "w")])
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(g, opset_imports=opsets), str(path))
    return str(path)


def npy_calib(folder, shape=(1, 3, 8, 8), count=4, bad=None):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        x = rng.standard_normal(shape).astype(np.float32)
        if bad == "nan" and i == 1:
            x[0, 0, 0, 0] = np.nan
        np.save(folder / f"s{i}.npy", x)
    return str(folder)


def test_quantize_rtn_writes_model_and_report(tmp_path, capsys):
    model = tiny_model(tmp_path / "m.onnx")
    calib = npy_calib(tmp_path / "calib")
    out, rep = tmp_path / "m.q.onnx", tmp_path / "r.json"
    assert main(["quantize", model, "-o", str(out), "--calib", calib, "--method", "rtn", "--report", str(rep)]) == 0
    q = onnx.load(str(out))
    assert any(i.data_type == onnx.TensorProto.INT4 for i in q.graph.initializer)
    report = json.loads(rep.read_text())
    assert report["steps"][0]["step"] == "rtn" and "conv" in report["steps"][0]["sqnr_db"]["layers"]
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def _fails(argv, capsys, out):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgekit: error:") and "\n" not in err
    assert not os.path.exists(out)
    assert not [p for p in os.listdir(os.path.dirname(out)) if p.startswith(".m.q")]
    return err


def test_wrong_calibration_shape(tmp_path, capsys):
    model = tiny_model(tmp_path / "m.onnx")
    calib = npy_calib(tmp_path / "calib", shape=(1, 3, 9, 9))
    out = str(tmp_path / "m.q.onnx")
    assert "shape" in _fails(["quantize", model, "-o", out, "--calib", calib, "--method", "rtn"], capsys, out)


def test_nan_in_calibration(tmp_path, capsys):
    model = tiny_model(tmp_path / "m.onnx")
    calib = npy_calib(tmp_path / "calib", bad="nan")
    out = str(tmp_path / "m.q.onnx")
    assert "NaN" in _fails(["quantize", model, "-o", out, "--calib", calib, "--method", "rtn"], capsys, out)


def test_nan_in_weights(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    tiny_model(path)
    m = onnx.load(str(path))
    w = numpy_helper.to_array(m.graph.initializer[0]).copy()
    w[0, 0, 0, 0] = np.inf
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    onnx.save(m, str(path))
    calib = npy_calib(tmp_path / "calib")
    out = str(tmp_path / "m.q.onnx")
    assert "NaN or Inf" in _fails(["quantize", str(path), "-o", out, "--calib", calib], capsys, out)


def test_empty_calibration(tmp_path, capsys):
    model = tiny_model(tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    out = str(tmp_path / "m.q.onnx")
    assert "empty" in _fails(["quantize", model, "-o", out, "--calib", str(tmp_path / "calib")], capsys, out)


def test_unwritable_output(tmp_path, capsys):
    model = tiny_model(tmp_path / "m.onnx")
    calib = npy_calib(tmp_path / "calib")
    out = str(tmp_path / "missing" / "m.q.onnx")
    assert main(["quantize", model, "-o", out, "--calib", calib]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unsupported_op_lists_type_and_node(tmp_path, capsys):
    model = tiny_model(tmp_path / "m.onnx", op="FancyAct", domain="com.example")  # not in the op table
    calib = npy_calib(tmp_path / "calib")
    out = str(tmp_path / "m.q.onnx")
    err = _fails(["quantize", model, "-o", out, "--calib", calib], capsys, out)
    assert "com.example.FancyAct" in err and "act" in err


def test_table_op_outside_the_grid_quantizes_and_stays_float(tmp_path):
    """Hardmax was refused before; any op of the torch op table now stays float in the QDQ graph."""
    model = tiny_model(tmp_path / "m.onnx", op="Hardmax")
    calib = npy_calib(tmp_path / "calib")
    out, rep = tmp_path / "m.q.onnx", tmp_path / "r.json"
    assert main(["quantize", model, "-o", str(out), "--calib", calib, "--method", "rtn", "--report", str(rep)]) == 0
    report = json.loads(rep.read_text())
    assert report["float_ops"] == {"Hardmax": 1} and report["float_nodes"] == ["act"]
    q = onnx.load(str(out))
    assert [n.op_type for n in q.graph.node if n.name == "act"] == ["Hardmax"]
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert y.shape == (1, 4, 8, 8) and set(np.unique(y)) <= {0.0, 1.0}


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    assert "examples:" in capsys.readouterr().out


@pytest.mark.parametrize("flag", [[], ["--no-guard"]], ids=["guard", "no_guard"])
def test_guard_flag_reaches_the_pipeline(tmp_path, capsys, monkeypatch, flag):
    """--no-guard turns the guard off; by default it is on (checked on the config the pipeline gets)."""
    from edgekit.quant import pipeline as P

    seen = []
    real = P.quantize
    monkeypatch.setattr(P, "quantize", lambda model, calib, config: seen.append(config) or real(model, calib, config))
    model = tiny_model(tmp_path / "m.onnx")
    calib = npy_calib(tmp_path / "calib")
    assert main(["quantize", model, "-o", str(tmp_path / "m.q.onnx"), "--calib", calib, "--method", "rtn"] + flag) == 0
    assert seen[0].guard is (not flag)
