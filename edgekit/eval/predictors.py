"""Predictors: `predict(inputs: dict[str, ndarray]) -> dict[str, ndarray]` for anything runnable.

A small registry, like onnx.reference's op table: each entry is a matcher
(does this object look like mine?) and a factory. Torch modules and ONNX
files are built in; the TVM runtime and the accelerator simulator add
themselves with `register_predictor`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekit.errors import EdgekitError


@dataclass
class Predictor:
    """A callable with what evaluation needs to know about the model's interface.

    input_shapes: name -> shape (ints for static dims, None/str for dynamic) when known.
    """

    run: Callable[[dict], dict]
    input_shapes: dict | None = None
    output_names: list | None = None
    label: str = "model"

    def __call__(self, inputs: dict) -> dict:
        return self.run(inputs)


@dataclass
class _Entry:
    name: str
    matches: Callable[[Any], bool]
    factory: Callable[..., Predictor]


_PREDICTORS: list[_Entry] = []


def register_predictor(name: str, matches: Callable[[Any], bool], factory: Callable[..., Predictor],
                       first: bool = False) -> None:
    """Make `predictor(obj)` use `factory(obj, **options)` for objects where `matches(obj)`."""
    entry = _Entry(name, matches, factory)
    _PREDICTORS.insert(0, entry) if first else _PREDICTORS.append(entry)


def predictor(obj, **options) -> Predictor:
    """A predict function for a torch nn.Module, an ONNX file path, or a registered kind."""
    if isinstance(obj, Predictor):
        return obj
    for entry in _PREDICTORS:
        if entry.matches(obj):
            return entry.factory(obj, **options)
    kinds = ", ".join(e.name for e in _PREDICTORS)
    raise EdgekitError(f"cannot run {obj if isinstance(obj, (str, os.PathLike)) else type(obj).__name__}: "
                       f"no predictor for it (known kinds: {kinds})")


# ---------------------------------------------------------------- torch
def _is_torch_module(obj) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


def _torch_predictor(module, output_names=None, **_) -> Predictor:
    import torch

    names = list(output_names or getattr(module, "output_names", None) or ["output"])
    module.eval()

    def run(inputs):
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        with torch.no_grad(), _long_context_attention(module):
            out = module(**tensors)
        if isinstance(out, dict):
            return {k: v.numpy() for k, v in out.items()}
        if isinstance(out, torch.Tensor):
            out = (out,)
        return {name: t.numpy() for name, t in zip(names, out)}

    return Predictor(run, None, names, label=f"PyTorch {type(module).__name__}")


class _long_context_attention:
    """Run the zoo LM's default dense attention through torch's fused kernel: the same
    maths in O(T) memory, so 16K-token evaluation fits (a custom attention is left alone)."""

    def __init__(self, module):
        self.module = module
        self.swapped = False

    def __enter__(self):
        blocks = getattr(self.module, "blocks", None)
        if blocks is None or not hasattr(self.module, "set_attention"):
            return self
        try:
            from edgekit.models.lm import dense_causal_attention, sdpa_causal
        except ImportError:
            return self
        if all(getattr(getattr(b, "attn", None), "attention", None) is dense_causal_attention for b in blocks):
            self.module.set_attention(sdpa_causal)
            self.swapped = True
        return self

    def __exit__(self, *exc):
        if self.swapped:
            self.module.set_attention(None)


# ---------------------------------------------------------------- onnx
def _is_onnx_file(obj) -> bool:
    return isinstance(obj, (str, os.PathLike)) and str(obj).endswith(".onnx")


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
              "tensor(float16)": np.float16, "tensor(double)": np.float64, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8}


def _onnx_predictor(path, threads: int | None = None, **_) -> Predictor:

    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"ONNX file {path} does not exist")
    from edgekit.quant.ort import session as ort_session

    try:
        # edgekit's session options: onnxruntime 1.32 mishandles 4-bit activations otherwise.
        session = ort_session(path, threads=int(threads) if threads else None)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(f"onnxruntime cannot load {path}: {first}") from None
    inputs = session.get_inputs()
    shapes = {i.name: tuple(d if isinstance(d, int) else None for d in i.shape) for i in inputs}
    dtypes = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in inputs}
    names = [o.name for o in session.get_outputs()]

    def run(feed):
        feed = _match_names(feed, list(shapes), path)
        feed = {k: np.ascontiguousarray(v, dtype=dtypes[k]) for k, v in feed.items()}
        try:
            outs = session.run(None, feed)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300]
            raise EdgekitError(f"onnxruntime failed running {path}: {first}") from None
        return dict(zip(names, outs))

    return Predictor(run, shapes, names, label=f"onnxruntime {path.name}")


def _match_names(feed: dict, wanted: list, path) -> dict:
    """Feed by name; a single unnamed-alike input is fed by position."""
    if set(feed) == set(wanted):
        return feed
    if len(feed) == len(wanted) == 1:
        return {wanted[0]: next(iter(feed.values()))}
    raise EdgekitError(f"{path} has inputs {', '.join(wanted)} but the task provides {', '.join(feed)}")


# ---------------------------------------------------------------- compiled artifacts (edgekit compile)
def _is_artifact(obj) -> bool:
    from edgekit.runtime.artifact import METADATA  # cheap: no tvm import

    return isinstance(obj, (str, os.PathLike)) and (Path(obj) / METADATA).is_file()


def _artifact_predictor(folder, threads: int | None = None, device=None, tracker=None, key=None,
                        **_) -> Predictor:
    from edgekit.runtime import open_session

    session = open_session(folder, device=device, tracker=tracker, key=key, num_threads=threads)
    art = session.artifact
    return Predictor(session.run, {i["name"]: tuple(i["shape"]) for i in art.inputs},
                     [o["name"] for o in art.outputs],
                     label=f"tvm {Path(folder).name} ({art.meta['target'].get('name', art.arch)})")


# The kinds, in the order they are tried (an artifact folder is checked before anything else).
register_predictor("tvm-artifact", _is_artifact, _artifact_predictor)
register_predictor("torch", _is_torch_module, _torch_predictor)
register_predictor("onnx", _is_onnx_file, _onnx_predictor)
