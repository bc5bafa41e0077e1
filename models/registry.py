"""The zoo registry: one `ZooEntry` per model family.

An entry knows its configurations (plain dataclasses), how to build a module
from one, and the names/shapes of the exported graph's inputs and outputs.
Family modules register themselves at import time through `register()`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from edgekit.errors import EdgekitError

# Every build starts from the same seed so that a tiny model built twice is the
# same model (tests and export parity rely on it) without touching global RNG.
BUILD_SEED = 0


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple
    dtype: str  # numpy/ONNX style name: "float32", "int64"


@dataclass
class ZooEntry:
    name: str
    task: str  # 'pose' | 'depth' | 'deblur' | 'lm'
    configs: dict[str, Any]
    factory: Callable[[Any], Any]
    inputs: Callable[[Any], list]
    outputs: Callable[[Any], list]
    default_config: str = "tiny"
    description: str = ""
    extra: dict = field(default_factory=dict)

    def config(self, config: str = "tiny"):
        """The config object called `config` (EdgekitError listing valid names)."""
        if isinstance(config, str):
            if config not in self.configs:
                raise EdgekitError(
                    f"unknown config {config!r} for model {self.name!r}; "
                    f"valid configs: {', '.join(self.configs)}")
            return self.configs[config]
        return config  # already a config object

    def build(self, config: str = "tiny", **overrides):
        """A freshly initialised module in eval mode (deterministic weights)."""
        import torch

        cfg = self.config(config)
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(BUILD_SEED)
            model = self.factory(cfg)
        return model.eval()

    def load(self, config: str = "tiny", checkpoint=None):
        """Build `config` and load `checkpoint` (.safetensors/.pt/.pth) strictly.

        A family may rename official keys (`extra['rename_checkpoint']`) and
        adapt the config to the checkpoint (`extra['adapt_config']`: LitePose
        reads its joint count from the head's shapes).
        """
        from .checkpoint import load_state_dict_strict, read_state_file

        cfg = self.config(config)
        if checkpoint is None:
            return self.build(cfg)
        state = read_state_file(checkpoint)
        rename = self.extra.get("rename_checkpoint")  # official names -> ours (depth)
        if rename is not None:
            state = rename(state)
        adapt = self.extra.get("adapt_config")
        if adapt is not None:
            cfg = adapt(cfg, state)
        model = self.build(cfg)
        load_state_dict_strict(model, state, source=f"checkpoint {checkpoint}")
        return model.eval()

    def input_spec(self, config: str = "tiny") -> list[InputSpec]:
        return list(self.inputs(self.config(config)))

    def output_names(self, config: str = "tiny") -> list[str]:
        return list(self.outputs(self.config(config)))


_REGISTRY: dict[str, ZooEntry] = {}
# How `edgekit zoo list` and error messages list the zoo (not the order the modules are imported in).
ZOO_ORDER = ("litepose", "depth", "deblur", "lm")


def register(entry: ZooEntry) -> ZooEntry:
    _REGISTRY[entry.name] = entry
    return entry


def list_models() -> list[str]:
    rank = {name: i for i, name in enumerate(ZOO_ORDER)}
    return sorted(_REGISTRY, key=lambda name: (rank.get(name, len(rank)), name))


def get(name: str) -> ZooEntry:
    if name not in _REGISTRY:
        raise EdgekitError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    return _REGISTRY[name]
