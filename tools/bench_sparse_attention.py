#!/usr/bin/env python
"""Benchmark SALE sparse prefill attention against dense attention on the CPU.

For each sequence length: per-head thresholds are calibrated on one seeded
draw of structured Q/K/V (models/sale/synthetic.py: sinks + RoPE-local +
needle retrieval, an LLM-like attention model), then a different draw is
timed: dense = torch scaled_dot_product_attention(is_causal=True), sparse =
the compiled SALE kernel, same thread count, interleaved in one process,
medians of --repeats. Reported: latency, speedup, kept-block density,
relative output error ||o - o_dense|| / ||o_dense||, and the estimation
overhead (mean-centring + int4 quantization + int8 scoring/selection) as a
share of dense time. With the trained tiny LM available, its retrieval
accuracy dense vs SALE at its training length and at 4x is added.

examples:
  python tools/bench_sparse_attention.py                       # markdown table, 4K..32K + LM
  python tools/bench_sparse_attention.py --seq 32768 --json    # one length, JSON
  nice -n 10 python tools/bench_sparse_attention.py --seq 4096,8192 --repeats 5 --no-lm
  python tools/bench_sparse_attention.py --lm-only                # tiny LM accuracy only
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from edgekit.errors import EdgekitError
from edgekit.models.sale import SaleConfig, calibrate_heads
from edgekit.models.sale.kernel import has_vnni, sale_attention_fast
from edgekit.models.sale.synthetic import structured_qkv

QKV_SOURCE = "synthetic structured attention (sinks + RoPE-local + needles, models/sale/synthetic.py)"


def rel_error(out, ref) -> float:
    return float((out - ref).double().norm() / ref.double().norm())


def bench_length(seq: int, args) -> dict:
    cfg = SaleConfig(block_q=args.block, block_k=args.block, sink_blocks=args.sink, window_blocks=args.window)
    t0 = time.perf_counter()
    if args.taus:  # thresholds from an earlier calibration (same seeds -> same result)
        taus = [float(t) for t in args.taus.split(",")]
        if len(taus) != args.heads:
            raise EdgekitError(f"--taus has {len(taus)} values for {args.heads} heads")
    else:
        calib = structured_qkv(min(seq, args.calib_seq), args.heads, args.head_dim, seed=100 + seq)
        taus, _ = calibrate_heads([calib], cfg, args.bound, backend="kernel")
        del calib
    calib_s = time.perf_counter() - t0
    cfg = cfg.with_taus(taus)
    q, k, v = structured_qkv(seq, args.heads, args.head_dim, seed=seq)
    dense_t, sparse_t, est_t, prep_t, exact_t = [], [], [], [], []  # per-run lists (JSON: all runs)
    dense = out = stats = None
    for _ in range(args.repeats):  # interleaved: both see the same machine load
        t = time.perf_counter()
        dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        dense_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        out, stats = sale_attention_fast(q, k, v, cfg, threads=args.threads, return_stats=True)
        sparse_t.append(time.perf_counter() - t)
        est_t.append(stats.estimate_s)
        prep_t.append(stats.prepare_s)
        exact_t.append(stats.exact_s)
    med = statistics.median
    dense_s, sparse_s = med(dense_t), med(sparse_t)
    return {"seq": seq, "heads": args.heads, "head_dim": args.head_dim, "threads": args.threads,
            "block": args.block, "sink_blocks": args.sink, "window_blocks": args.window,
            "dense_ms": dense_s * 1e3, "sparse_ms": sparse_s * 1e3, "speedup": dense_s / sparse_s,
            "rel_error": rel_error(out, dense), "density": stats.density,
            "overhead": (med(prep_t) + med(est_t)) / dense_s,
            "estimate_ms": med(est_t) * 1e3, "prepare_ms": med(prep_t) * 1e3, "exact_ms": med(exact_t) * 1e3,
            "taus": taus, "error_bound": args.bound, "calib_seq": min(seq, args.calib_seq),
            "calib_s": calib_s, "repeats": args.repeats,
            "runs_ms": {"dense": [t * 1e3 for t in dense_t], "sparse": [t * 1e3 for t in sparse_t]},
            "vnni": has_vnni(), "qkv": QKV_SOURCE}


def bench_lm(args) -> dict | None:
    """Tiny LM retrieval accuracy dense vs SALE at the training length and at 4x (None without checkpoint)."""
    from edgekit import models
    from edgekit.models.sale import lm
    from edgekit.train import sale as sale_recipe

    try:
        model = models.load_reference("lm")
    except EdgekitError as exc:
        print(f"note: LM accuracy skipped: {exc}", file=sys.stderr)
        return None
    try:
        plan = lm.load_plan()
        source = str(lm.plan_path())
        if not lm.plan_matches_checkpoint(plan):
            raise EdgekitError("the saved plan was calibrated on other weights")
    except EdgekitError:
        plan = sale_recipe.calibrate_reference_lm(output=None if args.save_plan else _scratch_plan())
        source = "calibrated now (calib split)"
    rows = []
    for length in (lm.TRAIN_LENGTH, 4 * lm.TRAIN_LENGTH):
        samples = sale_recipe.lm_samples("test", args.lm_samples, length)
        acc_dense, _ = lm.retrieval_accuracy(model, samples, None, threads=args.threads)
        acc_sparse, density = lm.retrieval_accuracy(model, samples, plan, threads=args.threads)
        rows.append({"length": length, "accuracy_dense": acc_dense, "accuracy_sparse": acc_sparse,
                     "delta_points": 100 * (acc_sparse - acc_dense), "density": density})
    return {"plan": source, "samples": args.lm_samples, "error_bound": plan.error_bound,
            "dense_heads": plan.dense_heads(), "rows": rows}


def _scratch_plan():
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="sale_plan_")) / "lm_tiny.sale.json"


def markdown(results: list[dict], lm_result: dict | None, args) -> str:
    lines = [f"SALE vs dense causal attention (torch SDPA), {args.heads} heads x {args.head_dim}, "
             f"{args.threads} threads, block {args.block}, sink {args.sink}, window {args.window}, "
             f"per-head taus calibrated to {args.bound:g} relative error; medians of {args.repeats} "
             f"interleaved runs. Q/K/V: {QKV_SOURCE}.", "",
             "| tokens | dense ms | SALE ms | speedup | density | rel. error | est. overhead | dense heads |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['seq']} | {r['dense_ms']:.1f} | {r['sparse_ms']:.1f} | {r['speedup']:.2f}x | "
                     f"{r['density']:.3f} | {100 * r['rel_error']:.2f}% | {100 * r['overhead']:.1f}% | "
                     f"{sum(t == 0 for t in r['taus'])}/{len(r['taus'])} |")
    if not results:
        lines = []
    if lm_result:
        lines += ["", f"Tiny LM retrieval accuracy ({lm_result['samples']} test sequences per length, plan: "
                      f"{lm_result['plan']}, {lm_result['dense_heads']} dense heads):", "",
                  "| tokens | dense acc. | SALE acc. | delta (points) | density |", "|---:|---:|---:|---:|---:|"]
        for r in lm_result["rows"]:
            dens = "n/a" if r["density"] is None else f"{r['density']:.3f}"
            lines.append(f"| {r['length']} | {100 * r['accuracy_dense']:.1f}% | {100 * r['accuracy_sparse']:.1f}% | "
                         f"{r['delta_points']:+.1f} | {dens} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="\n".join(__doc__.split("examples:")[1:]) and
                                "examples:" + __doc__.split("examples:")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq", default="4096,8192,16384,32768", help="comma-separated sequence lengths")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="threads for both dense and SALE (default 2)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--block", type=int, default=64, help="query and key block size")
    p.add_argument("--sink", type=int, default=1, help="sink blocks")
    p.add_argument("--window", type=int, default=1, help="local window blocks before the diagonal")
    p.add_argument("--bound", type=float, default=0.02, help="per-head calibration error bound (default 0.02)")
    p.add_argument("--taus", help="comma-separated per-head thresholds: skip calibration")
    p.add_argument("--calib-seq", type=int, default=1 << 30, help="calibrate at min(seq, this) tokens")
    p.add_argument("--json", action="store_true", help="print JSON (one object per length; LM only with --lm)")
    p.add_argument("--lm", action="store_true", help="with --json: add the tiny LM accuracy")
    p.add_argument("--no-lm", action="store_true", help="skip the tiny LM accuracy")
    p.add_argument("--lm-only", action="store_true", help="only the tiny LM accuracy (no attention timing)")
    p.add_argument("--lm-samples", type=int, default=24)
    p.add_argument("--save-plan", action="store_true", help="save a freshly calibrated LM plan with the model")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        seqs = [int(s) for s in args.seq.split(",") if s.strip()]
    except ValueError:
        print(f"edgekit: error: --seq {args.seq!r}: expected integers like 4096,8192", file=sys.stderr)
        return 2
    if not seqs or min(seqs) < 2 * args.block:
        print(f"edgekit: error: --seq lengths must be >= {2 * args.block}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        results = [] if args.lm_only else [bench_length(n, args) for n in seqs]
        want_lm = (args.lm or args.lm_only or not args.json) and not args.no_lm
        lm_result = bench_lm(args) if want_lm else None
    except EdgekitError as exc:
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        payload = results[0] if len(results) == 1 else results
        if lm_result is not None:
            payload = {"attention": payload, "lm": lm_result} if results else {"lm": lm_result}
        print(json.dumps(payload, indent=2))
    else:
        print(markdown(results, lm_result, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
