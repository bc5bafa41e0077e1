"""Copy a MetaSchedule tuning database keeping only the fastest record(s) of each kernel.

This is how the committed databases in compile/tvm/tuning_db/ are made from a tuning
folder: every compile of a zoo model opens its database, and opening one parses every record
(LitePose's tuning folder, 1409 records: 32 s; pruned to 81: 3.6 s), while applying one needs
only the best record per kernel.

`--against-default MODEL.onnx ...` also replaces the records that lose to edgekit's default
schedule (compile/tvm/default_schedule.py): each kernel of those models that has a record is
built alone both ways and timed on one thread (tools/profile_kernels.py's timer, inputs of ones),
and where the record is slower than the default by more than --margin, the kernel's records give
way to one holding the default schedule's trace (the kernel still counts as tuned, and a later
`--tune` has that schedule to beat). Records found with a few random trials often lose
(2026-12-08, one thread: LM FP32 8.7 ms of kernels with its records, 6.6 ms with none, 6.2 ms
with the better of the two per kernel).

    python tools/prune_tuning_db.py /tmp/tune/litepose compile/tvm/tuning_db/litepose
    python tools/prune_tuning_db.py DB OUT --keep 4      # keep more for a later --tune to start from
    python tools/prune_tuning_db.py compile/tvm/tuning_db/lm compile/tvm/tuning_db/lm \\
        --against-default build/lm.onnx build/lm.q.onnx  # the table, then the pruned copy
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def versus_default(src: Path, models: list[Path], number: int = 50, repeat: int = 7) -> list[dict]:
    """[{model, kernel, workload, tuned_ms, default_ms, record}] for each kernel of `models`
    (imported as `edgekit compile --target x86-64` does, on this CPU, one thread) that a record in
    `src` schedules and that a default rule covers; `record`: a TuningRecord of the default
    schedule."""
    from profile_kernels import time_kernel
    from tvm.s_tir import meta_schedule as ms

    from edgekit.compile.tvm import build, default_schedule, tuning
    from edgekit.compile.tvm.targets import resolve
    from edgekit.progress import progress
    from edgekit.runtime.session import reserve_threads

    spec = resolve("x86-64", None, 1)
    reserve_threads(None, 1)
    target = spec.tvm_target()
    database = tuning.open_database(src)
    rows, seen = [], set()
    for model in models:
        tasks = tuning.extract_tasks(build.import_model(model, spec).mod, target)
        for task in progress(tasks, desc=f"timing {model.name}", unit="kernel"):
            mod = task.dispatched[0]
            if not database.has_workload(mod):
                continue
            workload = database.commit_workload(mod)
            key = str(workload.as_json()[0])
            if key in seen:   # the same kernel in another of the models (FP32 and QDQ files share some)
                continue
            seen.add(key)
            tuned = database.query_schedule(mod, target, workload_name="main")
            default = default_schedule.first_schedule(mod["main"], target)
            if tuned is None or default is None:
                continue
            default_ms = time_kernel(default.mod["main"], target, number, repeat)
            record = ms.database.TuningRecord(default.trace, workload, run_secs=[default_ms / 1e3], target=target,
                                              args_info=ms.arg_info.ArgInfo.from_prim_func(mod["main"]))
            rows.append({"model": model.name, "kernel": task.task_name, "workload": key,
                         "tuned_ms": time_kernel(tuned.mod["main"], target, number, repeat),
                         "default_ms": default_ms, "record": record})
    return rows


def replace_records(src: Path, dst: Path, records: dict) -> None:
    """Copy database `src` to folder `dst` with the records of each workload in `records`
    (workload key -> TuningRecord) replaced by that one record."""
    from edgekit.compile.tvm.tuning import DB_FILES, open_database

    workloads = Path(src, DB_FILES[0]).read_text().splitlines()
    dropped = {i for i, line in enumerate(workloads) if str(json.loads(line)[0]) in records}
    kept = [line for line in Path(src, DB_FILES[1]).read_text().splitlines() if json.loads(line)[0] not in dropped]
    dst.mkdir(parents=True, exist_ok=True)
    Path(dst, DB_FILES[0]).write_text("".join(line + "\n" for line in workloads))
    Path(dst, DB_FILES[1]).write_text("".join(line + "\n" for line in kept))
    database = open_database(dst)
    for record in records.values():
        database.commit_tuning_record(record)


def loses(row: dict, margin: float) -> bool:
    """Is the record more than `margin` (a fraction) slower than the default schedule?"""
    return row["tuned_ms"] > (1 + margin) * row["default_ms"]


def print_versus(rows: list[dict], margin: float) -> None:
    print(f"{'tuned ms':>9} {'default':>9}  {'keeps':7s}  kernel")
    for row in sorted(rows, key=lambda r: r["default_ms"] - r["tuned_ms"]):
        print(f"{row['tuned_ms']:9.4f} {row['default_ms']:9.4f}  {'default' if loses(row, margin) else 'record':7s}  "
              f"{row['model']}: {row['kernel'][:70]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path,
                        help="tuning database folder (database_workload.json + database_tuning_record.json)")
    parser.add_argument("dst", type=Path, help="folder to write (replaced atomically; may be src)")
    parser.add_argument("--keep", type=int, default=1, help="records kept per kernel, fastest first (default 1)")
    parser.add_argument("--against-default", nargs="+", type=Path, metavar="MODEL.onnx",
                        help="replace by the default schedule the records that these models' kernels run slower "
                             "with")
    parser.add_argument("--margin", type=float, default=0.1,
                        help="with --against-default: how much slower (fraction) a record may be (default 0.1)")
    parser.add_argument("--json-file", type=Path, help="with --against-default: write the timings here too")
    args = parser.parse_args(argv)
    # one thread, as the records were measured: TVM reads this when it makes its thread pool
    os.environ["TVM_NUM_THREADS"] = "1"

    from edgekit.compile.tvm import tuning
    from edgekit.errors import EdgekitError

    try:
        if args.margin < 0:
            raise EdgekitError(f"--margin must be >= 0, got {args.margin}")
        src = args.src
        with tempfile.TemporaryDirectory() as tmp:
            if args.against_default:
                if not tuning.is_database(src):
                    raise EdgekitError(f"{src}: not a tuning database (needs {' and '.join(tuning.DB_FILES)})")
                for model in args.against_default:
                    if not model.is_file():
                        raise EdgekitError(f"{model}: no such ONNX file")
                rows = versus_default(src, args.against_default)
                print_versus(rows, args.margin)
                if args.json_file:
                    from edgekit.fileio import save_json
                    save_json({"margin": args.margin, "kernels": [{k: v for k, v in r.items() if k != "record"}
                                                                   for r in rows]}, args.json_file)
                lost = {r["workload"]: r["record"] for r in rows if loses(r, args.margin)}
                print(f"the default schedule replaces the records of {len(lost)} of "
                      f"{len(rows)} kernels")
                replace_records(src, Path(tmp) / "db", lost)
                src = Path(tmp) / "db"
            workloads, records = tuning.prune_database(src, args.dst, keep=args.keep)
    except EdgekitError as exc:
        print(f"prune_tuning_db: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: {workloads} kernels, {records} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
