"""Per-task metrics for depth, deblurring and the long-context LM.

Each metric class: `outputs` (the zoo output names it reads),
`update(index, sample, outputs)` and `result() -> dict`.
"""
from __future__ import annotations

import numpy as np


class DepthMetric:
    """AbsRel, RMSE and delta<1.25 averaged over images (Eigen et al.'s protocol).

    The plain keys (`absrel`, `rmse`, `delta1`) compare the metric prediction
    as it is; the `_median` keys first scale each prediction by
    median(gt) / median(pred), the usual protocol for relative-depth models.
    """

    outputs = ("depth",)

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 20.0):
        self.min_depth, self.max_depth = min_depth, max_depth
        self.rows = {"metric": [], "median": []}

    @staticmethod
    def errors(pred: np.ndarray, gt: np.ndarray) -> dict:
        ratio = np.maximum(pred / gt, gt / pred)
        return {"absrel": float(np.mean(np.abs(pred - gt) / gt)),
                "rmse": float(np.sqrt(np.mean((pred - gt) ** 2))),
                "delta1": float(np.mean(ratio < 1.25)),
                "delta2": float(np.mean(ratio < 1.25 ** 2)),
                "delta3": float(np.mean(ratio < 1.25 ** 3))}

    def update(self, index, sample, outputs):
        gt = np.asarray(sample.target, np.float64)
        pred = np.asarray(outputs["depth"], np.float64).reshape(gt.shape)
        valid = (gt > self.min_depth) & (gt <= self.max_depth) & np.isfinite(pred)
        g, p = gt[valid], np.clip(pred[valid], self.min_depth, self.max_depth)
        self.rows["metric"].append(self.errors(p, g))
        scaled = np.clip(p * np.median(g) / max(np.median(p), 1e-9), self.min_depth, self.max_depth)
        self.rows["median"].append(self.errors(scaled, g))
        return pred

    def result(self) -> dict:
        out = {}
        for mode, suffix in (("metric", ""), ("median", "_median")):
            rows = self.rows[mode]
            for key in rows[0] if rows else ():
                out[key + suffix] = float(np.mean([r[key] for r in rows]))
        out["scaling"] = "none (metric); *_median: per-image median scaling"
        return out


class DeblurMetric:
    """PSNR and SSIM (scikit-image) of the restored and of the blurred input vs the sharp image."""

    outputs = ("restored",)

    def __init__(self):
        self.rows = []

    def update(self, index, sample, outputs):
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity

        sharp = sample.target
        blurred = sample.inputs["image"][0]
        restored = np.clip(np.asarray(outputs["restored"], np.float32).reshape(sharp.shape), 0, 1)
        row = {"psnr": peak_signal_noise_ratio(sharp, restored, data_range=1.0),
               "psnr_input": peak_signal_noise_ratio(sharp, blurred, data_range=1.0),
               "ssim": structural_similarity(sharp, restored, data_range=1.0, channel_axis=0),
               "ssim_input": structural_similarity(sharp, blurred, data_range=1.0, channel_axis=0)}
        self.rows.append(row)
        return restored

    def result(self) -> dict:
        out = {k: float(np.mean([r[k] for r in self.rows])) for k in self.rows[0]} if self.rows else {}
        if out:
            out["psnr_gain"] = out["psnr"] - out["psnr_input"]
        return out


class LMMetric:
    """Retrieval accuracy: the argmax of the logits at each query's key is its value."""

    outputs = ("logits",)

    def __init__(self):
        self.hits = {}
        self.examples = []

    def update(self, index, sample, outputs):
        logits = np.asarray(outputs["logits"])[0]
        pos, ans = sample.target["positions"], sample.target["answers"]
        pred = logits[pos].argmax(-1)
        self.hits.setdefault(sample.target["kind"], []).extend((pred == ans).tolist())
        if len(self.examples) < 30:
            self.examples.append({"kind": sample.target["kind"], "length": int(logits.shape[0]),
                                  "answers": ans.tolist(), "predicted": pred.tolist()})
        return pred

    def result(self) -> dict:
        every = [h for hits in self.hits.values() for h in hits]
        out = {"accuracy": float(np.mean(every)) if every else 0.0, "queries": len(every)}
        for kind, hits in sorted(self.hits.items()):
            out[f"accuracy_{kind}"] = float(np.mean(hits))
        return out
