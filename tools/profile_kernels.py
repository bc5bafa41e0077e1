#!/usr/bin/env python
"""Time every kernel of a model's TVM build alone: where the milliseconds of `edgekit compile` go.

The model is imported and scheduled exactly as `edgekit compile --target x86-64` does it (integer
lowering on this CPU's int8 dot-product step, the tuning databases that apply, default schedules
for the rest); then each TIR kernel is built on its own and timed on inputs of ones (index and
divisor inputs stay valid), and weighted by how often the model's main function calls it. The
sum is close to, but not the same as, the whole model's time (no cache effects between kernels,
no runtime overhead). Each kernel is marked `dot` (edgekit's int8 dot-product kernels), `layout`
(the kernels writing their operands), `float` (edgekit's float kernels: softmax), `tuned` (a
tuning record applied) or `default` (a default schedule).

examples:
  python tools/profile_kernels.py build/deblur.q.onnx                    # top 25 kernels, 1 thread
  python tools/profile_kernels.py m.q.onnx --threads 2 --top 0 --json-file kernels.json
  python tools/profile_kernels.py m.q.onnx --no-int8-dot --tuning-db tuned/
  python tools/profile_kernels.py build/litepose.onnx --no-committed-db  # default schedules only
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError


def kernel_calls(mod) -> dict[str, int]:
    """{kernel name: calls} over the module's Relax functions (call_tir sites)."""
    import tvm
    from tvm import relax

    calls: dict[str, int] = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op == call_tir:
            name = expr.args[0].name_hint
            calls[name] = calls.get(name, 0) + 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return calls


def time_kernel(func, target, number: int, repeat: int) -> float:
    """Median milliseconds of one call of PrimFunc `func`, built alone, on inputs of ones."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)
    args = [tvm.runtime.tensor(np.ones([int(d) for d in info.shape], dtype=str(info.dtype)))
            for info in ms.arg_info.ArgInfo.from_prim_func(func)]
    timer = lib.mod.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat)
    return float(np.median(timer(*args).results)) * 1e3


def profile(onnx_path: Path, target_opts: str | None, threads: int, tuning_db: Path | None,
            int8_dot: bool, number: int, repeat: int, committed_db: bool = True) -> dict:
    import tvm

    from edgekit.compile.tvm import build, default_schedule, dotprod, tuning
    from edgekit.compile.tvm.targets import resolve
    from edgekit.progress import progress
    from edgekit.runtime.session import reserve_threads

    spec = resolve("x86-64", target_opts, threads)
    reserve_threads(None, threads)
    imported = build.import_model(onnx_path, spec, int8_dot=int8_dot)
    target = spec.tvm_target()
    zoo = build.zoo_info(imported.model, onnx_path, imported.inputs)
    folders = [tuning_db] if tuning_db else []
    committed = tuning.committed_database(zoo["model"]) if zoo.get("model") and committed_db else None
    folders += [committed] if committed is not None else []
    mod = build.apply_databases(imported.mod, target, folders)
    tuned = {gv.name_hint for gv, f in mod.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc) and default_schedule.is_scheduled(f)}
    mod, _ = default_schedule.apply(mod, target)
    calls = kernel_calls(mod)
    kernels = [(gv.name_hint, f) for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    rows = []
    for name, func in progress(kernels, desc="timing kernels", unit="kernel"):
        own = str((func.attrs or {}).get(dotprod.KERNEL_ATTR, ""))
        how = own or ("tuned" if name in tuned else "default")
        ms_per_call = time_kernel(func, target, number, repeat)
        rows.append({"kernel": name, "schedule": how, "calls": calls.get(name, 0), "ms_per_call": ms_per_call,
                     "ms": ms_per_call * calls.get(name, 0)})
    rows.sort(key=lambda r: -r["ms"])
    return {"model": str(onnx_path), "target": str(target), "threads": threads, "integer_ops": imported.lowered,
            "int8_dot_product": imported.dot, "total_ms": sum(r["ms"] for r in rows), "kernels": rows}


def print_table(result: dict, top: int) -> None:
    total = result["total_ms"] or 1.0
    print(f"{result['model']}: {len(result['kernels'])} kernels, {result['total_ms']:.3f} ms summed "
          f"({result['threads']} thread(s); int8 dot: {result['int8_dot_product']})")
    print(f"{'ms':>8} {'share':>6} {'calls':>5} {'ms/call':>8}  schedule  kernel")
    for row in result["kernels"][:top or None]:
        name = row["kernel"] if len(row["kernel"]) <= 70 else row["kernel"][:67] + "..."
        print(f"{row['ms']:8.3f} {100 * row['ms'] / total:5.1f}% {row['calls']:5d} {row['ms_per_call']:8.4f}  "
              f"{row['schedule']:8s}  {name}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="ONNX model (FP32 or QDQ)")
    parser.add_argument("--target-opts", help="CPU name and features, as for edgekit compile")
    parser.add_argument("--threads", type=int, default=1, help="threads per kernel (default 1)")
    parser.add_argument("--tuning-db", type=Path, help="a tuning database folder to apply too")
    parser.add_argument("--no-int8-dot", action="store_true", help="without the int8 dot-product kernels")
    parser.add_argument("--no-committed-db", action="store_true",
                        help="without the zoo's committed tuning records (what a model of your own gets)")
    parser.add_argument("--number", type=int, default=20, help="calls per measurement (default 20)")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per kernel, median (default 5)")
    parser.add_argument("--top", type=int, default=25, help="rows in the table, 0 for all (default 25)")
    parser.add_argument("--json-file", type=Path, help="also write every row as JSON here")
    args = parser.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)   # before TVM makes its thread pool
    try:
        if args.threads < 1 or args.number < 1 or args.repeat < 1 or args.top < 0:
            raise EdgekitError("--threads, --number and --repeat must be at least 1, --top at least 0")
        if not args.model.is_file():
            raise EdgekitError(f"{args.model}: no such ONNX file")
        result = profile(args.model, args.target_opts, args.threads, args.tuning_db, not args.no_int8_dot,
                         args.number, args.repeat, committed_db=not args.no_committed_db)
    except EdgekitError as exc:
        print(f"profile_kernels: error: {exc}", file=sys.stderr)
        return 2
    print_table(result, args.top)
    if args.json_file:
        from edgekit.fileio import save_json

        save_json(result, args.json_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
