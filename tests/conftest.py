"""Suite-wide test settings.

Under pytest-xdist each worker gets one intra-op thread so the two CI
workers do not oversubscribe the two cores (tests never measure time).
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TVM_NUM_THREADS"):
        os.environ.setdefault(var, "1")
os.environ.setdefault("EDGEKIT_PROGRESS", "0")

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.fixture(scope="session")
def load_tool():
    """load_tool("bench_x") -> the module tools/bench_x.py (the tools are scripts, not a package;
    as when run, they import each other from their folder)."""
    if str(TOOLS) not in sys.path:
        sys.path.append(str(TOOLS))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
