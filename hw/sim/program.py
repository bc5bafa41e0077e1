"""A program (folder or assembly) on the golden model or on the Verilator build of the RTL.

`run_golden` / `run_rtl` return the same document: engine, error, counters and the final
DRAM image; the RTL run happens inside a cocotb test (`edgekit.hw.sim.run_program`).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from edgekit.errors import EdgekitError


def run_golden(program) -> dict:
    from edgekit.compile.accel import golden

    res = golden.simulate(program.dram, program.insn_addr, program.insn_count, program.hw)
    # Only what the golden model counts exactly; cycles are estimates (memory timing is unknown).
    exact = ("compute_busy", "mac_busy", "macs", "dram_rd_bytes", "dram_wr_bytes", "insns")
    counters = {k: res.counters[k] for k in exact}
    estimate = res.counters["estimate"]
    return {"engine": "golden", "error": res.error, "error_pc": res.error_pc, "counters": counters,
            "estimated_cycles": estimate, "dram": res.dram}


def check_rtl_config(program) -> None:
    """The RTL is built with the default parameters: a program for other hardware cannot run on it."""
    from edgekit.compile.accel import isa

    for key, value in program.hw.items():
        if value != isa.HW_DEFAULTS[key]:
            raise EdgekitError(f"--rtl: the RTL is built with {key}={isa.HW_DEFAULTS[key]}, the program's "
                               f"program.json field hw.{key} is {value} (use --golden)")


def run_rtl(program, waves: Path | None, max_cycles: int, seed: int) -> dict:
    """Run on the RTL; `waves`: where to copy the VCD (the caller's temporary)."""
    import shutil

    import numpy as np

    from edgekit.hw.tb import runner
    from edgekit.progress import progress

    with tempfile.TemporaryDirectory(prefix="edgekit-sim-") as tmp:
        tmp = Path(tmp)
        program.save(tmp / "program")
        steps = progress(total=2, desc="simulate --rtl")
        build_dir = runner.build(waves=bool(waves))
        steps.update(1)
        log = tmp / "sim.log"
        env = {"EDGEKIT_SIM_PROGRAM": str(tmp / "program"), "EDGEKIT_SIM_RESULT": str(tmp),
               "EDGEKIT_SIM_MAX_CYCLES": str(max_cycles), "EDGEKIT_SIM_SEED": str(seed)}
        tests, failed = runner.run(build_dir, "edgekit.hw.sim.run_program", extra_env=env, test_dir=tmp,
                                   waves=bool(waves), log_file=log)
        steps.update(1)
        steps.close()
        if failed or not (tmp / "result.json").exists():
            tail = log.read_text().strip().splitlines()[-5:] if log.exists() else []
            raise EdgekitError(f"RTL simulation of {program.insn_count} instructions failed: "
                               + " | ".join(t.strip() for t in tail))
        result = json.loads((tmp / "result.json").read_text())
        result["engine"] = "rtl"
        result["dram"] = np.frombuffer((tmp / "dram.bin").read_bytes(), np.uint8).copy()
        if waves:
            found = sorted(tmp.rglob("*.vcd"))
            if not found:
                raise EdgekitError("the simulator wrote no VCD waveform")
            shutil.copyfile(found[0], waves)
        return result
