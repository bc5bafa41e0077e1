#!/usr/bin/env python
"""Benchmark the int8 dot-product GEMM of the integer lowering against torch and the old lowering.

One quantized layer y = requantize(x W + b), x [M, K] uint8 codes, W [K, N] int4 codes, built as a
float ONNX MatMul + bias, quantized by edgekit (RTN, W4A8) and compiled for this CPU twice: with
the int8 dot-product kernel (compile/tvm/dotprod.py, AVX-512 VNNI) and without it (int16 or exact-float32
operands, the lowering before it, default schedules). Beside them, torch on the same shapes:
`torch._int_mm` (int8 x int8 -> int32, oneDNN/FBGEMM, no requantization) and float32 `torch.mm`;
and the VNNI kernel alone on device arrays (the layer rows also quantize x, copy it in and
dequantize y out, through the runtime session a user calls).
All run in one process with the same thread count, interleaved round by round; the table gives
medians over rounds (each round the median of --repeat calls) and GOP/s (2*M*K*N / time).

Needs an x86-64 CPU with AVX-512 VNNI for the first column (otherwise it says so and skips it).

examples:
  python tools/bench_int8_gemm.py                        # 1024x1024x1024 and two transformer shapes
  python tools/bench_int8_gemm.py --shape 1024x1024x1024 --rounds 9 --json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

SHAPES = ("1024x1024x1024", "256x128x512", "256x512x128")


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        m, k, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise EdgekitError(f"--shape {text!r}: expected MxKxN, e.g. 1024x1024x1024") from None
    if min(m, k, n) < 1:
        raise EdgekitError(f"--shape {text!r}: dimensions must be positive")
    return m, k, n


def layer_model(m: int, k: int, n: int, folder: Path) -> tuple[Path, np.ndarray]:
    """A float MatMul + bias layer quantized W4A8 by edgekit; returns (QDQ file, a calibration input)."""
    import torch

    from edgekit.quant import pipeline as P

    torch.manual_seed(0)
    layer = torch.nn.Linear(k, n).eval()
    fp32 = folder / "layer.onnx"
    torch.onnx.export(layer, (torch.zeros(m, k),), str(fp32), input_names=["x"], output_names=["y"],
                      opset_version=21, dynamo=False)
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((m, k)).astype(np.float32)} for _ in range(4)]
    q, _ = P.quantize(str(fp32), calib, P.QuantConfig.for_method("rtn", weight_bits=4, act_bits=8))
    path = folder / "layer.q.onnx"
    path.write_bytes(q.SerializeToString())
    return path, calib[0]["x"]


def kernel_run(m: int, k: int, n: int, threads: int):
    """The VNNI kernel by itself on device arrays (no input quantization, no output copy): a call."""
    import tvm

    from edgekit.compile.tvm import dotprod, targets

    kp, np_ = dotprod.padded(k, n)
    rows = dotprod.padded_rows(m, np_)
    func = dotprod.dense_func(rows, kp, np_, "uint8")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=targets.resolve("x86-64", num_cores=threads).tvm_target())
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(rng.integers(0, 256, (rows, kp)).astype(np.uint8), dev),
            tvm.runtime.tensor(rng.integers(-8, 8, (np_ // 16, kp // 4, 16, 4)).astype(np.int8), dev),
            tvm.runtime.tensor(np.zeros(np_, np.int32), dev), tvm.runtime.tensor(np.full(np_, 1 << 14), dev),
            tvm.runtime.tensor(np.full(np_, 20), dev), tvm.runtime.tensor(np.array([0, 0, 255], np.int32), dev),
            tvm.runtime.tensor(np.zeros((rows, np_), np.uint8), dev)]
    main = lib["main"]
    return lambda: main(*args)


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_shape(shape: str, args) -> dict:
    import torch

    from edgekit.compile import compile_model
    from edgekit.compile.tvm import dotprod, targets
    from edgekit.runtime import open_session

    m, k, n = parse_shape(shape)
    has_vnni = dotprod.available(targets.resolve("x86-64", num_cores=args.threads).tvm_target())
    torch.set_num_threads(args.threads)
    runs, sessions = {}, []
    with tempfile.TemporaryDirectory(prefix="edgekit-gemm-") as tmp:
        tmp = Path(tmp)
        src, x = layer_model(m, k, n, tmp)
        outputs = {}
        for name, dot in (("tvm int8 dot (vnni)", True), ("tvm int, no int8 dot", False)):
            if dot and not has_vnni:
                continue
            meta = compile_model(src, "x86-64", tmp / name.replace(" ", "_"), int8_dot=dot, committed_db=False,
                                 num_cores=args.threads)
            session = open_session(tmp / name.replace(" ", "_"), num_threads=args.threads)
            sessions.append(session)
            feeds = {"x": x}
            outputs[name] = session.run(feeds)["y"]
            runs[name] = (lambda s=session, f=feeds: s.run(f)), meta.get("int8_dot_product")
        if has_vnni:
            runs["vnni kernel alone (+ requant)"] = kernel_run(m, k, n, args.threads), None
        a8 = torch.randint(-128, 128, (m, k), dtype=torch.int8)
        b8 = torch.randint(-128, 128, (k, n), dtype=torch.int8)
        af, bf = a8.float(), b8.float()
        if m > 16:   # torch._int_mm needs more than 16 rows
            runs["torch._int_mm (int8, no requant)"] = (lambda: torch._int_mm(a8, b8)), None
        runs["torch.mm (float32)"] = (lambda: torch.mm(af, bf)), None
        for fn, _ in runs.values():   # warm up
            for _ in range(3):
                fn()
        per_round = {name: [] for name in runs}
        for _ in range(args.rounds):   # interleaved: every variant sees the same machine load
            for name, (fn, _) in runs.items():
                per_round[name].append(timed(fn, args.repeat))
        for s in sessions:
            s.close()
    same = None
    if len(outputs) == 2:
        a, b = outputs.values()
        same = bool(np.array_equal(a, b))
    rows = []
    ref = statistics.median(per_round.get("torch._int_mm (int8, no requant)", [float("nan")]))
    for name, times in per_round.items():
        t = statistics.median(times)
        rows.append({"variant": name, "ms": t * 1e3, "gops": 2 * m * k * n / t / 1e9,
                     "vs_int_mm": ref / t if ref == ref else None})
    return {"shape": [m, k, n], "threads": args.threads, "vnni": has_vnni, "tvm_outputs_identical": same,
            "rows": rows}


def print_table(results: list[dict]) -> None:
    print("| M x K x N | variant | ms | GOP/s | vs torch._int_mm |")
    print("|---|---|---|---|---|")
    for r in results:
        shape = "x".join(map(str, r["shape"]))
        for row in r["rows"]:
            ratio = f"{row['vs_int_mm']:.2f}x" if row["vs_int_mm"] else "-"
            print(f"| {shape} | {row['variant']} | {row['ms']:.3f} | {row['gops']:.0f} | {ratio} |")
        if r["tvm_outputs_identical"] is not None:
            print(f"| {shape} | both TVM builds give the same codes | {r['tvm_outputs_identical']} | | |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", help="MxKxN (repeatable; default: %s)" % ", ".join(SHAPES))
    parser.add_argument("--threads", type=int, default=2, help="threads for TVM and torch (default 2)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--repeat", type=int, default=20, help="calls per variant and round (default 20)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    # TVM's runtime sizes its thread pool from this at the first parallel call (its default here
    # is the physical core count, 1 on a 2-vCPU machine), so set it before TVM is imported
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    try:
        if args.threads < 1 or args.rounds < 1 or args.repeat < 1:
            raise EdgekitError("--threads, --rounds and --repeat must be at least 1")
        results = []
        for shape in args.shape or SHAPES:
            print(f"bench_int8_gemm: {shape} ...", file=sys.stderr)
            results.append(bench_shape(shape, args))
    except EdgekitError as exc:
        print(f"bench_int8_gemm: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
