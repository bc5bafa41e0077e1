"""`edgekit device`: serve TVM RPC on a board, emulate an arm64 board, run a tracker."""
from __future__ import annotations

import argparse

from edgekit.commands import add_command, add_json_flags, check_json_file, emit_json
from edgekit.errors import EdgekitError

SECURITY = ("TVM RPC has no authentication and a device server runs any library a client uploads: "
            "servers and trackers listen on 127.0.0.1 unless --allow-remote is given (see docs/arm64.md)")

EXAMPLES = """\
  edgekit device serve --port 9090                             (on the board; 127.0.0.1, reach it by SSH tunnel)
  edgekit device serve --host 192.168.1.7 --allow-remote --tracker 192.168.1.10:9190 --key rk3588
                                                               (a board of a farm on a private, trusted LAN)
  edgekit device emulate                                       (arm64 board under qemu, 127.0.0.1:9090)
  edgekit device emulate --prepare-only                        (just download + cache the arm64 root)
  edgekit device tracker --port 9190                           (a tracker for a device farm, 127.0.0.1)
  edgekit device list --tracker 127.0.0.1:9190                 (devices and queues at a tracker)
  edgekit device info --device 127.0.0.1:9090 --json           (a device's arch and TVM version)

security: """ + SECURITY + "\n"


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


def _listen_flags(p, risk: str, port: int, port_help: str) -> None:
    """--host (loopback by default), --allow-remote (saying what it exposes) and --port."""
    from edgekit.device import serve

    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs --allow-remote)")
    p.add_argument("--allow-remote", action="store_true",
                   help=f"allow a non-loopback --host. {risk}: only on a private, trusted network, "
                        "never 0.0.0.0 on an untrusted one (a warning is printed)")
    p.add_argument("--port", type=serve.port_number, default=port, help=port_help)


def register(subparsers):
    parser = add_command(
        subparsers, "device",
        "Device side of remote execution: a TVM RPC server for a board (Python + numpy + "
        "TVM runtime only), an emulated arm64 board under qemu, and RPC trackers for farms.",
        EXAMPLES, lambda args: _missing_action(parser))
    actions = parser.add_subparsers(dest="device_action", metavar="ACTION")

    from edgekit.device import serve

    p = add_command(actions, "serve", "Serve TVM RPC sessions on this device (127.0.0.1 unless --allow-remote).",
                    "  edgekit device serve --port 9090                     (this machine only: use an SSH tunnel)\n"
                    "  edgekit device serve --host 192.168.1.7 --allow-remote --tracker 192.168.1.10:9190 "
                    "--key rk3588\n\nsecurity: " + SECURITY + "\n", serve.run)
    serve.add_arguments(p)

    p = add_command(actions, "emulate",
                    "Prepare (once, cached) an arm64 root and serve from it under qemu-aarch64: "
                    "an emulated arm64 board. Its timings are qemu's, not a board's.",
                    "  edgekit device emulate\n"
                    "  edgekit device emulate --port 9091 --tracker 127.0.0.1:9190 --key arm64\n"
                    "  edgekit device emulate --prepare-only\n\nsecurity: " + SECURITY + "\n", emulate)
    p.add_argument("--prepare-only", action="store_true",
                   help="download and cache the arm64 root, then exit (needs root once for apt)")
    _listen_flags(p, "Whoever reaches the port runs native code in the emulator", 9090,
                  "port (default 9090; 0 picks a free one)")
    p.add_argument("--tracker", metavar="HOST:PORT", default=None, help="register with a tracker")
    p.add_argument("--key", default=None, help="device key at the tracker (default arm64)")
    p.add_argument("--sysroot", default=None,
                   help="a prepared arm64 root (default: the cache, ~/.cache/edgekit/arm64-sysroot)")
    p.add_argument("--cache-dir", default=None, help="where prepared roots are cached")

    p = add_command(actions, "tracker", "Run a TVM RPC tracker that hands boards to clients (127.0.0.1 "
                    "unless --allow-remote).",
                    "  edgekit device tracker --port 9190\n"
                    "  edgekit device tracker --host 192.168.1.10 --allow-remote --port 9190   (private LAN)\n"
                    "\nsecurity: " + SECURITY + "\n", tracker)
    _listen_flags(p, "The tracker has no authentication: anyone who reaches it can register "
                     "devices or take yours", 9190, "port (default 9190)")

    p = add_command(actions, "list", "Show the devices registered at a tracker and its queues.",
                    "  edgekit device list --tracker 127.0.0.1:9190\n"
                    "  edgekit device list --tracker 127.0.0.1:9190 --json\n", list_devices)
    p.add_argument("--tracker", metavar="HOST:PORT", required=True)
    p.add_argument("--timeout", type=positive_float, default=10.0, help="seconds to wait (default 10)")
    add_json_flags(p)

    p = add_command(actions, "info", "Show a device's architecture and versions.",
                    "  edgekit device info --device 127.0.0.1:9090\n"
                    "  edgekit device info --tracker 127.0.0.1:9190 --key arm64 --json\n", info)
    p.add_argument("--device", metavar="HOST:PORT", default=None)
    p.add_argument("--tracker", metavar="HOST:PORT", default=None)
    p.add_argument("--key", default=None)
    p.add_argument("--timeout", type=positive_float, default=30.0, help="seconds to wait (default 30)")
    add_json_flags(p)


def _missing_action(parser) -> int:
    parser.print_help()
    return 2


def emulate(args) -> int:
    from edgekit.device import emulate as emu
    from edgekit.device import serve, sysroot

    if not args.prepare_only:
        if not args.allow_remote:  # refuse before the (slow) preparation; start_emulated warns if allowed
            serve.check_bind(args.host, False, "the emulated device server")
        if args.tracker:
            serve.parse_address(args.tracker, "--tracker")
    if args.sysroot:
        root = args.sysroot
    else:
        root = sysroot.prepare(args.cache_dir, log=lambda msg: print(msg, flush=True))
    if args.prepare_only:
        print(f"arm64 root: {root}")
        return 0
    device = emu.start_emulated(args.host, args.port, args.tracker, args.key, sysroot=root,
                                allow_remote=args.allow_remote)
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
    from edgekit.device import serve

    if not 0 < args.port < 65535:
        raise EdgekitError(f"--port {args.port}: a tracker needs a port in 1-65534")
    serve.check_bind(args.host, args.allow_remote, "the tracker",
                     "register fake devices or take this farm's devices")
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

    check_json_file(args)
    summary = remote.tracker_summary(args.tracker, args.timeout)
    if emit_json(args, summary):
        return 0
    servers = sorted(summary.get("server_info", []), key=lambda s: str(s.get("key", "")))
    print(f"{'device address':<24} key")
    for item in servers:
        addr = ":".join(str(a) for a in item.get("addr", []))
        print(f"{addr:<24} {str(item.get('key', '')).split(':', 1)[-1]}")
    print(f"\n{'key':<16} {'free':>5} {'pending':>8}")
    for key, queue in sorted(summary.get("queue_info", {}).items()):
        print(f"{key:<16} {queue.get('free', 0):>5} {queue.get('pending', 0):>8}")
    return 0


def info(args) -> int:
    from edgekit.runtime import remote

    check_json_file(args)
    device = remote.connect(args.device, args.tracker, args.key, args.timeout)
    try:
        document = {"address": device.address, **(device.info or {"info": None})}
    finally:
        device.close()
    if emit_json(args, document):
        return 0
    if device.info is None:
        print(f"{device.address}: a TVM RPC server without edgekit's device info (not `edgekit device serve`)")
        return 0
    for key, value in document.items():
        print(f"{key:<10} {value}")
    return 0
