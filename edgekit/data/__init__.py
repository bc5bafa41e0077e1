"""Procedural datasets for the zoo's tasks, deterministic from a seed.

`samples(model_name, split, count, seed)` returns a list of `Sample`s whose
inputs are keyed by the zoo's input names at batch 1. Every sample is drawn
from its own random stream keyed by (task, split, seed, index), so the
train / calib / test splits never share a sample and the same call always
returns the same data. Generators are vectorised numpy, fast enough to run
on the fly during training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from edgekit.errors import EdgekitError

SPLITS = ("train", "calib", "test")
TASKS = ("pose", "depth", "deblur", "lm")


@dataclass
class Sample:
    """One example: model inputs (batch 1) and the task's ground truth."""

    inputs: dict[str, np.ndarray]
    target: Any
    meta: dict = field(default_factory=dict)


# task name -> generator(rng, spec) -> Sample
_GENERATORS: dict[str, Callable[..., Sample]] = {}


def register_task(task: str):
    """Decorator: register the sample generator of a task."""
    def wrap(fn):
        _GENERATORS[task] = fn
        return fn
    return wrap


def task_of(name: str) -> str:
    """The task ('pose', 'depth', 'deblur', 'lm') of a zoo model name or a task name."""
    key = str(name).lower()
    if key in TASKS:
        return key
    task = None
    try:
        import edgekit.models as zoo

        task = str(zoo.get(name).task).lower()
    except Exception:  # zoo not importable or unknown name: fall back to the name
        task = key
    for candidate, words in (("pose", ("pose", "keypoint")), ("depth", ("depth",)),
                             ("deblur", ("deblur", "rft", "restor")),
                             ("lm", ("lm", "language", "text", "sale", "retrieval", "long"))):
        if any(w in task for w in words):
            return candidate
    raise EdgekitError(f"unknown model or task {name!r}: expected a zoo model name or one of "
                       f"{', '.join(TASKS)}")


def input_spec(name: str) -> dict[str, tuple]:
    """Zoo input names -> shapes of the tiny config, or the task defaults."""
    task = task_of(name)
    try:
        import edgekit.models as zoo

        entry = zoo.get(name)
        spec = {}
        for item in entry.input_spec("tiny"):
            if isinstance(item, dict):
                spec[item["name"]] = tuple(item["shape"])
            elif hasattr(item, "name"):
                spec[item.name] = tuple(item.shape)
            else:  # (name, shape, dtype) tuples
                spec[item[0]] = tuple(item[1])
        if spec:
            return spec
    except Exception:
        pass
    return dict(DEFAULT_SPECS[task])


DEFAULT_SPECS = {
    "pose": {"image": (1, 3, 128, 128)},
    "depth": {"image": (1, 3, 128, 128)},
    "deblur": {"image": (1, 3, 64, 64)},
    "lm": {"tokens": (1, 1024)},
}
_SPLIT_IDS = {"train": 0, "calib": 1, "test": 2}
_TASK_IDS = {"pose": 11, "depth": 12, "deblur": 13, "lm": 14}


def sample_rng(task: str, split: str, seed: int, index: int) -> np.random.Generator:
    """The random stream of one sample: distinct for every (task, split, seed, index)."""
    return np.random.default_rng(np.random.SeedSequence(
        [_TASK_IDS[task], _SPLIT_IDS[split], int(seed), int(index)]))


def _image_size(spec: dict, name: str = "image") -> tuple[int, int]:
    shape = spec.get(name) or next(iter(spec.values()))
    h, w = shape[-2], shape[-1]
    return (int(h) if isinstance(h, int) else 128, int(w) if isinstance(w, int) else 128)


def samples(model_name: str, split: str, count: int, seed: int = 0, start: int = 0,
            **options) -> list[Sample]:
    """`count` deterministic samples of the model's task from `split`.

    options go to the task generator (e.g. `length=4096` or `kind='needle'`
    for the LM, `size=(96, 96)` for images).
    """
    if split not in SPLITS:
        raise EdgekitError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    if count < 0:
        raise EdgekitError(f"sample count must be >= 0, got {count}")
    task = task_of(model_name)
    _load_generators()
    spec = input_spec(model_name)
    gen = _GENERATORS[task]
    return [gen(sample_rng(task, split, seed, start + i), spec, split=split, **options)
            for i in range(count)]


def _load_generators() -> None:
    import importlib

    for module in _TASK_MODULES:  # importing a task module registers its generator
        importlib.import_module(f"edgekit.data.{module}")


_TASK_MODULES = ("pose", "depth", "deblur", "longctx")


__all__ = ["Sample", "samples", "task_of", "input_spec", "SPLITS", "TASKS", "register_task",
           "sample_rng"]
