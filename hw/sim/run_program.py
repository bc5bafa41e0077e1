"""cocotb test module behind `edgekit simulate --rtl`: run one program folder, write results.

Environment: EDGEKIT_SIM_PROGRAM (program folder), EDGEKIT_SIM_RESULT (output folder),
EDGEKIT_SIM_MAX_CYCLES, EDGEKIT_SIM_SEED (memory back-pressure seed; 0 = ideal memory).
Writes result.json (error, error_pc, counters) and dram.bin (final DRAM image).
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import cocotb

from edgekit.compile.accel import Program
from edgekit.hw.tb.components import Harness, MemoryTiming


@cocotb.test()
async def run_program(dut):
    program = Program.load(os.environ["EDGEKIT_SIM_PROGRAM"])
    out = Path(os.environ["EDGEKIT_SIM_RESULT"])
    seed = int(os.environ.get("EDGEKIT_SIM_SEED", "0"))
    timing = MemoryTiming.random(random.Random(seed)) if seed else MemoryTiming.ideal()
    h = Harness(dut, seed=seed, timing=timing, dram_size=program.dram.size)
    await h.start()
    rtl = await h.run(program.dram, program.insn_addr, program.insn_count,
                      int(os.environ.get("EDGEKIT_SIM_MAX_CYCLES", "10000000")))
    (out / "dram.bin").write_bytes(rtl.dram.tobytes())
    (out / "result.json").write_text(json.dumps({"error": rtl.error, "error_pc": rtl.error_pc,
                                                 "counters": rtl.counters,
                                                 "protocol_errors": h.monitor.errors}, indent=2))
