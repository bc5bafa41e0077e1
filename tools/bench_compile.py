#!/usr/bin/env python
"""Latency table of the TVM back-end against onnxruntime for the tiny zoo models.

For each model, in one process, same inputs, same thread count:
  ORT FP32 | ORT QDQ | TVM FP32 untuned | TVM FP32 tuned | TVM integer tuned
plus parity: TVM FP32 vs onnxruntime (max relative error) and TVM integer vs
the integer reference (exact or not).

"tuned" means: compiled with the committed databases in
compile/tvm/tuning_db/ (and --tuning-db DIR if given). The QDQ file is made
with edgekit's quantizer (RTN, W4A8 by default) unless --qdq-dir holds
MODEL.q.onnx.

    python tools/bench_compile.py --out bench/ [--models litepose deblur] [--repeat 50]
Writes bench/bench_compile.json and bench/bench_compile.md and prints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ZOO = ("litepose", "depth", "deblur", "lm")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def export(name: str, folder: Path) -> Path:
    from edgekit.export import export_zoo

    path = folder / f"{name}.onnx"
    if not path.exists():
        export_zoo(name, path)
    return path


def quantize(name: str, fp32: Path, folder: Path, weight_bits: int, act_bits: int, qdq_dir: Path | None) -> Path:
    import onnx

    from edgekit.quant.pipeline import QuantConfig
    from edgekit.quant.pipeline import quantize as ek_quantize

    if qdq_dir is not None and (qdq_dir / f"{name}.q.onnx").exists():
        return qdq_dir / f"{name}.q.onnx"
    path = folder / f"{name}.w{weight_bits}a{act_bits}.onnx"
    if path.exists():
        return path
    model = onnx.load(str(fp32))
    specs = [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim], i.type.tensor_type.elem_type)
             for i in model.graph.input]
    rng = np.random.default_rng(0)
    calib = []
    for _ in range(8):
        feeds = {}
        for n, shape, et in specs:
            feeds[n] = (rng.random(shape, dtype=np.float32) if et == onnx.TensorProto.FLOAT
                        else rng.integers(0, 2, shape).astype(np.int64))
        calib.append(feeds)
    qdq, _ = ek_quantize(str(fp32), calib, QuantConfig.for_method("rtn", weight_bits=weight_bits, act_bits=act_bits))
    onnx.save(qdq, str(path))
    return path


def compile_variant(src: Path, out: Path, **options) -> dict:
    from edgekit.compile import compile_model

    start = time.time()
    meta = compile_model(str(src), "x86-64", out, **options)
    meta["wall_seconds"] = round(time.time() - start, 1)
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench", help="folder for models, artifacts and the table")
    parser.add_argument("--models", nargs="+", default=list(ZOO), choices=ZOO)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weight-bits", type=int, default=4)
    parser.add_argument("--act-bits", type=int, default=8)
    parser.add_argument("--qdq-dir", default=None, help="use MODEL.q.onnx from here instead of quantizing")
    parser.add_argument("--tuning-db", default=None, help="extra tuning database applied to the tuned variants")
    args = parser.parse_args(argv)

    from edgekit.commands.bench import random_inputs, summarize, time_onnxruntime
    from edgekit.quant import intref
    from edgekit.runtime import open_session

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        log(f"{name}: export + quantize")
        fp32 = export(name, out)
        qdq = quantize(name, fp32, out, args.weight_bits, args.act_bits, Path(args.qdq_dir) if args.qdq_dir else None)
        variants = {
            "tvm_fp32_untuned": (fp32, dict(committed_db=False)),
            "tvm_fp32_tuned": (fp32, dict(tuning_db=args.tuning_db)),
            "tvm_int_tuned": (qdq, dict(tuning_db=args.tuning_db)),
        }
        row = {"model": name, "threads": args.threads, "fp32": str(fp32), "qdq": str(qdq)}
        feeds = None
        outputs = {}
        for key, (src, opts) in variants.items():
            log(f"{name}: compile {key}")
            meta = compile_variant(src, out / f"{name}.{key}", **opts)
            row[f"{key}_compile_s"] = meta["wall_seconds"]
            row[f"{key}_kernels_tuned"] = f"{meta['tuning']['kernels_tuned']}/{meta['tuning']['kernels_total']}"
            with open_session(out / f"{name}.{key}", num_threads=args.threads) as session:
                if feeds is None:  # one set of inputs for every runner (images in [0, 1))
                    feeds = random_inputs(session.artifact.inputs, 0)
                    feeds = {k: (np.abs(v) * 0.5).astype(v.dtype) if v.dtype.kind == "f" else v
                             for k, v in feeds.items()}
                outputs[key] = session.run(feeds)
                row[key + "_ms"] = summarize(session.time(feeds, args.warmup, args.repeat))["median_ms"]
        log(f"{name}: onnxruntime")
        row["ort_fp32_ms"] = summarize(
            time_onnxruntime(str(fp32), feeds, args.threads, args.warmup, args.repeat))["median_ms"]
        row["ort_qdq_ms"] = summarize(
            time_onnxruntime(str(qdq), feeds, args.threads, args.warmup, args.repeat))["median_ms"]
        # parity
        import onnxruntime as ort

        ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, feeds)
        rel = max(float(np.abs(outputs["tvm_fp32_tuned"][o.name] - r).max() / max(np.abs(r).max(), 1e-12))
                  for o, r in zip(ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_outputs(),
                                  ref))
        row["fp32_max_rel_err_vs_ort"] = rel
        iref = intref.run(str(qdq), feeds)
        row["int_equals_intref"] = all(np.array_equal(outputs["tvm_int_tuned"][k], np.asarray(v))
                                       for k, v in iref.items())
        rows.append(row)
        log(f"{name}: {json.dumps(row)}")
    (out / "bench_compile.json").write_text(json.dumps(rows, indent=2) + "\n")
    header = ("| model | ORT FP32 ms | ORT QDQ ms | TVM FP32 untuned ms | TVM FP32 tuned ms | TVM int tuned ms "
              "| kernels tuned (fp32 / int) | compile s with DBs (fp32 / int) | FP32 rel err vs ORT | int == intref |")
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ort_fp32_ms']:.2f} | {r['ort_qdq_ms']:.2f} "
                     f"| {r['tvm_fp32_untuned_ms']:.2f} "
                     f"| {r['tvm_fp32_tuned_ms']:.2f} | {r['tvm_int_tuned_ms']:.2f} "
                     f"| {r['tvm_fp32_tuned_kernels_tuned']} / {r['tvm_int_tuned_kernels_tuned']} "
                     f"| {r['tvm_fp32_tuned_compile_s']:.0f} / {r['tvm_int_tuned_compile_s']:.0f} "
                     f"| {r['fp32_max_rel_err_vs_ort']:.1e} | {r['int_equals_intref']} |")
    table = "\n".join(lines)
    (out / "bench_compile.md").write_text(f"threads={args.threads}, repeat={args.repeat}, "
                                          f"W{args.weight_bits}A{args.act_bits} RTN\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
