"""`edgekit device`: serve TVM RPC on a board, emulate an arm64 board, run a tracker."""
from __future__ import annotations

import json

from edgekit.commands import add_command
from edgekit.errors import EdgekitError

EXAMPLES = """\
  edgekit device serve --host 0.0.0.0 --port 9090              (on the board)
  edgekit device serve --tracker 10.0.0.2:9190 --key rk3588    (on each board of a farm)
  edgekit device emulate                                       (arm64 board under qemu, 127.0.0.1:9090)
  edgekit device emulate --prepare-only                        (just download + cache the arm64 root)
  edgekit device tracker --port 9190                           (a tracker for a device farm)
  edgekit device list --tracker 127.0.0.1:9190                 (devices and queues at a tracker)
  edgekit device info --device 127.0.0.1:9090                  (a device's arch and TVM version)
"""


def register(subparsers):
    parser = add_command(
        subparsers, "device",
        "Device side of remote execution: a TVM RPC server for a board (Python + numpy + "
        "TVM runtime only), an emulated arm64 board under qemu, and RPC trackers for farms.",
        EXAMPLES, lambda args: _missing_action(parser))
    actions = parser.add_subparsers(dest="device_action", metavar="ACTION")

    from edgekit.device import serve

    p = add_command(actions, "serve", "Serve TVM RPC sessions on this device.",
                    "  edgekit device serve --host 0.0.0.0 --port 9090\n"
                    "  edgekit device serve --tracker 10.0.0.2:9190 --key rk3588\n", serve.run)
    serve.add_arguments(p)

    p = add_command(actions, "emulate",
                    "Prepare (once, cached) an arm64 root and serve from it under qemu-aarch64: "
                    "an emulated arm64 board. Its timings are qemu's, not a board's.",
                    "  edgekit device emulate\n"
                    "  edgekit device emulate --port 9091 --tracker 127.0.0.1:9190 --key arm64\n"
                    "  edgekit device emulate --prepare-only\n", emulate)
    p.add_argument("--prepare-only", action="store_true",
                   help="download and cache the arm64 root, then exit (needs root once for apt)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9090, help="port (default 9090; 0 picks a free one)")
    p.add_argument("--tracker", metavar="HOST:PORT", default=None, help="register with a tracker")
    p.add_argument("--key", default=None, help="device key at the tracker (default arm64)")
    p.add_argument("--sysroot", default=None,
                   help="a prepared arm64 root (default: the cache, ~/.cache/edgekit/arm64-sysroot)")
    p.add_argument("--cache-dir", default=None, help="where prepared roots are cached")

    p = add_command(actions, "tracker", "Run a TVM RPC tracker that hands boards to clients.",
                    "  edgekit device tracker --host 0.0.0.0 --port 9190\n", tracker)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9190, help="port (default 9190)")

    p = add_command(actions, "list", "Show the devices registered at a tracker and its queues.",
                    "  edgekit device list --tracker 127.0.0.1:9190\n", list_devices)
    p.add_argument("--tracker", metavar="HOST:PORT", required=True)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (default 10)")
    p.add_argument("--json", action="store_true", help="print the tracker summary as JSON")

    p = add_command(actions, "info", "Show a device's architecture and versions.",
                    "  edgekit device info --device 127.0.0.1:9090\n"
                    "  edgekit device info --tracker 127.0.0.1:9190 --key arm64\n", info)
    p.add_argument("--device", metavar="HOST:PORT", default=None)
    p.add_argument("--tracker", metavar="HOST:PORT", default=None)
    p.add_argument("--key", default=None)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")


def _missing_action(parser) -> int:
    parser.print_help()
    return 2


def emulate(args) -> int:
    from edgekit.device import emulate as emu
    from edgekit.device import sysroot

    if args.sysroot:
        root = args.sysroot
    else:
        root = sysroot.prepare(args.cache_dir, log=lambda msg: print(msg, flush=True))
    if args.prepare_only:
        print(f"arm64 root: {root}")
        return 0
    device = emu.start_emulated(args.host, args.port, args.tracker, args.key, sysroot=root)
    _stop_on_sigterm()
    where = f", registered at {args.tracker} as {device.key}" if args.tracker else ""
    print(f"emulated arm64 device serving on {device.address}{where} (pid {device.proc.pid}; "
          f"Ctrl-C stops it). Emulated timings are not device timings.", flush=True)
    try:
        code = device.proc.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        device.stop()
    if code:
        raise EdgekitError(f"emulated device exited with code {code}: {device.log_tail()}")
    return 0


def _stop_on_sigterm() -> None:
    """`kill PID` stops the emulator like Ctrl-C does (and a background job
    started by a script ignores SIGINT): the finally-block stops qemu."""
    import signal

    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def tracker(args) -> int:
    try:
        from tvm.rpc import tracker as rpc_tracker
    except ImportError as exc:  # TVM's tracker runs on tornado's event loop
        raise EdgekitError(f"the RPC tracker needs tornado: pip install tornado ({exc})") from None

    try:
        state = rpc_tracker.PopenTrackerServerState(args.host, args.port, args.port + 1,
                                                    silent=True)
    except (ValueError, OSError) as exc:
        raise EdgekitError(f"tracker: cannot listen on {args.host}:{args.port} ({exc})") from None
    print(f"edgekit-tracker: listening on {args.host}:{state.port}", flush=True)
    try:
        state.thread.join()
    except KeyboardInterrupt:
        pass
    return 0


def list_devices(args) -> int:
    from edgekit.runtime import remote

    summary = remote.tracker_summary(args.tracker, args.timeout)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    servers = sorted(summary.get("server_info", []), key=lambda s: s.get("key", ""))
    print(f"{'device address':<24} key")
    for item in servers:
        addr = ":".join(str(a) for a in item.get("addr", []))
        print(f"{addr:<24} {item.get('key', '').split(':', 1)[-1]}")
    print(f"\n{'key':<16} {'free':>5} {'pending':>8}")
    for key, queue in sorted(summary.get("queue_info", {}).items()):
        print(f"{key:<16} {queue.get('free', 0):>5} {queue.get('pending', 0):>8}")
    return 0


def info(args) -> int:
    from edgekit.runtime import remote

    device = remote.connect(args.device, args.tracker, args.key, args.timeout)
    try:
        print(json.dumps({"address": device.address, **(device.info or {"info": None})}, indent=2))
    finally:
        device.close()
    return 0
