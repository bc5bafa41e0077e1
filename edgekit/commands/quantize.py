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
    p.add_argument("--iters", type=positive_int, default=None, help="learned-rounding iterations per layer")
    p.add_argument("--no-guard", dest="guard", action="store_false",
                   help="keep compensate and reconstruct even where they lower the output SQNR on held-out "
                        "calibration samples (by default such a step is undone, and the output says so)")
    p.add_argument("--report", metavar="REPORT.json",
                   help="also write a JSON report (per-step, per-layer SQNR) and a PNG chart of it beside "
                        "it (REPORT.png); model, report and chart are written together or not at all")
    return p


def run(args) -> int:
    from edgekit import api

    out = Path(args.output)
    report = api.quantize(args.model, out, weights=args.weights, activations=args.activations, method=args.method,
                          fast=args.fast, calib=args.calib, calib_count=args.calib_count,
                          preprocess=args.preprocess, keep_8bit=args.keep_8bit, iters=args.iters,
                          report=args.report, guard=args.guard)
    last = report["steps"][-1]["sqnr_db"]["outputs"]
    print(f"wrote {out} (W{args.weights}A{args.activations}, method {args.method}{' fast' if args.fast else ''}, "
          f"{report['seconds']:.1f} s); output SQNR vs float on {report['sqnr_samples']} calibration samples: "
          + ", ".join(f"{k} {v:.1f} dB" for k, v in last.items()))
    for step in report["steps"]:
        undone = ""
        if not step.get("kept", True):
            undone = "  undone: it lowered the output SQNR to " + ", ".join(
                f"{v:.1f} dB" for v in step["rejected_sqnr_db"]["outputs"].values())
        print(f"  {step['step']:<12} " + ", ".join(f"{k} {v:.1f} dB" for k, v in step["sqnr_db"]["outputs"].items())
              + f"  ({step['seconds']:.1f} s){undone}")
    return 0
