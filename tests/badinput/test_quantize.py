"""Bad inputs to `edgekit quantize` (CLI and API): each one a clear line, exit 2, nothing written."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from edgekit import api
from tests.badinput.harness import Case, check_api, check_cli

CALIB_SHAPE = (1, 3, 8, 8)


def float_model(path, op="Relu", weight=None, inputs=None, domain=""):
    """conv -> `op`: the smallest model quantize accepts (with `domain`, a custom op it refuses)."""
    w = weight if weight is not None else np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op, ["h"], ["y"], name="act", domain=domain)]
    ins = inputs or [helper.make_tensor_value_info("x", 1, list(CALIB_SHAPE))]
    g = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info("y", 1, None)],
                          [numpy_helper.from_array(w, "w")])
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(g, opset_imports=opsets), str(path))
    return path


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _npy(path, arr, **kw):
    np.save(path, arr, **kw)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """One folder of inputs for every case: a good model and calibration set, and the bad ones."""
    d = tmp_path_factory.mktemp("quantize_inputs")
    rng = np.random.default_rng(0)
    float_model(d / "m.onnx")
    float_model(d / "customop.onnx", op="FancyAct", domain="com.example")  # an op the op table lacks
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[0, 0, 0, 0] = np.nan
    float_model(d / "nanw.onnx", weight=w)
    # no layer with constant weights
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                          [helper.make_tensor_value_info("x", 1, list(CALIB_SHAPE))],
                          [helper.make_tensor_value_info("y", 1, None)])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(d / "nolayer.onnx"))
    # a node that reads a tensor nobody produces
    g = helper.make_graph([helper.make_node("Relu", ["ghost"], ["y"], name="dangling")], "g",
                          [helper.make_tensor_value_info("x", 1, list(CALIB_SHAPE))],
                          [helper.make_tensor_value_info("y", 1, None)])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(d / "dangling.onnx"))
    good = (d / "m.onnx").read_bytes()
    _write(d / "empty.onnx", b"")
    _write(d / "random.onnx", bytes(rng.integers(0, 256, 4096, dtype=np.uint8)))
    _write(d / "truncated.onnx", good[: len(good) // 2])
    _write(d / "text.onnx", b"this is not a model\n")
    _npy(d / "array.onnx.npy", np.zeros(3))
    (d / "array.onnx.npy").rename(d / "array.onnx")
    (d / "folder.onnx").mkdir()

    calib = d / "calib"
    calib.mkdir()
    for i in range(3):
        np.save(calib / f"s{i}.npy", rng.standard_normal(CALIB_SHAPE).astype(np.float32))
    (d / "emptycalib").mkdir()

    def one(name, maker):
        folder = d / f"calib_{name}"
        folder.mkdir()
        maker(folder)
        return folder

    x = rng.standard_normal(CALIB_SHAPE).astype(np.float32)
    raw = (calib / "s0.npy").read_bytes()
    bad = {
        "random_npy": lambda f: _write(f / "a.npy", bytes(rng.integers(0, 256, 512, dtype=np.uint8))),
        "zero_byte_npy": lambda f: _write(f / "a.npy", b""),
        "truncated_npy": lambda f: _write(f / "a.npy", raw[: len(raw) - 40]),
        "header_only_npy": lambda f: _write(f / "a.npy", raw[:128]),
        "object_npy": lambda f: _npy(f / "a.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
        "uint8_npy": lambda f: _npy(f / "a.npy", (x * 50).astype(np.uint8)),
        "int32_npy": lambda f: _npy(f / "a.npy", (x * 50).astype(np.int32)),
        "bool_npy": lambda f: _npy(f / "a.npy", x > 0),
        "complex_npy": lambda f: _npy(f / "a.npy", x.astype(np.complex64)),
        "string_npy": lambda f: _npy(f / "a.npy", np.array(["a", "b"])),
        "wrong_shape_npy": lambda f: _npy(f / "a.npy", rng.standard_normal((1, 3, 9, 9)).astype(np.float32)),
        "wrong_channels_npy": lambda f: _npy(f / "a.npy", rng.standard_normal((1, 4, 8, 8)).astype(np.float32)),
        "wrong_rank_npy": lambda f: _npy(f / "a.npy", rng.standard_normal((8, 8)).astype(np.float32)),
        "rank5_npy": lambda f: _npy(f / "a.npy", rng.standard_normal((1, 1, 3, 8, 8)).astype(np.float32)),
        "scalar_npy": lambda f: _npy(f / "a.npy", np.float32(1.0)),
        "empty_npy": lambda f: _npy(f / "a.npy", np.zeros((0, 3, 8, 8), np.float32)),
        "nan_npy": lambda f: _npy(f / "a.npy", np.full(CALIB_SHAPE, np.nan, np.float32)),
        "inf_npy": lambda f: _npy(f / "a.npy", np.full(CALIB_SHAPE, np.inf, np.float32)),
        "neg_inf_npy": lambda f: _npy(f / "a.npy", np.full(CALIB_SHAPE, -np.inf, np.float32)),
        "random_npz": lambda f: _write(f / "a.npz", bytes(rng.integers(0, 256, 512, dtype=np.uint8))),
        "zero_byte_npz": lambda f: _write(f / "a.npz", b""),
        "truncated_npz": lambda f: _write(f / "a.npz", _npz_bytes(f, x)[:100]),
        "npz_wrong_key": lambda f: np.savez(f / "a.npz", image=x),
        "npz_object": lambda f: np.savez(f / "a.npz", x=np.array([None, 1], dtype=object)),
        "npz_uint8": lambda f: np.savez(f / "a.npz", x=(x * 9).astype(np.uint8)),
        "npz_wrong_shape": lambda f: np.savez(f / "a.npz", x=np.zeros((1, 3, 5, 5), np.float32)),
        "npz_nan": lambda f: np.savez(f / "a.npz", x=np.full(CALIB_SHAPE, np.nan, np.float32)),
        "corrupt_png": lambda f: _write(f / "a.png", b"\x89PNG\r\n\x1a\n" + bytes(200)),
        "zero_byte_png": lambda f: _write(f / "a.png", b""),
        "text_jpg": lambda f: _write(f / "a.jpg", b"not a jpeg"),
        "random_bmp": lambda f: _write(f / "a.bmp", bytes(rng.integers(0, 256, 300, dtype=np.uint8))),
        "folder_named_npy": lambda f: (f / "a.npy").mkdir(),
    }
    for name, maker in bad.items():
        one(name, maker)
    # a 1x1 grey image is readable; used with bad --preprocess values
    from skimage import io

    imgs = d / "images"
    imgs.mkdir()
    io.imsave(str(imgs / "a.png"), (rng.random((10, 12, 3)) * 255).astype(np.uint8), check_contrast=False)
    two = d / "images_2ch"
    two.mkdir()
    io.imsave(str(two / "a.png"), (rng.random((10, 12)) * 255).astype(np.uint8), check_contrast=False)
    return d


def _npz_bytes(folder, x):
    p = folder / "tmp.npz"
    np.savez(p, x=x)
    data = p.read_bytes()
    p.unlink()
    return data


CALIB_CASES = [
    ("random_npy", ["a.npy"]), ("zero_byte_npy", ["a.npy"]), ("truncated_npy", ["a.npy"]),
    ("header_only_npy", ["a.npy"]), ("object_npy", ["a.npy", "pickle"]), ("uint8_npy", ["uint8"]),
    ("int32_npy", ["int32"]), ("bool_npy", ["bool"]), ("complex_npy", ["complex"]), ("string_npy", ["a.npy"]),
    ("wrong_shape_npy", ["shape"]), ("wrong_channels_npy", ["shape"]), ("wrong_rank_npy", ["shape"]),
    ("rank5_npy", ["shape"]), ("scalar_npy", ["shape"]), ("empty_npy", ["shape"]), ("nan_npy", ["NaN"]),
    ("inf_npy", ["Inf"]), ("neg_inf_npy", ["Inf"]), ("random_npz", ["a.npz"]), ("zero_byte_npz", ["a.npz"]),
    ("truncated_npz", ["a.npz"]), ("npz_wrong_key", ["missing", "x"]), ("npz_object", ["a.npz"]),
    ("npz_uint8", ["uint8"]), ("npz_wrong_shape", ["shape"]), ("npz_nan", ["NaN"]),
    ("corrupt_png", ["a.png"]), ("zero_byte_png", ["a.png"]), ("text_jpg", ["a.jpg"]),
    ("random_bmp", ["a.bmp"]), ("folder_named_npy", ["a.npy"]),
]


@pytest.mark.parametrize("name,names", CALIB_CASES, ids=[c[0] for c in CALIB_CASES])
def test_bad_calibration_file(work, tmp_path, capsys, name, names):
    check_cli(["quantize", work / "m.onnx", "-o", tmp_path / "q.onnx", "--calib", work / f"calib_{name}",
               "--method", "rtn", "--report", tmp_path / "r.json"], capsys, tmp_path, names)


MODEL_CASES = [
    ("missing", "nothere.onnx", ["nothere.onnx"]), ("empty", "empty.onnx", ["empty.onnx"]),
    ("random_bytes", "random.onnx", ["random.onnx"]), ("truncated", "truncated.onnx", ["truncated.onnx"]),
    ("text", "text.onnx", ["text.onnx"]), ("npy_named_onnx", "array.onnx", ["array.onnx"]),
    ("folder", "folder.onnx", ["folder.onnx"]), ("unsupported_op", "customop.onnx", ["com.example.FancyAct", "act"]),
    ("nan_weights", "nanw.onnx", ["NaN"]), ("no_layers", "nolayer.onnx", ["layer"]),
    ("dangling_input", "dangling.onnx", ["dangling.onnx"]),
]


@pytest.mark.parametrize("name,model,names", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_model(work, tmp_path, capsys, name, model, names):
    check_cli(["quantize", work / model, "-o", tmp_path / "q.onnx", "--calib", work / "calib", "--method", "rtn"],
              capsys, tmp_path, names)


def _output_cases(work, out):
    """(id, extra argv, names): output and report paths that collide, are folders or can't exist."""
    (out / "adir").mkdir(exist_ok=True)
    return [
        ("output_missing_folder", ["-o", out / "no" / "q.onnx"], ["does not exist"]),
        ("output_is_folder", ["-o", out / "adir"], ["folder"]),
        ("output_is_input", ["-o", work / "m.onnx"], ["input"]),
        ("report_is_output", ["-o", out / "q.onnx", "--report", out / "q.onnx"], ["q.onnx"]),
        ("report_is_png", ["-o", out / "q.onnx", "--report", out / "r.png"], ["r.png"]),
        ("report_not_json", ["-o", out / "q.onnx", "--report", out / "r.txt"], [".json"]),
        ("chart_is_output", ["-o", out / "r.png", "--report", out / "r.json"], ["r.png"]),
        ("report_is_input", ["-o", out / "q.onnx", "--report", work / "m.onnx"], ["m.onnx"]),
        ("report_missing_folder", ["-o", out / "q.onnx", "--report", out / "no" / "r.json"], ["does not exist"]),
        ("report_is_folder", ["-o", out / "q.onnx", "--report", out / "adir"], ["adir"]),
        ("output_is_calib_file", ["-o", work / "calib" / "s0.npy"], []),
    ]


OUTPUT_IDS = ["output_missing_folder", "output_is_folder", "output_is_input", "report_is_output", "report_is_png",
              "report_not_json", "chart_is_output", "report_is_input", "report_missing_folder", "report_is_folder",
              "output_is_calib_file"]


@pytest.mark.parametrize("case_id", OUTPUT_IDS)
def test_bad_output_paths(work, tmp_path, capsys, case_id):
    cases = {c[0]: c for c in _output_cases(work, tmp_path)}
    _, extra, names = cases[case_id]
    if case_id == "output_is_calib_file":
        # overwriting a calibration input while reading it: refused like any input
        argv = ["quantize", work / "m.onnx", "--calib", work / "calib" / "s0.npy", "--method", "rtn", *extra]
        check_cli(argv, capsys, work / "calib", names)
        return
    check_cli(["quantize", work / "m.onnx", "--calib", work / "calib", "--method", "rtn", *extra],
              capsys, tmp_path, names)


OPTION_CASES = [
    Case("iters_negative", ["--iters", "-5"], ["--iters"]), Case("iters_zero", ["--iters", "0"], ["--iters"]),
    Case("iters_text", ["--iters", "many"], ["--iters"]), Case("calib_count_zero", ["--calib-count", "0"], ["calib"]),
    Case("calib_count_negative", ["--calib-count", "-1"], ["calib"]),
    Case("calib_count_float", ["--calib-count", "2.5"], ["calib"]),
    Case("weights_3", ["--weights", "3"], ["--weights"]), Case("activations_16", ["--activations", "16"],
                                                                ["--activations"]),
    Case("method_unknown", ["--method", "magic"], ["--method"]), Case("unknown_flag", ["--frobnicate"], ["frobnicate"]),
    Case("keep_8bit_empty", ["--keep-8bit"], ["--keep-8bit"]),
    Case("calib_glob_no_match", ["--calib", "nothing_*.npy"], ["nothing_"]),
    Case("calib_unknown_dataset", ["--calib", "no_such_dataset"], ["no_such_dataset"]),
    Case("calib_missing_npy", ["--calib", "missing.npy"], ["missing.npy"]),
]


@pytest.mark.parametrize("case", [c.param() for c in OPTION_CASES])
def test_bad_option(work, tmp_path, capsys, case):
    argv = ["quantize", work / "m.onnx", "-o", tmp_path / "q.onnx", "--method", "rtn"]
    if not any(str(a).startswith("--calib") and a != "--calib-count" for a in case.argv):
        argv += ["--calib", work / "calib"]
    check_cli(argv + case.argv, capsys, tmp_path, case.names)


PREPROCESS_CASES = ["mean=0.5:0.5", "size=0x0", "size=0x8", "size=axb", "size=12", "size=-4x8", "std=0", "scale=0",
                    "mean=nan", "std=inf", "mean=1:2:3:4", "colour=red", "mean", "mean=", "size=8x8,,std=1",
                    "std=0.5:0:0.5", "scale=abc"]


@pytest.mark.parametrize("spec", PREPROCESS_CASES)
def test_bad_preprocess(work, tmp_path, capsys, spec):
    check_cli(["quantize", work / "m.onnx", "-o", tmp_path / "q.onnx", "--calib", work / "images",
               "--preprocess", spec, "--method", "rtn"], capsys, tmp_path, ["--preprocess"])


def test_image_with_two_channels_for_a_three_channel_model_is_fine(work, tmp_path, capsys):
    """A grey PNG (1 channel) is repeated to RGB: a readable image is not a user error."""
    from edgekit.cli import main

    assert main(["quantize", str(work / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "--calib", str(work / "images_2ch"),
                 "--method", "rtn"]) == 0


def test_images_for_a_dynamic_size_model_need_a_size(work, tmp_path, capsys):
    model = float_model(tmp_path / "dyn.onnx", inputs=[helper.make_tensor_value_info("x", 1, [1, 3, "h", "w"])])
    out = tmp_path / "out"
    out.mkdir()
    check_cli(["quantize", model, "-o", out / "q.onnx", "--calib", work / "images", "--method", "rtn"],
              capsys, out, ["size=HxW"])


def test_keep_8bit_pattern_matching_nothing_warns(work, tmp_path, capsys):
    from edgekit.cli import main

    assert main(["quantize", str(work / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "--calib", str(work / "calib"),
                 "--method", "rtn", "--keep-8bit", "/nothing/*", "conv"]) == 0
    err = capsys.readouterr().err
    assert "edgekit: warning: --keep-8bit: no layer matches '/nothing/*'" in err and "conv" in err


def test_report_chart_and_model_written_together(work, tmp_path, capsys):
    """The chart fails to render: neither the model nor the JSON report may be left behind."""
    import edgekit.quant.report as report

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    original = report.plot_layer_sqnr
    report.plot_layer_sqnr = broken
    try:
        check_cli(["quantize", work / "m.onnx", "-o", tmp_path / "q.onnx", "--calib", work / "calib",
                   "--method", "rtn", "--report", tmp_path / "r.json"], capsys, tmp_path, ["no space"])
    finally:
        report.plot_layer_sqnr = original


API_CASES = [
    ("iters", dict(iters=-5), ["iters"]), ("calib_count", dict(calib_count=0), ["calib_count"]),
    ("weights", dict(weights=3), ["bits"]), ("method", dict(method="magic"), ["magic"]),
    ("report_is_output", dict(report="SELF"), ["q.onnx"]), ("report_txt", dict(report="r.txt"), [".json"]),
]


@pytest.mark.parametrize("name,kwargs,names", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_quantize_bad_arguments(work, tmp_path, name, kwargs, names):
    out = tmp_path / "q.onnx"
    if kwargs.get("report") == "SELF":
        kwargs = dict(report=out)
    elif "report" in kwargs:
        kwargs = dict(report=tmp_path / kwargs["report"])
    kwargs = {"method": "rtn", **kwargs}
    check_api(lambda: api.quantize(work / "m.onnx", out, calib=str(work / "calib"), **kwargs),
              tmp_path, names)
