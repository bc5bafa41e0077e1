#!/usr/bin/env python
"""Latency table of the TVM back-end against onnxruntime for the tiny zoo models.

For each model, in one process, same inputs, same thread count:
  ORT FP32 | ORT QDQ (edgekit's file) | ORT W8A8 (its own quantize_static, QDQ and QOperator)
  | TVM FP32 with no tuning record (TVM's unscheduled loops, and edgekit's default schedules)
  | TVM FP32 tuned | TVM integer with no record (default schedules) | TVM integer tuned
  | TVM integer tuned without the int8 dot-product kernels (--no-int8-dot)
  | TVM integer tuned with softmax / LayerNorm / Resize / GELU... in float (--float-nonlinear)
  | TVM integer for an AVX2 CPU without AVX-512 (mcpu=haswell: the vpmaddubsw kernels), and the
    same without the int8 dot-product kernels: what a user of such a CPU gets, run on this one
plus parity: TVM FP32 vs onnxruntime (max relative error) and TVM integer vs
the integer reference (exact or not). The runners take turns (--rounds, each running
repeat/rounds times) so that the host's slow minutes fall on every column alike; the
table gives each runner's median over all its runs.

"tuned" means: compiled with the committed databases in
compile/tvm/tuning_db/ (and --tuning-db DIR if given). The QDQ file is made
with edgekit's quantizer (RTN, W4A8 by default) unless --qdq-dir holds
MODEL.q.onnx.

    python tools/bench_compile.py --out bench/ [--models litepose deblur] [--repeat 50]
    python tools/bench_compile.py --out bench/ --variants tvm_int_tuned tvm_int_avx2 tvm_int_avx2_no_dot
Writes bench/bench_compile.json and bench/bench_compile.md and prints the table.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
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


def calibration_feeds(fp32: Path, count: int = 8) -> list[dict]:
    """Random calibration inputs (images in [0, 1), tokens 0/1): the same for every quantizer."""
    import onnx

    model = onnx.load(str(fp32))
    specs = [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim], i.type.tensor_type.elem_type)
             for i in model.graph.input]
    rng = np.random.default_rng(0)
    return [{n: (rng.random(shape, dtype=np.float32) if et == onnx.TensorProto.FLOAT
                 else rng.integers(0, 2, shape).astype(np.int64)) for n, shape, et in specs}
            for _ in range(count)]


def quantize(name: str, fp32: Path, folder: Path, weight_bits: int, act_bits: int, qdq_dir: Path | None) -> Path:
    import onnx

    from edgekit.quant.pipeline import QuantConfig
    from edgekit.quant.pipeline import quantize as ek_quantize

    if qdq_dir is not None and (qdq_dir / f"{name}.q.onnx").exists():
        return qdq_dir / f"{name}.q.onnx"
    path = folder / f"{name}.w{weight_bits}a{act_bits}.onnx"
    if path.exists():
        return path
    config = QuantConfig.for_method("rtn", weight_bits=weight_bits, act_bits=act_bits)
    qdq, _ = ek_quantize(str(fp32), calibration_feeds(fp32), config)
    onnx.save(qdq, str(path))
    return path


def ort_int8(name: str, fp32: Path, folder: Path) -> dict[str, Path]:
    """onnxruntime's own W8A8 quantization of the FP32 model, in its two int8 formats (QDQ, which its
    graph optimizer fuses into integer kernels, and QOperator): what a user could run instead."""
    import onnx
    from ort_baseline import ort_quantize

    from edgekit.onnx_graph.model import prepare_model

    prepared = folder / f"{name}.prep.onnx"
    if not prepared.exists():
        onnx.save(prepare_model(fp32), str(prepared))
    calib = calibration_feeds(fp32)
    paths = {}
    for key, operator_format in (("ort_w8a8_qdq", False), ("ort_w8a8_qop", True)):
        paths[key] = folder / f"{name}.{key}.onnx"
        if not paths[key].exists():
            try:
                ort_quantize(prepared, calib, paths[key], "W8A8", operator_format=operator_format)
            except Exception as exc:  # onnxruntime's quantizer refuses some graphs: say so, keep measuring
                log(f"{name}: onnxruntime {key} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                paths[key] = None
    return paths


def compile_variant(src: Path, out: Path, **options) -> dict:
    from edgekit.compile import compile_model

    start = time.time()
    meta = compile_model(str(src), "x86-64", out, **options)
    meta["wall_seconds"] = round(time.time() - start, 1)
    return meta


def interleaved(runners: dict, warmup: int, repeat: int, rounds: int) -> dict:
    """Times of each runner (runner(n) -> n times in s), taken round by round in turn so that
    the host's slow and fast minutes fall on every column alike: `repeat` in all per runner."""
    for runner in runners.values():
        runner(warmup)
    times = {key: [] for key in runners}
    per_round = [repeat // rounds + (1 if r < repeat % rounds else 0) for r in range(rounds)]
    for count in per_round:
        for key, runner in runners.items():
            if count:
                times[key] += runner(count)
    return times


def _ms(value) -> str:
    return "failed" if value is None else f"{value:.2f}"


# (column title, row key) of the timed runners, in table order
TIMED = [("ORT FP32", "ort_fp32"), ("ORT QDQ", "ort_qdq"), ("ORT W8A8 QDQ", "ort_w8a8_qdq"),
         ("ORT W8A8 QOperator", "ort_w8a8_qop"), ("TVM FP32 no record, unscheduled", "tvm_fp32_unscheduled"),
         ("TVM FP32 no record, default schedules", "tvm_fp32_default"), ("TVM FP32 tuned", "tvm_fp32_tuned"),
         ("TVM int no record, default schedules", "tvm_int_default"), ("TVM int tuned", "tvm_int_tuned"),
         ("TVM int tuned, no int8 dot", "tvm_int_no_dot"), ("TVM int tuned, float non-linear", "tvm_int_float_nl"),
         ("TVM int AVX2 (haswell)", "tvm_int_avx2"), ("TVM int AVX2 (haswell), no int8 dot", "tvm_int_avx2_no_dot")]
TVM_VARIANTS = [key for _, key in TIMED if key.startswith("tvm_")]


def markdown(rows: list[dict]) -> str:
    """The table of the columns that some row has; "-" where a row lacks one, "failed" where it failed."""
    timed = [(title, key) for title, key in TIMED if any(key + "_ms" in r for r in rows)]
    ints = [key for _, key in timed if key.startswith("tvm_int")]
    titles = ([f"{title} ms" for title, _ in timed] + ["ORT FP32 / TVM int tuned", "kernels tuned (fp32 / int)",
              "compile s with DBs (fp32 / int)", "FP32 rel err vs ORT",
              "int == intref (" + " / ".join(k[8:] for k in ints) + ")", "FP32 default vs unscheduled rel diff"])
    lines = ["| model | " + " | ".join(titles) + " |", "|" + "---|" * (len(titles) + 1)]

    def cell(r, key, fmt="{}"):
        return "-" if key not in r else ("failed" if r[key] is None else fmt.format(r[key]))

    for r in rows:
        ratio = (f"{r['ort_fp32_ms'] / r['tvm_int_tuned_ms']:.2f}x"
                 if r.get("tvm_int_tuned_ms") and r.get("ort_fp32_ms") else "-")
        cells = [cell(r, key + "_ms", "{:.2f}") for _, key in timed] + [
            ratio, f"{cell(r, 'tvm_fp32_tuned_kernels_tuned')} / {cell(r, 'tvm_int_tuned_kernels_tuned')}",
            f"{cell(r, 'tvm_fp32_tuned_compile_s', '{:.0f}')} / {cell(r, 'tvm_int_tuned_compile_s', '{:.0f}')}",
            cell(r, "fp32_max_rel_err_vs_ort", "{:.1e}"),
            " / ".join(cell(r, f"{key}_equals_intref") for key in ints),
            cell(r, "fp32_default_vs_unscheduled_rel", "{:.1e}")]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench", help="folder for models, artifacts and the table")
    parser.add_argument("--models", nargs="+", default=list(ZOO), choices=ZOO)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="the runners take turns this many times")
    parser.add_argument("--weight-bits", type=int, default=4)
    parser.add_argument("--act-bits", type=int, default=8)
    parser.add_argument("--qdq-dir", default=None, help="use MODEL.q.onnx from here instead of quantizing")
    parser.add_argument("--tuning-db", default=None, help="extra tuning database applied to the tuned variants")
    parser.add_argument("--variants", nargs="+", default=TVM_VARIANTS, choices=TVM_VARIANTS,
                        help="the TVM builds to time (default: all); onnxruntime's are always timed")
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
            "tvm_fp32_unscheduled": (fp32, dict(committed_db=False, default_schedules=False)),
            "tvm_fp32_default": (fp32, dict(committed_db=False)),
            "tvm_fp32_tuned": (fp32, dict(tuning_db=args.tuning_db)),
            "tvm_int_default": (qdq, dict(committed_db=False)),
            "tvm_int_tuned": (qdq, dict(tuning_db=args.tuning_db)),
            "tvm_int_no_dot": (qdq, dict(tuning_db=args.tuning_db, int8_dot=False)),
            "tvm_int_float_nl": (qdq, dict(tuning_db=args.tuning_db, integer_nonlinear=False)),
            "tvm_int_avx2": (qdq, dict(target_opts="mcpu=haswell")),
            "tvm_int_avx2_no_dot": (qdq, dict(target_opts="mcpu=haswell", int8_dot=False)),
        }
        variants = {key: value for key, value in variants.items() if key in args.variants}
        row = {"model": name, "threads": args.threads, "fp32": str(fp32), "qdq": str(qdq)}
        feeds = None
        outputs = {}
        runners = {}
        with contextlib.ExitStack() as sessions:
            for key, (src, opts) in variants.items():
                log(f"{name}: compile {key}")
                meta = compile_variant(src, out / f"{name}.{key}", **opts)
                row[f"{key}_compile_s"] = meta["wall_seconds"]
                row[f"{key}_kernels_tuned"] = f"{meta['tuning']['kernels_tuned']}/{meta['tuning']['kernels_total']}"
                session = sessions.enter_context(open_session(out / f"{name}.{key}", num_threads=args.threads))
                if feeds is None:  # one set of inputs for every runner (images in [0, 1))
                    feeds = random_inputs(session.artifact.inputs, 0)
                    feeds = {k: (np.abs(v) * 0.5).astype(v.dtype) if v.dtype.kind == "f" else v
                             for k, v in feeds.items()}
                outputs[key] = session.run(feeds)
                runners[key] = functools.partial(session.time, feeds, 0)
            ort_files = {"ort_fp32": fp32, "ort_qdq": qdq, **ort_int8(name, fp32, out)}
            for key, path in ort_files.items():
                if path is None:
                    row[key + "_ms"] = None
                else:  # a session per round: each round warms its own up
                    runners[key] = functools.partial(time_onnxruntime, str(path), feeds, args.threads, 1)
            log(f"{name}: timing {len(runners)} runners, interleaved over {args.rounds} rounds")
            for key, times in interleaved(runners, args.warmup, args.repeat, args.rounds).items():
                row[key + "_ms"] = summarize(times)["median_ms"]
        # parity
        import onnxruntime as ort

        if "tvm_fp32_tuned" in outputs:
            session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
            row["fp32_max_rel_err_vs_ort"] = max(
                float(np.abs(outputs["tvm_fp32_tuned"][o.name] - r).max() / max(np.abs(r).max(), 1e-12))
                for o, r in zip(session.get_outputs(), session.run(None, feeds)))
        iref = intref.run(str(qdq), feeds)
        for key in outputs:
            if key.startswith("tvm_int"):
                row[f"{key}_equals_intref"] = all(np.array_equal(outputs[key][k], np.asarray(v))
                                                  for k, v in iref.items())
        if {"tvm_fp32_default", "tvm_fp32_unscheduled"} <= outputs.keys():
            row["fp32_default_vs_unscheduled_rel"] = max(  # FMA contraction of inlined epilogues, at most
                float(np.abs(outputs["tvm_fp32_default"][k] - v).max() / max(np.abs(v).max(), 1e-12))
                for k, v in outputs["tvm_fp32_unscheduled"].items())
        rows.append(row)
        log(f"{name}: {json.dumps(row)}")
    (out / "bench_compile.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown(rows)
    (out / "bench_compile.md").write_text(f"threads={args.threads}, repeat={args.repeat}, "
                                          f"W{args.weight_bits}A{args.act_bits} RTN\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
