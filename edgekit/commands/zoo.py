"""`edgekit zoo`: list the model zoo, train its reference checkpoints."""
from __future__ import annotations

import shlex

from edgekit.commands import add_command, non_negative_int, positive_int

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
    add_train_command(verbs)


TRAIN_EXAMPLES = """\
  edgekit zoo train litepose                 # reproduce models/checkpoints/litepose_tiny.safetensors
  edgekit zoo train lm --steps 50 -o /tmp/lm.safetensors --no-eval
  edgekit zoo train depth --seed 1 --log train_depth.log
"""


def add_train_command(verbs) -> None:
    """`zoo train MODEL [--steps] [--seed] [-o] ...` (the training loop is edgekit.train's)."""
    parser = add_command(verbs, "train", "train a tiny reference checkpoint from a seed on procedural data",
                         TRAIN_EXAMPLES, run_train)
    parser.add_argument("model", help="zoo model name (see `edgekit zoo list`)")
    parser.add_argument("--steps", type=positive_int, default=None, help="optimiser steps (default: the recipe's)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="data and init seed (default 0)")
    parser.add_argument("-o", "--output", default=None,
                        help="checkpoint path (.safetensors; default models/checkpoints/<model>_tiny.safetensors)")
    parser.add_argument("--eval-samples", type=positive_int, default=None,
                        help="test samples for the model card's metric (default: the task's)")
    parser.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    parser.add_argument("--log", default=None, help="also append a text training log to this file")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch intra-op threads")


def train_command(args) -> str:
    """The command line that reproduces this run, for the model card (from the parsed flags)."""
    words = ["edgekit", "zoo", "train", args.model]
    flags = [("--steps", args.steps), ("--seed", args.seed or None), ("-o", args.output),
             ("--eval-samples", args.eval_samples), ("--threads", args.threads)]
    words += [w for flag, value in flags if value is not None for w in (flag, str(value))]
    words += ["--no-eval"] if args.no_eval else []
    return " ".join(shlex.quote(w) for w in words)


def run_train(args) -> int:
    import json

    import edgekit.models as zoo
    from edgekit.train import train

    zoo.get(args.model)
    log = open(args.log, "a") if args.log else None
    try:
        card = train(args.model, steps=args.steps, seed=args.seed, output=args.output,
                     eval_samples=0 if args.no_eval else args.eval_samples, log=log,
                     command=train_command(args), threads=args.threads)
    finally:
        if log:
            log.close()
    print(json.dumps(card, indent=2, default=str))
    return 0


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
