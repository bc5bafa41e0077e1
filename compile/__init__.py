"""edgekit.compile: one entry point, `compile_model`, for every back-end.

    compile_model("m.onnx", "x86-64", "build/m", tune=0, tuning_db=None)

Targets: x86-64 (this host's CPU), arm64 (aarch64-linux-gnu, NEON; cross
compiled with aarch64-linux-gnu-g++), android-arm64 (the NDK's clang, from
ANDROID_NDK_HOME) and accel (edgekit's own accelerator, in
`edgekit.compile.accel`). Back-ends are imported only when used.
"""
from __future__ import annotations

import inspect

from edgekit.errors import EdgekitError

TVM_TARGETS = ("x86-64", "arm64", "android-arm64")
TARGETS = TVM_TARGETS + ("accel",)


def compile_model(onnx_path, target: str, out_dir, **options) -> dict:
    """Compile an ONNX file into an artifact folder; returns its metadata.

    TVM options: target_opts (e.g. "cortex-a76,+dotprod,+i8mm" or
    "mcpu=znver4,num-cores=4"), num_cores, tune (MetaSchedule trials),
    tuning_db (folder), integer (lower QDQ linear ops to integer, default
    True), committed_db (apply the committed database of a zoo model, default True),
    default_schedules (rule-based schedules for kernels without a tuning record, default
    True; False leaves them as TVM's unscheduled loops), int8_dot (linear / gemm layers of the
    integer lowering on int8 dot-product kernels where the target has them: AVX-512 VNNI, arm64 +dotprod; default True),
    integer_nonlinear (softmax, layernorm, resize and element-wise regions on their integer
    definitions, bit-exact with the integer reference; default True),
    log (callable receiving progress lines).
    """
    if target == "accel":
        from edgekit.compile.accel.compiler import compile_accel

        _check_options(target, options, compile_accel, skip=("onnx_path", "out_dir"))
        return compile_accel(onnx_path, out_dir, **options)
    if target not in TVM_TARGETS:
        raise EdgekitError(f"unknown target {target!r} (choose one of {', '.join(TARGETS)})")
    from edgekit.compile.tvm import targets
    from edgekit.compile.tvm.build import compile_tvm

    _check_options(target, options, compile_tvm, skip=("onnx_path", "spec", "out_dir", "progress_log"),
                   extra=("target_opts", "num_cores", "log"))
    spec = targets.resolve(target, options.pop("target_opts", None), options.pop("num_cores", None))
    log = options.pop("log", None)
    return compile_tvm(onnx_path, spec, out_dir, progress_log=log, **options)


def _check_options(target: str, options: dict, backend, skip=(), extra=()) -> None:
    """An option the back-end does not take is a typo or meant for another target:
    say so, with the valid names, instead of dropping it or raising TypeError."""
    valid = sorted(set(extra) | {p for p in inspect.signature(backend).parameters if p not in skip})
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise EdgekitError(f"target {target} does not take option(s) {', '.join(unknown)} "
                           f"(valid: {', '.join(valid)})")
