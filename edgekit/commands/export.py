"""`edgekit export`: a zoo model or your own PyTorch module -> verified ONNX."""
from __future__ import annotations

from edgekit.commands import add_command

EXAMPLES = """\
  edgekit export litepose -o litepose.onnx                      # tiny, 128x128, reference weights
  edgekit export litepose --config xs -o litepose_xs.onnx        # paper variant, 256x256
  edgekit export depth --input-shape 1,3,160,160 -o depth.onnx
  edgekit export lm --input-shape 1,1024 -o lm.onnx
  edgekit export litepose --config xs --checkpoint official_xs.pth -o xs.onnx
  edgekit export --module mypkg.nets:make_net --input-shape 1,3,224,224 \\
                 --checkpoint net.safetensors -o net.onnx
"""


def register(subparsers):
    parser = add_command(
        subparsers, "export",
        "Export a zoo model (or your own module) to ONNX: static shapes, batch 1, BatchNorm "
        "folded; checked with onnx.checker and compared with PyTorch in onnxruntime.",
        EXAMPLES, run)
    parser.add_argument("model", nargs="?", help="zoo model name (see `edgekit zoo list`)")
    parser.add_argument("--config", default="tiny", help="zoo configuration (default: tiny)")
    parser.add_argument("--module", metavar="PKG.MODULE:FACTORY",
                        help="your own module instead of a zoo model: FACTORY() returns an nn.Module")
    parser.add_argument("--checkpoint", metavar="FILE",
                        help="weights to load strictly (.safetensors, or .pt/.pth read with weights_only)")
    parser.add_argument("--random-init", action="store_true",
                        help="tiny config: ignore the committed reference checkpoint (used by default when present)")
    parser.add_argument("--input-shape", action="append", metavar="1,C,H,W",
                        help="static input shape, once per input (zoo default: the config's)")
    parser.add_argument("--input-name", action="append", metavar="NAME",
                        help="input names for --module (default: input)")
    parser.add_argument("--output-name", action="append", metavar="NAME",
                        help="output names for --module (default: output, or output_0, output_1, ...)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 21)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="max abs difference allowed vs PyTorch (default 1e-4 vision, 1e-3 LM)")
    parser.add_argument("--json", action="store_true", help="print the export report as JSON")
    parser.add_argument("-o", "--output", required=True, help="ONNX file to write")


def run(args) -> int:
    import json
    import sys

    from edgekit import export
    from edgekit.errors import EdgekitError

    if bool(args.model) == bool(args.module):
        raise EdgekitError("give either a zoo MODEL or --module PKG.MODULE:FACTORY (not both, not neither)")
    opset = args.opset if args.opset is not None else export.DEFAULT_OPSET
    shapes = [export.parse_shape(s) for s in args.input_shape or []]
    what = f"{args.model}/{args.config}" if args.model else args.module
    print(f"edgekit: exporting {what} (opset {opset}), checking with onnx.checker and onnxruntime ...",
          file=sys.stderr)
    if args.model:
        report = export.export_zoo(args.model, args.output, config=args.config, input_shapes=shapes or None,
                                   opset=opset, checkpoint=args.checkpoint, tolerance=args.tolerance,
                                   random_init=args.random_init)
    else:
        report = export.export_user_module(
            args.module, args.output, shapes, checkpoint=args.checkpoint, opset=opset,
            input_names=args.input_name, output_names=args.output_name,
            tolerance=args.tolerance if args.tolerance is not None else export.VISION_TOLERANCE)
    if args.json:
        print(json.dumps(report.__dict__, indent=2))
    else:
        print(report.summary())
    return 0
