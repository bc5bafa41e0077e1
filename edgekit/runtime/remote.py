"""Run artifacts on remote devices over TVM RPC (the host side).

A device is an `edgekit device serve` process on a board (or its qemu
emulation, `edgekit device emulate`), reached directly (`--device HOST:PORT`)
or through an RPC tracker that hands out free boards of one key
(`--tracker HOST:PORT --key KEY`). Every wait is bounded by `timeout`
seconds; every failure is one-line EdgekitError (exit 2), never a hang.

API (for `edgekit run/bench --device/--tracker` and `compile --tune --tracker`):

    connect(device=None, tracker=None, key=None, timeout=30.0) -> RemoteDevice
        one RPC session; .address, .info (the device's machine/versions dict),
        .session (tvm.rpc.RPCSession), .close()
    open_remote_session(artifact, device=None, tracker=None, key=None, num_threads=None,
                        timeout=30.0)   (what edgekit.runtime.open_session calls)
    open_session(artifact, device=None, tracker=None, key=None, timeout=30.0)
        -> RemoteSession, a `edgekit.runtime.session.Session`:
           .run(feeds) -> {name: np.ndarray}, .time(feeds, warmup, repeat) -> [s],
           .device (RemoteDevice); checks arch + TVM versions before uploading
    run_many(artifact, feeds_list, tracker, key, workers=None, timeout=60.0)
        -> [RemoteRun(outputs, device)]: a batch spread over the tracker's devices
    tracker_summary(tracker, timeout=10.0) -> {"queue_info": ..., "server_info": ...}
    meta_schedule_runner(tracker, key, session_timeout=120.0, ...) -> ms RPCRunner
    meta_schedule_builder(cross_cc="aarch64-linux-gnu-g++", ...) -> ms LocalBuilder
        exporting .so files a device without a compiler can load
"""
from __future__ import annotations

import gc
import json
import queue
import socket
import struct
import threading
from dataclasses import dataclass

# the one HOST:PORT parser is the device server's (serve.py must also run copied alone onto a board)
from edgekit.device.serve import parse_address
from edgekit.errors import EdgekitError
from edgekit.runtime.artifact import Artifact
from edgekit.runtime.session import Session, _flatten

INFO_FUNCTION = "edgekit.device.info"  # registered by edgekit.device.serve
DEFAULT_TIMEOUT = 30.0


# --------------------------------------------------------------------- addresses
def _probe(host: str, port: int, timeout: float, what: str) -> None:
    """Fail fast and clearly when nothing listens (TVM's own connect can hang)."""
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 10.0)):
            pass
    except socket.timeout:
        raise EdgekitError(f"{what} {host}:{port} unreachable: no answer within "
                           f"{min(timeout, 10.0):.0f} s") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise EdgekitError(f"{what} {host}:{port} unreachable: {reason} "
                           f"(is `edgekit device serve` running there?)") from None


def _probe_device(host: str, port: int, timeout: float) -> None:
    """Check that an RPC server is there *and idle*, without starting a session.

    A TVM RPC server serves one session at a time; a busy one accepts the TCP
    connection and then never answers, and TVM's C++ connect would wait
    forever. So first knock with a key no server expects: an idle server
    answers "key mismatch" at once (and forks nothing), a busy one says nothing.
    """
    from tvm.rpc import base

    wait = min(timeout, 10.0)
    knock = b"client:edgekit-probe-" + str(threading.get_ident()).encode()
    try:
        sock = socket.create_connection((host, port), timeout=wait)
    except socket.timeout:
        raise EdgekitError(f"device {host}:{port} unreachable: no answer within {wait:.0f} s") \
            from None
    except OSError as exc:
        raise EdgekitError(f"device {host}:{port} unreachable: {exc.strerror or exc} "
                           f"(is `edgekit device serve` running there?)") from None
    try:
        with sock:
            sock.sendall(struct.pack("<ii", base.RPC_MAGIC, len(knock)) + knock)
            answer = struct.unpack("<i", base.recvall(sock, 4))[0]
    except socket.timeout:
        raise EdgekitError(f"device {host}:{port} is busy: it accepted the connection but did "
                           f"not answer within {wait:.0f} s (it serves one session at a time; "
                           f"use a tracker to share devices)") from None
    except (OSError, AssertionError, struct.error) as exc:
        raise EdgekitError(f"device {host}:{port} is not a TVM RPC server "
                           f"({_first_line(exc)})") from None
    if answer not in (base.RPC_CODE_MISMATCH, base.RPC_CODE_SUCCESS):
        raise EdgekitError(f"device {host}:{port} is not a TVM RPC server "
                           f"(handshake answer {answer:#x})")


def _with_timeout(fn, timeout: float, message: str):
    """Run fn() in a thread; raise EdgekitError(message) if it takes over timeout s.

    TVM's C++ connect releases the GIL, so a stuck handshake can be abandoned.
    """
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise EdgekitError(message)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # TVM errors end with the useful line ("...Error: message"); tracebacks precede it.
    useful = [ln for ln in lines if "Error" in ln or "failed" in ln]
    return (useful[-1] if useful else (lines[-1] if lines else type(exc).__name__))[:300]


# --------------------------------------------------------------------- devices
@dataclass
class RemoteDevice:
    """One open RPC session on a device."""

    session: object  # tvm.rpc.RPCSession
    address: str
    info: dict | None

    @property
    def machine(self) -> str | None:
        return (self.info or {}).get("machine")

    def close(self) -> None:
        # Dropping the last reference closes the socket and the server ends the
        # session; TVM's Python wrappers can hold it in reference cycles, so
        # collect them now, or the one-session-at-a-time server stays busy.
        self.session = None
        gc.collect()


def connect(device: str | None = None, tracker: str | None = None, key: str | None = None,
            timeout: float = DEFAULT_TIMEOUT, session_timeout: float = 0) -> RemoteDevice:
    """Open a session on `device` (HOST:PORT) or on a free `key` device of `tracker`."""
    if bool(device) == bool(tracker):
        raise EdgekitError("give either --device HOST:PORT or --tracker HOST:PORT --key KEY")
    if timeout <= 0:
        raise EdgekitError(f"--timeout must be positive, got {timeout}")
    if tracker:
        if not key:
            raise EdgekitError("--tracker needs --key KEY (the device key the boards registered)")
        host, port, matchkey = _tracker_request(tracker, key, timeout)
        what = f"device {host}:{port} (key {key} from tracker {tracker})"
    else:
        host, port = parse_address(device, "--device")
        # A server started with --key (and no tracker) expects that key.
        matchkey, what = key or "", f"device {host}:{port}"
        _probe_device(host, port, timeout)
    session = _open_rpc(host, port, matchkey, timeout, session_timeout, what)
    return RemoteDevice(session, f"{host}:{port}", _device_info(session))


def _open_rpc(host, port, matchkey, timeout, session_timeout, what):
    from tvm import rpc

    try:
        return _with_timeout(
            lambda: rpc.connect(host, port, key=matchkey, session_timeout=session_timeout),
            timeout, f"{what} accepted the connection but started no session within "
                     f"{timeout:.0f} s (busy with another client? the server runs one "
                     f"session at a time)")
    except EdgekitError:
        raise
    except Exception as exc:
        raise EdgekitError(f"{what}: cannot open an RPC session ({_first_line(exc)})") from None


def _device_info(session) -> dict | None:
    """The device's machine and versions, or None for a plain TVM RPC server."""
    try:
        func = session.get_function(INFO_FUNCTION)
    except Exception:
        return None
    try:
        return json.loads(str(func()))
    except (ValueError, TypeError):
        return None


def check_compatible(artifact: Artifact, remote: RemoteDevice) -> None:
    """Refuse before uploading: wrong CPU architecture, or TVM versions that differ."""
    import tvm
    import tvm_ffi

    info = remote.info
    if info is None:
        return  # not an edgekit server: loading will tell, in _load_remote
    where = f"device {remote.address}"
    machine = {"arm64": "aarch64", "AMD64": "x86_64"}.get(info.get("machine"), info.get("machine"))
    if artifact.arch != machine:
        raise EdgekitError(
            f"{artifact.folder}: built for {artifact.arch} ({artifact.meta['target'].get('name')}) "
            f"but {where} is {machine}: recompile with --target "
            f"{'arm64' if machine == 'aarch64' else 'x86-64'} or run it on a {artifact.arch} device")
    host_versions = {"tvm": tvm.__version__, "tvm_ffi": tvm_ffi.__version__}
    for name, host_version in host_versions.items():
        device_version = info.get(name)
        if device_version != host_version:
            package = "apache-tvm" if name == "tvm" else "apache-tvm-ffi"
            raise EdgekitError(
                f"{where} runs {package} {device_version} but this host has {host_version}: "
                f"install {package}=={host_version} on the device (RPC needs equal versions)")
    built = artifact.meta.get("versions", {}).get("tvm")
    if built and built != info.get("tvm"):
        raise EdgekitError(f"{artifact.folder}: compiled with TVM {built}, {where} runs "
                           f"{info.get('tvm')}: recompile with TVM {info.get('tvm')}")


# --------------------------------------------------------------------- sessions
class RemoteSession(Session):
    """The artifact uploaded to a device and loaded in a Relax VM there."""

    def __init__(self, artifact: Artifact, remote: RemoteDevice):
        check_compatible(artifact, remote)
        # A malformed library would crash the device's session process when it maps it.
        artifact.check_library(remote.machine)
        self.artifact, self.device = artifact, remote
        self._vm, self._dev = _load_remote(artifact, remote)

    def _tensors(self, arrays):
        from tvm import runtime

        return [runtime.tensor(a, self._dev) for a in arrays]

    def _call(self, arrays):
        try:
            self._vm.set_input("main", *self._tensors(arrays))
            self._vm.invoke_stateful("main")
            return [t.numpy() for t in _flatten(self._vm.get_outputs("main"))]
        except Exception as exc:
            raise EdgekitError(f"running {self.artifact.folder} on device {self.device.address} "
                               f"failed: {_first_line(exc)}") from None

    def _time(self, arrays, warmup, repeat):
        """Per-run seconds measured on the device by TVM's time evaluator."""
        try:
            self._vm.set_input("main", *self._tensors(arrays))
            for _ in range(max(0, warmup)):
                self._vm.invoke_stateful("main")
            timer = self._vm.time_evaluator("invoke_stateful", self._dev, number=1,
                                            repeat=max(1, int(repeat)))
            return [float(t) for t in timer("main").results]
        except Exception as exc:
            raise EdgekitError(f"timing {self.artifact.folder} on device {self.device.address} "
                               f"failed: {_first_line(exc)}") from None

    def close(self) -> None:
        # The remote Device keeps the RPC session alive (dev._rpc_sess): drop both,
        # or the one-session-at-a-time server stays busy with us.
        self._vm = self._dev = None
        self.device.close()


def _load_remote(artifact: Artifact, remote: RemoteDevice):
    from tvm.runtime.vm import VirtualMachine

    session = remote.session
    name = f"{artifact.meta.get('sha256', 'model')[:16]}-{artifact.library.name}"
    try:
        session.upload(str(artifact.library), name)
        lib = session.load_module(name)
        dev = session.cpu()
        return VirtualMachine(lib, dev), dev
    except Exception as exc:
        raise EdgekitError(f"{artifact.library}: device {remote.address} cannot load it "
                           f"({_first_line(exc)}); built for {artifact.arch}") from None


def open_session(artifact, device: str | None = None, tracker: str | None = None,
                 key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 session_timeout: float = 0) -> RemoteSession:
    """connect() + upload + load: a Session whose run/time execute on the device."""
    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    remote = connect(device, tracker, key, timeout, session_timeout)
    try:
        return RemoteSession(artifact, remote)
    except BaseException:
        remote.close()
        raise


def open_remote_session(artifact, *, device: str | None = None, tracker: str | None = None,
                        key: str | None = None, num_threads: int | None = None,
                        timeout: float = DEFAULT_TIMEOUT) -> RemoteSession:
    """What `edgekit.runtime.open_session` calls for --device/--tracker."""
    session = open_session(artifact, device, tracker, key, timeout)
    threads = num_threads or (session.artifact.meta.get("target") or {}).get("num_cores")
    if threads:   # default: the core count the artifact was compiled for, as a local session
        _set_remote_threads(session.device, int(threads))
    return session


def _set_remote_threads(remote: RemoteDevice, threads: int) -> None:
    try:
        remote.session.get_function("runtime.config_threadpool")(1, threads)
    except Exception:  # an older runtime without it: keep its default
        pass


# --------------------------------------------------------------------- tracker
def _tracker_socket(tracker: str, timeout: float) -> socket.socket:
    from tvm.rpc import base

    host, port = parse_address(tracker, "--tracker")
    _probe(host, port, timeout, "tracker")
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
    except (OSError, AssertionError) as exc:
        sock.close()
        raise EdgekitError(f"tracker {tracker}: no tracker handshake ({_first_line(exc)})") from None
    if magic != base.RPC_TRACKER_MAGIC:
        sock.close()
        raise EdgekitError(f"{tracker} is not a TVM RPC tracker")
    return sock


def tracker_summary(tracker: str, timeout: float = 10.0) -> dict:
    """The tracker's view: {"queue_info": {key: {free, pending}}, "server_info": [...]}."""
    from tvm.rpc import base

    sock = _tracker_socket(tracker, timeout)
    try:
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        value = base.recvjson(sock)
    except OSError as exc:
        raise EdgekitError(f"tracker {tracker}: no summary ({_first_line(exc)})") from None
    finally:
        sock.close()
    if value[0] != base.TrackerCode.SUCCESS:
        raise EdgekitError(f"tracker {tracker}: unexpected summary answer {value!r}")
    return value[1]


def devices_for_key(summary: dict, key: str) -> int:
    return sum(1 for s in summary.get("server_info", [])
               if s.get("key", "").split(":", 1)[-1] == key)


def _tracker_request(tracker: str, key: str, timeout: float) -> tuple[str, int, str]:
    """Ask the tracker for a free `key` device; bounded, unlike TrackerSession.request."""
    from tvm.rpc import base

    summary = tracker_summary(tracker, timeout)
    if devices_for_key(summary, key) == 0:
        keys = sorted({s.get("key", "").split(":", 1)[-1] for s in summary.get("server_info", [])})
        raise EdgekitError(f"tracker {tracker} has no device with key {key!r} "
                           f"(registered keys: {', '.join(keys) or 'none'})")
    sock = _tracker_socket(tracker, timeout)
    try:
        base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 1])
        value = base.recvjson(sock)  # the tracker answers when a device is free
    except socket.timeout:
        raise EdgekitError(f"tracker {tracker}: no free device with key {key!r} within "
                           f"{timeout:.0f} s (all busy; raise --timeout or add devices)") from None
    except OSError as exc:
        raise EdgekitError(f"tracker {tracker}: request failed ({_first_line(exc)})") from None
    finally:
        # Closing a timed-out request makes the tracker skip it (its callback fails).
        sock.close()
    if value[0] != base.TrackerCode.SUCCESS:
        raise EdgekitError(f"tracker {tracker}: unexpected answer {value!r}")
    host, port, matchkey = value[1]
    return host, int(port), matchkey


@dataclass
class RemoteRun:
    outputs: dict
    device: str


def run_many(artifact, feeds_list: list, tracker: str, key: str, workers: int | None = None,
             timeout: float = 60.0) -> list[RemoteRun]:
    """Run every feed of `feeds_list` on the tracker's `key` devices, in parallel.

    Each worker holds one device session for the whole batch (one upload per
    device); workers default to the number of devices registered for `key`.
    Results come back in the order of `feeds_list`.
    """
    if not isinstance(artifact, Artifact):
        artifact = Artifact.load(artifact)
    for feeds in feeds_list:
        artifact.validate(feeds)  # bad input fails before any device is taken
    available = devices_for_key(tracker_summary(tracker, timeout), key)
    if available == 0:
        _tracker_request(tracker, key, timeout)  # raises the "no device with key" error
    workers = max(1, min(workers or available, available, len(feeds_list)))
    # Every worker first holds its own session (the barrier), so the tracker
    # hands out distinct devices, and job i < workers is worker i's first job:
    # every device takes part even when one could finish the whole batch
    # alone. The rest go to whichever worker is free (a fast board does more).
    barrier = threading.Barrier(workers, timeout=timeout)
    shared: queue.Queue = queue.Queue()
    for index in range(workers, len(feeds_list)):
        shared.put(index)
    results: list = [None] * len(feeds_list)
    errors: list = []

    def worker(first: int):
        try:
            try:
                session = open_session(artifact, tracker=tracker, key=key, timeout=timeout)
            except BaseException:
                barrier.abort()  # the others need not wait for this worker
                raise
            with session:
                try:
                    barrier.wait()
                except threading.BrokenBarrierError:
                    pass  # a worker failed or was slow: run with the sessions we have
                index = first
                while index is not None and not errors:
                    results[index] = RemoteRun(session.run(feeds_list[index]),
                                               session.device.address)
                    try:
                        index = shared.get_nowait()
                    except queue.Empty:
                        index = None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        first = errors[0]
        raise first if isinstance(first, EdgekitError) else EdgekitError(
            f"run on tracker {tracker} failed: {_first_line(first)}")
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise EdgekitError(f"tracker {tracker}: {len(missing)} runs got no device")
    return results


# --------------------------------------------------------------------- tuning
def meta_schedule_runner(tracker: str, key: str, session_timeout: float = 120.0,
                         number: int = 3, repeat: int = 1, min_repeat_ms: int = 0,
                         max_workers: int | None = None):
    """MetaSchedule's RPCRunner measuring candidates on the tracker's `key` devices.

    Fails here, clearly, if the tracker is down or has no such device, rather
    than reporting every candidate as a runner error later. session_timeout
    bounds each measurement (candidate upload + run), so keep it generous
    under emulation.
    """
    from tvm.s_tir import meta_schedule as ms

    host, port = parse_address(tracker, "--tracker")
    summary = tracker_summary(tracker)
    count = devices_for_key(summary, key)
    if count == 0:
        raise EdgekitError(f"tracker {tracker} has no device with key {key!r}: start one with "
                           f"`edgekit device serve --tracker {tracker} --key {key}`")
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                 session_priority=1, session_timeout_sec=int(session_timeout))
    evaluator = ms.runner.EvaluatorConfig(number=number, repeat=repeat,
                                          min_repeat_ms=min_repeat_ms,
                                          enable_cpu_cache_flush=False)
    return ms.runner.RPCRunner(config, evaluator, max_workers=max_workers or count)


def export_for_device(mod, cross_cc: str | None = "aarch64-linux-gnu-g++") -> str:
    """MetaSchedule f_export: a linked .so, since a board has no compiler to link
    MetaSchedule's default .tar; cross_cc None links with the host's compiler."""
    import os
    import tempfile

    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="edgekit-ms-"), "candidate.so")
    if cross_cc:
        mod.export_library(path, fcompile=cc.cross_compiler(cross_cc))
    else:
        mod.export_library(path)
    return path


def meta_schedule_builder(cross_cc: str | None = "aarch64-linux-gnu-g++", timeout: float = 60.0,
                          max_workers: int = 1):
    """MetaSchedule LocalBuilder whose candidates are linked for the device
    (pass TargetSpec.cross_cc: None for a device of the host's arch)."""
    import functools

    from tvm.s_tir import meta_schedule as ms

    return ms.builder.LocalBuilder(max_workers=max_workers, timeout_sec=timeout,
                                   f_export=functools.partial(export_for_device,
                                                              cross_cc=cross_cc))
