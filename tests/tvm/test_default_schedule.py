"""Default schedules for kernels without a tuning record: every kernel gets one, the code is
parallel and vectorized, and the results are those of TVM's unscheduled loops (integer: the
same bits)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tiny import OPSET

from edgekit.runtime import open_session


def attention_like_net(path, tokens: int = 37, width: int = 20) -> str:
    """Awkward (prime) sizes: x @ w, softmax over the tokens, x^T-weighted sum, LayerNorm."""
    rng = np.random.default_rng(3)

    def init(name, array):
        return numpy_helper.from_array(np.asarray(array, np.float32), name)

    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["q"], name="proj"),
        helper.make_node("Transpose", ["x"], ["xt"], name="xt", perm=[1, 0]),
        helper.make_node("MatMul", ["q", "xt"], ["scores"], name="scores"),
        helper.make_node("Softmax", ["scores"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "x"], ["ctx"], name="mix"),
        helper.make_node("LayerNormalization", ["ctx", "gamma", "beta"], ["y"], name="norm", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "attention_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [tokens, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [tokens, width])],
        [init("w", rng.normal(0, 0.3, (width, width))), init("gamma", rng.normal(1, 0.1, width)),
         init("beta", rng.normal(0, 0.1, width))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


def _compile_both(src, folder):
    from edgekit.compile import compile_model

    metas = {}
    for label, default in (("default", True), ("plain", False)):
        metas[label] = compile_model(src, "x86-64", folder / label, committed_db=False,
                                     default_schedules=default)
    return metas


def _run(folder, feeds):
    with open_session(folder) as session:
        return session.run(feeds)


@pytest.mark.parametrize("net", ["conv", "attention", "w4a8"])
def test_default_schedules_cover_every_kernel_bit_identically(net, conv_onnx, qdq_models, tmp_path):
    src = {"conv": conv_onnx, "w4a8": qdq_models[(4, 8)]}.get(net) or attention_like_net(tmp_path / "att.onnx")
    metas = _compile_both(src, tmp_path)
    tuning = metas["default"]["tuning"]
    assert tuning["kernels_tuned"] == 0
    assert tuning["kernels_default_schedule"] == tuning["kernels_total"] > 0
    assert metas["plain"]["tuning"]["kernels_default_schedule"] == 0
    shape = [d["shape"] for d in metas["default"]["inputs"]][0]
    feeds = {"x": np.random.default_rng(5).standard_normal(shape).astype(np.float32)}
    got, plain = _run(tmp_path / "default", feeds), _run(tmp_path / "plain", feeds)
    for name in plain:
        if net == "w4a8":  # exact integer arithmetic in the same summation order: the same bits
            np.testing.assert_array_equal(got[name], plain[name], err_msg=name)
        else:  # FP32: the same order too, but LLVM may fuse an inlined x + w * y into one FMA
            np.testing.assert_allclose(got[name], plain[name], rtol=1e-6, atol=1e-6, err_msg=name)


def test_reduction_kernels_are_parallel_and_vectorized(conv_onnx):
    """The rule gives a conv/matmul kernel an outer parallel loop and a vector inner loop."""
    from edgekit.compile.tvm import build, default_schedule, importer, targets
    from edgekit.compile.tvm.converters import CONVERTERS

    model = importer.load_onnx(conv_onnx)
    inputs, _ = importer.graph_io(model)
    target = targets.resolve("x86-64").tvm_target()
    mod = build.prepare(importer.to_relax(model, inputs, CONVERTERS), target)
    scheduled, count = default_schedule.apply(mod, target)
    assert count == build.count_scheduled(scheduled)[1]
    reductions = [gv.name_hint for gv, func in scheduled.functions.items()
                  if gv.name_hint.startswith(("fused_conv2d", "conv2d", "fused_matmul", "matmul"))]
    assert reductions
    for name in reductions:
        script = scheduled[name].script()
        assert "T.parallel(" in script and "T.vectorized(" in script, name
    # the caller's module is left as it was
    assert build.count_scheduled(mod)[0] == 0


def test_compile_warns_about_kernels_without_records(conv_onnx, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgekit", "compile", conv_onnx, "-o", str(tmp_path / "a"),
                           "--no-committed-db"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if line.startswith("edgekit: warning:")]
    assert len(warning) == 1, proc.stderr
    assert "have no tuning record" in warning[0] and "default schedules" in warning[0]
    assert "--tune" in warning[0] and "unscheduled" not in warning[0]


def _scheduled_and_run(func, arrays, out_shape, out_dtype):
    """(script of the default schedule of `func`, its output on `arrays`)."""
    import tvm

    from edgekit.compile.tvm import default_schedule, targets

    target = targets.resolve("x86-64").tvm_target()
    sch = default_schedule.schedule_func(func, target)
    lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"]}), target=target)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in arrays], out)
    return sch.mod["main"].script(), out.numpy()


def test_rows_that_are_not_whole_vectors_run_in_parallel_along_the_row():
    """A padding kernel over rows of 257: rows in parallel, no vector across a row boundary (whose
    lanes would each divide to find their index), and the padded values."""
    from tvm import te, tirx

    x = te.placeholder((4, 257, 257), "uint8", name="x")
    y = te.compute((4, 258, 260), lambda b, i, j: tirx.if_then_else(
        tirx.all(i < 257, j < 257), x[b, tirx.min(i, 256), tirx.min(j, 256)], tirx.const(0, "uint8")), name="pad")
    data = np.random.default_rng(0).integers(0, 256, (4, 257, 257)).astype(np.uint8)
    script, got = _scheduled_and_run(te.create_prim_func([x, y]), [data], (4, 258, 260), np.uint8)
    assert "T.parallel(" in script and "T.vectorized(" not in script and "T.where" not in script
    np.testing.assert_array_equal(got, np.pad(data, [(0, 0), (0, 1), (0, 3)]))


def test_per_row_values_are_computed_once_not_inlined_into_every_element():
    """LayerNorm's shape: a square root per row, read by every element of the row. It stays its
    own block (computed 33 times, not 33 x 20), and the results are exact."""
    from tvm import te, tirx

    x = te.placeholder((8, 33, 20), "int64", name="x")
    total = te.placeholder((8, 33, 1), "int64", name="total")
    root = te.compute((8, 33, 1), lambda b, i, _: tirx.max(
        tirx.floor(tirx.sqrt((total[b, i, 0] // 20 + 1).astype("float64"))).astype("int64"), 1), name="row_root")
    y = te.compute((8, 33, 20), lambda b, i, j: tirx.floordiv(x[b, i, j] * 4096, root[b, i, 0]), name="norm")
    rng = np.random.default_rng(1)
    xs, totals = rng.integers(-5000, 5000, (8, 33, 20)), rng.integers(0, 1 << 40, (8, 33, 1))
    script, got = _scheduled_and_run(te.create_prim_func([x, total, y]), [xs, totals], (8, 33, 20), np.int64)
    assert 'sblock("row_root")' in script
    roots = np.maximum(np.floor(np.sqrt((totals // 20 + 1).astype(np.float64))).astype(np.int64), 1)
    np.testing.assert_array_equal(got, (xs * 4096) // roots)


def test_integer_row_reductions_run_rows_in_parallel_and_stay_exact():
    """Softmax's masked row max and a row sum on the integer path: one output per contiguous row,
    so rows run in parallel, each one loop with its accumulator cached (no register tile across
    rows); int32 sums wrap like the unscheduled loops'."""
    from tvm import te, tirx

    x = te.placeholder((3, 37, 64), "int32", name="x")
    mask = te.placeholder((37, 64), "bool", name="mask")
    k = te.reduce_axis((0, 64), name="k")
    masked = te.compute((3, 37, 64), lambda b, i, j: tirx.Select(mask[i, j], x[b, i, j], tirx.const(-7, "int32")),
                        name="masked")
    row_max = te.compute((3, 37, 1), lambda b, i, _: te.max(masked[b, i, k], axis=k), name="row_max")
    k2 = te.reduce_axis((0, 64), name="k2")
    row_sum = te.compute((3, 37), lambda b, i: te.sum(x[b, i, k2], axis=k2), name="row_sum")
    rng = np.random.default_rng(2)
    xs = rng.integers(-(1 << 30), 1 << 30, (3, 37, 64)).astype(np.int32)
    ms = np.tril(np.ones((37, 64), bool))
    script, got = _scheduled_and_run(te.create_prim_func([x, mask, row_max]), [xs, ms], (3, 37, 1), np.int32)
    assert "T.parallel(T.int64(111))" in script or "T.parallel(111)" in script, script
    np.testing.assert_array_equal(got[..., 0], np.where(ms, xs, -7).max(-1))
    script, got = _scheduled_and_run(te.create_prim_func([x, row_sum]), [xs], (3, 37), np.int32)
    assert "T.parallel(T.int64(111))" in script or "T.parallel(111)" in script, script
    np.testing.assert_array_equal(got, xs.astype(np.int64).sum(-1).astype(np.int32))   # wraps mod 2^32
