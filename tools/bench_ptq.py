#!/usr/bin/env python
"""Benchmark edgekit PTQ on the zoo: one table per run, JSON + markdown, per-layer SQNR JSON + PNG.

For each zoo model, on the held-out test split: FP32; RTN W4A4; onnxruntime
quantize_static W4A4 (QInt4 weights per channel, QUInt4 activations, QDQ; the
best of MinMax / Entropy / Percentile calibration on the test metric);
edgekit W4A4 after each step (polish, +compensate, +reconstruct = full),
full --fast, W4A8 full, and W4A8 full with the first and last layers at 8 bits
(`--keep-8bit @first @last`); file size; quantization wall time; and the
output SQNR against FP32 on the same test inputs (a task-free view of each
step: it can disagree with the task metric, e.g. AbsRel weighs near pixels).

    python tools/bench_ptq.py --out bench/ptq                       # all four zoo models
    python tools/bench_ptq.py --models litepose --test-count 50 --calib-count 16
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from ort_baseline import best_quantize_static

from edgekit.eval import PRIMARY


def evaluate_file(name, path_or_model, count, strict=False, outputs=None):
    """Task metrics on the test split; the float outputs of each sample go to `outputs` if given."""
    from edgekit.eval import evaluate
    from edgekit.quant.ort import run, session

    sess = session(path_or_model, strict=strict)

    def predict(inputs):
        out = run(sess, inputs)
        if outputs is not None:
            outputs.append({k: v for k, v in out.items() if np.asarray(v).dtype.kind == "f"})
        return out
    return evaluate(name, predict, split="test", count=count)


def output_sqnr_db(reference: list, outputs: list) -> float:
    """SQNR (dB) of `outputs` against `reference` (lists of {name: array}, one per sample)."""
    signal = sum(float((np.asarray(r[k], np.float64) ** 2).sum()) for r in reference for k in r)
    noise = sum(float(((np.asarray(o[k], np.float64) - r[k]) ** 2).sum())
                for r, o in zip(reference, outputs) for k in r)
    return float(10 * np.log10(signal / max(noise, 1e-30)))


def tuned(cfg, args):
    """Apply the command line's cost knobs to a QuantConfig."""
    from edgekit.quant import pipeline as P

    if args.layer_samples:
        cfg.layer_samples = args.layer_samples
    for step in cfg.steps:
        if isinstance(step, P.Reconstruct) and args.iters is not None:
            step.iters = args.iters
    return cfg


def bench_model(name, args, out_dir: Path) -> dict:
    import onnx

    from edgekit.data import samples, task_of
    from edgekit.export import export_zoo
    from edgekit.onnx_graph.model import prepare_model
    from edgekit.quant import pipeline as P

    task = task_of(name)
    key, sign = PRIMARY[task]
    fp32 = out_dir / f"{name}.fp32.onnx"
    rep = export_zoo(name, fp32)
    prepared = out_dir / f"{name}.prep.onnx"
    onnx.save(prepare_model(fp32), str(prepared))
    calib = [dict(s.inputs) for s in samples(name, "calib", args.calib_count)]
    rows = {}

    def add(label, metric, size, seconds, **extra):
        rows[label] = {"metric": metric, "size_bytes": size, "quant_seconds": seconds, **extra}
        print(f"[{name}] {label}: {key}={metric:.4f} size={size} time={seconds}", flush=True)

    reference: list = []  # FP32 outputs on the test inputs

    def score(path):
        outputs: list = []
        res = evaluate_file(name, path, args.test_count, outputs=outputs)
        return res[key], {"output_sqnr_db": round(output_sqnr_db(reference, outputs), 2)}

    res = evaluate_file(name, fp32, args.test_count, outputs=reference)
    add("FP32", res[key], fp32.stat().st_size, None, weights=rep.weights)

    if args.max_drop:
        max_drop_rows(name, args, fp32, calib, out_dir, add, score, rows, sign)
        if args.max_drop_only:
            return {"model": name, "task": task, "metric": key, "higher_is_better": sign > 0,
                    "test_samples": args.test_count, "calib_samples": args.calib_count, "rows": rows,
                    "targets": {}}

    # CPU seconds (all threads of this process) next to wall time: on a shared machine the
    # wall time says little, while CPU time bounds what an idle machine would take
    cpu_seconds = {}

    def edgekit_run(tag, cfg):
        cfg.snapshots = True
        t0, c0 = time.time(), time.process_time()
        q, report = P.quantize(str(fp32), calib, cfg)
        total = time.time() - t0
        cpu_seconds[tag] = time.process_time() - c0
        cum = 0.0
        for step in report["steps"]:
            cum += step["seconds"]
            model = report["_models"][step["step"]]
            path = out_dir / f"{name}.{tag}.{step['step']}.onnx"
            onnx.save(model, str(path))
            label = f"edgekit {tag} {step['step']}"
            if step["step"] == "rtn":
                label = f"RTN {tag}"
            metric, sqnr = score(path)
            add(label, metric, path.stat().st_size, round(cum, 1), **sqnr)
        report.pop("_models")
        report.pop("_plan")
        return report, total

    report44, t44 = edgekit_run("W4A4", tuned(P.QuantConfig.for_method("full", weight_bits=4, act_bits=4), args))
    per_step = {s["step"]: s["sqnr_db"]["layers"] for s in report44["steps"]}
    (out_dir / f"{name}_layers.json").write_text(json.dumps(
        {"model": name, "bits": "W4A4", "sqnr_db": per_step,
         "outputs_sqnr_db": {s["step"]: s["sqnr_db"]["outputs"] for s in report44["steps"]},
         "details": {s["step"]: s["details"] for s in report44["steps"]}}, indent=1, default=str))
    from edgekit.quant.report import plot_layer_sqnr

    plot_layer_sqnr(per_step, f"{name} W4A4 per-layer SQNR after each step", out_dir / f"{name}_layers.png")

    fast_s = None
    if not args.skip_fast:
        t0, c0 = time.time(), time.process_time()
        q, _ = P.quantize(str(fp32), calib, tuned(P.QuantConfig.for_method("full", fast=True, weight_bits=4,
                                                                             act_bits=4), args))
        fast_s = time.time() - t0
        cpu_seconds["fast"] = time.process_time() - c0
        path = out_dir / f"{name}.W4A4.full_fast.onnx"
        onnx.save(q, str(path))
        metric, sqnr = score(path)
        add("edgekit W4A4 full --fast", metric, path.stat().st_size, round(fast_s, 1), **sqnr)

    w4a8_label = "edgekit W4A8 full" + (" --fast" if args.w4a8_fast else "")
    for label, keep, tag in ((w4a8_label, (), "full"), (w4a8_label + ", @first @last 8-bit", ("@first", "@last"),
                                                        "full_edges8")):
        t0 = time.time()
        q, _ = P.quantize(str(fp32), calib, tuned(P.QuantConfig.for_method(
            "full", fast=args.w4a8_fast, weight_bits=4, act_bits=8, keep_8bit=keep), args))
        path = out_dir / f"{name}.W4A8.{tag}.onnx"
        onnx.save(q, str(path))
        metric, sqnr = score(path)
        add(label, metric, path.stat().st_size, round(time.time() - t0, 1), **sqnr)

    best, tried = best_quantize_static(prepared, calib, out_dir / name, "W4A4",
                                       lambda path: evaluate_file(name, path, args.test_count, strict=True)[key],
                                       sign)
    if best:
        add(f"onnxruntime quantize_static W4A4 ({best['calibration']})", best["metric"], best["size"],
            best["seconds"], tried=tried)
    else:
        rows["onnxruntime quantize_static W4A4"] = {"metric": None, "tried": tried}

    fp, rtn_m = rows["FP32"]["metric"], rows["RTN W4A4"]["metric"]
    full_m = rows["edgekit W4A4 reconstruct"]["metric"]
    lost = sign * (fp - rtn_m)
    recovery = (sign * (full_m - rtn_m) / lost) if lost > 1e-12 else None
    w4a8 = rows[w4a8_label]["metric"]
    w4a8_edges = rows[w4a8_label + ", @first @last 8-bit"]["metric"]
    ort_m = best["metric"] if best else None
    targets = {
        "recovery_of_rtn_loss": recovery, "recovery_target_met": recovery is not None and recovery >= 0.7,
        "beats_onnxruntime": (ort_m is not None and sign * full_m > sign * ort_m),
        "w4a8_relative_gap": abs(fp - w4a8) / max(abs(fp), 1e-12),
        "w4a8_target_met": abs(fp - w4a8) / max(abs(fp), 1e-12) <= 0.02,
        "w4a8_edges8_relative_gap": abs(fp - w4a8_edges) / max(abs(fp), 1e-12),
        "full_seconds": t44, "fast_seconds": fast_s,
        "full_cpu_seconds": round(cpu_seconds["W4A4"], 1), "fast_cpu_seconds":
            None if fast_s is None else round(cpu_seconds["fast"], 1),
    }
    return {"model": name, "task": task, "metric": key, "higher_is_better": sign > 0,
            "test_samples": args.test_count, "calib_samples": args.calib_count, "rows": rows, "targets": targets}


def max_drop_rows(name, args, fp32, calib, out_dir, add, score, rows, sign) -> None:
    """`full --fast --max-drop X --metric task` at W4A8 and W4A4: the gate is checked on held-out
    calibration samples; the row gives the test-split metric, its gap to FP32 and the size."""
    import onnx

    from edgekit.eval.gate import TaskDrop
    from edgekit.quant import pipeline as P
    from edgekit.quant.mixed import MixedPrecision, with_gate

    fp = rows["FP32"]["metric"]
    for wb, ab in ((4, 8), (4, 4)):
        cfg = tuned(P.QuantConfig.for_method("full", fast=True, weight_bits=wb, act_bits=ab), args)
        cfg.steps = with_gate(cfg.steps, MixedPrecision(max_drop=args.max_drop, metric="task",
                                                        task_metric=TaskDrop(name)))
        t0 = time.time()
        q, report = P.quantize(str(fp32), calib, cfg)
        seconds = round(time.time() - t0, 1)
        path = out_dir / f"{name}.W{wb}A{ab}.max_drop.onnx"
        onnx.save(q, str(path))
        d = next(s["details"] for s in report["steps"] if s["step"] == "mixed-precision")
        metric, sqnr = score(path)
        add(f"edgekit W{wb}A{ab} full --fast --max-drop {100 * args.max_drop:g}% --metric task", metric,
            path.stat().st_size, seconds, **sqnr, gate_met=d["met"], gate_drop_held_out=round(d["drop_final"], 4),
            test_drop=round(sign * (fp - metric) / max(abs(fp), 1e-12), 4), layers_8bit=sum(
                "layer" in p for p in d["promoted"]), activations_8bit=sum("activation" in p for p in d["promoted"]),
            layers=len(report["layers"]), weight_bytes=d["weight_bytes"],
            weight_bytes_all_8bit=d["weight_bytes_all_8bit"])


def markdown(results: list[dict]) -> str:
    lines = ["| model | variant | metric | output SQNR (dB) | size (KiB) | quant time (s) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        for label, row in r["rows"].items():
            m = "n/a" if row.get("metric") is None else f"{row['metric']:.4f}"
            sqnr = "" if row.get("output_sqnr_db") is None else f"{row['output_sqnr_db']:.1f}"
            size = "" if not row.get("size_bytes") else f"{row['size_bytes'] / 1024:.1f}"
            secs = "" if row.get("quant_seconds") is None else f"{row['quant_seconds']}"
            lines.append(f"| {r['model']} | {label} | {r['metric']}={m} | {sqnr} | {size} | {secs} |")
    lines += ["", "| model | recovery of RTN loss (>=0.7) | beats onnxruntime | W4A8 rel. gap (<=2%) | "
              "W4A8 gap, first/last 8-bit | full s (wall / CPU) | fast s (wall / CPU) |",
              "|---|---|---|---|---|---|---|"]

    def time_cell(wall, cpu):
        return "-" if wall is None else f"{wall:.0f} / " + ("n/a" if cpu is None else f"{cpu:.0f}")

    gated = [(r, label, row) for r in results for label, row in r["rows"].items() if "gate_met" in row]
    for r in results:
        t = r["targets"]
        if not t:  # a --max-drop-only run
            continue
        rec = "n/a" if t["recovery_of_rtn_loss"] is None else f"{t['recovery_of_rtn_loss']:.2f}"
        edges = t.get("w4a8_edges8_relative_gap")
        edges = "n/a" if edges is None else f"{100 * edges:.2f}%"
        lines.append(f"| {r['model']} | {rec} | {t['beats_onnxruntime']} | {100 * t['w4a8_relative_gap']:.2f}% | "
                     f"{edges} | "
                     f"{time_cell(t['full_seconds'], t.get('full_cpu_seconds'))} | "
                     f"{time_cell(t['fast_seconds'], t.get('fast_cpu_seconds'))} |")
    if gated:
        lines += ["", "| model | row | gate met (held-out drop) | test drop vs FP32 (< 0: better) | "
                  "layers at 8 bits | other activations at 8 bits | weights vs all-8-bit | quant time (s) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r, label, row in gated:
            lines.append(f"| {r['model']} | {label} | {row['gate_met']} ({100 * row['gate_drop_held_out']:.2f}%) | "
                         f"{100 * row['test_drop']:.2f}% | {row['layers_8bit']} / {row['layers']} | "
                         f"{row['activations_8bit']} | {row['weight_bytes'] / row['weight_bytes_all_8bit']:.0%} | "
                         f"{row['quant_seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["litepose", "depth", "deblur", "lm"])
    parser.add_argument("--out", default="bench/ptq")
    parser.add_argument("--calib-count", type=int, default=32)
    parser.add_argument("--test-count", type=int, default=None, help="test samples (default: the task's)")
    parser.add_argument("--skip-fast", action="store_true", help="skip the extra full --fast run")
    parser.add_argument("--w4a8-fast", action="store_true", help="W4A8 with --fast rounding (cheaper)")
    parser.add_argument("--iters", type=int, default=None, help="learned-rounding iterations per layer")
    parser.add_argument("--layer-samples", type=int, default=None, help="samples used layer by layer")
    parser.add_argument("--max-drop", type=float, default=None, metavar="X",
                        help="also `full --fast --max-drop X --metric task` rows at W4A8 and W4A4 (X a fraction)")
    parser.add_argument("--max-drop-only", action="store_true", help="only the FP32 and --max-drop rows")
    parser.add_argument("--collect", nargs="+", metavar="JSON",
                        help="merge bench_ptq.json files of separate runs into one table in --out")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.collect:
        results = [r for path in args.collect for r in json.loads(Path(path).read_text())]
        (out_dir / "bench_ptq.json").write_text(json.dumps(results, indent=1, default=str))
        (out_dir / "bench_ptq.md").write_text(markdown(results))
        print(markdown(results))
        return 0
    results = []
    for name in args.models:
        results.append(bench_model(name, args, out_dir))
        (out_dir / "bench_ptq.json").write_text(json.dumps(results, indent=1, default=str))
        (out_dir / "bench_ptq.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
