"""Integer lowering of QDQ models: every quantized tensor equals the integer reference, bit for bit."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from tiny import with_code_outputs

from edgekit.runtime import METADATA, open_session


@pytest.mark.parametrize("accumulate", ["float-exact", "int32"])
@pytest.mark.parametrize("bits", [(4, 4), (4, 8)], ids=["w4a4", "w4a8"])
def test_integer_codes_equal_integer_reference(qdq_models, tmp_path, bits, accumulate, monkeypatch):
    """Both accumulations are exact: float32 (chosen when no partial sum can pass 2^24, as in
    these nets) and int16 x int16 -> int32 (forced here by a limit nothing satisfies)."""
    from edgekit.compile import compile_model
    from edgekit.compile.tvm import qlower
    from edgekit.quant import intref

    if accumulate == "int32":
        monkeypatch.setattr(qlower, "FLOAT_EXACT_LIMIT", -1.0)

    src = qdq_models[bits]
    probe = tmp_path / "probe.onnx"
    codes = with_code_outputs(src, probe)
    meta = compile_model(probe, "x86-64", tmp_path / "int", committed_db=False)
    # every integer kind of the tiny net is lowered: conv, add, concat, pool, gemm
    assert meta["integer_ops"] == {"conv": 3, "add": 1, "concat": 1, "global_avgpool": 1, "gemm": 1}
    x = np.random.default_rng(7).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ref = intref.run(src, {"x": x}, keep_intermediates=True)
    with open_session(tmp_path / "int") as s:
        got = s.run({"x": x})
    for name in codes:
        np.testing.assert_array_equal(got[name].astype(np.int64), np.asarray(ref[name], np.int64), err_msg=name)
    np.testing.assert_array_equal(got["y"], ref["y"])
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
