"""One module per CLI verb; each defines `register(subparsers)`.

Keep imports of heavy libraries (torch, tvm) inside the handlers so that
`edgekit --help` stays fast.
"""
import argparse


def add_command(subparsers, name: str, help: str, examples: str, func):
    """Add a verb whose --help ends with worked examples."""
    parser = subparsers.add_parser(
        name, help=help, description=help, epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=func)
    return parser


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} {what}")
        return value
    return parse


# argparse types: counts, iterations, repeats, threads (>= 1); warm-up runs, trials (>= 0)
positive_int = _int_at_least(1, "must be at least 1")
non_negative_int = _int_at_least(0, "must not be negative")


# One convention for machine-readable output, everywhere (CLI and tools/):
# `--json` prints the JSON document to stdout (and nothing else goes to stdout),
# `--json-file PATH` writes it atomically to PATH (the human table still prints).
JSON_HELP = "print the result as JSON on stdout (instead of the table)"
JSON_FILE_HELP = "also write the result as JSON to this file"


def add_json_flags(parser) -> None:
    parser.add_argument("--json", action="store_true", help=JSON_HELP)
    parser.add_argument("--json-file", default=None, metavar="PATH", help=JSON_FILE_HELP)


def check_json_file(args) -> None:
    """Fail before any work if --json-file cannot be written."""
    if getattr(args, "json_file", None):
        from edgekit.fileio import check_writable

        check_writable(args.json_file, "--json-file")


def print_json(args, document) -> bool:
    """Print `document` on stdout when --json asks; True when it did."""
    import json

    from edgekit.fileio import _json_default

    if getattr(args, "json", False):
        print(json.dumps(document, indent=2, default=_json_default))
        return True
    return False


def emit_json(args, document) -> bool:
    """Write `document` where --json / --json-file ask; True when stdout got the JSON."""
    from edgekit.fileio import save_json

    if getattr(args, "json_file", None):
        save_json(document, args.json_file)
    return print_json(args, document)
