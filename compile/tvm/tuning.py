"""MetaSchedule tuning and tuning databases.

Tuning is deliberately conservative because it runs on small, shared
machines (2 cores, other jobs):
  * one builder worker and one runner, explicit timeouts, so a loaded
    machine produces slow candidates rather than a pile of spurious
    "build errors";
  * builder/runner worker processes start with torch hidden
    (`apache_tvm_ffi` imports torch eagerly when it can: ~7 s per worker
    start, and under load conv builds timed out in such workers);
  * a progress bar counts trials; failed candidates are counted and
    reported with their first error line.

A database is MetaSchedule's JSONDatabase in a folder
(database_workload.json + database_tuning_record.json); `--tuning-db DIR`
reuses and extends it. The committed databases under
`compile/tvm/tuning_db/<model>/` are applied to every x86-64 compile.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import EdgekitError

COMMITTED_DB_ROOT = Path(__file__).parent / "tuning_db"
DB_FILES = ("database_workload.json", "database_tuning_record.json")


@dataclass
class TuneReport:
    trials: int = 0
    failed: int = 0
    tasks: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"trials": self.trials, "failed": self.failed, "tasks": self.tasks,
                "first_errors": self.errors[:5]}


def is_database(folder: Path) -> bool:
    return all((Path(folder) / name).is_file() for name in DB_FILES)


def committed_database(model: str) -> Path | None:
    """The committed database of zoo model `model`, if there is one.

    A compile applies only its own model's: records match kernels by structure, so another
    model's records rarely apply, and opening a database parses all its kernels (seconds
    per database for the integer kernels' long epilogues).
    """
    folder = COMMITTED_DB_ROOT / model
    return folder if is_database(folder) else None


def open_database(folder: Path, create: bool = False):
    from tvm.s_tir import meta_schedule as ms

    folder = Path(folder)
    if not create and not is_database(folder):
        raise EdgekitError(f"tuning database {folder}: missing {' / '.join(DB_FILES)}")
    folder.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(path_workload=str(folder / DB_FILES[0]),
                                    path_tuning_record=str(folder / DB_FILES[1]),
                                    allow_missing=create)


def prune_database(src: Path, dst: Path, keep: int = 1) -> tuple[int, int]:
    """Copy the `keep` fastest records of each workload (and the workloads that have one).

    Opening a JSONDatabase parses every record's trace against its workload: LitePose's
    tuning folder (1409 records of 81 kernels) took 32 s to open, its pruned copy 3.6 s, and
    applying a database needs only the best record per kernel. Works on the JSON lines, without TVM.
    Returns (workloads, records) written.
    """
    from edgekit.fileio import atomic_dir

    if not is_database(src):
        raise EdgekitError(f"{src}: not a tuning database (needs {' and '.join(DB_FILES)})")
    if keep < 1:
        raise EdgekitError(f"records to keep per kernel must be >= 1, got {keep}")
    workloads = Path(src, DB_FILES[0]).read_text().splitlines()
    best: dict[int, list] = {}
    for line in Path(src, DB_FILES[1]).read_text().splitlines():
        index, record = json.loads(line)
        secs = record[1] or []
        if secs and all(0 < t < 1e9 for t in secs):  # failed candidates carry 1e10
            best.setdefault(index, []).append((sum(secs) / len(secs), record))
    kept = sorted(best)
    new_index = {old: new for new, old in enumerate(kept)}
    with atomic_dir(Path(dst)) as tmp:
        Path(tmp, DB_FILES[0]).write_text("".join(workloads[i] + "\n" for i in kept))
        lines = [json.dumps([new_index[i], record], separators=(",", ":"))
                 for i in kept for _, record in sorted(best[i], key=lambda r: r[0])[:keep]]
        Path(tmp, DB_FILES[1]).write_text("".join(line + "\n" for line in lines))
    return len(kept), len(lines)


def union_database(folders: list[Path]):
    """All given databases as one (best record per workload wins)."""
    from tvm.s_tir import meta_schedule as ms

    dbs = [open_database(f) for f in folders]
    if not dbs:
        return None
    return dbs[0] if len(dbs) == 1 else ms.database.UnionDatabase(*dbs)


@contextlib.contextmanager
def torchless_workers():
    """Hide torch from the tuning worker processes started in this block.

    A `torch` package whose import raises ImportError is put first on
    PYTHONPATH; tvm_ffi treats that as "no torch" and skips it.
    """
    stub = Path(tempfile.mkdtemp(prefix="edgekit-notorch-"))
    (stub / "torch").mkdir()
    (stub / "torch" / "__init__.py").write_text(
        "raise ImportError('torch is hidden from TVM tuning workers by edgekit')\n")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(stub) + (os.pathsep + old if old else "")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
        import shutil

        shutil.rmtree(stub, ignore_errors=True)


def _progress_callback(report: TuneReport, bar):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class ProgressCallback(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            for b, r in zip(builder_results, runner_results):
                report.trials += 1
                err = b.error_msg or r.error_msg
                if err:
                    report.failed += 1
                    if len(report.errors) < 5:
                        line = next((ln for ln in str(err).splitlines() if ln.strip()), "?")
                        report.errors.append(f"task {task_id}: {line[:200]}")
            bar.update(len(builder_results))
            bar.set_postfix(failed=report.failed, refresh=False)

    return ProgressCallback()


def reusing_builder(max_workers: int, timeout_sec: float):
    """MetaSchedule's LocalBuilder, but its worker processes live for the whole tuning run.

    LocalBuilder starts a fresh process pool for every batch of candidates (a memory-leak
    workaround upstream); each worker then imports tvm (and tvm_ffi's eager imports): seconds
    per batch, which on 2 shared cores cost more than building the 8 candidates of a floor
    round. Here workers are recycled after 64 builds instead, which bounds such leaks.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder import local_builder as lb
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class ReusingLocalBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            self.pool = None

        def build(self, build_inputs):
            if self.pool is None:  # started lazily: inside torchless_workers()
                self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_sec,
                                              maximum_process_uses=64)
            results = []
            jobs = [(None, None, bi.mod, bi.target, lb._serialize_params(bi.params)) for bi in build_inputs]
            for res in self.pool.map_with_error_catching(lambda x: lb._worker_func(*x), jobs):
                if res.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(res.value, None))
                elif res.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"LocalBuilder: Timeout, killed after {timeout_sec} seconds"))
                else:
                    results.append(BuilderResult(None, "LocalBuilder: An exception occurred\n" + str(res.value)))
            return results

        def shutdown(self):
            if self.pool is not None:
                self.pool.shutdown()
                self.pool = None

    return ReusingLocalBuilder()


def extract_tasks(mod, target):
    """MetaSchedule's tasks of `mod`, less the kernels edgekit wrote itself (dotprod.py,
    float_ops.py): they have their schedule, and MetaSchedule's cost estimate fails on their
    vector expressions."""
    from tvm.s_tir import meta_schedule as ms

    from edgekit.compile.tvm.dotprod import KERNEL_ATTR

    def own(task):
        func = task.dispatched[0]["main"]
        return KERNEL_ATTR in (func.attrs or {})

    return [task for task in ms.relax_integration.extract_tasks(mod, target) if not own(task)]


def heaviest(extracted, top: int | None):
    """The `top` tasks with the most floating point work (flops x occurrences); all when None."""
    if not top or top >= len(extracted):
        return list(extracted)
    from tvm.s_tir.analysis import estimate_tir_flops

    def work(task):
        try:
            return float(estimate_tir_flops(task.dispatched[0])) * float(task.weight)
        except Exception:  # estimation is a heuristic; unknown work sorts last
            return 0.0

    return sorted(extracted, key=work, reverse=True)[:top]


def _records_per_task(database, extracted) -> list[int]:
    """How many measured records the database already holds for each task (0 for a new one)."""
    counts = []
    for task in extracted:
        try:
            mod = task.dispatched[0]
            counts.append(len(database.get_top_k(database.commit_workload(mod), 1 << 20))
                          if database.has_workload(mod) else 0)
        except Exception:  # unknown: treat as untuned
            counts.append(0)
    return counts


def tune(mod, target, db_dir: Path, trials: int, *, max_trials_per_task: int | None = None,
         build_timeout: float = 180.0, run_timeout: float = 60.0, builders: int = 1,
         seed: int | None = 0, top_tasks: int | None = None, trials_per_round: int = 8,
         population: int = 256, genetic_iters: int = 2, min_trials_per_task: int = 16,
         builder=None, runner=None) -> TuneReport:
    """Tune every TIR task of `mod` (already legalized and fused) into the database at `db_dir`.

    Two phases, so that no kernel is left as a naive untuned loop nest:
      1. floor: every task with fewer than `min_trials_per_task` records in the database gets
         the missing trials (round robin). A task never measured would otherwise run as
         TVM's unscheduled, single-threaded loops, and the gradient scheduler of phase 2
         happily starves small tasks on a small budget.
      2. the rest of the `trials` budget (if any) goes where it pays most (MetaSchedule's
         gradient task scheduler, weights = occurrences of the kernel).
    The floor wins over the budget: `trials` smaller than what the floor needs is raised.
    Extending a database (a second run) spends no floor trials on tasks that already have them.

    `builder`/`runner` default to local ones (this machine measures); pass the RPC pair from
    `edgekit.runtime.remote.meta_schedule_builder/_runner` to measure on boards behind a tracker.
    """
    from tvm.s_tir import meta_schedule as ms

    from edgekit.progress import progress

    if trials < 1:
        raise EdgekitError(f"--tune needs a positive number of trials, got {trials}")
    if min_trials_per_task < 0:
        raise EdgekitError(f"the per-task trial floor must be >= 0, got {min_trials_per_task}")
    db_dir = Path(db_dir)
    db_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(db_dir, create=True)
    extracted = heaviest(extract_tasks(mod, target), top_tasks)
    report = TuneReport(tasks=len(extracted))
    if not extracted:
        return report
    # MetaSchedule logs every step to the console at INFO; keep that in db_dir/logs only.
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")

    have = _records_per_task(database, extracted)
    floor = [(task, max(0, min_trials_per_task - n)) for task, n in zip(extracted, have)]
    floor = [(task, need) for task, need in floor if need > 0]
    floor_trials = sum(need for _, need in floor)
    rest = max(0, trials - floor_trials)
    bar = progress(desc=f"tuning {len(extracted)} tasks", total=floor_trials + rest, unit="trial")

    def run_phase(tasks, budget, per_task, scheduler, strategy):
        # TVM rebuilds its logging config from the names of this logger's handlers; an unnamed
        # one (left by an earlier tuning run in the same process) crashes that (None.format).
        for handler in [h for h in ms_logger.handlers if h.get_name() is None]:
            ms_logger.removeHandler(handler)
        # TVM gives its console handler this logger's level, then resets the logger to
        # DEBUG: set it before every phase, or the second one floods the console
        ms_logger.setLevel(logging.WARNING)
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks, work_dir=str(db_dir / "logs"), num_threads=max(1, int(builders)), seed=seed,
            strategy=strategy)
        callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
        callbacks.append(_progress_callback(report, bar))
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=str(db_dir / "logs"),
            max_trials_global=budget, max_trials_per_task=per_task,
            num_trials_per_iter=max(1, min(trials_per_round, per_task)), builder=local_builder,
            runner=local_runner, database=database, cost_model=ms.cost_model.XGBModel(num_tuning_cores=1),
            measure_callbacks=callbacks, task_scheduler=scheduler)

    with torchless_workers():
        own_builder = None if builder is not None else reusing_builder(builders, build_timeout)
        local_builder = builder or own_builder
        local_runner = runner or ms.runner.LocalRunner(
            timeout_sec=run_timeout,
            evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40,
                                                       enable_cpu_cache_flush=False))
        try:
            # phase 1, grouped by the trials each task still needs (all equal for a new database)
            for need in sorted({need for _, need in floor}):
                group = [task for task, n in floor if n == need]
                # A floor round is a few trials from a cold cost model, which cannot steer an
                # evolutionary search yet; on the integer kernels (long requantization
                # epilogues) each evolution round cost ~100 s of one core per task for 8
                # candidates. Random schedules from the design space cost a few seconds and
                # train the cost model that phase 2's evolutionary search then uses.
                run_phase(group, need * len(group), need, "round-robin", ms.search_strategy.ReplayTrace())
            if rest:
                per_task = max_trials_per_task or max(1, rest)
                # a small population keeps each search round cheap on a 2-core machine
                run_phase(list(extracted), rest, per_task, "gradient",
                          ms.search_strategy.EvolutionarySearch(population_size=population, init_min_unmeasured=16,
                                                                genetic_num_iters=genetic_iters))
        finally:
            bar.close()
            if own_builder is not None:
                own_builder.shutdown()
    return report
