"""ONNX file -> artifact folder (shared library + metadata JSON) with TVM.

Steps: load and check the ONNX file; for QDQ graphs widen int4, keep 4-bit
clamps and lower quantized linear ops to integer compute (`qlower`); import
with the Relax frontend; rewrite transposed convolutions as sub-pixel
convolutions (`rewrite`); legalize and fuse; optionally tune; apply tuning
databases (`--tuning-db` and the committed ones); give every kernel left without
a record a rule-based default schedule (`default_schedule`); build; export the library;
write the metadata. The artifact folder appears atomically.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

from edgekit.compile.tvm import dotprod
from edgekit.errors import EdgekitError
from edgekit.runtime.artifact import FORMAT_VERSION, LIBRARY, METADATA, sha256_file  # the format's one home


def prepare(mod, target):
    """Rewrite, legalize + fuse (the shape MetaSchedule tasks are extracted from and applied to)."""
    import tvm
    from tvm import relax

    from edgekit.compile.tvm import float_ops, rewrite

    mod = rewrite.conv_transpose_to_conv(mod)
    mod = float_ops.replace(mod, target)   # softmax and GELU: TVM's own are several times slower
    with target:
        return tvm.transform.Sequential([
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
        ])(mod)


def apply_databases(mod, target, folders: list[Path]):
    """Replace each TIR function that has a tuning record by its best schedule."""
    from tvm import relax

    from edgekit.compile.tvm import tuning

    database = tuning.union_database(folders)
    if database is None:
        return mod
    with target, database:
        return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)


def count_scheduled(mod) -> tuple[int, int, int]:
    """(scheduled, total, int8 dot-product) TIR kernels of `mod`. Kernels that edgekit scheduled
    itself (dotprod.py, float_ops.py) are counted apart: its dot-product kernels in the third
    number only, the layout kernels that feed them and its float kernels in none."""
    import tvm

    from edgekit.compile.tvm.default_schedule import is_scheduled

    kernels = [func for func in mod.functions.values() if isinstance(func, tvm.tirx.PrimFunc)]
    own = [str((func.attrs or {}).get(dotprod.KERNEL_ATTR, "")) for func in kernels]
    rest = [func for func, tag in zip(kernels, own) if not tag]
    return sum(is_scheduled(func) for func in rest), len(rest), own.count(dotprod.DOT_KERNEL)


def _report_schedules(log, spec, target, db_folders, tuned: int, defaulted: int, total: int,
                      int8_kernels: int = 0, dot: str | None = None) -> None:
    """Say where each kernel's schedule came from; warn when any kernel runs untuned, since
    tuned code is typically several times faster and the user can get it with --tune."""
    from edgekit.errors import warn

    log(f"building for {spec.name} ({target.attrs.get('mcpu', 'generic')}): {tuned}/{total} kernels tuned"
        + (f" (records from {', '.join(p.name for p in db_folders)})" if db_folders else "")
        + (f", {int8_kernels} int8 dot-product ({dot}) kernels" if int8_kernels else ""))
    untuned = total - tuned
    if not untuned:
        return
    plain = untuned - defaulted
    warn(f"{untuned} of {total} kernels have no tuning record for this model"
         + (" in the given databases" if db_folders else "")
         + (f"; {defaulted} use default schedules (parallel, vectorized, tiled), often several times "
            "slower than tuned ones" if defaulted else "")
         + (f"; {plain} run as TVM's unscheduled single-threaded loops" if plain else "")
         + "; to tune them for this CPU: edgekit compile MODEL --tune 2000 --tuning-db DIR "
           "(the records in DIR apply to every later compile that names it)")


def zoo_info(model, onnx_path: Path, inputs) -> dict:
    """Zoo metadata: what the exporter left in the ONNX file, else the zoo model whose name
    starts the file name and whose input names/shapes match (task, inputs, outputs)."""
    import json

    info = {}
    stem = onnx_path.name.split(".")[0]
    try:
        from edgekit import models

        if stem in models.list_models():
            entry = models.get(stem)
            specs = entry.input_spec(entry.default_config)
            if [(s.name, list(s.shape)) for s in specs] == [(t.name, list(t.shape)) for t in inputs]:
                info = {"model": stem, "config": entry.default_config, "task": entry.task,
                        "preprocess": {"scale": 1.0 / 255.0} if entry.task != "lm" else {}}
    except Exception:  # the zoo is optional for compiling: no match, no zoo info
        info = {}
    for prop in model.metadata_props:
        value = prop.value
        try:
            value = json.loads(value)
        except (ValueError, TypeError):
            pass
        info[prop.key] = value
    return info


@dataclass
class Imported:
    """An ONNX file in Relax, legalized and fused (`prepare`), with what the import found."""
    model: object            # the ONNX model as imported (integer ops lowered, int4 widened)
    mod: object              # the Relax IRModule
    inputs: list
    outputs: list
    quantized: bool
    lowered: dict            # {integer kind: count}
    dot: str | None          # the int8 dot-product step used, if any


def import_model(onnx_path, spec, *, integer: bool = True, int8_dot: bool = True,
                 integer_nonlinear: bool = True, log=lambda msg: None) -> Imported:
    """Load and check `onnx_path`; for QDQ graphs lower the integer ops (`qlower`, on the
    target's dot-product step), widen int4 and keep 4-bit clamps; import into Relax; prepare."""
    from edgekit.compile.tvm import importer, qlower
    from edgekit.compile.tvm.converters import CONVERTERS

    model = importer.load_onnx(Path(onnx_path))
    inputs, outputs = importer.graph_io(model)
    importer.check_ops(model, CONVERTERS)
    quantized = importer.is_quantized(model)
    lowered: dict = {}
    dot = None
    if quantized:
        from edgekit.quant.qgraph import check_qdq_parameters

        if integer:
            # reads the int4 initializers (before widening); its qgraph.parse checks every Q/DQ parameter first
            isa = dotprod.detect(spec.tvm_target()) if int8_dot else None
            dot = isa.name if isa else None
            lowered = qlower.lower(model, dot=dot, integer_nonlinear=integer_nonlinear)
        else:
            check_qdq_parameters(model)  # float QDQ too: TVM would divide by a zero scale
        clamps = importer.widen_int4(model)
        importer.clamp_four_bit_quantizers(model, clamps)
    log(f"importing {Path(onnx_path).name} ({len(model.graph.node)} nodes"
        + (f", integer ops: {lowered or 'none'}" if quantized else "") + ")")
    mod = prepare(importer.to_relax(model, inputs, CONVERTERS), spec.tvm_target())
    return Imported(model, mod, inputs, outputs, quantized, lowered, dot)


def compile_tvm(onnx_path, spec, out_dir, *, tune: int = 0, tuning_db=None, integer: bool = True,
                committed_db: bool = True, default_schedules: bool = True, int8_dot: bool = True,
                integer_nonlinear: bool = True, max_trials_per_task: int | None = None,
                tune_workers: int | None = None, tune_top_tasks: int | None = None,
                tune_tracker: str | None = None, tune_key: str | None = None,
                tune_min_per_task: int | None = None, progress_log=None) -> dict:
    """Compile `onnx_path` for TargetSpec `spec` into `out_dir`; returns the metadata dict."""
    import tvm

    import edgekit
    from edgekit.compile.tvm import default_schedule, tuning
    from edgekit.fileio import atomic_dir, save_json
    from edgekit.runtime.session import reserve_threads

    reserve_threads(None, spec.num_cores)   # TVM's thread pool is made here if not before: all cores
    log = progress_log or (lambda msg: None)
    started = time.time()
    onnx_path = Path(onnx_path)
    imported = import_model(onnx_path, spec, integer=integer, int8_dot=int8_dot,
                            integer_nonlinear=integer_nonlinear, log=log)
    model, inputs, outputs = imported.model, imported.inputs, imported.outputs
    quantized, lowered, dot = imported.quantized, imported.lowered, imported.dot
    target = spec.tvm_target()
    mod = imported.mod

    tune_report = None
    db_folders: list[Path] = []
    if tuning_db is not None:
        tuning_db = Path(tuning_db)
        if tuning_db.exists() and not tuning_db.is_dir():
            raise EdgekitError(f"--tuning-db {tuning_db}: is a file, expected a folder")
    if tune:
        if tuning_db is None:
            raise EdgekitError("--tune needs --tuning-db DIR (where the tuning records are kept for later compiles)")
        builder = runner = None
        if tune_tracker:
            # Candidates are linked for the board and measured there (TVM's RPC runner).
            from edgekit.runtime import remote

            if not tune_key:
                raise EdgekitError("--tracker needs --key (the device key the boards registered with)")
            runner = remote.meta_schedule_runner(tune_tracker, tune_key)
            builder = remote.meta_schedule_builder(spec.cross_cc, max_workers=tune_workers or 1)
        log(f"tuning with MetaSchedule: {tune} trials into {tuning_db}"
            + (f", measured on {tune_key} devices of tracker {tune_tracker}" if tune_tracker else ""))
        tune_report = tuning.tune(mod, target, tuning_db, tune, max_trials_per_task=max_trials_per_task,
                                  builders=tune_workers or 1, top_tasks=tune_top_tasks,
                                  **({} if tune_min_per_task is None else {"min_trials_per_task": tune_min_per_task}),
                                  builder=builder, runner=runner)
        if tune_report.trials and tune_report.failed == tune_report.trials:
            raise EdgekitError(f"tuning: all {tune_report.trials} candidates failed "
                               f"(first error: {(tune_report.errors or ['?'])[0]})")
    if tuning_db is not None and tuning.is_database(tuning_db):
        db_folders.append(tuning_db)
    elif tuning_db is not None and not tune:
        raise EdgekitError(f"--tuning-db {tuning_db}: not a tuning database (run with --tune N to create one)")
    zoo = zoo_info(model, onnx_path, inputs)
    committed = tuning.committed_database(zoo["model"]) if zoo.get("model") else None
    if committed_db and spec.name == "x86-64" and committed is not None:
        db_folders.append(committed)
    mod = apply_databases(mod, target, db_folders)
    tuned, total, int8_kernels = count_scheduled(mod)
    defaulted = 0
    if default_schedules:  # kernels without a record: rule-based schedules instead of naive loops
        mod, defaulted = default_schedule.apply(mod, target)
    _report_schedules(log, spec, target, db_folders, tuned, defaulted, total, int8_kernels, dot)
    executable = tvm.compile(mod, target=target)

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        lib_path = tmp / LIBRARY
        try:
            executable.export_library(str(lib_path), **spec.export_kwargs())
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise EdgekitError(f"linking {LIBRARY} for {spec.name} failed: {first}") from None
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "tvm",
            "library": LIBRARY,
            "sha256": sha256_file(lib_path),
            "inputs": [t.as_dict() for t in inputs],
            "outputs": [t.as_dict() for t in outputs],
            "target": spec.describe(),
            "tvm_target": str(target),
            "versions": {"edgekit": edgekit.__version__, "tvm": tvm.__version__,
                         "python": platform.python_version()},
            "source": {"onnx": onnx_path.name, "sha256": sha256_file(onnx_path)},
            "quantized": quantized,
            "integer_ops": lowered,
            "int8_dot_product": dot,
            "integer_nonlinear": bool(quantized and integer and integer_nonlinear),
            "tuning": {"databases": [str(p) for p in db_folders], "kernels_tuned": tuned,
                       "kernels_default_schedule": defaulted, "kernels_total": total,
                       "kernels_int8_dot": int8_kernels,
                       "report": tune_report.as_dict() if tune_report else None},
            "zoo": zoo,
            "compile_seconds": round(time.time() - started, 2),
        }
        save_json(meta, tmp / METADATA)
    return meta
