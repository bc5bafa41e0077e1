"""`edgekit quantize`: float ONNX -> int4 QDQ ONNX (QuartDepth-style PTQ)."""
from __future__ import annotations

from pathlib import Path

from edgekit.commands import add_command, positive_int

EXAMPLES = """  edgekit quantize litepose.onnx -o litepose.q.onnx                       # W4A4, method full
  edgekit quantize depth.onnx -o depth.q.onnx --weights 4 --activations 8 --calib depth
  edgekit quantize m.onnx -o m.q.onnx --method rtn --calib 'calib/*.npy'
  edgekit quantize m.onnx -o m.q.onnx --fast --calib images/ --preprocess size=128x128,mean=0.5,std=0.5
  edgekit quantize m.onnx -o m.q.onnx --keep-8bit '/stem/*' '/head/*' --report report.json
  edgekit quantize m.onnx -o m.q.onnx --activations 8 --keep-8bit @first @last
  edgekit quantize m.onnx -o m.q.onnx --activations 8 --max-drop 1% --metric top1 --calib-count 64
  edgekit quantize litepose.onnx -o litepose.q.onnx --activations 8 --max-drop 1% --metric task
"""


def register(subparsers):
    p = add_command(subparsers, "quantize", "Post-training quantization to an int4 QDQ ONNX model.",
                    EXAMPLES, run)
    p.add_argument("model", help="float ONNX model")
    p.add_argument("-o", "--output", required=True, help="quantized QDQ ONNX file to write")
    p.add_argument("--weights", type=int, choices=(4, 8), default=4, help="weight bits (default 4)")
    p.add_argument("--activations", type=int, choices=(4, 8), default=4, help="activation bits (default 4)")
    p.add_argument("--method", choices=("rtn", "polish", "compensate", "reconstruct", "full"), default="full",
                   help="steps to run; each adds to the previous (default full)")
    p.add_argument("--fast", action="store_true",
                   help="a short learned-rounding schedule (50 steps per layer, no Fisher weights)")
    p.add_argument("--calib", help="zoo dataset name, image folder, or .npy/.npz files (glob); default: "
                                   "the zoo dataset named like the model file")
    p.add_argument("--calib-count", type=positive_int, default=32, help="calibration samples (default 32)")
    p.add_argument("--preprocess", help="for image folders: size=HxW,mean=m[:m:m],std=s[:s:s],scale=255")
    p.add_argument("--keep-8bit", nargs="+", default=[], metavar="PATTERN",
                   help="node-name patterns (fnmatch) of layers kept at 8 bits; @first and @last "
                        "name the network's first and last layers (the usual mixed-precision choice), "
                        "@depthwise its depthwise convolutions")
    p.add_argument("--max-drop", type=fraction, metavar="X",
                   help="mixed precision with an accuracy gate: keep the fewest layers at 8 bits so that "
                        "--metric stays within X of FP32 on held-out calibration samples (those after the "
                        "first 16; 1%% or 0.01)")
    p.add_argument("--metric", choices=("error", "top1", "cosine", "task"), default=None,
                   help="what --max-drop measures: error = relative output error ||q-f||/||f|| (default; "
                        "1%% ~ 40 dB output SQNR), top1 = argmax agreement over the last axis (classifiers, "
                        "token logits), cosine = cosine similarity of the outputs (embeddings), task = a zoo "
                        "model's own metric (pose AP, depth AbsRel, deblur PSNR, LM accuracy) on its "
                        "labelled calibration data, relative to FP32")
    p.add_argument("--iters", type=positive_int, default=None, help="learned-rounding iterations per layer")
    p.add_argument("--no-guard", dest="guard", action="store_false",
                   help="keep compensate and reconstruct even where they lower the output SQNR on held-out "
                        "calibration samples (with --max-drop: raise the gate metric's drop); by default such "
                        "a step is undone, and the output says so")
    p.add_argument("--report", metavar="REPORT.json",
                   help="also write a JSON report (per-step, per-layer SQNR) and a PNG chart of it beside "
                        "it (REPORT.png); model, report and chart are written together or not at all")
    return p


def fraction(text: str) -> float:
    """'1%' or '0.01' -> 0.01, strictly between 0 and 1."""
    import argparse

    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction or percentage: {text!r} (e.g. 1% or 0.01)") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (or 0% and 100%), got {text!r}")
    return value


def run(args) -> int:
    from edgekit import api
    from edgekit.errors import require

    require(args.metric is None or args.max_drop is not None, "--metric only applies with --max-drop")

    out = Path(args.output)
    report = api.quantize(args.model, out, weights=args.weights, activations=args.activations, method=args.method,
                          fast=args.fast, calib=args.calib, calib_count=args.calib_count,
                          preprocess=args.preprocess, keep_8bit=args.keep_8bit, iters=args.iters,
                          report=args.report, guard=args.guard, max_drop=args.max_drop,
                          metric=args.metric or "error")
    last = report["steps"][-1]["sqnr_db"]["outputs"]
    print(f"wrote {out} (W{args.weights}A{args.activations}, method {args.method}{' fast' if args.fast else ''}, "
          f"{report['seconds']:.1f} s); output SQNR vs float on {report['sqnr_samples']} calibration samples: "
          + ", ".join(f"{k} {v:.1f} dB" for k, v in last.items()))
    for step in report["steps"]:
        undone = ""
        if not step.get("kept", True):
            if "gate_drop" in step:  # judged by the --max-drop metric
                before, after = step["gate_drop"]
                undone = (f"  undone: it raised the --max-drop metric's drop from {100 * before:.2f}% "
                          f"to {100 * after:.2f}%")
            else:
                undone = "  undone: it lowered the output SQNR to " + ", ".join(
                    f"{v:.1f} dB" for v in step["rejected_sqnr_db"]["outputs"].values())
        print(f"  {step['step']:<12} " + ", ".join(f"{k} {v:.1f} dB" for k, v in step["sqnr_db"]["outputs"].items())
              + f"  ({step['seconds']:.1f} s){undone}")
    cost = report.get("integer_nonlinear")
    if cost:
        print("  integer non-linear ops vs their float versions: " + ", ".join(
            f"{kind} x{k['ops']} {100 * k['equal_fraction']:.1f}% codes equal (max diff {k['max_code_diff']})"
            for kind, k in cost["kinds"].items()) + "; output SQNR " + ", ".join(
            f"{v if isinstance(v, str) else f'{v:.1f} dB'}" for v in cost["output_sqnr_db"].values()))
    for step in report["steps"]:
        wide = step["details"].get("wide_points") if step["step"] == "polish" else None
        if wide and wide["points"]:   # polish kept outlier-dominated activations at 16 bits
            print(f"  polish: {len(wide['points'])} activation(s) at {wide['bits']} bits (outliers: "
                  f"output error {wide['error_before']:.3g} -> {wide['error_after']:.3g} with float weights; "
                  "the accelerator runs their ops on the host): " + ", ".join(wide["points"]))
        if step["step"] == "mixed-precision":  # its decision, and its gate on the finished model
            print_mixed(step["details"])
    return 0


def print_mixed(d: dict) -> None:
    """The mixed-precision decision: which layers went to 8 bits, the gate, the size."""
    from edgekit.errors import warn

    kinds = {}
    for p in d["promoted"]:
        for k in p["kinds"]:
            kinds[k] = kinds.get(k, 0) + 1
    kind_text = (" (" + ", ".join(f"{n} {k[1:]}" for k, n in kinds.items()) + ")") if kinds else ""
    layers = [p["layer"] for p in d["promoted"] if "layer" in p]
    acts = [p["activation"] for p in d["promoted"] if "activation" in p]
    names = ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "")
    if d["candidates"]:
        trimmed = f", {len(d['trimmed'])} more chosen and trimmed after the fits" if d.get("trimmed") else ""
        print(f"  mixed precision: {len(layers)} layers{kind_text} and {len(acts)} other activations to 8 bits "
              f"(of {d['candidates']} candidates{trimmed}){': ' + names if names else ''}")
    else:
        print("  mixed precision: no layer to 8 bits (the gate is met at the chosen bits)")
    print(f"    {d['metric']} drop {100 * d['drop_before']:.2f}% -> {100 * d['drop_after']:.2f}% when chosen, "
          f"{100 * d['drop_final']:.2f}% finished (gate {100 * d['max_drop']:.2f}%, {d['samples']} "
          f"{d['samples_kind']} samples); weights {d['weight_bytes'] / 1024:.1f} KiB vs "
          f"{d['weight_bytes_all_8bit'] / 1024:.1f} KiB all-8-bit")
    if not d["met"]:
        every = d["promoted"] and len(d["promoted"]) == d["candidates"]
        warn(f"--max-drop not met: the {d['metric']} drop of the finished model is {100 * d['drop_final']:.2f}%"
             + (" with every layer at 8 bits" if every else "")
             + " (more calibration samples, or a larger --max-drop)")
