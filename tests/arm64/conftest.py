"""Fixtures for the arm64 target: tiny models compiled for both targets, an
emulated arm64 device under qemu, native loopback devices and trackers.

Servers start once per session (qemu start-up is ~25-60 s) on 127.0.0.1
with free ports, so the suite is safe under pytest-xdist.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import arm64_tiny_models  # noqa: E402
from arm64_helpers import LOOPBACK, free_port  # noqa: E402

from edgekit.errors import EdgekitError  # noqa: E402


def have_arm64_tools() -> str | None:
    """Why the emulated tests cannot run here, or None when they can."""
    missing = [t for t in ("qemu-aarch64", "aarch64-linux-gnu-g++") if not shutil.which(t)]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install qemu-user g++-aarch64-linux-gnu)"
    return None


@pytest.fixture(scope="session")
def arm64_tools():
    reason = have_arm64_tools()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def built(tmp_path_factory, arm64_tools):
    """The tiny FP32 and W4A8 nets compiled for x86-64 and arm64: {(name, target): folder}."""
    from edgekit.compile.tvm import build, targets

    root = tmp_path_factory.mktemp("arm64-built")
    arm64_tiny_models.fp32_convnet(root / "fp32.onnx")
    arm64_tiny_models.w4a8_convnet(root / "w4a8.onnx")
    folders = {}
    for name in ("fp32", "w4a8"):
        for target in ("x86-64", "arm64"):
            folders[name, target] = root / f"{name}-{target}"
            build.compile_tvm(root / f"{name}.onnx", targets.resolve(target), folders[name, target])
    return folders


@pytest.fixture(scope="session")
def arm64_root(arm64_tools):
    """The cached arm64 root; prepared here if absent (needs root for apt the first time)."""
    from edgekit.device import sysroot

    override = os.environ.get("EDGEKIT_ARM64_SYSROOT")
    if override:
        return Path(override)
    path = sysroot.sysroot_path()
    if not sysroot.is_prepared(path) and os.geteuid() != 0:
        pytest.skip(f"no prepared arm64 root at {path} and not root: run "
                    "`edgekit device emulate --prepare-only` as root once")
    return sysroot.prepare(log=lambda msg: None)


@pytest.fixture(scope="session")
def emulated_device(arm64_root):
    from edgekit.device import emulate

    device = emulate.start_emulated(LOOPBACK, 0, sysroot=arm64_root)
    yield device
    device.stop()


@pytest.fixture(scope="session")
def native_device():
    from edgekit.device import emulate

    device = emulate.start_native(LOOPBACK, 0)
    yield device
    device.stop()


@pytest.fixture
def tracker():
    """A TVM RPC tracker on a free loopback port: yields 'HOST:PORT'."""
    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (edgekit[tvm])")
    from tvm.rpc.tracker import Tracker

    for _ in range(10):
        port = free_port()
        try:
            server = Tracker(LOOPBACK, port=port, port_end=port + 1, silent=True)
            break
        except (ValueError, OSError):
            continue
    else:
        raise EdgekitError("no free port for a tracker")
    yield f"{LOOPBACK}:{server.port}"
    server.terminate()
