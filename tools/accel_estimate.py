#!/usr/bin/env python
"""Frames per second of full-size zoo models on edgekit's accelerator, from the golden model's counts.

    python tools/accel_estimate.py                              # LitePose-XS 256x256, depth 'small' 518x518
    python tools/accel_estimate.py --clock-mhz 800 --array 16 --json-file est.json
    python tools/accel_estimate.py --model litepose:xs:256 --work /tmp/est

Each model is exported (random weights: cycle counts depend on shapes only),
quantized W4A8 with RTN, compiled with fusion and `--fallback cpu`, and its
instruction stream costed statically (`edgekit.compile.accel.cost`, equal to
the golden model's counters). Assumptions, printed with the result:
  * clock `--clock-mhz` (default 500 MHz), array N x N (default 8x8);
  * DRAM: one 64-bit word per cycle per direction-shared port (8 B/cycle =
    4 GB/s at 500 MHz) plus (latency + 2) cycles per burst, latency 4 cycles
    (the golden model's memory model); load, compute and store overlap
    within a layer, layers run back to back;
  * `--rtl-factor`: RTL cycles / golden estimate measured on tiny LitePose
    (default 1.58, from `edgekit simulate --rtl` and `--golden` on the 32x32
    model, docs/accel_compiler.md), applied for the "RTL-calibrated" column;
  * host (fallback) ops are not counted: they are listed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from edgekit.commands import add_json_flags, check_json_file, emit_json

DEFAULT_MODELS = ["litepose:xs:256", "depth:small:518"]


def prepare(spec: str, work: Path, array: int) -> tuple[Path, dict]:
    import numpy as np
    import onnx

    from edgekit.compile.accel.compiler import compile_accel
    from edgekit.export import export_zoo
    from edgekit.quant import pipeline as P

    name, config, size = spec.split(":")
    size = int(size)
    stem = f"{name}-{config}-{size}"
    onnx_path, q_path, out = work / f"{stem}.onnx", work / f"{stem}.q.onnx", work / f"{stem}-accel{array}"
    if not onnx_path.exists():
        export_zoo(name, onnx_path, config, input_shapes=[(1, 3, size, size)], random_init=True, tolerance=1e9)
    if not q_path.exists():
        model = onnx.load(str(onnx_path))
        inp = model.graph.input[0].name
        calib = [{inp: np.random.default_rng(0).uniform(0, 1, (1, 3, size, size)).astype(np.float32)}]
        q, _ = P.quantize(model, calib, P.QuantConfig(weight_bits=4, act_bits=8, steps=[P.RTN()], report_samples=1))
        q_path.write_bytes(q.SerializeToString())
    meta = compile_accel(q_path, out, array=array, fallback="cpu")
    return out, meta


def estimate(spec: str, work: Path, clock_mhz: float, array: int, rtl_factor: float) -> dict:
    from edgekit.compile.accel.cost import program_cost

    folder, meta = prepare(spec, work, array)
    cost = program_cost(folder)
    t = cost["total"]
    n2 = array * array
    hz = clock_mhz * 1e6
    dram = t["dram_rd_bytes"] + t["dram_wr_bytes"]
    fps = hz / max(1, t["cycles"])
    worst = sorted(cost["layers"], key=lambda layer: -layer["cycles"])[:5]
    return {
        "model": spec, "array": array, "clock_mhz": clock_mhz, "cycles_per_frame": t["cycles"],
        "fps_golden": fps, "fps_rtl_calibrated": fps / rtl_factor, "useful_macs": t["useful_macs"],
        "mac_utilization": t["useful_macs"] / max(1, t["cycles"] * n2),
        "dram_bytes_per_frame": dram, "dram_gb_per_s_at_fps": dram * fps / 1e9,
        "accelerator_segments": len(cost["layers"]), "host_steps": cost["host_steps"],
        "fallback_ops": len(cost["fallback_ops"]),
        "fallback_op_kinds": sorted({k.split("(")[1].split(")")[0] for k in meta.get("fallback_op_list", [])}),
        "slowest_layers": [{"name": layer["name"], "kinds": layer["kinds"], "cycles": layer["cycles"],
                            "mac_utilization": layer["useful_macs"] / max(1, layer["cycles"] * n2)} for layer in worst],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None, metavar="NAME:CONFIG:SIZE",
                    help=f"zoo model, config and square input size (default: {' '.join(DEFAULT_MODELS)})")
    ap.add_argument("--clock-mhz", type=float, default=500.0)
    ap.add_argument("--array", type=int, default=8)
    ap.add_argument("--rtl-factor", type=float, default=1.58)
    ap.add_argument("--work", default=None, help="folder for exported / quantized / compiled models (kept)")
    add_json_flags(ap)
    args = ap.parse_args(argv)
    check_json_file(args)
    work = Path(args.work or tempfile.mkdtemp(prefix="accel-estimate-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = [estimate(m, work, args.clock_mhz, args.array, args.rtl_factor) for m in (args.model or DEFAULT_MODELS)]
    print(f"clock {args.clock_mhz:g} MHz, {args.array}x{args.array} MACs, DRAM 8 B/cycle "
          f"({8 * args.clock_mhz / 1e3:g} GB/s) + 6 cycles per burst, host ops not counted", file=sys.stderr)
    if emit_json(args, rows):
        return 0
    for r in rows:
        print(f"{r['model']:<18} {r['cycles_per_frame']:>12,} cycles  {r['fps_golden']:7.2f} fps (golden)  "
              f"{r['fps_rtl_calibrated']:7.2f} fps (RTL-calibrated)  MAC util {r['mac_utilization']:.1%}  "
              f"DRAM {r['dram_bytes_per_frame'] / 1e6:.1f} MB/frame  host ops {r['fallback_ops']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
