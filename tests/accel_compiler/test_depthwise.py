"""Depthwise convolutions on the depthwise gemm mode (N channels x N output pixels per cycle):
golden model bit-exact with the integer reference, every depthwise layer lowered to `gemm dw=1`,
and the array doing more than the 1/N a diagonal weight tile allowed."""
from __future__ import annotations

import numpy as np
import pytest

from edgekit.compile.accel import asm
from edgekit.compile.accel.compiler import compile_accel
from edgekit.compile.accel.cost import program_cost
from edgekit.compile.accel.program import Program
from edgekit.hw.sim.model import run_model


def gemm_fields(folder, step) -> list[dict]:
    prog = Program.load(folder)
    seg = prog.insns[step["insn_start"]:step["insn_start"] + step["insn_count"]]
    return [f for name, f, _ in (asm.decode(int(w)) for w in seg) if name == "gemm"]


def depthwise_steps(folder) -> list[dict]:
    """Segments of the depthwise convs (group = channels), from the compiled graph."""
    from edgekit.hw.sim.model import CompiledModel

    model = CompiledModel(folder)
    ops = {op.name: op for op in model.qgraph.ops}
    dw = {name for name, op in ops.items() if op.kind == "conv" and int(op.attrs.get("group", 1)) > 1}
    return [s for s in model.meta["steps"] if s["kind"] == "accel" and s["name"] in dw]


@pytest.mark.parametrize("name", ["depthwise_w4a8", "depthwise_w4a4"])
@pytest.mark.parametrize("fusion", [True, False])
def test_depthwise_layers_are_bit_exact_on_golden(quantized, tmp_path, name, fusion):
    compile_accel(quantized(name), tmp_path / "out", fusion=fusion)
    result = run_model(tmp_path / "out", simulator="golden")
    assert result["first_mismatch"] is None and result["bit_exact"] is True
    assert len(depthwise_steps(tmp_path / "out")) == 5


def test_depthwise_layers_use_the_depthwise_mode_above_one_nth(quantized, tmp_path):
    folder = tmp_path / "out"
    compile_accel(quantized("depthwise_w4a8"), folder)
    n = Program.load(folder).hw["N"]
    steps = {s["name"]: s for s in depthwise_steps(folder)}
    layers = {layer["name"]: layer for layer in program_cost(folder)["layers"]}
    for name, step in steps.items():
        gemms = gemm_fields(folder, step)
        assert gemms and all(f["dw"] == 1 and f["acc_si"] == 1 for f in gemms), name
        # a diagonal tile does at most N useful MACs per array cycle; the depthwise mode up to N*N
        assert layers[name]["useful_macs"] > layers[name]["mac_busy"] * n, name


def test_static_cost_equals_golden_on_depthwise(quantized, tmp_path):
    compile_accel(quantized("depthwise_w4a8"), tmp_path / "out")
    static = program_cost(tmp_path / "out")
    run = run_model(tmp_path / "out", check=False)
    for s, g in zip(static["layers"], run["layers"]):
        assert (s["cycles"], s["dram_rd_bytes"], s["dram_wr_bytes"], s["insns"]) == \
            (g["cycles"], g["dram_read"], g["dram_written"], g["instructions"])
        assert np.isclose(s["mac_busy"], g["array_busy"] * g["cycles"])
