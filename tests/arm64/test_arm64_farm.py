"""Remote execution errors and tracker scale-out, on native loopback devices.

Native devices run the very same `edgekit.device.serve` (with torch, onnx
and onnxruntime made unimportable, as on a board) under the host's Python:
they start in seconds, so the error paths and the farm test stay cheap.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from arm64_helpers import LOOPBACK, free_port, wait_registered

from edgekit.cli import main
from edgekit.errors import EdgekitError
from edgekit.runtime import remote
from edgekit.runtime.artifact import Artifact
from edgekit.runtime.session import LocalSession


def _x(seed=0):
    return np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype("float32")


def test_native_device_runs_without_torch_or_onnx(native_device, built):
    with remote.open_session(built["fp32", "x86-64"], device=native_device.address) as session:
        info = session.device.info
        got = session.run({"x": _x()})
    assert info["machine"] == "x86_64" and info["address"] == native_device.address
    expected = LocalSession(Artifact.load(built["fp32", "x86-64"])).run({"x": _x()})
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-5)


def test_unreachable_device_is_a_clear_cli_error(built, tmp_path, capsys):
    np.save(tmp_path / "x.npy", _x())
    port = free_port()  # nothing listens there
    start = time.monotonic()
    code = main(["run", str(built["fp32", "arm64"]), "--input", str(tmp_path / "x.npy"),
                 "--device", f"{LOOPBACK}:{port}"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"device {LOOPBACK}:{port} unreachable" in err and "Traceback" not in err
    assert time.monotonic() - start < 60


def test_artifact_for_another_arch_is_refused(native_device, built):
    with pytest.raises(EdgekitError, match=r"built for aarch64 \(arm64\) but device .* is x86_64"):
        remote.open_session(built["fp32", "arm64"], device=native_device.address)


def test_busy_device_fails_within_the_timeout(native_device, built):
    holder = remote.connect(native_device.address)
    try:
        start = time.monotonic()
        with pytest.raises(EdgekitError, match="is busy"):
            remote.connect(native_device.address, timeout=2)
        assert time.monotonic() - start < 15
    finally:
        holder.close()
    remote.connect(native_device.address).close()  # free again once the holder left


def test_tvm_version_mismatch_is_refused(built):
    import tvm

    device = remote.RemoteDevice(session=None, address="10.0.0.9:9090",
                                 info={"machine": "aarch64", "tvm": "0.26.0",
                                       "tvm_ffi": "0.1.14.post1"})
    with pytest.raises(EdgekitError, match=rf"runs apache-tvm 0.26.0 but this host has "
                                           rf"{tvm.__version__}: install apache-tvm=="):
        remote.check_compatible(Artifact.load(built["fp32", "arm64"]), device)


def test_tracker_errors_are_bounded(tracker, built):
    start = time.monotonic()
    with pytest.raises(EdgekitError, match="has no device with key 'rk3588'"):
        remote.open_session(built["fp32", "x86-64"], tracker=tracker, key="rk3588", timeout=5)
    with pytest.raises(EdgekitError, match="tracker .* unreachable"):
        remote.connect(tracker=f"{LOOPBACK}:{free_port()}", key="any", timeout=5)
    assert time.monotonic() - start < 30


def test_tracker_spreads_a_batch_over_two_devices(tracker, built):
    """Scale-out: two devices behind one tracker share a batch; results match local runs."""
    from edgekit.device import emulate

    devices = [emulate.start_native(LOOPBACK, 0, tracker=tracker, key="farm") for _ in range(2)]
    try:
        wait_registered(tracker, "farm", 2)
        feeds = [{"x": _x(seed)} for seed in range(6)]
        runs = remote.run_many(built["fp32", "x86-64"], feeds, tracker, "farm", timeout=60)
        local = LocalSession(Artifact.load(built["fp32", "x86-64"]))
        for run, feed in zip(runs, feeds):
            for key, value in local.run(feed).items():
                np.testing.assert_allclose(run.outputs[key], value, rtol=0, atol=1e-5)
        used = {run.device for run in runs}
        assert used == {d.address for d in devices}, f"batch ran on {used} only"

        # With every device held, one more request waits at most --timeout.
        holders = [remote.connect(tracker=tracker, key="farm") for _ in devices]
        try:
            start = time.monotonic()
            with pytest.raises(EdgekitError, match="no free device with key 'farm' within 2 s"):
                remote.connect(tracker=tracker, key="farm", timeout=2)
            assert time.monotonic() - start < 15
        finally:
            for holder in holders:
                holder.close()
        # The CLI path: `edgekit run --tracker --key` on a freed device.
        with remote.open_session(built["fp32", "x86-64"], tracker=tracker, key="farm") as session:
            assert session.run({"x": _x()}).keys() == set(runs[0].outputs)
    finally:
        for device in devices:
            device.stop()
