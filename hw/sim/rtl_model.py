"""cocotb test module: a whole compiled model on the RTL (started by `edgekit.hw.sim.model.run_rtl`).

Environment: EDGEKIT_ACCEL_MODEL (compiled-model folder), EDGEKIT_ACCEL_FEEDS
(.npz of float inputs), EDGEKIT_ACCEL_RESULT (.npz written here: outputs,
every DRAM tensor's codes, per-segment RTL counters as JSON),
EDGEKIT_ACCEL_MAX_CYCLES (per segment). The step loop is
`edgekit.hw.sim.model.execute`, shared with the golden model; only the device differs.
"""
from __future__ import annotations

import json
import os
import random

import cocotb
import numpy as np
from cocotb.triggers import FallingEdge

from edgekit.compile.accel import isa
from edgekit.hw.sim.model import CompiledModel, execute
from edgekit.hw.tb.components import Harness, MemoryTiming


class RtlDevice:
    """The DUT behind the testbench harness; DRAM is the memory model's array (host steps edit it in place)."""

    def __init__(self, harness: Harness, max_cycles: int):
        self.h = harness
        self.max_cycles = max_cycles

    @property
    def dram(self) -> np.ndarray:
        return self.h.mem.data

    async def run_segment(self, addr: int, count: int) -> dict:
        h = self.h
        await h.ctrl.start(addr, count)
        await h.ctrl.wait_done(self.max_cycles, h.PERIOD_NS, f"segment @{addr}")
        status = await h.ctrl.read(isa.CSRS["status"][0])
        code = await h.ctrl.read(isa.CSRS["error_code"][0])
        pc = await h.ctrl.read(isa.CSRS["error_pc"][0])
        counters = await h.ctrl.counters()
        for _ in range(256):   # outstanding write responses land before the host reads DRAM
            if not (h.mem.writes or h.mem.bresps):
                break
            await FallingEdge(h.dut.clk)
        failed = status >> isa.STATUS_BITS["error"] & 1
        counters["error"] = isa.ERROR_NAMES.get(code, f"code{code}") if failed else "none"
        counters["error_pc"] = pc
        counters["stalls"] = {"hazard": counters["hazard_stalls"], "fetch": counters["fetch_stalls"]}
        return counters


@cocotb.test()
async def run_compiled_model(dut):
    model = CompiledModel(os.environ["EDGEKIT_ACCEL_MODEL"])
    feeds = dict(np.load(os.environ["EDGEKIT_ACCEL_FEEDS"], allow_pickle=False))
    dram = model.program.dram
    seed = int(os.environ.get("EDGEKIT_ACCEL_SEED", "0"))
    timing = MemoryTiming.random(random.Random(seed)) if seed else None   # 0: ideal memory
    h = Harness(dut, seed=seed, timing=timing, dram_size=dram.size)
    await h.start()
    h.mem.load_image(dram)
    device = RtlDevice(h, int(os.environ.get("EDGEKIT_ACCEL_MAX_CYCLES", "50000000")))
    run = await execute(model, device, feeds)
    assert not h.monitor.errors, "AXI protocol violations: " + "; ".join(h.monitor.errors[:5])
    arrays = {"out__" + k: v for k, v in run["outputs"].items()}
    arrays.update({"code__" + k: v for k, v in run["codes"].items()})
    arrays["meta"] = np.array(json.dumps({"layers": run["layers"]}))
    np.savez(os.environ["EDGEKIT_ACCEL_RESULT"], **arrays)
