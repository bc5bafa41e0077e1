"""Bad inputs to `edgekit compile` and `api.compile`: broken ONNX files, QDQ parameters no integer
kernel can use (zero, negative or non-finite scales, zero points off their grid, per-channel scales
that do not match the channels), flags of the other back-end, unknown API options, outputs that
collide with inputs. Each one a clear line naming the node or initializer, exit 2, nothing written."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from edgekit import api
from edgekit.errors import EdgekitError
from tests.badinput.harness import Case, check_api, check_cli
from tests.badinput.test_quantize import CALIB_SHAPE, float_model


def _set_init(model, name, value):
    """Replace (or add) the initializer `name` with `value`."""
    arr = np.asarray(value)
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, name))
            return
    model.graph.initializer.append(numpy_helper.from_array(arr, name))


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def _set_axis(model, node_name, axis):
    node = _node(model, node_name)
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("axis", axis))


def _add_weight_zp(model, zp):
    _set_init(model, "w__zp", zp)
    _node(model, "w__dq").input.append("w__zp")


def _scale_from_node(model):
    """x__scale computed by a Constant node instead of stored as an initializer."""
    value = next(i for i in model.graph.initializer if i.name == "x__scale")
    model.graph.initializer.remove(value)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["x__scale"], name="scale_const",
                                                value=numpy_helper.from_array(np.float32(0.05), "v")))


# name -> (mutation of the quantized model, words the error must name)
F32 = np.float32
QDQ_MUTATIONS = {
    "x_scale_zero": (lambda m: _set_init(m, "x__scale", F32(0)), ["x__scale", "holds 0;"]),
    "x_scale_negative": (lambda m: _set_init(m, "x__scale", F32(-0.1)), ["x__scale", "-0.1", "positive"]),
    "x_scale_nan": (lambda m: _set_init(m, "x__scale", F32(np.nan)), ["x__scale", "nan"]),
    "x_scale_inf": (lambda m: _set_init(m, "x__scale", F32(np.inf)), ["x__scale", "inf"]),
    "x_scale_float64_underflow": (lambda m: _set_init(m, "x__scale", np.float64(1e-60)), ["x__scale"]),
    "x_scale_int": (lambda m: _set_init(m, "x__scale", np.int32(1)), ["x__scale", "int32"]),
    "x_scale_empty": (lambda m: _set_init(m, "x__scale", np.zeros(0, F32)), ["x__scale", "empty"]),
    "x_scale_not_initializer": (_scale_from_node, ["x__scale", "not an initializer"]),
    "y_scale_zero": (lambda m: _set_init(m, "y__scale", F32(0)), ["y__scale", "holds 0;"]),
    "y_scale_negative": (lambda m: _set_init(m, "y__scale", F32(-2.0)), ["y__scale", "-2"]),
    "y_scale_nan": (lambda m: _set_init(m, "y__scale", F32(np.nan)), ["y__scale", "nan"]),
    "y_scale_neg_inf": (lambda m: _set_init(m, "y__scale", F32(-np.inf)), ["y__scale", "-inf"]),
    "w_scale_one_zero": (lambda m: _set_init(m, "w__scale", F32([0.1, 0.0, 0.1, 0.1])),
                         ["w__dq", "w__scale", "holds 0;"]),
    "w_scale_one_nan": (lambda m: _set_init(m, "w__scale", F32([0.1, 0.1, np.nan, 0.1])), ["w__dq", "w__scale", "nan"]),
    "w_scale_one_negative": (lambda m: _set_init(m, "w__scale", F32([0.1, 0.1, 0.1, -0.3])), ["w__scale", "-0.3"]),
    "w_scale_one_inf": (lambda m: _set_init(m, "w__scale", F32([np.inf, 0.1, 0.1, 0.1])), ["w__scale", "inf"]),
    "w_scale_too_few": (lambda m: _set_init(m, "w__scale", F32([0.1, 0.1, 0.1])), ["w__dq", "3 scales", "4 channels"]),
    "w_scale_too_many": (lambda m: _set_init(m, "w__scale", F32([0.1] * 5)), ["w__dq", "5 scales", "4 channels"]),
    "w_scale_2d": (lambda m: _set_init(m, "w__scale", F32([[0.1, 0.1], [0.1, 0.1]])), ["w__scale", "[2, 2]"]),
    "w_axis_out_of_range": (lambda m: _set_axis(m, "w__dq", 5), ["w__dq", "axis 5", "[4, 3, 3, 3]"]),
    "w_axis_wrong_channels": (lambda m: _set_axis(m, "w__dq", 1), ["w__dq", "4 scales", "3 channels"]),
    "w_zp_off_int4_grid": (lambda m: _add_weight_zp(m, np.full(4, 100, np.int8)), ["w__dq", "100", "int4"]),
    "w_zp_shape": (lambda m: _add_weight_zp(m, np.zeros(3, np.int8)), ["w__dq", "w__zp", "[3]", "[4]"]),
}


def _mutated(src, dst, mutate):
    model = onnx.load(str(src))
    mutate(model)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A float model, its RTN-quantized QDQ model, one mutant per QDQ case, broken files."""
    d = tmp_path_factory.mktemp("compile_inputs")
    rng = np.random.default_rng(0)
    float_model(d / "m.onnx")
    calib = d / "calib"
    calib.mkdir()
    for i in range(2):
        np.save(calib / f"s{i}.npy", rng.standard_normal(CALIB_SHAPE).astype(np.float32))
    api.quantize(d / "m.onnx", d / "m.q.onnx", method="rtn", calib=str(calib), calib_count=2)
    for name, (mutate, _) in QDQ_MUTATIONS.items():
        _mutated(d / "m.q.onnx", d / f"{name}.q.onnx", mutate)
    good = (d / "m.q.onnx").read_bytes()
    (d / "empty.onnx").write_bytes(b"")
    (d / "random.onnx").write_bytes(bytes(rng.integers(0, 256, 2048, dtype=np.uint8)))
    (d / "truncated.onnx").write_bytes(good[: len(good) // 3])
    (d / "folder.onnx").mkdir()
    out = d / "out"
    out.mkdir()
    return d


@pytest.mark.parametrize("name", sorted(QDQ_MUTATIONS))
def test_bad_qdq_cli_accel(name, work, capsys):
    check_cli(["compile", work / f"{name}.q.onnx", "--target", "accel", "-o", work / "out" / name],
              capsys, work, QDQ_MUTATIONS[name][1])


@pytest.mark.parametrize("name", sorted(QDQ_MUTATIONS))
@pytest.mark.parametrize("mode", [["--target", "x86-64"], ["--target", "x86-64", "--float"]], ids=["int", "float"])
def test_bad_qdq_cli_x86(name, mode, work, capsys):
    """TVM refuses the same parameters, before any import: in integer mode and in float QDQ."""
    check_cli(["compile", work / f"{name}.q.onnx", *mode, "-o", work / "out" / name], capsys, work,
              QDQ_MUTATIONS[name][1])


@pytest.mark.parametrize("name", sorted(QDQ_MUTATIONS))
def test_bad_qdq_api_accel(name, work):
    check_api(lambda: api.compile(work / f"{name}.q.onnx", "accel", work / "out" / name),
              work, QDQ_MUTATIONS[name][1])


def test_good_model_compiles(work, tmp_path):
    """The models the mutants come from are fine: the errors above are the mutations' doing."""
    meta = api.compile(work / "m.q.onnx", "accel", tmp_path / "accel")
    assert (tmp_path / "accel" / "program.json").is_file(), meta


def _cases():
    d = "{work}"
    q = f"{d}/m.q.onnx"
    out = f"{d}/out/x"
    cases = [
        # the ONNX file itself
        Case("missing_model", ["compile", f"{d}/nope.onnx", "-o", out], ["nope.onnx"]),
        Case("empty_model", ["compile", f"{d}/empty.onnx", "-o", out], ["empty.onnx"]),
        Case("random_model", ["compile", f"{d}/random.onnx", "-o", out], ["random.onnx"]),
        Case("truncated_model", ["compile", f"{d}/truncated.onnx", "-o", out], ["truncated.onnx"]),
        Case("folder_model", ["compile", f"{d}/folder.onnx", "-o", out], ["folder.onnx"]),
        Case("missing_model_accel", ["compile", f"{d}/nope.onnx", "--target", "accel", "-o", out], ["nope.onnx"]),
        Case("random_model_accel", ["compile", f"{d}/random.onnx", "--target", "accel", "-o", out], ["random.onnx"]),
        Case("float_model_accel", ["compile", f"{d}/m.onnx", "--target", "accel", "-o", out], []),
        # outputs
        Case("output_folder_missing_parent", ["compile", q, "--target", "accel", "-o", f"{d}/no/such/x"], ["no/such"]),
        Case("json_file_is_model", ["compile", q, "--target", "accel", "-o", out, "--json-file", q],
             ["--json-file", "m.q.onnx"]),
        Case("json_file_missing_folder", ["compile", q, "--target", "accel", "-o", out, "--json-file",
                                          f"{d}/no/such/m.json"], ["--json-file"]),
        # flags of the wrong back-end (they would be ignored silently)
        Case("array_for_x86", ["compile", q, "--target", "x86-64", "-o", out, "--array", "16"], ["--array", "accel"]),
        Case("no_fusion_for_arm64", ["compile", q, "--target", "arm64", "-o", out, "--no-fusion"], ["--no-fusion"]),
        Case("fallback_for_x86", ["compile", q, "-o", out, "--fallback", "cpu"], ["--fallback"]),
        Case("tune_for_accel", ["compile", q, "--target", "accel", "-o", out, "--tune", "8"], ["--tune", "accel"]),
        Case("tuning_db_for_accel", ["compile", q, "--target", "accel", "-o", out, "--tuning-db", f"{d}/db"],
             ["--tuning-db"]),
        Case("float_for_accel", ["compile", q, "--target", "accel", "-o", out, "--float"], ["--float"]),
        Case("target_opts_for_accel", ["compile", q, "--target", "accel", "-o", out, "--target-opts", "znver4"],
             ["--target-opts"]),
        Case("num_cores_for_accel", ["compile", q, "--target", "accel", "-o", out, "--num-cores", "4"],
             ["--num-cores"]),
        Case("tracker_without_tune", ["compile", q, "-o", out, "--tracker", "127.0.0.1:9190"], ["--tracker", "--tune"]),
        # numbers argparse must refuse
        Case("array_zero", ["compile", q, "--target", "accel", "-o", out, "--array", "0"], ["--array"]),
        Case("array_text", ["compile", q, "--target", "accel", "-o", out, "--array", "big"], ["--array", "big"]),
        Case("num_cores_zero", ["compile", q, "-o", out, "--num-cores", "0"], ["--num-cores"]),
        Case("tune_negative", ["compile", q, "-o", out, "--tune", "-5"], ["--tune"]),
        Case("tune_workers_zero", ["compile", q, "-o", out, "--tune-workers", "0"], ["--tune-workers"]),
        Case("tune_top_tasks_zero", ["compile", q, "-o", out, "--tune-top-tasks", "0"], ["--tune-top-tasks"]),
        Case("max_trials_zero", ["compile", q, "-o", out, "--max-trials-per-task", "0"], ["--max-trials-per-task"]),
        Case("tune_min_negative", ["compile", q, "-o", out, "--tune-min-per-task", "-1"], ["--tune-min-per-task"]),
        Case("unknown_target", ["compile", q, "--target", "riscv", "-o", out], ["--target", "riscv"]),
        Case("unknown_fallback", ["compile", q, "--target", "accel", "-o", out, "--fallback", "gpu"],
             ["--fallback", "gpu"]),
        Case("no_output", ["compile", q], ["-o"]),
    ]
    return [c.param() for c in cases]


@pytest.mark.parametrize("case", _cases())
def test_bad_cli(case, work, capsys):
    argv = [str(a).replace("{work}", str(work)) for a in case.argv]
    check_cli(argv, capsys, work, case.names)


@pytest.mark.parametrize("target,options,names", [
    ("accel", {"tune": 8}, ["accel", "tune", "array"]),
    ("accel", {"arry": 16}, ["arry", "array"]),
    ("accel", {"log": print}, ["log"]),
    ("x86-64", {"array": 8}, ["x86-64", "array", "tuning_db"]),
    ("x86-64", {"fusion": False}, ["fusion"]),
    ("arm64", {"tunes": 10}, ["arm64", "tunes", "tune"]),
    ("riscv", {}, ["riscv", "x86-64"]),
], ids=["accel_tune", "accel_typo", "accel_log", "x86_array", "x86_fusion", "arm64_typo", "unknown_target"])
def test_bad_api_options(target, options, names, work):
    check_api(lambda: api.compile(work / "m.q.onnx", target, work / "out" / "api", **options), work, names)


# Property: for any values of the three scales, compile either succeeds (every scale finite and
# positive) or raises EdgekitError naming the bad initializer (or the op whose scale ratio is
# out of the multiplier's range). Never another exception, never a
# program built from a scale no kernel can divide by.
scale_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                         st.sampled_from([0.0, -0.0, 1e-45, 3.4e38, -1.0]))


def _valid(value) -> bool:
    return bool(np.isfinite(value) and value > 0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=scale_values, y=scale_values, w=st.lists(scale_values, min_size=4, max_size=4))
def test_fuzz_qdq_scales(work, tmp_path_factory, x, y, w):
    scales = {"x__scale": F32(x), "y__scale": F32(y), "w__scale": F32(w)}
    folder = tmp_path_factory.mktemp("fuzz")
    src = _mutated(work / "m.q.onnx", folder / "f.q.onnx",
                   lambda m: [_set_init(m, k, v) for k, v in scales.items()])
    bad = [k for k, v in scales.items() if not all(_valid(s) for s in np.atleast_1d(v))]
    try:
        api.compile(src, "accel", folder / "out")
    except EdgekitError as exc:
        if bad:
            assert any(k in str(exc) for k in bad), str(exc)
        else:  # valid scales whose ratio s_x * s_w / s_y no fixed-point multiplier holds
            assert "cannot represent" in str(exc) and "y__quantize" in str(exc), str(exc)
        assert not (folder / "out").exists()
        return
    assert not bad, f"compiled with invalid scale(s) {bad}: {scales}"
