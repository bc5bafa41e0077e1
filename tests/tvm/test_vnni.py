"""The int8 dot-product kernel (compile/tvm/vnni.py): bit-exact with the integer reference, and
really made of vpdpbusd. Runs only on a CPU with AVX-512 VNNI (the kernel's instruction)."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.compile.tvm import targets, vnni
from edgekit.quant import formats as F

HOST = targets.resolve("x86-64", num_cores=1) if targets.host_cpu() else None
pytestmark = pytest.mark.skipif(HOST is None or not vnni.available(HOST.tvm_target()),
                                reason="this CPU has no AVX-512 VNNI")


@pytest.mark.parametrize("rows,k,n", [(7, 16, 32), (30, 64, 48), (12, 8, 16)])
def test_kernel_equals_the_reference_requantization(rows, k, n):
    """Y = requantize(A x W + bias) for random codes and per-column (M, shift), wrap included."""
    import tvm

    rows_p = vnni.padded_rows(rows, n)
    func = vnni.dense_func(rows_p, k, n, "uint8")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=HOST.tvm_target())
    rng = np.random.default_rng(rows)
    a = rng.integers(0, 256, (rows_p, k)).astype(np.uint8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    bias = rng.integers(-2 ** 31, 2 ** 31, n).astype(np.int32)        # big enough to wrap
    mult, shift = F.quantize_multiplier(rng.uniform(1e-6, 2e-3, n))
    lo, hi, zp = 3, 250, 17
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((rows_p, n), np.uint8), dev)
    lib["main"](*[tvm.runtime.tensor(v, dev) for v in (a, vnni.pack_weight(w), bias, mult, shift,
                                                          np.array([zp, lo, hi], np.int32))], out)
    acc = F.wrap_int32(a.astype(np.int64) @ w.astype(np.int64))
    want = F.requantize(acc, bias, mult, shift, zp, F.UINT8, lo, hi)
    np.testing.assert_array_equal(out.numpy(), want)


def _linear_qdq(path, rows: int, k: int, n: int, act_type: int, zp_x: int, seed: int = 0) -> str:
    """x -> Q/DQ (act_type, zp_x) -> MatMul(DQ(int4 W)) + DQ(int32 bias) -> Q/DQ (uint8) -> y."""
    rng = np.random.default_rng(seed)
    s_x, s_y = np.float32(0.05), np.float32(0.2)
    s_w = rng.uniform(0.01, 0.05, n).astype(np.float32)
    w = rng.integers(-8, 8, (k, n))
    inits = [numpy_helper.from_array(s_x, "s_x"), numpy_helper.from_array(s_y, "s_y"),
             numpy_helper.from_array(np.array(zp_x, np.int8 if act_type == TensorProto.INT8 else np.uint8), "zp_x"),
             numpy_helper.from_array(np.array(128, np.uint8), "zp_y"),
             helper.make_tensor("w_q", TensorProto.INT4, [k, n], F.pack_int4(w.reshape(-1)).tobytes(), raw=True),
             numpy_helper.from_array(s_w, "s_w"),
             numpy_helper.from_array(rng.integers(-500, 500, n).astype(np.int32), "b_q"),
             numpy_helper.from_array((s_x * s_w).astype(np.float32), "s_b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["x_q"], name="qx"),
             helper.make_node("DequantizeLinear", ["x_q", "s_x", "zp_x"], ["x_dq"], name="dqx"),
             helper.make_node("DequantizeLinear", ["w_q", "s_w"], ["w"], name="dqw", axis=1),
             helper.make_node("DequantizeLinear", ["b_q", "s_b"], ["b"], name="dqb", axis=0),
             helper.make_node("MatMul", ["x_dq", "w"], ["mm"], name="matmul"),
             helper.make_node("Add", ["mm", "b"], ["z"], name="bias_add"),
             helper.make_node("QuantizeLinear", ["z", "s_y", "zp_y"], ["y_q"], name="qy"),
             helper.make_node("DequantizeLinear", ["y_q", "s_y", "zp_y"], ["y"], name="dqy")]
    graph = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)


@pytest.mark.parametrize("act_type,zp_x", [(TensorProto.UINT8, 131), (TensorProto.INT8, -3)], ids=["u8", "s8"])
def test_linear_layer_runs_on_vpdpbusd_bit_exactly(tmp_path, act_type, zp_x):
    """An awkward layer (13 rows, K 37, N 20: every dimension padded) compiled with and without the
    int8 dot-product kernel: the same codes as the integer reference both ways, and the library of
    the first holds vpdpbusd."""
    from edgekit.compile import compile_model
    from edgekit.quant import intref
    from edgekit.runtime import open_session

    src = _linear_qdq(tmp_path / "linear.onnx", 13, 37, 20, act_type, zp_x)
    x = np.random.default_rng(1).standard_normal((13, 37)).astype(np.float32) * 3
    want = intref.run(src, {"x": x})["y"]
    for dot in (True, False):
        meta = compile_model(src, "x86-64", tmp_path / str(dot), committed_db=False, int8_dot=dot)
        assert meta["integer_ops"] == {"linear": 1}
        assert meta["int8_dot_product"] == ("vnni" if dot else None)
        assert meta["tuning"]["kernels_int8_dot"] == (1 if dot else 0)
        with open_session(tmp_path / str(dot)) as session:
            np.testing.assert_array_equal(session.run({"x": x})["y"], want)
    if shutil.which("objdump"):
        asm = subprocess.run(["objdump", "-d", str(tmp_path / "True" / "model.so")], capture_output=True,
                             text=True, check=True).stdout
        assert "vpdpbusd" in asm
        plain = subprocess.run(["objdump", "-d", str(tmp_path / "False" / "model.so")], capture_output=True,
                               text=True, check=True).stdout
        assert "vpdpbusd" not in plain


def test_tiles_stay_on_the_stack_and_pad_little():
    for rows, blocks in ((1, 1), (13, 2), (256, 8), (1024, 64), (1000, 63)):
        mr, nr = vnni.tiles(rows, blocks)
        assert blocks % nr == 0 and mr * nr * 16 * 4 < vnni.STACK_LIMIT
        assert -(-rows // mr) * mr - rows < mr
