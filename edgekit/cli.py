"""The `edgekit` command line: parse arguments, call the API, map errors to exit codes.

Each verb lives in its own module under `edgekit/commands/` exposing
`register(subparsers)`; the parser registers a `func(args) -> int | None`.
Modules are discovered, so adding a verb never touches this file.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except EdgekitError as exc:
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
