"""The `edgekit` command line: parse arguments, call the API, map errors to exit codes.

Each verb lives in its own module under `edgekit/commands/` exposing
`register(subparsers)`; the parser registers a `func(args) -> int | None`.
Modules are discovered, so adding a verb never touches this file.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import signal
import sys

from edgekit import __version__
from edgekit.errors import EdgekitError

EPILOG = """examples:
  edgekit zoo list
  edgekit export litepose -o litepose.onnx
  edgekit quantize litepose.onnx -o litepose.q.onnx --weights 4 --activations 8
  edgekit compile litepose.q.onnx --target x86-64 -o build/litepose
  edgekit run build/litepose --input image.png
  edgekit <command> --help   for each command's options and examples
"""


class EdgekitParser(argparse.ArgumentParser):
    """argparse with edgekit's error line: `edgekit: error: ...`, exit 2 (subcommands inherit it)."""

    def error(self, message: str):
        self.exit(2, f"edgekit: error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = EdgekitParser(
        prog="edgekit", description="Edge deployment and 4-bit quantization toolchain.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import edgekit.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"edgekit.commands.{info.name}")
        module.register(sub)
    return parser


# OS errors that are the user's to fix (a full disk, a read-only or forbidden path,
# a file that vanished): one line naming the file, like any other user error.
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT,
               errno.EISDIR, errno.ENOTDIR, errno.EFBIG, errno.ENAMETOOLONG}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every temporary output is removed on the way out."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _quiet_finalizers(own_process: bool) -> None:
    """After an interrupt, objects caught half-built (TVM's TempDirectory, interrupted inside its
    __init__) fail in __del__ when the traceback that holds them is dropped; that is noise, not news.
    Only where edgekit owns the process: an API caller keeps its own hook."""
    if own_process:
        sys.unraisablehook = lambda unraisable: None


def _os_error_line(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"no space left to write the output{where}: free some space or write elsewhere"
    return f"{exc.strerror or exc}{where}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    import threading

    # Signal handlers can only be set from the main thread (the API may call main() elsewhere).
    own_handler = (threading.current_thread() is threading.main_thread()
                   and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None))
    if own_handler:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = args.func(args)
    except EdgekitError as exc:
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # `edgekit ... --json | head`: the reader left; exit quietly, as other tools do.
        # stdout points at /dev/null so Python's flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.errno not in USER_ERRNOS:
            raise
        print(f"edgekit: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2
    except Terminated:
        _quiet_finalizers(own_handler)
        print("edgekit: terminated (outputs not written)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        _quiet_finalizers(own_handler)
        print("edgekit: interrupted (outputs not written)", file=sys.stderr)
        return 130
    finally:
        if own_handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return int(code or 0)


def entry() -> None:
    """The `edgekit` console script and `python -m edgekit`."""
    code = main()
    if code in (130, 143):
        # A Ctrl-C that crossed an embedded PyRun_* call (pybind11's py::exec inside torch) leaves
        # CPython 3.11's "unhandled KeyboardInterrupt" flag set even though main() handled it, and
        # the interpreter then re-kills itself with SIGINT at exit (status -2, not 130). Outputs are
        # already cleaned up here, so leave without that last step (and without the finalizers of
        # objects the interrupt caught half-built).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
