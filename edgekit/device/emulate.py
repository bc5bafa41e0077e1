"""Start `edgekit device serve` as a child process: under qemu-aarch64 in the
prepared arm64 root (an emulated arm64 board), or with the host's own Python
(a native device, handy for a loopback farm behind a tracker).

Emulated timings are qemu's, not a board's: use them to check results and
plumbing, never to judge speed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import edgekit
from edgekit.device import DEVICE_FILES
from edgekit.device.serve import READY_PREFIX, check_bind
from edgekit.errors import EdgekitError

# Python + tvm import under qemu takes ~40 s on an idle core; leave room for a
# loaded 2-core CI machine.
EMULATED_READY_TIMEOUT = 300.0
NATIVE_READY_TIMEOUT = 120.0
# What a board does not have; a native device hides them to prove it.
HOST_ONLY_PACKAGES = ("torch", "onnx", "onnxruntime")


class DeviceProcess:
    """A running device server: its address, its process and its log."""

    def __init__(self, proc: subprocess.Popen, host: str, port: int, key: str, kind: str,
                 workdir: Path, log_path: Path):
        self.proc, self.host, self.port, self.key, self.kind = proc, host, port, key, kind
        self.workdir, self.log_path = workdir, log_path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """End the server and every session child it forked (its process group)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"DeviceProcess({self.kind} {self.address} key={self.key!r} pid={self.proc.pid})"


def device_bundle(dest: Path) -> Path:
    """Copy the few edgekit files a board needs into dest; return dest."""
    source_root = Path(edgekit.__file__).resolve().parent.parent
    for rel in DEVICE_FILES:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source_root / rel, target)
    return dest


def _serve_args(host: str, port: int, tracker: str | None, key: str | None,
                allow_remote: bool = False) -> list[str]:
    args = ["-m", "edgekit.device.serve", "--host", host, "--port", str(port)]
    if allow_remote:
        args.append("--allow-remote")
    if tracker:
        args += ["--tracker", tracker]
    if key is not None:
        args += ["--key", key]
    return args


def start_emulated(host: str = "127.0.0.1", port: int = 0, tracker: str | None = None,
                   key: str | None = None, sysroot: str | os.PathLike | None = None,
                   ready_timeout: float = EMULATED_READY_TIMEOUT, allow_remote: bool = False) -> DeviceProcess:
    """Serve under qemu-aarch64 in the arm64 root (prepared and cached if needed).

    A non-loopback `host` is refused unless `allow_remote` (TVM RPC has no authentication)."""
    from edgekit.device import sysroot as roots

    check_bind(host, allow_remote, "the emulated device server")

    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if not qemu:
        raise EdgekitError("qemu-aarch64 not found: install it with `apt-get install qemu-user`")
    root = Path(sysroot or os.environ.get("EDGEKIT_ARM64_SYSROOT") or roots.prepare())
    if not roots.is_prepared(root):
        raise EdgekitError(f"{root} is not a prepared arm64 root (no {roots.MANIFEST}): "
                           "run `edgekit device emulate --prepare-only`")
    workdir = Path(tempfile.mkdtemp(prefix="edgekit-arm64-device-"))
    bundle = device_bundle(workdir / "bundle")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "LANG": "C.UTF-8",
           "PYTHONPATH": f"{bundle}{os.pathsep}{root / roots.SITE_PACKAGES}",
           "PYTHONNOUSERSITE": "1",
           # One TVM thread: qemu threads compete for the host's cores anyway.
           "TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS", "1")}
    cmd = [qemu, "-L", str(root), str(roots.python_in(root)),
           *_serve_args(host, port, tracker, key, allow_remote)]
    return _launch(cmd, env, workdir, "emulated-arm64", ready_timeout)


def start_native(host: str = "127.0.0.1", port: int = 0, tracker: str | None = None,
                 key: str | None = None, ready_timeout: float = NATIVE_READY_TIMEOUT,
                 allow_remote: bool = False) -> DeviceProcess:
    """Serve with this host's Python: the same server code, the host's arch."""
    check_bind(host, allow_remote, "the native device server")
    workdir = Path(tempfile.mkdtemp(prefix="edgekit-native-device-"))
    bundle = device_bundle(workdir / "bundle")
    hidden = _hide_packages(workdir / "hidden", HOST_ONLY_PACKAGES)
    env = dict(os.environ)
    # Only the device files, and the host-only packages made unimportable: the
    # same guarantee a board gives (and tvm_ffi skips its eager torch import).
    env["PYTHONPATH"] = f"{hidden}{os.pathsep}{bundle}"
    env.setdefault("TVM_NUM_THREADS", "1")
    cmd = [sys.executable, *_serve_args(host, port, tracker, key, allow_remote)]
    return _launch(cmd, env, workdir, "native", ready_timeout)


def _hide_packages(folder: Path, names) -> Path:
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not available on an edgekit device')\n")
    return folder


def _launch(cmd: list[str], env: dict, workdir: Path, kind: str,
            ready_timeout: float) -> DeviceProcess:
    log_path = workdir / "serve.log"
    with open(log_path, "wb") as log:
        # Own process group: stop() ends the server and its session children.
        proc = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    device = DeviceProcess(proc, "", 0, "", kind, workdir, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        line = _ready_line(log_path)
        if line:
            device.host, device.port, device.key = _parse_ready(line)
            return device
        if proc.poll() is not None:
            tail = device.log_tail()
            device.stop()
            raise EdgekitError(f"{kind} device server exited with code {proc.returncode} before "
                               f"serving: {tail or 'no output'}")
        time.sleep(0.2)
    tail = device.log_tail()
    device.stop()
    raise EdgekitError(f"{kind} device server not ready after {ready_timeout:.0f} s: "
                       f"{tail or 'no output'}")


def _ready_line(log_path: Path) -> str | None:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    return next((ln for ln in text.splitlines() if ln.startswith(READY_PREFIX)), None)


def _parse_ready(line: str) -> tuple[str, int, str]:
    # "edgekit-device: serving on HOST:PORT key=KEY [tracker=...] machine=..."
    fields = line[len(READY_PREFIX):].split()
    host, _, port = fields[0].rpartition(":")
    key = next((f[4:] for f in fields if f.startswith("key=")), "")
    return host, int(port), key
