"""Loading weights into zoo modules: safetensors or torch files, strictly.

Only `torch.load(..., weights_only=True)` is ever used: a checkpoint is
data, never code. Official checkpoints come in several wrappings (a plain
state_dict, a `module.`-prefixed one saved from DataParallel, or a dict
with a `state_dict` entry); `unwrap_state_dict` normalises them.
"""
from __future__ import annotations

from pathlib import Path

from edgekit.errors import EdgekitError

_MAX_LISTED = 5


def read_state_file(path) -> dict:
    """Read a .safetensors or torch (.pt/.pth/.bin) file into a flat tensor dict."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise EdgekitError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except EdgekitError:
        raise
    except Exception as exc:  # corrupt file, pickled code, wrong format
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgekitError(f"cannot load checkpoint {path}: {first_line[:200]}") from None
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj, path="checkpoint") -> dict:
    """Plain, `module.`-prefixed, or {'state_dict': ...}-wrapped -> plain state_dict."""
    import torch

    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EdgekitError(f"checkpoint {path} is not a state_dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _listing(keys) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def load_state_dict_strict(model, state: dict, source="checkpoint") -> None:
    """load_state_dict(strict=True) with one-line errors naming the first offending keys."""
    expected = model.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches: {'; '.join(wrong[:3])}")
    if problems:
        raise EdgekitError(f"{source} does not fit {type(model).__name__}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)


def load_state_file(model, path) -> None:
    load_state_dict_strict(model, read_state_file(path), source=f"checkpoint {path}")
