"""Property-based fuzzing of calibration data: any array or any bytes either load or give EdgekitError."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgekit.errors import EdgekitError
from edgekit.quant.calib import load_calibration, parse_preprocess
from edgekit.quant.pipeline import check_calibration
from tests.badinput.test_quantize import CALIB_SHAPE, float_model

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return onnx.load(str(float_model(tmp_path_factory.mktemp("fuzz") / "m.onnx")))


def _load_and_check(model, folder):
    feeds = load_calibration(str(folder), ["x"], [list(CALIB_SHAPE)], 4, dtypes=[np.dtype(np.float32)])
    check_calibration(model, feeds)
    return feeds


dtypes = st.one_of(hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
                   hnp.boolean_dtypes(), hnp.complex_number_dtypes())
arrays = dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=5, max_side=9)))


@SETTINGS
@given(arr=arrays)
def test_any_npy_array_loads_or_fails_cleanly(model, tmp_path, arr):
    folder = tmp_path / "c"
    folder.mkdir(exist_ok=True)
    np.save(folder / "a.npy", arr)
    try:
        feeds = _load_and_check(model, folder)
    except EdgekitError as exc:
        assert "\n" not in str(exc)
        return
    # accepted: then it really is a finite float array of the model's shape
    x = feeds[0]["x"]
    assert x.dtype.kind == "f" and x.shape == CALIB_SHAPE and np.all(np.isfinite(x))


def _npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


GOOD = _npy_bytes(np.zeros(CALIB_SHAPE, np.float32))


@SETTINGS
@given(cut=st.integers(0, len(GOOD)), flips=st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)),
                                                     max_size=8), suffix=st.sampled_from([".npy", ".npz"]))
def test_any_corrupted_file_loads_or_fails_cleanly(model, tmp_path, cut, flips, suffix):
    data = bytearray(GOOD if suffix == ".npy" else _npz(GOOD))
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    folder = tmp_path / "c"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    (folder / f"a{suffix}").write_bytes(bytes(data[:cut]))
    try:
        _load_and_check(model, folder)
    except EdgekitError as exc:
        assert "\n" not in str(exc)


def _npz(npy: bytes) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x.npy", npy)
    return buf.getvalue()


@SETTINGS
@given(spec=st.text(alphabet="sizemnatdcl=x:,0123456789.-naif ", max_size=40))
def test_any_preprocess_spec_parses_or_fails_cleanly(spec):
    try:
        pre = parse_preprocess(spec)
    except EdgekitError as exc:
        assert "\n" not in str(exc) and "--preprocess" in str(exc)
        return
    assert pre["size"] is None or min(pre["size"]) >= 1
    assert all(np.isfinite(pre["std"])) and 0 not in pre["std"] and pre["scale"] != 0
