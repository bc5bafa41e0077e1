"""`edgekit device serve`: a TVM RPC server for an edge board.

Runs with nothing but Python 3, numpy and the TVM runtime wheels
(apache-tvm + apache-tvm-ffi): it imports no other edgekit module, no torch
and no onnx, so a board needs only the three files listed in
`edgekit.device.DEVICE_FILES` on its PYTHONPATH:

    python3 -m edgekit.device.serve --host 0.0.0.0 --port 9090
    python3 -m edgekit.device.serve --tracker 192.168.1.10:9190 --key rk3588

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
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SystemExit(f"edgekit-device: error: {what} must be HOST:PORT, got {text!r}")
    return host, int(port)


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
    for _ in range(attempts):
        chosen = _free_port(host) if port == 0 else port
        end = port_end if port_end and port else chosen + 1
        try:
            state = rpc_server.PopenRPCServerState(
                host, chosen, end, tracker_addr=tracker, key=key, silent=True)
        except ValueError:  # port taken between the probe and the bind: try another
            continue
        _publish_info(tvm_ffi, {**info, "address": f"{host}:{state.port}", "key": key,
                                "pid": os.getpid()})
        return state
    raise SystemExit(f"edgekit-device: error: cannot bind {host}:{port or 'a free port'}")


def _publish_info(tvm_ffi, info: dict) -> None:
    text = json.dumps(info)
    tvm_ffi.register_global_func(INFO_FUNCTION, lambda: text, override=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgekit.device.serve",
        description="Serve TVM RPC sessions on this device (numpy + TVM runtime only).")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for a LAN)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to listen on (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--port-end", type=int, default=None,
                        help="try ports up to this one (exclusive) if --port is taken")
    parser.add_argument("--tracker", metavar="HOST:PORT", default=None,
                        help="register with this RPC tracker instead of serving direct clients")
    parser.add_argument("--key", default=None,
                        help="device key announced to the tracker (e.g. rk3588); "
                             "default 'arm64' with --tracker")


def run(args) -> int:
    tracker = parse_address(args.tracker, "--tracker") if args.tracker else None
    key = args.key if args.key is not None else ("arm64" if tracker else "")
    # SIGTERM ends the server like Ctrl-C: the listen thread is not a daemon.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    state = start_server(args.host, args.port, key, tracker, args.port_end)
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
