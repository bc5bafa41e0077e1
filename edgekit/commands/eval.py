"""`edgekit eval`: metrics of a zoo model (PyTorch) or a model file on the held-out test split."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from edgekit.commands import add_command, add_json_flags, positive_int, print_json
from edgekit.errors import EdgekitError

EXAMPLES = """  edgekit eval litepose                                 # zoo model + committed checkpoint, PyTorch FP32
  edgekit eval litepose.onnx --samples 50               # ONNX file in onnxruntime (task from the file)
  edgekit eval model.q.onnx --task depth --json-file m.json   # name the task when the file does not tell
  edgekit eval depth.onnx --json                        # the metrics as JSON on stdout
  edgekit eval deblur --save-vis vis/                   # blurred / restored / sharp pictures
  edgekit eval lm --length 1024 4096 16384              # LM retrieval accuracy at several lengths
"""

# output names the zoo models export, for files that do not say which task they do
_OUTPUT_HINTS = {"heatmaps_tags": "pose", "heatmaps_hr": "pose", "depth": "depth", "restored": "deblur",
                 "logits": "lm"}


def register(subparsers):
    p = add_command(subparsers, "eval", "evaluate a zoo model or a model file on a task's held-out test split",
                    EXAMPLES, run)
    p.add_argument("model", metavar="MODEL_OR_FILE", help="zoo model name, or a model file (.onnx)")
    p.add_argument("--task", help="zoo model or task (pose, depth, deblur, lm) a file is evaluated as")
    p.add_argument("--samples", type=positive_int, default=None, help="test samples (default: the task's)")
    p.add_argument("--split", default="test", choices=("test", "calib", "train"), help="data split (default test)")
    p.add_argument("--seed", type=int, default=0, help="data seed of the split (default 0)")
    p.add_argument("--checkpoint", help="weights for a zoo model instead of the committed checkpoint")
    p.add_argument("--length", type=positive_int, nargs="+", help="LM sequence length(s) (default: the model's input)")
    add_json_flags(p)
    p.add_argument("--save-vis", metavar="DIR", help="write pictures of the first samples into DIR")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads")


def resolve(model: str, task: str | None, checkpoint: str | None, threads: int | None = None):
    """(model name or task for the data, predictor, description) for a CLI argument."""
    import edgekit.models as zoo
    from edgekit.eval import predictor

    if model in zoo.list_models() and not os.path.exists(model):
        if task and task != model:
            raise EdgekitError(f"--task {task} conflicts with zoo model {model} (task {zoo.get(model).task})")
        if threads:
            import torch

            torch.set_num_threads(threads)
        if checkpoint:
            from edgekit.models.checkpoint import load_state_file

            net = zoo.build(model, "tiny")
            load_state_file(net, checkpoint)
        else:
            net = zoo.load_reference(model)
        return model, predictor(net.eval()), f"{model} (PyTorch FP32{', ' + checkpoint if checkpoint else ''})"
    path = Path(model)
    if not path.exists():
        raise EdgekitError(f"{model} is neither a zoo model ({', '.join(zoo.list_models())}) nor an existing file")
    pred = predictor(str(path), threads=threads)
    return (task or _infer_task(path, pred)), pred, pred.label


def _infer_task(path: Path, pred) -> str:
    import edgekit.models as zoo

    stem = path.name.lower()
    for name in zoo.list_models():
        if stem.startswith(name):
            return name
    hints = {_OUTPUT_HINTS[n] for n in (pred.output_names or []) if n in _OUTPUT_HINTS}
    if len(hints) == 1:
        return hints.pop()
    raise EdgekitError(f"cannot tell which task {path} performs (outputs: "
                       f"{', '.join(pred.output_names or []) or 'unknown'}); pass --task pose|depth|deblur|lm")


def run(args) -> int:
    from edgekit.data import task_of
    from edgekit.eval import evaluate
    from edgekit.fileio import OutputSet

    with OutputSet(inputs=[args.model]) as out:
        json_tmp = out.file(args.json_file, "--json-file") if args.json_file else None
        vis_tmp = out.folder(args.save_vis, "--save-vis folder", merge=True) if args.save_vis else None
        name, pred, label = resolve(args.model, args.task, args.checkpoint, args.threads)
        task = task_of(name)
        if args.length and task != "lm":
            raise EdgekitError(f"--length applies to the lm task, not {task}")
        lengths = args.length or [None]
        results = []
        for length in lengths:
            extra = {"length": length} if length else {}
            vis = vis_tmp if length == lengths[0] else None
            metrics = evaluate(name, pred, split=args.split, count=args.samples, save_vis=vis, seed=args.seed,
                               **extra)
            metrics["model"] = label
            results.append(metrics)
        document = results[0] if len(results) == 1 else results
        if json_tmp:
            from edgekit.fileio import save_json

            save_json(document, json_tmp)
    if not print_json(args, document):
        for metrics in results:
            _print_table(metrics)
    return 0


def _print_table(metrics: dict) -> None:
    head = f"{metrics['model']} on {metrics['task']} {metrics['split']} split, {metrics['samples']} samples"
    if "length" in metrics:
        head += f", {metrics['length']} tokens"
    print(head)
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        if key in ("model", "task", "split", "samples", "seed", "length"):
            continue
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {text}")
    sys.stdout.flush()
