"""`edgekit demo`: the whole pipeline on a zoo model, export -> quantize -> compile -> run."""
from __future__ import annotations

import json
import time
from pathlib import Path

from edgekit.commands import add_command, positive_int

EXAMPLES = """  edgekit demo                                   # litepose, W4A8, x86-64, into ./demo
  edgekit demo --model depth --activations 4 -o demo-depth
  edgekit demo --target arm64                    # cross-compiles; run it with `edgekit run --device`
  edgekit demo --target accel                    # accelerator program, checked on the golden model
"""


def register(subparsers):
    p = add_command(subparsers, "demo", "Run the end-to-end pipeline on a zoo model and print what each stage gave.",
                    EXAMPLES, run)
    p.add_argument("--model", default="litepose", help="zoo model (default litepose)")
    p.add_argument("--target", default="x86-64", choices=("x86-64", "arm64", "accel"), help="compile target")
    p.add_argument("--weights", type=int, choices=(4, 8), default=4)
    p.add_argument("--activations", type=int, choices=(4, 8), default=8)
    p.add_argument("--method", default="full", choices=("rtn", "polish", "compensate", "reconstruct", "full"))
    p.add_argument("--slow", action="store_true", help="the full learned-rounding schedule instead of --fast")
    p.add_argument("--samples", type=positive_int, default=20,
                   help="held-out test samples for the metrics (default 20)")
    p.add_argument("-o", "--output", default="demo", help="folder for every stage's file (default ./demo)")
    return p


def _stage(name: str, fn):
    print(f"[{name}] ...", flush=True)
    t0 = time.time()
    result = fn()
    print(f"[{name}] done in {time.time() - t0:.1f} s", flush=True)
    return result


def run(args) -> int:
    import edgekit.models as zoo
    from edgekit.errors import require

    out = Path(args.output)
    require(args.model in zoo.list_models(), f"--model {args.model}: not a zoo model "
                                             f"({', '.join(zoo.list_models())})")
    require(out.parent.is_dir() if str(out.parent) else True, f"cannot write {out}: its parent folder is missing")
    require(not out.exists() or out.is_dir(), f"cannot write demo folder {out}: a file of that name exists")
    created = not out.exists()
    out.mkdir(exist_ok=True)
    try:
        return _pipeline(args, out)
    except BaseException:
        if created:  # a demo that failed before writing anything leaves no folder behind
            import contextlib

            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _pipeline(args, out: Path) -> int:
    from edgekit import api

    fp32, qdq, art = out / f"{args.model}.onnx", out / f"{args.model}.q.onnx", out / f"{args.model}-{args.target}"
    precision = f"W{args.weights}A{args.activations}"

    rep = _stage("export", lambda: api.export(args.model, fp32))
    print(f"  {fp32}: max abs diff vs PyTorch {rep.max_abs_diff:.2e}")
    qrep = _stage("quantize", lambda: api.quantize(fp32, qdq, weights=args.weights, activations=args.activations,
                                                   method=args.method, fast=not args.slow, calib=args.model))
    print(f"  {qdq}: {precision} {args.method}, {qrep['size_bytes']['float'] / 1e6:.2f} MB -> "
          f"{qrep['size_bytes']['quantized'] / 1e6:.2f} MB")
    _stage("compile", lambda: api.compile(qdq, args.target, art))
    print(f"  {art}: target {args.target}")

    rows = []
    if args.target == "x86-64":
        def metrics():
            return [("FP32 (onnxruntime)", api.evaluate(args.model, str(fp32), count=args.samples)),
                    (f"{precision} QDQ (onnxruntime)", api.evaluate(args.model, str(qdq), count=args.samples)),
                    (f"{precision} compiled (TVM {args.target})", api.evaluate(args.model, str(art),
                                                                                count=args.samples))]
        rows = _stage("run", metrics)
    elif args.target == "accel":
        from edgekit.hw.sim.model import run_model

        result = _stage("run", lambda: run_model(art, simulator="golden"))
        print(f"  golden model: bit_exact={result['bit_exact']} cycles={result['cycles']} "
              f"mac_utilization={result['mac_utilization']:.2f} dram_bytes={result['dram_bytes']}")
    else:
        print(f"  cross-compiled for {args.target}; run it on a board: edgekit run {art} --device HOST:PORT "
              "(or `edgekit device emulate` for an emulated one)")
    if rows:
        keys = [k for k in rows[0][1] if isinstance(rows[0][1][k], (int, float))][:4]
        print(f"\n{args.model} on {args.samples} held-out test samples")
        print("| stage | " + " | ".join(keys) + " |")
        print("|---|" + "---|" * len(keys))
        for label, m in rows:
            print(f"| {label} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
        (out / "metrics.json").write_text(json.dumps({label: m for label, m in rows}, indent=2, default=str))
    return 0
