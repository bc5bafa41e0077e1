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


def committed_databases() -> list[Path]:
    if not COMMITTED_DB_ROOT.is_dir():
        return []
    return sorted(p for p in COMMITTED_DB_ROOT.iterdir() if p.is_dir() and is_database(p))


def open_database(folder: Path, create: bool = False):
    from tvm.s_tir import meta_schedule as ms

    folder = Path(folder)
    if not create and not is_database(folder):
        raise EdgekitError(f"tuning database {folder}: missing {' / '.join(DB_FILES)}")
    folder.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(path_workload=str(folder / DB_FILES[0]),
                                    path_tuning_record=str(folder / DB_FILES[1]),
                                    allow_missing=create)


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


def extract_tasks(mod, target):
    from tvm.s_tir import meta_schedule as ms

    return ms.relax_integration.extract_tasks(mod, target)


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


def tune(mod, target, db_dir: Path, trials: int, *, max_trials_per_task: int | None = None,
         build_timeout: float = 180.0, run_timeout: float = 60.0, builders: int = 1,
         seed: int | None = 0, top_tasks: int | None = None, trials_per_round: int = 8,
         population: int = 256, builder=None, runner=None) -> TuneReport:
    """Tune every TIR task of `mod` (already legalized and fused) into the database at `db_dir`.

    `builder`/`runner` default to local ones (this machine measures); pass the RPC pair from
    `edgekit.runtime.remote.meta_schedule_builder/_runner` to measure on boards behind a tracker.
    """
    from tvm.s_tir import meta_schedule as ms

    from edgekit.progress import progress

    if trials < 1:
        raise EdgekitError(f"--tune needs a positive number of trials, got {trials}")
    db_dir = Path(db_dir)
    db_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(db_dir, create=True)
    extracted = heaviest(extract_tasks(mod, target), top_tasks)
    report = TuneReport(tasks=len(extracted))
    if not extracted:
        return report
    # MetaSchedule logs every step to the console at INFO; keep that in db_dir/logs only.
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_logger.setLevel(logging.WARNING)
    # TVM rebuilds its logging config from the names of this logger's handlers; an unnamed one
    # (left by an earlier tuning run in the same process) crashes that (None.format).
    for handler in [h for h in ms_logger.handlers if h.get_name() is None]:
        ms_logger.removeHandler(handler)
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        extracted, work_dir=str(db_dir / "logs"), num_threads=max(1, int(builders)), seed=seed,
        # A small population keeps each search round cheap on a loaded 2-core machine.
        strategy=ms.search_strategy.EvolutionarySearch(population_size=population, init_min_unmeasured=16))
    per_task = max_trials_per_task or max(1, -(-trials // len(contexts)))
    bar = progress(desc=f"tuning {len(contexts)} tasks", total=trials, unit="trial")
    with torchless_workers():
        builder = builder or ms.builder.LocalBuilder(max_workers=builders, timeout_sec=build_timeout)
        runner = runner or ms.runner.LocalRunner(
            timeout_sec=run_timeout,
            evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=40,
                                                       enable_cpu_cache_flush=False))
        callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
        callbacks.append(_progress_callback(report, bar))
        try:
            ms.tune.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=str(db_dir / "logs"),
                max_trials_global=trials, max_trials_per_task=per_task,
                num_trials_per_iter=min(trials_per_round, per_task), builder=builder, runner=runner,
                database=database, cost_model=ms.cost_model.XGBModel(num_tuning_cores=1),
                measure_callbacks=callbacks, task_scheduler="gradient")
        finally:
            bar.close()
    return report
