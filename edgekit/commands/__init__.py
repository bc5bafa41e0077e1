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
