"""Pictures of what the zoo models do, FP32 above the quantized model: one PNG per task.

    python tools/vis_compare.py                       # litepose depth deblur -> docs/img/vis_<task>.png
    python tools/vis_compare.py --models deblur --index 3 --bits W4A4 --out /tmp/vis

For each model: export the reference checkpoint, quantize it (`full --fast`, the CLI's other
defaults), run `edgekit eval --save-vis` on the first test samples with both files, and stack
sample `--index`'s two pictures (FP32 on top) with the metric of each over those samples.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

MODELS = ("litepose", "depth", "deblur")   # the zoo models with pictures (the LM's are text)


def compare(name: str, bits: str, samples: int, index: int, work: Path, out_dir: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekit import api
    from edgekit.data import task_of
    from edgekit.eval import PRIMARY, evaluate, predictor

    fp32, quantized = work / f"{name}.onnx", work / f"{name}.{bits}.onnx"
    api.export(name, fp32)
    api.quantize(fp32, quantized, weights=int(bits[1]), activations=int(bits[3]), fast=True, calib=name)
    task = task_of(name)
    key, _ = PRIMARY[task]
    rows, images = [], []
    for label, path in (("FP32", fp32), (bits, quantized)):
        vis = work / f"vis_{name}_{label}"
        result = evaluate(name, predictor(str(path)), count=samples, save_vis=vis)
        rows.append((label, result[key]))
        images.append(plt.imread(vis / f"{task}_{index:04d}.png"))
    fig, axes = plt.subplots(2, 1, figsize=(images[0].shape[1] / 90, 2 * images[0].shape[0] / 90 + 0.5))
    for ax, image, (label, value) in zip(axes, images, rows):
        ax.imshow(image)
        ax.axis("off")
        ax.set_title(f"{name} {label}  ({key} {value:.3f} over {samples} test samples)", fontsize=9, loc="left")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"vis_{task}.png"
    tmp = target.with_name(f".{target.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(target)  # written whole or not at all
    return {"model": name, "picture": str(target), **{label: value for label, value in rows}, "metric": key}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--bits", choices=("W4A8", "W4A4", "W8A8"), default="W4A8")
    parser.add_argument("--samples", type=int, default=20, help="test samples the metric is taken over")
    parser.add_argument("--index", type=int, default=0, help="the test sample pictured (< --samples, < 16)")
    parser.add_argument("--out", default="docs/img", help="folder for vis_<task>.png")
    args = parser.parse_args(argv)
    if not 0 <= args.index < min(args.samples, 16):
        parser.error(f"--index must be below --samples and 16 (pictures are drawn for the first 16), "
                     f"got {args.index}")
    print("| model | metric | FP32 | " + args.bits + " | picture |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            r = compare(name, args.bits, args.samples, args.index, Path(work), Path(args.out))
            print(f"| {name} | {r['metric']} | {r['FP32']:.3f} | {r[args.bits]:.3f} | {r['picture']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
