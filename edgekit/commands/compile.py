"""`edgekit compile`: ONNX -> artifact folder (TVM library + metadata, or an accelerator program)."""
from __future__ import annotations

import sys

from edgekit.commands import add_command, add_json_flags, check_json_file, emit_json, non_negative_int, positive_int

EXAMPLES = """\
  edgekit compile litepose.onnx --target x86-64 -o build/litepose
  edgekit compile litepose.q.onnx --target x86-64 -o build/litepose-int8
  edgekit compile lm.q.onnx --target x86-64 --no-int8-dot -o build/lm-int16   (no int8 dot kernel, to compare)
  edgekit compile lm.q.onnx --target x86-64 --target-opts mcpu=haswell -o build/lm-avx2   (for an AVX2 CPU)
  edgekit compile m.onnx --target x86-64 -o build/m --tune 2000 --tuning-db tuning/m
  edgekit compile m.onnx --target arm64 -o build/m-arm --tune 500 --tuning-db tuning/m-arm \\
      --tracker 127.0.0.1:9190 --key arm64
  edgekit compile m.onnx --target x86-64 -o build/m --tuning-db tuning/m   (reuse records)
  edgekit compile m.onnx --target arm64 --target-opts cortex-a76,+dotprod,+i8mm -o build/m-arm   (sdot kernels)
  ANDROID_NDK_HOME=/opt/ndk edgekit compile m.onnx --target android-arm64 -o build/m-android
  edgekit compile m.q.onnx --target accel -o build/m-accel
  edgekit compile m.q.onnx --target accel --no-fusion --fallback cpu -o build/m-accel-nofuse
"""


def register(subparsers):
    p = add_command(subparsers, "compile", "Compile an ONNX model for x86-64, arm64, android-arm64 or the accelerator.",
                    EXAMPLES, run)
    p.add_argument("onnx", help="ONNX model (FP32, or QDQ with int4/int8 weights)")
    p.add_argument("-o", "--output", required=True, help="artifact folder to write (replaced atomically)")
    p.add_argument("--target", default="x86-64", choices=["x86-64", "arm64", "android-arm64", "accel"],
                   help="where the model will run (default: x86-64, this host's CPU)")
    p.add_argument("--target-opts", default=None,
                   help="CPU name and features, e.g. 'cortex-a76,+dotprod,+i8mm' or 'mcpu=znver4,num-cores=4'")
    p.add_argument("--num-cores", type=positive_int, default=None,
                   help="threads the compiled code is planned for (default 2, arm 4)")
    p.add_argument("--tune", type=non_negative_int, default=0, metavar="TRIALS",
                   help="tune with MetaSchedule for this many trials (needs --tuning-db)")
    p.add_argument("--tuning-db", default=None, metavar="DIR",
                   help="tuning database folder: created/extended by --tune, applied by every compile")
    p.add_argument("--tune-workers", type=positive_int, default=None,
                   help="parallel candidate builds while tuning (default: 1; the runner always measures one at a time)")
    p.add_argument("--tune-top-tasks", type=positive_int, default=None, metavar="K",
                   help="tune only the K kernels with the most work (default: all)")
    p.add_argument("--tracker", default=None, metavar="HOST:PORT",
                   help="with --tune: measure candidates on the boards of this TVM RPC tracker")
    p.add_argument("--key", default=None, help="with --tracker: the device key of the boards")
    p.add_argument("--tune-min-per-task", type=non_negative_int, default=None, metavar="N",
                   help="with --tune: trials every kernel gets at least (default 16; raises --tune when "
                        "needed; records already in the database count)")
    p.add_argument("--max-trials-per-task", type=positive_int, default=None,
                   help="cap per tuning task (default: even split)")
    p.add_argument("--float", dest="integer", action="store_false",
                   help="QDQ models: keep QDQ computed in float (default: lower to integer compute)")
    p.add_argument("--no-int8-dot", dest="int8_dot", action="store_false",
                   help="QDQ models: do not run linear / gemm layers, convolutions and attention products on the "
                        "int8 dot-product kernels (AVX-512 VNNI, AVX-VNNI, AVX2, arm64 sdot or NEON, from the target's "
                        "features) (default: use them; for comparisons)")
    p.add_argument("--float-nonlinear", dest="integer_nonlinear", action="store_false",
                   help="QDQ models: run softmax, LayerNorm, Resize and element-wise regions (GELU, sigmoid...) "
                        "in float as the file writes them (default: their integer definitions, bit-exact with "
                        "the integer reference; for comparisons)")
    p.add_argument("--no-committed-db", dest="committed_db", action="store_false",
                   help="do not apply the committed tuning database of a zoo model (x86-64; chosen by the "
                        "file name: litepose.onnx or litepose.q.onnx gets compile/tvm/tuning_db/litepose)")
    p.add_argument("--array", type=positive_int, default=None, metavar="N",
                   help="(accel) MAC array size N (N x N int MACs; default 8, the RTL's)")
    p.add_argument("--no-fusion", dest="fusion", action="store_false",
                   help="(accel) no kernel fusion: int32 results round-trip through DRAM, adds run alone")
    p.add_argument("--fallback", choices=["cpu"], default=None,
                   help="(accel) run ops the accelerator cannot run on the host between segments")
    add_json_flags(p)  # the document: the artifact metadata


# Flags that only one kind of back-end reads, with their defaults: given for the
# other kind they would be ignored silently, which hides a wrong --target.
ACCEL_FLAGS = {"array": None, "fusion": True, "fallback": None}
TVM_FLAGS = {"target_opts": None, "num_cores": None, "tune": 0, "tuning_db": None, "integer": True,
             "int8_dot": True, "integer_nonlinear": True,
             "committed_db": True, "max_trials_per_task": None, "tune_workers": None,
             "tune_top_tasks": None, "tracker": None, "key": None, "tune_min_per_task": None}


def _flag(dest: str) -> str:
    return {"fusion": "--no-fusion", "integer": "--float", "committed_db": "--no-committed-db",
            "int8_dot": "--no-int8-dot", "integer_nonlinear": "--float-nonlinear"}.get(
        dest, "--" + dest.replace("_", "-"))


def _check_target_flags(args) -> None:
    from edgekit.errors import EdgekitError

    foreign = TVM_FLAGS if args.target == "accel" else ACCEL_FLAGS
    given = [_flag(d) for d, default in foreign.items() if getattr(args, d) != default]
    if given:
        kind = "TVM targets (x86-64, arm64, android-arm64)" if args.target == "accel" else "--target accel"
        raise EdgekitError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to {kind}, "
                           f"not --target {args.target}")


def run(args) -> int:
    from edgekit.compile import compile_model
    from edgekit.errors import require
    from edgekit.fileio import OutputSet

    require(not args.tracker or args.tune, "--tracker measures tuning candidates: give --tune N too")
    _check_target_flags(args)
    check_json_file(args)
    OutputSet.precheck([(args.json_file, "--json-file")], inputs=[args.onnx])
    options = {}
    if args.target == "accel":
        options = dict(array=args.array, fusion=args.fusion, fallback=args.fallback)
    else:
        options = dict(target_opts=args.target_opts, num_cores=args.num_cores, tune=args.tune,
                       tuning_db=args.tuning_db, integer=args.integer, committed_db=args.committed_db,
                       int8_dot=args.int8_dot, integer_nonlinear=args.integer_nonlinear,
                       max_trials_per_task=args.max_trials_per_task, tune_workers=args.tune_workers,
                       tune_top_tasks=args.tune_top_tasks, tune_tracker=args.tracker, tune_key=args.key,
                       tune_min_per_task=args.tune_min_per_task,
                       log=lambda msg: print(f"edgekit: {msg}", file=sys.stderr))
    meta = compile_model(args.onnx, args.target, args.output, **options)
    if not emit_json(args, meta):
        tuned = meta.get("tuning", {})
        extra = ""
        if tuned:
            extra = f", {tuned.get('kernels_tuned', 0)}/{tuned.get('kernels_total', 0)} kernels tuned"
            report = tuned.get("report")
            if report:
                extra += f", {report['trials']} trials ({report['failed']} failed candidates)"
        if meta.get("quantized"):
            extra += f", {meta.get('integer_ops', 0)} integer ops"
        print(f"wrote {args.output} ({meta.get('library', '')}{extra})")
    return 0
