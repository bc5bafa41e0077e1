"""Evaluate a model on a task's fixed held-out split and compute the field's metrics.

    >>> from edgekit.eval import evaluate, predictor
    >>> import edgekit.models as zoo
    >>> evaluate("litepose", predictor(zoo.load_reference("litepose")))      # {'ap': ..., ...}
    >>> evaluate("litepose", predictor("litepose.onnx"), count=50, save_vis="vis/")

`predict(inputs) -> outputs` uses the zoo's input/output names; `predictor(obj)`
builds one for a torch module or an ONNX file (see predictors.py to add kinds).
"""
from __future__ import annotations

from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.eval.predictors import Predictor, predictor, register_predictor

# default held-out sample counts: enough for stable metrics, seconds to run
DEFAULT_COUNTS = {"pose": 200, "depth": 100, "deblur": 200, "lm": 90}
VIS_LIMIT = 16
# each task's headline metric and its direction (+1: higher is better)
PRIMARY = {"pose": ("ap", +1), "depth": ("absrel", -1), "deblur": ("psnr", +1), "lm": ("accuracy", +1)}


def metric_for(task: str):
    from edgekit.eval.metrics import DeblurMetric, DepthMetric, LMMetric
    from edgekit.eval.pose import PoseMetric

    return {"pose": PoseMetric, "depth": DepthMetric, "deblur": DeblurMetric, "lm": LMMetric}[task]()


def evaluate(model_name: str, predict, split: str = "test", count: int | None = None,
             save_vis=None, seed: int = 0, **options) -> dict:
    """Metrics of `predict` on `count` samples of the model's task (see module doc).

    options go to the data generator (e.g. `length=4096` for the LM).
    """
    from edgekit.data import input_spec, samples, task_of
    from edgekit.eval import vis
    from edgekit.fileio import atomic_dir
    from edgekit.progress import progress

    task = task_of(model_name)
    count = DEFAULT_COUNTS[task] if count is None else int(count)
    if count < 1:
        raise EdgekitError(f"--samples must be >= 1, got {count}")
    if not isinstance(predict, Predictor):
        predict = predictor(predict) if not callable(predict) or hasattr(predict, "parameters") \
            else Predictor(predict)
    if task == "lm" and "length" not in options and predict.input_shapes:
        static = [d for d in next(iter(predict.input_shapes.values()))[1:] if isinstance(d, int)]
        if static:  # a static ONNX graph fixes the sequence length
            options["length"] = static[-1]
    check_inputs(predict, samples(model_name, split, 1, seed=seed, **options)[0].inputs, task)
    metric = metric_for(task)

    vis_ctx = atomic_dir(save_vis) if save_vis else None
    vis_dir = vis_ctx.__enter__() if vis_ctx else None
    try:
        chunk = 25  # generate lazily: long LM sequences are big
        done = 0
        bar = progress(total=count, desc=f"eval {task}", unit="sample")
        while done < count:
            batch = samples(model_name, split, min(chunk, count - done), seed=seed, start=done, **options)
            for i, sample in enumerate(batch):
                index = done + i
                outputs = predict(sample.inputs)
                missing = [n for n in metric.outputs if n not in outputs]
                if missing and len(outputs) == len(metric.outputs):
                    outputs = dict(zip(metric.outputs, outputs.values()))  # positional fallback
                elif missing:
                    raise EdgekitError(f"{predict.label} outputs {', '.join(outputs)}; the {task} task "
                                       f"needs {', '.join(metric.outputs)}")
                shown = metric.update(index, sample, outputs)
                if vis_dir is not None and index < VIS_LIMIT:
                    vis.DRAW[task](Path(vis_dir), sample, shown, index)
                if hasattr(bar, "update"):
                    bar.update(1)
            done += len(batch)
        if hasattr(bar, "close"):
            bar.close()
        result = metric.result()
        if vis_ctx:
            vis_ctx.__exit__(None, None, None)
    except BaseException as exc:
        if vis_ctx:
            vis_ctx.__exit__(type(exc), exc, exc.__traceback__)
        raise
    result.update({"task": task, "split": split, "samples": count, "seed": seed})
    if task == "lm":
        result["length"] = int(options.get("length") or input_spec(model_name)["tokens"][-1])
    return result


def check_inputs(predict: Predictor, inputs: dict, task: str) -> None:
    """Clear error when a model's declared inputs do not fit the task's data."""
    if not predict.input_shapes:
        return
    wanted, given = predict.input_shapes, {k: tuple(v.shape) for k, v in inputs.items()}
    if len(wanted) != len(given):
        raise EdgekitError(f"{predict.label} takes {len(wanted)} inputs ({', '.join(wanted)}) but the "
                           f"{task} task provides {len(given)} ({', '.join(given)})")
    pairs = [(n, wanted[n], given[n]) for n in wanted if n in given] or \
        [(n, s, g) for (n, s), g in zip(wanted.items(), given.values())]
    for name, shape, actual in pairs:
        fits = len(shape) == len(actual) and all(d is None or d == a for d, a in zip(shape, actual))
        if not fits:
            fmt = lambda s: "[" + ",".join("?" if d is None else str(d) for d in s) + "]"  # noqa: E731
            raise EdgekitError(f"{predict.label} input '{name}' has shape {fmt(shape)} but the {task} "
                               f"task expects {fmt(actual)}")


__all__ = ["evaluate", "predictor", "register_predictor", "Predictor", "check_inputs", "DEFAULT_COUNTS"]
