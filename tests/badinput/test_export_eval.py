"""Bad inputs to `export`, `eval`, `zoo` and `demo`: a clear line, exit 2, nothing written."""
from __future__ import annotations

import numpy as np
import pytest

from edgekit import api
from tests.badinput.harness import Case, check_api, check_cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("export_inputs")
    rng = np.random.default_rng(1)
    (d / "random.pth").write_bytes(bytes(rng.integers(0, 256, 2048, dtype=np.uint8)))
    (d / "empty.safetensors").write_bytes(b"")
    (d / "random.safetensors").write_bytes(bytes(rng.integers(0, 256, 512, dtype=np.uint8)))
    (d / "weights.txt").write_text("w = 1\n")
    import torch

    torch.save({"not.a.key": torch.zeros(3)}, d / "wrongkeys.pt")
    torch.save({"obj": object.__new__(type("Evil", (), {}))} if False else [1, 2, 3], d / "list.pt")
    (d / "adir").mkdir()
    (d / "mymod.py").write_text("import torch\n\ndef not_a_module():\n    return 42\n\n"
                                "def broken():\n    raise ValueError('user code failed')\n")
    (d / "random.onnx").write_bytes(bytes(rng.integers(0, 256, 1024, dtype=np.uint8)))
    (d / "empty.onnx").write_bytes(b"")
    return d


EXPORT_CASES = [
    Case("unknown_model", ["nosuchnet"], ["nosuchnet"]),
    Case("unknown_config", ["litepose", "--config", "huge"], ["huge"]),
    Case("shape_text", ["litepose", "--input-shape", "a,b"], ["a,b"]),
    Case("shape_zero", ["litepose", "--input-shape", "1,3,0,128"], ["1,3,0,128"]),
    Case("shape_negative", ["litepose", "--input-shape", "1,3,-1,128"], ["1,3,-1,128"]),
    Case("shape_batch2", ["litepose", "--input-shape", "2,3,128,128"], ["batch"]),
    Case("shape_rank", ["litepose", "--input-shape", "1,3,128"], ["shape"]),
    Case("shape_empty", ["litepose", "--input-shape", ","], ["shape"]),
    Case("two_shapes_one_input", ["litepose", "--input-shape", "1,3,128,128", "--input-shape", "1,3,64,64"],
         ["input"]),
    Case("lm_shape_rank", ["lm", "--input-shape", "1,3,16,16"], ["shape"]),
    Case("opset_low", ["litepose", "--opset", "7"], ["opset"]),
    Case("opset_high", ["litepose", "--opset", "99"], ["opset"]),
    Case("opset_text", ["litepose", "--opset", "new"], ["--opset"]),
    Case("tolerance_negative", ["litepose", "--tolerance", "-1"], ["tolerance"]),
    Case("tolerance_nan", ["litepose", "--tolerance", "nan"], ["tolerance"]),
    Case("checkpoint_missing", ["litepose", "--checkpoint", "NOFILE.pth"], ["NOFILE.pth"]),
    Case("checkpoint_random", ["litepose", "--checkpoint", "{d}/random.pth"], ["random.pth"]),
    Case("checkpoint_empty_st", ["litepose", "--checkpoint", "{d}/empty.safetensors"], ["empty.safetensors"]),
    Case("checkpoint_random_st", ["litepose", "--checkpoint", "{d}/random.safetensors"], ["random.safetensors"]),
    Case("checkpoint_txt", ["litepose", "--checkpoint", "{d}/weights.txt"], ["weights.txt"]),
    Case("checkpoint_wrong_keys", ["litepose", "--checkpoint", "{d}/wrongkeys.pt"], ["wrongkeys.pt"]),
    Case("checkpoint_list", ["litepose", "--checkpoint", "{d}/list.pt"], ["list.pt"]),
    Case("checkpoint_folder", ["litepose", "--checkpoint", "{d}/adir"], ["adir"]),
    Case("model_and_module", ["litepose", "--module", "x:y"], ["either"]),
    Case("neither", [], ["either"]),
    Case("module_no_colon", ["--module", "mymod", "--input-shape", "1,3,8,8"], ["mymod"]),
    Case("module_missing", ["--module", "no_such_pkg_xyz:make", "--input-shape", "1,3,8,8"], ["no_such_pkg_xyz"]),
    Case("module_missing_factory", ["--module", "mymod:nothing", "--input-shape", "1,3,8,8"], ["nothing"]),
    Case("module_not_nn", ["--module", "mymod:not_a_module", "--input-shape", "1,3,8,8"], ["nn.Module"]),
    Case("module_no_shape", ["--module", "mymod:not_a_module"], ["--input-shape"]),
    Case("unknown_flag", ["litepose", "--fp16"], ["--fp16"]),
]


@pytest.mark.parametrize("case", [c.param() for c in EXPORT_CASES])
def test_bad_export(files, tmp_path, capsys, monkeypatch, case):
    monkeypatch.syspath_prepend(str(files))
    argv = [str(a).replace("{d}", str(files)) for a in case.argv]
    check_cli(["export", *argv, "-o", tmp_path / "m.onnx"], capsys, tmp_path, case.names)


OUTPUT_CASES = [
    Case("missing_folder", ["-o", "{t}/no/m.onnx"], ["does not exist"]),
    Case("folder", ["-o", "{t}/adir"], ["folder"]),
    Case("no_output", [], ["-o"]),
]


@pytest.mark.parametrize("case", [c.param() for c in OUTPUT_CASES])
def test_bad_export_output(tmp_path, capsys, case):
    (tmp_path / "adir").mkdir()
    argv = [str(a).replace("{t}", str(tmp_path)) for a in case.argv]
    check_cli(["export", "deblur", *argv], capsys, tmp_path, case.names)


def test_api_export_bad_model(tmp_path):
    check_api(lambda: api.export("nosuchnet", tmp_path / "m.onnx"), tmp_path, ["nosuchnet"])


EVAL_CASES = [
    Case("unknown", ["nosuchnet"], ["nosuchnet"]),
    Case("random_onnx", ["{d}/random.onnx"], ["random.onnx"]),
    Case("empty_onnx", ["{d}/empty.onnx"], ["empty.onnx"]),
    Case("samples_zero", ["deblur", "--samples", "0"], ["--samples"]),
    Case("samples_negative", ["deblur", "--samples", "-3"], ["--samples"]),
    Case("threads_zero", ["deblur", "--threads", "0"], ["--threads"]),
    Case("length_not_lm", ["deblur", "--length", "64"], ["--length"]),
    Case("length_zero", ["lm", "--length", "0"], ["--length"]),
    Case("task_conflict", ["deblur", "--task", "pose"], ["--task"]),
    Case("task_unknown", ["{d}/random.onnx", "--task", "weather"], []),
    Case("split_unknown", ["deblur", "--split", "dev"], ["--split"]),
    Case("checkpoint_random", ["deblur", "--checkpoint", "{d}/random.pth"], ["random.pth"]),
    Case("checkpoint_missing", ["deblur", "--checkpoint", "NOFILE.pth"], ["NOFILE.pth"]),
    Case("json_file_missing_folder", ["deblur", "--json-file", "{t}/no/m.json"], ["does not exist"]),
    Case("json_file_is_folder", ["deblur", "--json-file", "{t}/adir"], ["folder"]),
    Case("save_vis_missing_parent", ["deblur", "--save-vis", "{t}/no/vis"], ["does not exist"]),
    Case("save_vis_is_file", ["deblur", "--save-vis", "{t}/afile"], ["afile"]),
    Case("json_file_is_model", ["{d}/random.onnx", "--json-file", "{d}/random.onnx"], ["input"]),
]


@pytest.mark.parametrize("case", [c.param() for c in EVAL_CASES])
def test_bad_eval(files, tmp_path, capsys, case):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    argv = [str(a).replace("{d}", str(files)).replace("{t}", str(tmp_path)) for a in case.argv]
    check_cli(["eval", *argv], capsys, tmp_path, case.names)


def test_eval_json_prints_json_only(capsys):
    import json

    from edgekit.cli import main

    assert main(["eval", "deblur", "--samples", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["task"] == "deblur" and doc["samples"] == 1


ZOO_CASES = [
    Case("unknown_model", ["list", "--model", "nosuchnet"], ["nosuchnet"]),
    Case("unknown_verb", ["fly"], ["fly"]),
    Case("train_unknown", ["train", "nosuchnet"], ["nosuchnet"]),
]


@pytest.mark.parametrize("case", [c.param() for c in ZOO_CASES])
def test_bad_zoo(tmp_path, capsys, case):
    check_cli(["zoo", *case.argv], capsys, tmp_path, case.names)


DEMO_CASES = [
    Case("model_unknown", ["--model", "nosuchnet"], ["nosuchnet"]),
    Case("target_unknown", ["--target", "gpu"], ["--target"]),
    Case("samples_zero", ["--samples", "0"], ["--samples"]),
    Case("output_is_file", ["-o", "{t}/afile"], ["afile"]),
    Case("output_missing_parent", ["-o", "{t}/no/demo"], ["parent folder is missing"]),
]


@pytest.mark.parametrize("case", [c.param() for c in DEMO_CASES])
def test_bad_demo(tmp_path, capsys, case):
    (tmp_path / "afile").write_text("x")
    argv = [str(a).replace("{t}", str(tmp_path)) for a in case.argv]
    if "-o" not in argv:
        argv += ["-o", tmp_path / "demo"]
    check_cli(["demo", *argv], capsys, tmp_path, case.names)
