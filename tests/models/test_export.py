"""`edgekit export` and `edgekit zoo list`: verified ONNX files, clean errors, no partial files."""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from edgekit import export, models
from edgekit.cli import main

HERE = Path(__file__).resolve().parent


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _check_litepose_relu6_is_clip_0_6(proto):
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    clips = [n for n in proto.graph.node if n.op_type == "Clip"]
    assert len(clips) == 2 + 2 * 8  # stem: 2; each of 8 blocks: expand + depthwise
    for clip in clips:
        assert (float(inits[clip.input[1]]), float(inits[clip.input[2]])) == (0.0, 6.0)


@pytest.mark.parametrize("name", models.list_models())
def test_every_tiny_model_exports_and_matches_pytorch(name, tmp_path, capsys):
    path = tmp_path / f"{name}.onnx"
    code, out, err = _run(["export", name, "--random-init", "--json", "-o", str(path)], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["weights"] == "random init"
    assert report["max_abs_diff"] <= report["tolerance"] <= 1e-3
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 21
    entry = models.get(name)
    specs = entry.input_spec()
    graph_inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert graph_inputs == {s.name: list(s.shape) for s in specs}  # static, batch 1
    assert [o.name for o in proto.graph.output] == entry.output_names()
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and not ops & {"DFT", "STFT"}
    if name == "litepose":
        assert report["folded_batchnorms"] == 3  # the fusion head's BN after deconv + deconv
        _check_litepose_relu6_is_clip_0_6(proto)


def test_tiny_export_uses_reference_checkpoint(tmp_path, capsys, monkeypatch):
    """By default the tiny config exports with its reference checkpoint; ORT must reproduce it."""
    from safetensors.torch import save_file

    model = models.build("litepose")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    monkeypatch.setattr(models, "CHECKPOINT_DIR", tmp_path)
    save_file(model.state_dict(), str(tmp_path / "litepose_tiny.safetensors"))
    path = tmp_path / "lp.onnx"
    code, out, err = _run(["export", "litepose", "-o", str(path)], capsys)
    assert code == 0, err
    assert "litepose_tiny.safetensors" in out
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        expected = model(x)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    for g, e in zip(got, expected):
        assert np.abs(g - e.numpy()).max() < 1e-4 and np.abs(e.numpy()).max() > 1e-3


def test_user_module_with_checkpoint_and_bn_folding(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    import netfactory

    net = netfactory.make_net()
    ckpt = tmp_path / "net.pt"
    torch.save(net.state_dict(), ckpt)
    path = tmp_path / "net.onnx"
    code, out, err = _run(["export", "--module", "netfactory:make_net", "--checkpoint", str(ckpt),
                           "--input-shape", "1x3x16x16", "-o", str(path)], capsys)
    assert code == 0, err
    assert "1 BatchNorm folded" in out and "max abs diff" in out  # torch folds conv->BN itself
    assert "BatchNormalization" not in _ops(path)
    x = torch.rand(1, 3, 16, 16)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - net(x).numpy()).max() < 1e-5


@pytest.mark.parametrize("argv, message", [
    (["export", "posenet"], "valid models: litepose, depth, deblur, lm"),
    (["export", "litepose", "--config", "xxl"], "valid configs: tiny, xs, s, m, l"),
    (["export", "litepose", "--input-shape", "1,3,100,100"], "does not accept input image (1, 3, 100, 100)"),
    (["export", "litepose", "--input-shape", "2,3,128,128"], "batch 1"),
    (["export", "litepose", "--input-shape", "1,3,128"], "expected rank 4"),
    (["export", "litepose", "--input-shape", "1,3,a,128"], "bad input shape"),
    (["export", "litepose", "--opset", "12"], "opset 12 is not supported"),
    (["export", "--module", "netfactory:not_a_module", "--input-shape", "1,3,8,8"], "not an nn.Module"),
    (["export", "--module", "no_such_pkg.mod:f", "--input-shape", "1,3,8,8"], "cannot import module"),
    (["export", "--module", "netfactory:make_net"], "needs --input-shape"),
])
def test_bad_input_is_one_line_exit_2_and_no_file(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    path = tmp_path / "out.onnx"
    code, _, err = _run(argv + ["-o", str(path)], capsys)
    assert code == 2
    error_lines = [line for line in err.splitlines() if line.startswith("edgekit: error:")]
    assert len(error_lines) == 1 and message in error_lines[0] and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_unloadable_checkpoint(tmp_path, capsys):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    path = tmp_path / "out.onnx"
    code, _, err = _run(["export", "litepose", "--checkpoint", str(bad), "-o", str(path)], capsys)
    assert code == 2 and "cannot load checkpoint" in err and str(bad) in err
    assert not path.exists()


def test_unwritable_output(tmp_path, capsys):
    code, _, err = _run(["export", "litepose", "-o", str(tmp_path / "missing" / "x.onnx")], capsys)
    assert code == 2 and "does not exist" in err


def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setattr(export, "compare_with_onnxruntime", lambda *a, **k: 0.5)
    path = tmp_path / "out.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(Exception, match="differs from PyTorch by 0.5"):
        export.export_user_module("netfactory:make_net", path, [(1, 3, 8, 8)])
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_zoo_list_json(capsys):
    code, out, _ = _run(["zoo", "list", "--model", "litepose", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert [(r["name"], r["config"]) for r in rows] == [("litepose", c) for c in ("tiny", "xs", "s", "m", "l")]
    for row in rows:
        assert set(row) >= {"name", "config", "params", "macs", "inputs"}
        assert row["params"] > 0 and row["macs"] > 0
    tiny = next(r for r in rows if (r["name"], r["config"]) == ("litepose", "tiny"))
    assert tiny["inputs"] == {"image": [1, 3, 128, 128]}
    code, out, _ = _run(["zoo", "list", "--model", "lm"], capsys)
    assert code == 0 and "MACs" in out and [line.split()[:2] for line in out.splitlines()[1:]] == [
        ["lm", "tiny"], ["lm", "small"]]
