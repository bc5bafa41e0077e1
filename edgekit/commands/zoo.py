"""`edgekit zoo`: list the model zoo (and train reference checkpoints, when available)."""
from __future__ import annotations

import importlib.util

from edgekit.commands import add_command

EXAMPLES = """\
  edgekit zoo list                 # every model/config with params, MACs and input shapes
  edgekit zoo list --json          # the same for machines
  edgekit zoo list --model litepose
"""


def register(subparsers):
    parser = add_command(subparsers, "zoo", "The model zoo: list models and configurations.", EXAMPLES,
                         lambda args: (parser.print_help(), 2)[1])
    verbs = parser.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND")
    lister = add_command(verbs, "list", "List every zoo model and configuration with params and MACs.",
                         EXAMPLES, run_list)
    lister.add_argument("--model", help="only this model")
    lister.add_argument("--json", action="store_true",
                        help="JSON list of {name, config, task, params, macs, inputs}")
    # The training helper owns edgekit.train; offer `zoo train` only where it exists.
    if importlib.util.find_spec("edgekit.train") is not None:
        import edgekit.train

        edgekit.train.register_cli(verbs)


def run_list(args) -> int:
    import json

    from edgekit import models
    from edgekit.models.stats import model_stats

    names = [args.model] if args.model else models.list_models()
    rows = []
    for name in names:
        entry = models.get(name)
        for config in entry.configs:
            rows.append(model_stats(name, config))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(format_table(rows))
    return 0


def format_table(rows) -> str:
    header = ("model", "config", "task", "params", "MACs", "inputs")
    lines = [header]
    for r in rows:
        shapes = " ".join(f"{k}[{'x'.join(map(str, v))}]" for k, v in r["inputs"].items())
        lines.append((r["name"], r["config"], r["task"], f"{r['params'] / 1e6:.3f} M",
                      f"{r['macs'] / 1e9:.3f} G", shapes))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
