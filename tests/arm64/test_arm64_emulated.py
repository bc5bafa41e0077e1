"""End to end on an emulated arm64 board: compile for arm64 -> serve under
qemu-aarch64 -> run and bench over TVM RPC -> the same results as x86-64.

Every test here shares one emulated device (session fixture); under
pytest-xdist each worker that picks one of these tests starts its own, so
they are kept few.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.cli import main
from edgekit.errors import EdgekitError
from edgekit.runtime import remote
from edgekit.runtime.artifact import Artifact
from edgekit.runtime.session import LocalSession


def _cli(capsys, *argv) -> str:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert code == 0, f"edgekit {' '.join(map(str, argv))} exited {code}: {out.err}"
    return out.out


def test_zoo_model_cli_on_emulated_arm64(emulated_device, tmp_path, capsys):
    """The user path: export a tiny zoo model, compile for both targets, run + bench remotely."""
    onnx_path = tmp_path / "litepose.onnx"
    # 64x64 instead of the tiny config's 128x128: every MAC is emulated.
    _cli(capsys, "export", "litepose", "--input-shape", "1,3,64,64", "-o", onnx_path)
    for target in ("x86-64", "arm64"):
        _cli(capsys, "compile", onnx_path, "--target", target, "-o", tmp_path / target)
    arm = Artifact.load(tmp_path / "arm64")
    assert arm.meta["target"]["arch"] == "aarch64"
    assert (tmp_path / "arm64" / arm.meta["library"]).read_bytes()[18] == 183  # ELF e_machine AArch64

    spec = arm.inputs[0]
    x = np.random.default_rng(0).standard_normal(spec["shape"]).astype(spec["dtype"])
    np.save(tmp_path / "x.npy", x)
    _cli(capsys, "run", tmp_path / "x86-64", "--input", tmp_path / "x.npy",
         "--output", tmp_path / "host.npz")
    _cli(capsys, "run", tmp_path / "arm64", "--input", tmp_path / "x.npy",
         "--output", tmp_path / "device.npz", "--device", emulated_device.address)
    host, device = np.load(tmp_path / "host.npz"), np.load(tmp_path / "device.npz")
    assert sorted(host.files) == sorted(o["name"] for o in arm.outputs) == sorted(device.files)
    for name in host.files:
        assert device[name].shape == host[name].shape
        np.testing.assert_allclose(device[name], host[name], rtol=0, atol=1e-4, err_msg=name)
        assert np.abs(host[name]).max() > 0  # a real output, not zeros on both sides

    report = json.loads(_cli(capsys, "bench", tmp_path / "arm64", "--device",
                             emulated_device.address, "--warmup", "0", "--repeat", "1", "--json"))
    assert report["runs"] == 1 and report["median_ms"] > 0
    assert report["target"] == "arm64"


def test_fp32_and_integer_paths_match_x86(emulated_device, built):
    """FP32 within 1e-4 of the x86 build; the W4A8 integer path bit-exact."""
    rng = np.random.default_rng(3)
    for name, exact in (("fp32", False), ("w4a8", True)):
        x = rng.standard_normal((1, 3, 16, 16)).astype("float32")
        expected = LocalSession(Artifact.load(built[name, "x86-64"])).run({"x": x})
        with remote.open_session(built[name, "arm64"], device=emulated_device.address) as session:
            assert session.device.machine == "aarch64"
            got = session.run({"x": x})
            timings = session.time({"x": x}, warmup=0, repeat=2)
        assert len(timings) == 2 and all(t > 0 for t in timings)
        for key in expected:
            if exact:
                np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{name}/{key}")
            else:
                np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-4,
                                           err_msg=f"{name}/{key}")
    assert Artifact.load(built["w4a8", "arm64"]).meta["quantized"]


def test_cpu_features_and_wrong_arch_on_emulated_device(emulated_device, built, tmp_path):
    """--target-opts cortex-a76,+dotprod,+i8mm runs on the emulated CPU; an x86 library is refused."""
    from edgekit.compile.tvm import build, targets

    folder = tmp_path / "a76"
    build.compile_tvm(built["fp32", "arm64"].parent / "fp32.onnx",
                      targets.resolve("arm64", "cortex-a76,+dotprod,+i8mm"), folder)
    x = np.ones((1, 3, 16, 16), "float32")
    expected = LocalSession(Artifact.load(built["fp32", "x86-64"])).run({"x": x})
    with remote.open_session(folder, device=emulated_device.address) as session:
        got = session.run({"x": x})
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-4)

    with pytest.raises(EdgekitError, match=r"built for x86_64 .* is aarch64"):
        remote.open_session(built["fp32", "x86-64"], device=emulated_device.address)
    # The refusal left the device free for the next client.
    with remote.open_session(built["fp32", "arm64"], device=emulated_device.address) as session:
        assert session.run({"x": x}).keys() == expected.keys()


def test_int8_dot_kernels_use_sdot_or_neon_and_match_the_reference(emulated_device, tmp_path):
    """A W4A8 net with every layer kind of the int8 dot-product kernels (convolutions of stride 1
    and 2, depthwise, transposed, a weight product and Q K^T): compiled for arm64 +dotprod its
    kernels are sdot ones, for plain arm64 NEON smull/saddlp/addp ones (in the library's
    instructions), and on the emulated board both give the integer reference's codes."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import arm64_tiny_models

    from edgekit.compile import compile_model
    from edgekit.quant import intref

    sys.path.insert(0, str(Path(__file__).parents[1] / "tvm"))
    import tiny

    arm64_tiny_models.dot_net(tmp_path / "dot.onnx")
    src = tiny.quantize(tmp_path / "dot.onnx", tmp_path / "dot.q.onnx", 4, 8)
    x = np.random.default_rng(4).random((1, 3, 16, 16), dtype=np.float32)
    want = intref.run(src, {"x": x})
    for opts, dot in (("+dotprod", "sdot"), (None, "neon")):
        folder = tmp_path / dot
        meta = compile_model(src, "arm64", folder, **({"target_opts": opts} if opts else {}))
        assert meta["integer_ops"] == {"conv": 3, "conv_transpose": 1, "linear": 2, "matmul": 1}
        assert meta["int8_dot_product"] == dot
        assert meta["tuning"]["kernels_int8_dot"] == 6   # the two weight products share one
        if shutil.which("aarch64-linux-gnu-objdump"):
            asm = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(folder / "model.so")],
                                 capture_output=True, text=True, check=True).stdout
            assert ("\tsdot\t" in asm) == (dot == "sdot")
            assert ("\tsmull\t" in asm and "\tsaddlp\t" in asm) == (dot == "neon")
        with remote.open_session(folder, device=emulated_device.address) as session:
            got = session.run({"x": x})
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{dot}/{name}")
