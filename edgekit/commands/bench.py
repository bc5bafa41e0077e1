"""`edgekit bench`: latency of a compiled artifact, side by side with onnxruntime on the same ONNX file."""
from __future__ import annotations

from edgekit.commands import add_command, add_json_flags, check_json_file, emit_json, non_negative_int, positive_int
from edgekit.commands.run import add_device_flags
from edgekit.errors import EdgekitError

EXAMPLES = """\
  edgekit bench build/litepose
  edgekit bench build/litepose --compare litepose.onnx          (same threads, same run)
  edgekit bench build/litepose-q --compare litepose.q.onnx --json
  edgekit bench build/litepose --json-file bench.json          (table on stdout, JSON in the file)
  edgekit bench build/m-arm --device 192.168.1.7:9090 --repeat 20
"""


def register(subparsers):
    p = add_command(subparsers, "bench",
                    "Measure latency (median, p90) of an artifact, optionally against onnxruntime.", EXAMPLES, run)
    p.add_argument("artifact", help="artifact folder written by `edgekit compile`")
    p.add_argument("--compare", default=None, metavar="MODEL.onnx",
                   help="also time onnxruntime on this ONNX file with the same inputs and threads")
    p.add_argument("--warmup", type=non_negative_int, default=10, help="untimed runs first, >= 0 (default 10)")
    p.add_argument("--repeat", "--iters", dest="repeat", type=positive_int, default=100,
                   help="timed runs, >= 1 (default 100; --iters is the same)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random inputs (>= 0)")
    add_json_flags(p)
    add_device_flags(p)


def random_inputs(specs: list[dict], seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = {}
    for s in specs:
        dtype = np.dtype(s["dtype"])
        if dtype.kind == "f":
            feeds[s["name"]] = rng.standard_normal(s["shape"]).astype(dtype)
        else:
            feeds[s["name"]] = rng.integers(0, 8, size=s["shape"]).astype(dtype)
    return feeds


def summarize(seconds: list[float]) -> dict:
    import numpy as np

    ms = np.asarray(seconds) * 1e3
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "runs": int(ms.size)}


def time_onnxruntime(onnx_path: str, feeds: dict, threads: int, warmup: int, repeat: int) -> list[float]:
    import time
    from pathlib import Path

    import onnxruntime as ort

    if not Path(onnx_path).is_file():
        raise EdgekitError(f"--compare {onnx_path}: no such ONNX file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EdgekitError(f"--compare {onnx_path}: onnxruntime cannot load it "
                           f"({str(exc).splitlines()[0][:200]})") from None
    names = {i.name for i in session.get_inputs()}
    if names != set(feeds):
        raise EdgekitError(f"--compare {onnx_path}: inputs {sorted(names)} differ from the artifact's {sorted(feeds)}")
    try:
        for _ in range(warmup):
            session.run(None, feeds)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - start)
    except Exception as exc:  # onnxruntime: the artifact's input dtypes/shapes do not fit this model
        raise EdgekitError(f"--compare {onnx_path}: onnxruntime cannot run it on the artifact's inputs "
                           f"({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__})") \
            from None
    return times


def bench(artifact_dir, *, compare=None, warmup=10, repeat=100, seed=0, device=None, tracker=None, key=None,
          threads=None) -> dict:
    """Time the artifact (and onnxruntime on `compare`) in one process, same inputs and thread count."""
    from edgekit.runtime import open_session

    for flag, value, least in (("--repeat", repeat, 1), ("--warmup", warmup, 0), ("--seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise EdgekitError(f"{flag} must be an integer >= {least}, got {value!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise EdgekitError(f"--threads must be an integer >= 1, got {threads!r}")
    if compare:
        from pathlib import Path

        if device or tracker:
            raise EdgekitError("--compare runs onnxruntime on this machine: not meaningful with --device/--tracker")
        if Path(compare).is_dir() or not Path(compare).is_file():
            raise EdgekitError(f"--compare {compare}: no such ONNX file")
    with open_session(artifact_dir, device=device, tracker=tracker, key=key, num_threads=threads) as session:
        meta = session.artifact.meta
        threads = threads or int(meta.get("target", {}).get("num_cores") or 2)
        feeds = random_inputs(session.artifact.inputs, seed)
        result = {"artifact": str(artifact_dir), "target": meta.get("target", {}).get("name"),
                  "threads": threads, "warmup": warmup, **summarize(session.time(feeds, warmup, repeat))}
    if compare:
        ort_stats = summarize(time_onnxruntime(compare, feeds, threads, warmup, repeat))
        result.update({f"ort_{k}": v for k, v in ort_stats.items()})
        result["compare"] = str(compare)
        result["speedup_vs_ort"] = ort_stats["median_ms"] / result["median_ms"]
    return result


def run(args) -> int:
    import os
    from pathlib import Path

    check_json_file(args)
    if args.json_file:
        inputs = [args.compare, Path(args.artifact) / "edgekit-artifact.json", Path(args.artifact) / "model.so"]
        for path in filter(None, inputs):
            if os.path.realpath(path) == os.path.realpath(args.json_file):
                raise EdgekitError(f"--json-file {args.json_file} is also an input ({path}): choose another file name")
    result = bench(args.artifact, compare=args.compare, warmup=args.warmup, repeat=args.repeat, seed=args.seed,
                   device=args.device, tracker=args.tracker, key=args.key, threads=args.threads)
    if emit_json(args, result):
        return 0
    print(f"{'runner':<14}{'median ms':>11}{'p90 ms':>10}{'runs':>6}   threads={result['threads']}")
    print(f"{'tvm':<14}{result['median_ms']:>11.3f}{result['p90_ms']:>10.3f}{result['runs']:>6}")
    if "ort_median_ms" in result:
        print(f"{'onnxruntime':<14}{result['ort_median_ms']:>11.3f}{result['ort_p90_ms']:>10.3f}{result['ort_runs']:>6}")
        print(f"tvm is {result['speedup_vs_ort']:.2f}x onnxruntime's speed")
    return 0
