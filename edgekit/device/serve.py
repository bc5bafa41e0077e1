"""`edgekit device serve`: a TVM RPC server for an edge board.

Runs with nothing but Python 3, numpy and the TVM runtime wheels
(apache-tvm + apache-tvm-ffi): it imports no other edgekit module (but
edgekit.errors when present, for edgekit's one-line errors), no torch and no
onnx, so a board needs only the three files listed in
`edgekit.device.DEVICE_FILES` on its PYTHONPATH:

    python3 -m edgekit.device.serve --port 9090             (127.0.0.1: reach it by an SSH tunnel)
    python3 -m edgekit.device.serve --host 192.168.1.7 --allow-remote --tracker 192.168.1.10:9190 --key rk3588

Security: TVM RPC has no authentication, and this server loads and runs any
native library a client uploads. It listens on 127.0.0.1 unless told
otherwise, refuses any other address without `--allow-remote`, and warns on
stderr when it is given: serve beyond loopback only on a private, trusted
network (docs/arm64.md: SSH tunnels), never on 0.0.0.0 of an untrusted one.

On start it prints one line `edgekit-device: serving on HOST:PORT key=KEY`
(the emulator waits for it). Each client session runs in a forked child;
the server serves one session at a time (the TVM RPC server's design), so
a farm of boards behind a tracker is how to run many jobs at once.

Besides TVM's own RPC functions it registers `edgekit.device.info`, which
returns a JSON string of this device's machine and versions, so the host
can refuse an artifact built for another architecture or a host whose TVM
differs before anything is uploaded.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import sys

try:  # the full edgekit: errors are edgekit's one-line errors (exit 2) under `edgekit device serve`
    from edgekit.errors import EdgekitError as _ErrorBase
except ImportError:  # serve.py alone on a board
    class _ErrorBase(Exception):
        exit_code = 2

        def __init__(self, message: str):
            super().__init__(" ".join(str(message).split()))


class DeviceError(_ErrorBase):
    """A user error of the device server: one line `edgekit: error: ...`, exit code 2."""


ERROR_PREFIX = "edgekit: error:"
INFO_FUNCTION = "edgekit.device.info"
READY_PREFIX = "edgekit-device: serving on"
DEFAULT_PORT = 9090


def device_info() -> dict:
    """What the host checks before uploading: architecture and versions."""
    import numpy
    import tvm
    import tvm_ffi

    try:
        from edgekit import __version__ as edgekit_version
    except ImportError:  # serve.py copied alone onto a board
        edgekit_version = None
    return {"machine": platform.machine(), "system": platform.system(),
            "python": platform.python_version(), "tvm": tvm.__version__,
            "tvm_ffi": tvm_ffi.__version__, "numpy": numpy.__version__,
            "edgekit": edgekit_version, "cpu_count": os.cpu_count()}


def parse_address(text: str, what: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeviceError(f"{what} must be HOST:PORT with a port in 1-65535, got {text!r}")
    return host, int(port)


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 (pick a free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-65535)")
    return value


def is_loopback(host: str) -> bool:
    """True when `host` (a name or an address) only ever means this machine."""
    import ipaddress

    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise DeviceError(f"--host {host}: not an address of this machine ({exc})") from None
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


REMOTE_WARNING = ("{what} listens on {host}, beyond this machine: TVM RPC has no authentication, so anyone "
                  "who can reach this port can {risk}. Use it only on a private, trusted network (or "
                  "keep 127.0.0.1 and use an SSH tunnel, see docs/arm64.md)")


def check_bind(host: str, allow_remote: bool, what: str = "the device server",
               risk: str = "upload and run native code on this machine") -> None:
    """Refuse a non-loopback address unless `allow_remote`; warn on stderr when allowed."""
    if not host or not host.strip():
        raise DeviceError("--host must not be empty (use 127.0.0.1)")
    if is_loopback(host):
        return
    if not allow_remote:
        raise DeviceError(f"--host {host} is not a loopback address: {what} would accept anyone on the "
                          f"network, and TVM RPC has no authentication (clients can {risk}); keep "
                          "127.0.0.1 and reach it through an SSH tunnel, or add --allow-remote on a private, "
                          "trusted network (see docs/arm64.md)")
    print("edgekit: warning: " + REMOTE_WARNING.format(what=what, host=host, risk=risk),
          file=sys.stderr, flush=True)


def check_tracker_reachable(tracker: tuple[str, int], timeout: float = 5.0) -> None:
    try:
        with socket.create_connection(tracker, timeout=timeout):
            pass
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise DeviceError(f"--tracker {tracker[0]}:{tracker[1]} unreachable: {reason} "
                          "(is `edgekit device tracker` running there?)") from None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_server(host: str, port: int, key: str, tracker: tuple[str, int] | None,
                 port_end: int | None = None):
    """Start TVM's RPC listen loop in this process and return its state.

    tvm.rpc.Server would start a second interpreter (PopenWorker) first:
    under emulation that doubles a ~40 s start-up, so run the loop here.
    """
    import tvm_ffi
    from tvm.rpc import server as rpc_server

    info = device_info()
    _publish_info(tvm_ffi, info)  # before any session can fork: every child sees it

    attempts = 20 if port == 0 else 1
    last = "the port is in use"
    for _ in range(attempts):
        try:
            chosen = _free_port(host) if port == 0 else port
            end = port_end if port_end and port else chosen + 1
            state = rpc_server.PopenRPCServerState(
                host, chosen, end, tracker_addr=tracker, key=key, silent=True)
        except ValueError:  # port taken between the probe and the bind: try another
            continue
        except (OSError, UnicodeError, OverflowError) as exc:
            last = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            break
        _publish_info(tvm_ffi, {**info, "address": f"{host}:{state.port}", "key": key,
                                "pid": os.getpid()})
        return state
    ports = f"{port}-{port_end - 1}" if port and port_end else (port or "a free port")
    raise DeviceError(f"--host {host} --port {ports}: cannot listen there ({last})")


def _publish_info(tvm_ffi, info: dict) -> None:
    text = json.dumps(info)
    tvm_ffi.register_global_func(INFO_FUNCTION, lambda: text, override=True)


class _Parser(argparse.ArgumentParser):
    """Standalone argparse errors in edgekit's form: one line `edgekit: error: ...`, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{ERROR_PREFIX} {self.prog}: {' '.join(message.split())} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m edgekit.device.serve",
        description="Serve TVM RPC sessions on this device (numpy + TVM runtime only). "
                    "TVM RPC has no authentication and runs any library a client uploads: "
                    "it listens on 127.0.0.1 unless --allow-remote is given.")
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except DeviceError as exc:
        print(f"{ERROR_PREFIX} {exc}", file=sys.stderr)
        return 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1, this machine only: reach it through "
                             "an SSH tunnel). Any other address needs --allow-remote")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback --host (e.g. the board's private-LAN address). TVM RPC has "
                             "no authentication: whoever reaches the port runs native code here. Only on a "
                             "private, trusted network; never 0.0.0.0 on an untrusted one")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                        help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--port-end", type=port_number, default=None,
                        help="try ports up to this one (exclusive) if --port is taken")
    parser.add_argument("--tracker", metavar="HOST:PORT", default=None,
                        help="register with this RPC tracker instead of serving direct clients")
    parser.add_argument("--key", default=None,
                        help="device key announced to the tracker (e.g. rk3588); "
                             "default 'arm64' with --tracker")


def run(args) -> int:
    tracker = parse_address(args.tracker, "--tracker") if args.tracker else None
    if args.port_end is not None and args.port_end <= args.port:
        raise DeviceError(f"--port-end {args.port_end} must be greater than --port {args.port}")
    key = args.key if args.key is not None else ("arm64" if tracker else "")
    if any(c.isspace() for c in key) or ":" in key:
        raise DeviceError(f"--key {key!r}: a device key has no spaces and no ':'")
    check_bind(args.host, getattr(args, "allow_remote", False))
    if tracker:
        check_tracker_reachable(tracker)
    # TVM sizes its thread pool once, from this (default: physical cores); a client's
    # runtime.config_threadpool can only use fewer, so offer every core unless told otherwise
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    state = start_server(args.host, args.port, key, tracker, args.port_end)
    # SIGTERM ends the server like Ctrl-C: the listen thread is not a daemon.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    where = f" tracker={tracker[0]}:{tracker[1]}" if tracker else ""
    print(f"{READY_PREFIX} {args.host}:{state.port} key={key}{where} "
          f"machine={platform.machine()}", flush=True)
    try:
        state.thread.join()
    except KeyboardInterrupt:
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
