"""Quantized test models, built once per test session and shared by pytest-xdist workers (file lock)."""
from __future__ import annotations

import fcntl
import os

import pytest


def shared_file(tmp_path_factory, name: str, make) -> str:
    """`make(path)` once across all workers; everyone gets the same file."""
    base = tmp_path_factory.getbasetemp()   # under xdist: .../pytest-N/popen-gwK, shared parent pytest-N
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "accel_compiler_models"
    root.mkdir(exist_ok=True)
    path = root / name
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            tmp = root / f".{name}.tmp"
            make(tmp)
            tmp.rename(path)
    return str(path)


@pytest.fixture(scope="session")
def quantized(tmp_path_factory):
    """quantized(name) -> path of a quantized test net (see nets.py)."""
    from . import nets

    recipes = {
        "mixed_w4a8": lambda p: nets.quantize(nets.mixed_cnn(), p),
        "mixed_w4a4": lambda p: nets.quantize(nets.mixed_cnn(), p, act_bits=4),
        "wide_w4a8": lambda p: nets.quantize(nets.wide_conv(), p),
        "acts_w8a8": lambda p: nets.quantize(nets.activation_heavy(), p, weight_bits=8),
        "sigmoid_w4a8": lambda p: nets.quantize(nets.mixed_cnn(tail="sigmoid"), p),
        "strips_w4a8": lambda p: nets.quantize(nets.wide_image(), p),
        "channels_w4a8": lambda p: nets.quantize(nets.many_channels(), p),
        "depthwise_w4a8": lambda p: nets.quantize(nets.depthwise_net(), p),
        "depthwise_w4a4": lambda p: nets.quantize(nets.depthwise_net(), p, act_bits=4),
    }
    return lambda name: shared_file(tmp_path_factory, f"{name}.q.onnx", recipes[name])
