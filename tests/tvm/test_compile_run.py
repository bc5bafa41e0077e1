"""compile -> artifact -> runtime: parity with onnxruntime, metadata, and clear refusals."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tiny

from edgekit.errors import EdgekitError
from edgekit.runtime import METADATA, load, open_session


def ort_run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def test_fp32_matches_onnxruntime(conv_onnx, conv_artifact):
    x = np.random.default_rng(3).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with open_session(conv_artifact) as s:
        y = s.run({"x": x})["y"]
    ref = ort_run(conv_onnx, {"x": x})["y"]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_metadata_describes_the_artifact(conv_artifact, conv_onnx):
    import tvm

    from edgekit.compile.tvm.build import sha256_file
    from edgekit.compile.tvm.targets import host_cpu

    meta = json.loads((conv_artifact / METADATA).read_text())
    assert meta["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert meta["outputs"] == [{"name": "y", "shape": [1, 4], "dtype": "float32"}]
    assert meta["sha256"] == sha256_file(conv_artifact / meta["library"])
    assert meta["versions"]["tvm"] == tvm.__version__
    assert meta["target"]["arch"] == "x86_64" and meta["target"]["mcpu"] == host_cpu() != "native"
    assert meta["source"]["sha256"] == sha256_file(conv_onnx)


def test_runtime_needs_neither_torch_nor_onnx(conv_artifact):
    code = (
        "import sys\n"
        "for m in ('torch', 'onnx', 'onnxruntime'): sys.modules[m] = None\n"
        "import numpy as np\n"
        "from edgekit.runtime import open_session\n"
        f"s = open_session({str(conv_artifact)!r})\n"
        "y = s.run({'x': np.zeros((1, 3, 16, 16), np.float32)})['y']\n"
        "print(y.shape)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(1, 4)" in out.stdout


def copy_artifact(src, dst) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)


def test_corrupted_library_is_refused(conv_artifact, tmp_path):
    art = copy_artifact(conv_artifact, tmp_path / "a")
    lib = art / "model.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(EdgekitError, match="checksum mismatch"):
        open_session(art)


@pytest.mark.parametrize("field,value,message", [
    (("versions", "tvm"), "0.12.0", "compiled with TVM 0.12.0"),
    (("target", "arch"), "aarch64", "compiled for aarch64"),
])
def test_mismatched_artifact_is_refused(conv_artifact, tmp_path, field, value, message):
    art = copy_artifact(conv_artifact, tmp_path / "a")
    meta = json.loads((art / METADATA).read_text())
    meta[field[0]][field[1]] = value
    (art / METADATA).write_text(json.dumps(meta))
    with pytest.raises(EdgekitError, match=message):
        open_session(art)


def test_garbage_metadata_is_refused(conv_artifact, tmp_path):
    art = copy_artifact(conv_artifact, tmp_path / "a")
    (art / METADATA).write_text("{not json")
    with pytest.raises(EdgekitError, match="corrupted metadata"):
        load(art)
    with pytest.raises(EdgekitError, match="not an edgekit artifact"):
        load(tmp_path)


@pytest.mark.parametrize("feeds,message", [
    ({"x": np.zeros((1, 3, 8, 16), np.float32)},
     r"input 'x': expected shape \[1, 3, 16, 16\] float32, got shape \[1, 3, 8, 16\] float32"),
    ({"x": np.zeros((1, 3, 16, 16), np.float64)},
     r"expected shape \[1, 3, 16, 16\] float32, got shape \[1, 3, 16, 16\] float64"),
    ({"image": np.zeros((1, 3, 16, 16), np.float32)}, r"expected \['x'\], got \['image'\]"),
])
def test_wrong_input_names_expected_and_actual(conv_artifact, feeds, message):
    with open_session(conv_artifact) as s, pytest.raises(EdgekitError, match=message):
        s.run(feeds)


def test_unsupported_op_names_op_and_node(tmp_path):
    from edgekit.compile import compile_model

    bad = tiny.unsupported_net(tmp_path / "bad.onnx")
    with pytest.raises(EdgekitError, match=r"MatMulNBits \(node 'weird_node'\)") as info:
        compile_model(bad, "x86-64", tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_op_the_frontend_fails_on_names_op_and_node(tmp_path):
    from edgekit.compile import compile_model

    bad = tiny.dynamic_pad_net(tmp_path / "pad.onnx")
    with pytest.raises(EdgekitError, match=r"ONNX op Pad \(node 'mypad'\) cannot be imported") as info:
        compile_model(bad, "x86-64", tmp_path / "out")
    assert "\n" not in str(info.value)


def test_unknown_target_and_accel(conv_onnx, tmp_path):
    from edgekit.compile import compile_model

    with pytest.raises(EdgekitError, match="unknown target"):
        compile_model(conv_onnx, "riscv", tmp_path / "o")
    try:
        import edgekit.compile.accel.compiler  # noqa: F401
    except ImportError:
        with pytest.raises(EdgekitError, match="accel is not available yet"):
            compile_model(conv_onnx, "accel", tmp_path / "o")


def test_arm64_cross_compile_writes_aarch64_library(conv_onnx, tmp_path):
    from edgekit.compile import compile_model

    if not shutil.which("aarch64-linux-gnu-g++"):
        with pytest.raises(EdgekitError, match="apt-get install g\\+\\+-aarch64-linux-gnu"):
            compile_model(conv_onnx, "arm64", tmp_path / "arm")
        return
    meta = compile_model(conv_onnx, "arm64", tmp_path / "arm", target_opts="cortex-a76,+dotprod")
    lib = (tmp_path / "arm" / "model.so").read_bytes()
    assert lib[:4] == b"\x7fELF" and int.from_bytes(lib[18:20], "little") == 183  # EM_AARCH64
    assert meta["target"]["mcpu"] == "cortex-a76" and "+dotprod" in meta["target"]["mattr"]
    with pytest.raises(EdgekitError, match="compiled for aarch64"):
        open_session(tmp_path / "arm")


def test_missing_cross_compiler_says_what_to_install(conv_onnx, tmp_path, monkeypatch):
    from edgekit.compile.tvm import targets

    monkeypatch.setattr(targets.shutil, "which", lambda name: None)
    monkeypatch.setattr(targets.platform, "machine", lambda: "x86_64")
    with pytest.raises(EdgekitError, match="apt-get install g\\+\\+-aarch64-linux-gnu"):
        targets.resolve("arm64")


def test_target_opts_parse():
    from edgekit.compile.tvm.targets import parse_target_opts

    assert parse_target_opts("cortex-a76,+dotprod,i8mm,num-cores=4") == {
        "mcpu": "cortex-a76", "mattr": ["+dotprod", "+i8mm"], "num_cores": 4}
    with pytest.raises(EdgekitError, match="unknown option"):
        parse_target_opts("speed=fast")


def test_sessions_size_the_thread_pool_before_it_exists(monkeypatch):
    """TVM's pool takes TVM_NUM_THREADS workers at its first parallel call and can only shrink
    afterwards: the variable is set to cover every core (or more, if asked) before anything runs;
    a session's threads are its argument, else the variable, else the compile's num-cores."""
    from edgekit.runtime.session import reserve_threads

    cores = os.cpu_count() or 1
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    assert reserve_threads(None, 2) == 2 and os.environ["TVM_NUM_THREADS"] == str(max(2, cores))
    monkeypatch.setenv("TVM_NUM_THREADS", "1")       # set by the user: kept, and used by default
    assert reserve_threads(None, 4) == 1 and os.environ["TVM_NUM_THREADS"] == "1"
    assert reserve_threads(3, 4) == 3 and os.environ["TVM_NUM_THREADS"] == "3"   # an explicit request raises it
    assert reserve_threads(2, 4) == 2 and os.environ["TVM_NUM_THREADS"] == "3"   # fewer: config_threadpool
