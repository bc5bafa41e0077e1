"""Fixtures for the TVM back-end tests: tiny models and their compiled artifacts (once per worker)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

pytest.importorskip("tvm")

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("tvm")


@pytest.fixture(scope="session")
def conv_onnx(workdir):
    return tiny.conv_net(workdir / "conv.onnx")


@pytest.fixture(scope="session")
def conv_artifact(workdir, conv_onnx):
    from edgekit.compile import compile_model

    out = workdir / "conv_x86"
    compile_model(conv_onnx, "x86-64", out, committed_db=False)
    return out


@pytest.fixture(scope="session")
def qdq_models(workdir, conv_onnx):
    """W4A4 and W4A8 QDQ files of the conv net, made by edgekit's quantizer."""
    return {bits: tiny.quantize(conv_onnx, workdir / f"conv.w{bits[0]}a{bits[1]}.onnx", *bits)
            for bits in ((4, 4), (4, 8))}
