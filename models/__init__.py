"""edgekit.models: the model zoo.

    >>> from edgekit import models
    >>> models.list_models()
    ['litepose', 'depth', 'deblur', 'lm']
    >>> net = models.build("litepose", "tiny")          # eval mode, deterministic init
    >>> models.get("litepose").input_spec("tiny")        # [InputSpec('image', (1,3,128,128), 'float32')]
    >>> ref = models.load_reference("litepose")          # tiny + committed checkpoint
"""
from __future__ import annotations

from pathlib import Path

from edgekit.errors import EdgekitError

# Each family module registers its entry; the zoo's listing order is `registry.ZOO_ORDER`.
from . import deblur, depth, litepose, lm  # noqa: F401
from .registry import InputSpec, ZooEntry, get, list_models

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

__all__ = ["InputSpec", "ZooEntry", "build", "get", "list_models", "load_reference",
           "reference_checkpoint", "CHECKPOINT_DIR"]


def build(name: str, config: str = "tiny"):
    """Build zoo model `name` in configuration `config` (eval mode)."""
    return get(name).build(config)


def reference_checkpoint(name: str) -> Path:
    """Where the committed reference checkpoint of `name` (tiny config) lives."""
    get(name)  # validates the name
    return CHECKPOINT_DIR / f"{name}_tiny.safetensors"


def load_reference(name: str):
    """The tiny model of `name` with its committed, trained checkpoint (eval mode)."""
    from .checkpoint import load_state_file

    path = reference_checkpoint(name)
    if not path.is_file():
        raise EdgekitError(f"reference checkpoint {path} is missing; create it with "
                           f"`edgekit zoo train {name}`")
    model = build(name, "tiny")
    load_state_file(model, path)
    return model.eval()
