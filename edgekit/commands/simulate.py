"""`edgekit simulate`: run an accelerator program on the golden model or the RTL and print counters."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from edgekit.commands import add_command
from edgekit.errors import EdgekitError

EXAMPLES = """\
  edgekit simulate build/prog --golden                 (program folder: program.json + dram.bin)
  edgekit simulate build/prog --rtl --json result.json (cocotb + Verilator; first run builds the RTL)
  edgekit simulate kernel.s --golden                   (bare assembly; DRAM is zero apart from the code)
  edgekit simulate build/prog --rtl --waves run.vcd    (VCD waveform of the whole run)
  edgekit simulate build/prog --golden --outputs out/  (each output tensor of program.json as .npy)
  edgekit simulate build/m-accel --golden --input x.npy --json -   (compiled model: checked vs intref)
  edgekit simulate build/m-accel --golden --compare build/m-nofuse --plot layers.png
"""


def register(subparsers):
    p = add_command(subparsers, "simulate",
                    "Run an accelerator program (program folder or .s file) on the golden model or the RTL.",
                    EXAMPLES, simulate)
    p.add_argument("program", help="program folder (program.json + dram.bin) or an assembly .s file")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--golden", action="store_true", help="instruction-level golden model (fast)")
    mode.add_argument("--rtl", action="store_true", help="the Verilog RTL under cocotb + Verilator")
    p.add_argument("--json", default=None, metavar="FILE", help="write error, counters and estimates as JSON")
    p.add_argument("--outputs", default=None, metavar="DIR", help="save the program's output tensors as .npy")
    p.add_argument("--waves", default=None, metavar="FILE.vcd", help="(--rtl) write a VCD waveform")
    p.add_argument("--dram-size", type=int, default=1 << 16, help="DRAM bytes for a .s program (default 65536)")
    p.add_argument("--max-cycles", type=int, default=10_000_000, help="(--rtl) give up after this many cycles")
    p.add_argument("--seed", type=int, default=0,
                   help="(--rtl) memory back-pressure/latency seed; 0 = ideal memory")
    # Whole compiled models (`edgekit compile --target accel`): owned by edgekit.compile.accel.run_model.
    from edgekit.compile.accel.run_model import add_model_arguments
    add_model_arguments(p)


def load_program(path: str, dram_size: int):
    from edgekit.compile.accel import Program

    p = Path(path)
    if p.is_dir():
        return Program.load(p)
    if not p.is_file():
        raise EdgekitError(f"{path}: no such program folder or assembly file")
    if p.suffix not in (".s", ".asm"):
        raise EdgekitError(f"{path}: expected a program folder or a .s assembly file")
    try:
        return Program.from_assembly(p.read_text(), dram_size)
    except EdgekitError as exc:
        raise EdgekitError(f"{path}: {exc}") from None


def run_golden(program) -> dict:
    from edgekit.compile.accel import golden

    res = golden.simulate(program.dram, program.insn_addr, program.insn_count, program.hw)
    # Only what the golden model counts exactly; cycles are estimates (memory timing is unknown).
    exact = ("compute_busy", "mac_busy", "macs", "dram_rd_bytes", "dram_wr_bytes", "insns")
    counters = {k: res.counters[k] for k in exact}
    estimate = res.counters["estimate"]
    return {"engine": "golden", "error": res.error, "error_pc": res.error_pc, "counters": counters,
            "estimated_cycles": estimate, "dram": res.dram}


def run_rtl(program, waves: str | None, max_cycles: int, seed: int) -> dict:
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
        tests, failed = runner.run(build_dir, "edgekit.hw.tb.run_program", extra_env=env, test_dir=tmp,
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
            import shutil

            shutil.copyfile(found[0], waves)
            result["waves"] = str(waves)
        return result


def print_table(result: dict, out=None) -> None:
    out = out or sys.stdout  # looked up at call time (pytest swaps stdout)
    print(f"engine: {result['engine']}   error: {result['error']}"
          + (f" at instruction {result['error_pc']}" if result["error"] != "none" else ""), file=out)
    width = max(len(k) for k in result["counters"])
    for key, value in result["counters"].items():
        print(f"  {key:<{width}}  {value:>14,}", file=out)
    c = result["counters"]
    if c.get("cycles"):
        print(f"  {'mac utilization':<{width}}  {c['mac_busy'] / c['cycles']:>14.1%}", file=out)
    if "estimated_cycles" in result:
        est = result["estimated_cycles"]
        print(f"  estimated cycles (4-cycle memory): overlapped {est['overlapped']:,}, serial {est['serial']:,}",
              file=out)


def simulate(args) -> int:
    from edgekit.fileio import atomic_path, save_json

    from edgekit.compile.accel.run_model import is_compiled_model, simulate_compiled_model
    if is_compiled_model(args.program):
        return simulate_compiled_model(args)
    program = load_program(args.program, args.dram_size)
    if args.waves and not args.rtl:
        raise EdgekitError("--waves needs --rtl")
    if args.outputs and not Path(args.outputs).parent.exists():
        raise EdgekitError(f"--outputs {args.outputs}: parent folder does not exist")
    result = run_golden(program) if args.golden else run_rtl(program, args.waves, args.max_cycles, args.seed)
    dram = result.pop("dram")
    print_table(result)
    if args.json:
        save_json(result, args.json)
    if args.outputs:
        import numpy as np

        folder = Path(args.outputs)
        folder.mkdir(exist_ok=True)
        for t in program.outputs:
            with atomic_path(folder / f"{t.name}.npy") as tmp:
                np.save(tmp, t.read(dram))
    return 0 if result["error"] == "none" else 1
