"""Integer lowering of QDQ models: every quantized tensor equals the integer reference, bit for bit."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from tiny import with_code_outputs

from edgekit.runtime import METADATA, open_session


def _compiled_equals_reference(qdq, x, tmp_path):
    """Compile QDQ file `qdq` with every quantized tensor as an output, run it on `x` and check
    each code and the output against the integer reference; (metadata, outputs, code tensors)."""
    from edgekit.compile import compile_model
    from edgekit.quant import intref

    probe = tmp_path / "probe.onnx"
    codes = with_code_outputs(qdq, probe)
    meta = compile_model(probe, "x86-64", tmp_path / "int", committed_db=False)
    ref = intref.run(qdq, {"x": x}, keep_intermediates=True)
    with open_session(tmp_path / "int") as s:
        got = s.run({"x": x})
    for name in codes:
        np.testing.assert_array_equal(got[name].astype(np.int64), np.asarray(ref[name], np.int64), err_msg=name)
    np.testing.assert_array_equal(got["y"], ref["y"])
    return meta, got, codes


@pytest.mark.parametrize("accumulate", ["float-exact", "int32"])
@pytest.mark.parametrize("bits", [(4, 4), (4, 8)], ids=["w4a4", "w4a8"])
def test_integer_codes_equal_integer_reference(qdq_models, tmp_path, bits, accumulate, monkeypatch):
    """Both accumulations are exact: float32 (chosen when no partial sum can pass 2^24, as in
    these nets) and int16 x int16 -> int32 (forced here by a limit nothing satisfies)."""
    from edgekit.compile.tvm import qlower

    if accumulate == "int32":
        monkeypatch.setattr(qlower, "FLOAT_EXACT_LIMIT", -1.0)

    x = np.random.default_rng(7).standard_normal((1, 3, 16, 16)).astype(np.float32)
    meta, got, codes = _compiled_equals_reference(qdq_models[bits], x, tmp_path)
    # every integer kind of the tiny net is lowered: conv, add, concat, pool, gemm
    assert meta["integer_ops"] == {"conv": 3, "add": 1, "concat": 1, "global_avgpool": 1, "gemm": 1}
    # 4-bit activations keep their clamp (they travel in 8-bit tensors)
    four_bit = [n for n, t in codes.items() if t == onnx.TensorProto.UINT4]
    assert bool(four_bit) == (bits[1] == 4)
    for name in four_bit:
        assert 0 <= got[name].min() and got[name].max() <= 15, name


def test_float_accumulation_only_where_exact():
    from edgekit.compile.tvm.qlower import exact_in_float32

    w = np.full((8, 16, 3, 3), 7, np.int8)  # 144 taps of |w| = 7 per output channel
    assert exact_in_float32(0, 255, 128, w, (1, 2, 3))  # 144 * 7 * 128 < 2^24
    big = np.full((8, 4096, 3, 3), 7, np.int8)
    assert not exact_in_float32(0, 255, 0, big, (1, 2, 3))  # 36864 * 7 * 255 > 2^24
    assert exact_in_float32(-128, 127, 0, big[:, :1024], (1, 2, 3)) == (9216 * 7 * 128 <= 2 ** 24)


def test_float_qdq_path_matches_onnxruntime(qdq_models, tmp_path):
    """--float: QDQ computed in float like onnxruntime; int4 initializers and uint4 clamps imported."""
    import onnxruntime as ort

    from edgekit.compile import compile_model

    src = qdq_models[(4, 4)]
    meta = compile_model(src, "x86-64", tmp_path / "f", integer=False, committed_db=False)
    assert meta["quantized"] and not meta["integer_ops"]
    x = np.random.default_rng(8).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ref = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with open_session(tmp_path / "f") as s:
        y = s.run({"x": x})["y"]
    scale = np.abs(ref).max()
    assert np.abs(y - ref).max() <= 0.02 * scale  # within a few output quantization steps


def test_metadata_records_integer_lowering(qdq_models, tmp_path):
    from edgekit.compile import compile_model

    compile_model(qdq_models[(4, 8)], "x86-64", tmp_path / "m", committed_db=False)
    meta = json.loads((tmp_path / "m" / METADATA).read_text())
    assert meta["quantized"] is True and sum(meta["integer_ops"].values()) == 7


def _rounding_shift(values: np.ndarray, shift: np.ndarray):
    """rshift_half_even_relax(values, shift) as a Relax function: (its expression, the product var,
    the results of running it)."""
    import tvm
    from tvm import relax

    from edgekit.compile.tvm import qlower

    bb = relax.BlockBuilder()
    prod = relax.Var("prod", relax.TensorType(values.shape, "int64"))
    expr = qlower.rshift_half_even_relax(prod, shift)
    with bb.function("main", [prod]):
        with bb.dataflow():
            out = bb.emit_output(expr)
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target="llvm"), tvm.cpu())
    return expr, prod, vm["main"](tvm.runtime.tensor(values)).numpy()


def test_rounding_shift_of_both_lowerings_equals_the_reference_on_ties_and_extremes():
    """The Relax rounding (element-wise kernels) and the dot-product kernels' requantization, on
    per-channel shifts 0..40 (0: no rounding), exact ties of either parity and sign, their
    neighbours, and products near the +-2^62 an int32 accumulator times a 31-bit multiplier reaches."""
    import tvm
    from tvm import te, tirx

    from edgekit.compile.tvm import dotprod
    from edgekit.quant import formats as F

    rng = np.random.default_rng(3)
    shift = np.arange(41, dtype=np.int64)                       # one channel per shift
    q = rng.integers(-(1 << 20), 1 << 20, (64, shift.size))
    half = np.left_shift(np.int64(1), np.maximum(shift, 1) - 1)
    ties = (q << np.maximum(shift, 1)) + half
    big = rng.integers(-(1 << 62), 1 << 62, (64, shift.size))
    values = np.concatenate([ties - 1, ties, ties + 1, -ties, big, rng.integers(-1000, 1000, (64, shift.size))])
    _, _, got = _rounding_shift(values, shift)
    np.testing.assert_array_equal(got, F.rshift_half_even(values, shift))

    total = rng.integers(-(1 << 31), 1 << 31, (256, shift.size)).astype(np.int32)
    total[:64] = (ties >> 21).astype(np.int32)                 # ties again, for multiplier 2^21
    mult = np.where(np.arange(shift.size) % 2 == 0, 1 << 21, (1 << 31) - 1).astype(np.int64)
    acc = te.placeholder(total.shape, "int32", "acc")
    m, s = te.placeholder((shift.size,), "int64", "mult"), te.placeholder((shift.size,), "int64", "shift")
    qp = te.placeholder((3,), "int32", "qparams")
    y = te.compute(total.shape, lambda i, j: dotprod._requantize_value(tirx, acc[i, j], m[j], s[j], qp, "int64"))
    lib = tvm.compile(te.create_prim_func([acc, m, s, qp, y]), target="llvm")
    out = tvm.runtime.tensor(np.zeros(total.shape, np.int64))
    bounds = np.array([0, -(1 << 31), (1 << 31) - 1], np.int32)
    lib(*[tvm.runtime.tensor(a) for a in (total, mult, shift, bounds)], out)
    want = np.clip(F.rshift_half_even(total.astype(np.int64) * mult, shift), -(1 << 31), (1 << 31) - 1)
    np.testing.assert_array_equal(out.numpy(), want)


def test_relax_rounding_shift_reads_its_product_at_most_twice():
    """Element-wise kernels inline a chain of requantizations into one expression: a product read
    k times makes it grow k-fold per requantization (four reads took the LM's integer build from
    16 s to 160 s of compilation)."""
    from tvm import relax

    def reads(expr, var) -> int:
        if expr.same_as(var):
            return 1
        return sum(reads(a, var) for a in expr.args) if isinstance(expr, relax.Call) else 0

    for shift in (np.array([7, 9]), np.array([0, 9])):
        expr, prod, _ = _rounding_shift(np.arange(8, dtype=np.int64).reshape(4, 2), shift)
        assert reads(expr, prod) <= 2


def test_constant_left_products_become_integer_layers_and_layout_ops_move_codes(tmp_path):
    """C @ a (constant on the left) is quantized as a layer (per-row weights) and runs on the int8
    kernel like a @ W; the Reshape and the rewrite's Transposes between integer ops repeat on the
    codes (no float requantization of their outputs); every code equals the integer reference."""
    import onnxruntime as ort
    from tiny import left_matmul_net, quantize

    from edgekit.compile.tvm import qlower
    from edgekit.onnx_graph.model import constant_first_matmuls_to_layers, initializers, prepare_model

    src = left_matmul_net(tmp_path / "left.onnx")
    x = np.random.default_rng(4).random((1, 2, 8, 6), dtype=np.float32)
    rewritten = prepare_model(src)
    assert constant_first_matmuls_to_layers(rewritten) == ["left"]
    inits = initializers(rewritten)
    assert not [n.name for n in rewritten.graph.node if n.op_type == "MatMul" and n.input[0] in inits]
    want = ort.InferenceSession(src).run(None, {"x": x})[0]
    got = ort.InferenceSession(rewritten.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    qdq = quantize(src, tmp_path / "left.q.onnx", 4, 8)
    # C^T is a layer's weight like the others: 4-bit codes, one scale per row of C
    model = onnx.load(qdq)
    stored = {i.name: i for i in model.graph.initializer}
    weights = sorted((list(stored[n.input[0]].dims), stored[n.input[0]].data_type) for n in model.graph.node
                     if n.op_type == "DequantizeLinear" and n.input[0] in stored and len(stored[n.input[0]].dims) == 2)
    assert weights == [([6, 6], onnx.TensorProto.INT4), ([8, 8], onnx.TensorProto.INT4),
                       ([48, 4], onnx.TensorProto.INT4)]
    lowered = onnx.load(qdq)
    counts = qlower.lower(lowered, dot="vnni")
    assert counts == {"linear": 3, "add": 1}
    names = [n.name for n in lowered.graph.node]
    assert not [n for n in names if n.endswith("__codes_q")]          # no float requantization
    assert sorted(n.op_type for n in lowered.graph.node if n.name.endswith("__codes_move")) == [
        "Reshape", "Transpose", "Transpose"]

    meta, _, _ = _compiled_equals_reference(qdq, x, tmp_path)
    assert meta["integer_ops"] == {"linear": 3, "add": 1}


def test_16_bit_wide_points_compile_bit_exactly(tmp_path):
    """polish's wide points (16-bit codes of an outlier residual stream, read by an add and a
    LayerNorm; tests/quant/test_wide_points.py): every code of the compiled model, 16-bit ones
    included, equals the integer reference."""
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quant"))
    from tiny_models import OutlierBlock, export, outlier_feeds

    from edgekit.compile import compile_model
    from edgekit.quant import intref
    from edgekit.quant import pipeline as P

    torch.manual_seed(0)
    src = export(OutlierBlock(), (1, 12, 16), tmp_path / "outlier.onnx")
    cfg = P.QuantConfig(weight_bits=4, act_bits=8, steps=[P.RTN(), P.Polish()])
    q, report = P.quantize(src, outlier_feeds(16), cfg)
    assert len(report["steps"][1]["details"]["wide_points"]["points"]) == 2
    qdq = tmp_path / "outlier.q.onnx"
    onnx.save(q, qdq)
    probe = tmp_path / "probe.onnx"
    codes = with_code_outputs(qdq, probe)
    assert sum(t == onnx.TensorProto.UINT16 for t in codes.values()) == 2
    meta = compile_model(probe, "x86-64", tmp_path / "int", committed_db=False)
    assert meta["integer_ops"] == {"gemm": 3, "lut": 1, "add": 1, "layernorm": 1}
    output = q.graph.output[0].name
    with open_session(tmp_path / "int") as s:
        for f in outlier_feeds(2, seed=9):
            ref, got = intref.run(qdq, f, keep_intermediates=True), s.run(f)
            for name, dtype in codes.items():
                assert (got[name].dtype == np.uint16) == (dtype == onnx.TensorProto.UINT16), name
                np.testing.assert_array_equal(got[name].astype(np.int64), np.asarray(ref[name], np.int64),
                                              err_msg=name)
            np.testing.assert_array_equal(got[output], ref[output])
