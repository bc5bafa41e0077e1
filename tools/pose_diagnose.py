"""Where does a LitePose model lose keypoint AP: in grouping or in localisation?

Runs the model on the pose test split and scores three decodings of the same
outputs with pycocotools:

  decoder        edgekit's bottom-up decoder (what `edgekit eval` reports)
  oracle groups  every ground-truth person gets, for each joint, the strongest
                 heatmap location within --radius heatmap pixels of the true
                 joint: perfect grouping and person count, the model's own
                 localisation (quarter-pixel refined like the decoder)
and prints the localisation error of those oracle peaks in input pixels.

If "oracle groups" is far above "decoder", the tags / grouping are the
problem; if both are low, the heatmaps are not precise enough.

    python tools/pose_diagnose.py                       # committed litepose checkpoint
    python tools/pose_diagnose.py lp.q.onnx --samples 100 --json-file pose_diag.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from edgekit.commands import add_json_flags, check_json_file, emit_json, non_negative_int, positive_int


class OracleGrouping:
    """PoseMetric.people replacement: ground truth says which peak belongs to whom."""

    def __init__(self, radius: int):
        self.radius = radius
        self.errors: list[float] = []  # input pixels, visible joints

    def __call__(self, sample, outputs) -> list:
        from edgekit.eval.pose import fused_maps, quarter_offset, to_input_pixels

        heat, _ = fused_maps(outputs["heatmaps_tags"], outputs["heatmaps_hr"])
        joints_n, size = heat.shape[0], heat.shape[-1]
        stride = sample.inputs["image"].shape[-1] / size
        people = []
        for truth in sample.target["keypoints"]:
            joints = np.zeros((joints_n, 4), np.float32)
            centre = np.clip(truth[:, :2] / stride - 0.5, 0, size - 1)
            for j, (cx, cy) in enumerate(centre):
                y0, x0 = int(max(0, cy - self.radius)), int(max(0, cx - self.radius))
                window = heat[j, y0:int(cy + self.radius) + 1, x0:int(cx + self.radius) + 1]
                y, x = np.unravel_index(np.argmax(window), window.shape)
                joints[j, :3] = (x0 + x, y0 + y, window[y, x])
            quarter_offset(joints, heat)
            kp = to_input_pixels(joints, stride)
            seen = truth[:, 2] > 0
            self.errors += list(np.hypot(*(kp[seen, :2] - truth[seen, :2]).T))
            people.append((kp, float(joints[:, 2].mean())))
        return people


def diagnose(model: str, count: int, radius: int):
    """({name: PoseMetric} for the decoder and the oracle, the OracleGrouping with its errors)."""
    from edgekit.data import samples
    from edgekit.errors import EdgekitError
    from edgekit.eval.pose import PoseMetric
    from edgekit.eval.predictors import predictor
    from edgekit.models import load_reference
    from edgekit.progress import progress

    if Path(model).exists():
        predict = predictor(model)
    elif model == "litepose":
        predict = predictor(load_reference(model))
    else:
        raise EdgekitError(f"{model}: no such file, and the zoo's pose model is 'litepose'")
    metrics = {"decoder": PoseMetric(), "oracle groups": PoseMetric()}
    oracle = OracleGrouping(radius)
    metrics["oracle groups"].people = oracle
    test = samples("litepose", "test", count)
    for i, sample in enumerate(progress(test, desc="pose diagnosis", unit="sample")):
        outputs = predict(sample.inputs)
        if not {"heatmaps_tags", "heatmaps_hr"} <= set(outputs):
            raise EdgekitError(f"{model}: outputs {', '.join(outputs)}; a LitePose model has heatmaps_tags "
                               "and heatmaps_hr")
        for metric in metrics.values():
            metric.update(i, sample, outputs)
    return metrics, oracle


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="litepose",
                        help="zoo model name (its committed checkpoint) or an ONNX file / artifact")
    parser.add_argument("--samples", type=positive_int, default=200, help="test samples (default 200, like eval)")
    parser.add_argument("--radius", type=non_negative_int, default=4, help="oracle search radius in heatmap pixels")
    add_json_flags(parser)
    args = parser.parse_args(argv)

    from edgekit.errors import EdgekitError

    try:
        check_json_file(args)
        metrics, oracle = diagnose(args.model, args.samples, args.radius)
    except EdgekitError as exc:
        print(f"pose_diagnose: error: {exc}", file=sys.stderr)
        return 2
    keys = ("ap", "ap50", "ap75", "ar")
    result = {name: {k: round(m.result()[k], 4) for k in keys} for name, m in metrics.items()}
    err = np.asarray(oracle.errors)
    result["oracle peak error px"] = {"median": round(float(np.median(err)), 2), "mean": round(float(err.mean()), 2),
                                      **{f"within {t} px": round(float((err <= t).mean()), 3) for t in (1, 2, 4)}}
    if emit_json(args, result):
        return 0
    print(f"{'decoding':<16}" + "".join(f"{k:>8}" for k in keys))
    for name in metrics:
        print(f"{name:<16}" + "".join(f"{result[name][k]:>8.3f}" for k in keys))
    print("oracle peaks vs true joints (input pixels): "
          + ", ".join(f"{k} {v}" for k, v in result["oracle peak error px"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
