"""Tiny LitePose at 64x64 (W4A4, RTN): the compiled program's conv-layer MAC utilization, from the
static cost model (equal to the golden model's counters, tested in test_golden.py / test_depthwise.py).

Depthwise convs are most of LitePose's cycles on a dense-only array (at most 1/N useful lanes on a
diagonal tile); on the depthwise gemm mode they are not. The thresholds sit below what was measured
(docs/accel_compiler.md) so that a lowering regression, not noise, fails them: the numbers are
deterministic for a given compiler.
"""
from __future__ import annotations

import pytest

from .conftest import shared_file

SIZE = 64
MIN_CONV_UTILIZATION = 0.65      # measured 71.6 % (docs/accel_compiler.md, 64x64 row); dense-only array: 30 %
# every depthwise layer (measured >= 29 %), useful MACs / (cycles x N*N); diagonal: < 1/N
MIN_DEPTHWISE_UTILIZATION = 0.25


@pytest.fixture(scope="module")
def litepose64(tmp_path_factory):
    def make(path):
        import onnx

        from edgekit.export import export_zoo

        from . import nets

        onnx_path = path.with_name(f"litepose{SIZE}.onnx")
        export_zoo("litepose", onnx_path, "tiny", input_shapes=[(1, 3, SIZE, SIZE)], random_init=True)
        nets.quantize(onnx.load(str(onnx_path)), path, weight_bits=4, act_bits=4)

    return shared_file(tmp_path_factory, f"litepose{SIZE}_w4a4.q.onnx", make)


@pytest.fixture(scope="module")
def compiled(litepose64, tmp_path_factory):
    from edgekit.compile.accel.compiler import compile_accel
    from edgekit.compile.accel.cost import program_cost

    folder = tmp_path_factory.mktemp("lp64") / "prog"
    compile_accel(litepose64, folder)
    return folder, program_cost(folder)


def test_depthwise_layers_run_on_the_depthwise_mode_above_one_nth(compiled):
    from .test_depthwise import depthwise_steps, gemm_fields

    folder, cost = compiled
    n = cost["hw"]["N"]
    layers = {layer["name"]: layer for layer in cost["layers"]}
    steps = depthwise_steps(folder)
    assert len(steps) >= 10                       # LitePose's 3x3 / 5x5 / 7x7 depthwise convs
    for step in steps:
        assert all(f["dw"] == 1 for f in gemm_fields(folder, step)), step["name"]
        layer = layers[step["name"]]
        utilization = layer["useful_macs"] / (layer["cycles"] * n * n)
        assert utilization > max(1 / n, MIN_DEPTHWISE_UTILIZATION), (step["name"], utilization)


def test_conv_layer_mac_utilization(compiled):
    _, cost = compiled
    n2 = cost["hw"]["N"] ** 2
    conv = [layer for layer in cost["layers"] if any(k.startswith("conv") for k in layer["kinds"])]
    utilization = sum(layer["useful_macs"] for layer in conv) / (sum(layer["cycles"] for layer in conv) * n2)
    assert utilization >= MIN_CONV_UTILIZATION, utilization
