"""Pictures a person can check at a glance: one PNG per sample (matplotlib, Agg)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgekit.data.pose import SKELETON


def _figure(columns: int, size: float = 2.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=(size * columns, size + 0.3))
    for ax in np.atleast_1d(axes):
        ax.axis("off")
    return plt, fig, np.atleast_1d(axes)


def _rgb(image):
    return np.clip(np.asarray(image)[0].transpose(1, 2, 0), 0, 1)


def _skeleton(ax, kp, colour, min_score=0.0, lw=1.5):
    for a, b in SKELETON:
        if kp[a, 2] > min_score and kp[b, 2] > min_score:
            ax.plot([kp[a, 0] - 0.5, kp[b, 0] - 0.5], [kp[a, 1] - 0.5, kp[b, 1] - 0.5], "-", color=colour, lw=lw)
    m = kp[:, 2] > min_score
    ax.scatter(kp[m, 0] - 0.5, kp[m, 1] - 0.5, s=6, color=colour, zorder=3)


def pose(path: Path, sample, people, index: int):
    plt, fig, (a, b) = _figure(2)
    colours = plt.get_cmap("tab10")
    image = _rgb(sample.inputs["image"])
    a.imshow(image)
    a.set_title("ground truth", fontsize=8)
    for i, kp in enumerate(sample.target["keypoints"]):
        _skeleton(a, kp, colours(i % 10))
    b.imshow(image)
    b.set_title(f"predicted ({sum(1 for _, s in people if s > 0.2)} people, score>0.2)", fontsize=8)
    for i, (kp, score) in enumerate(sorted(people, key=lambda p: -p[1])):
        if score > 0.2:
            _skeleton(b, kp, colours(i % 10), min_score=0.1)
    _save(plt, fig, path / f"pose_{index:04d}.png")


def depth(path: Path, sample, pred, index: int):
    plt, fig, axes = _figure(4)
    gt = sample.target
    pred = np.asarray(pred).reshape(gt.shape)
    vmax = float(np.percentile(gt, 99))
    axes[0].imshow(_rgb(sample.inputs["image"]))
    axes[0].set_title("input", fontsize=8)
    axes[1].imshow(gt, cmap="magma_r", vmin=0, vmax=vmax)
    axes[1].set_title(f"ground truth (0-{vmax:.1f} m)", fontsize=8)
    axes[2].imshow(pred, cmap="magma_r", vmin=0, vmax=vmax)
    axes[2].set_title("predicted (same scale)", fontsize=8)
    rel = np.abs(pred - gt) / gt
    axes[3].imshow(rel, cmap="viridis", vmin=0, vmax=0.5)
    axes[3].set_title(f"|pred-gt|/gt, mean {rel.mean():.3f}", fontsize=8)
    _save(plt, fig, path / f"depth_{index:04d}.png")


def deblur(path: Path, sample, restored, index: int):
    from skimage.metrics import peak_signal_noise_ratio as psnr

    plt, fig, axes = _figure(3)
    sharp = sample.target
    blurred = sample.inputs["image"][0]
    for ax, img, title in ((axes[0], blurred, f"blurred {psnr(sharp, blurred, data_range=1):.2f} dB"),
                           (axes[1], restored, f"restored {psnr(sharp, restored, data_range=1):.2f} dB"),
                           (axes[2], sharp, "sharp")):
        ax.imshow(np.clip(img.transpose(1, 2, 0), 0, 1), interpolation="nearest")
        ax.set_title(title, fontsize=8)
    _save(plt, fig, path / f"deblur_{index:04d}.png")


def lm(path: Path, sample, predicted, index: int):
    record = {"index": index, "kind": sample.target["kind"], "length": int(sample.inputs["tokens"].shape[-1]),
              "answers": sample.target["answers"].tolist(), "predicted": np.asarray(predicted).tolist()}
    with open(path / "lm_queries.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _save(plt, fig, file: Path):
    fig.tight_layout()
    fig.savefig(file, dpi=90)
    plt.close(fig)


DRAW = {"pose": pose, "depth": depth, "deblur": deblur, "lm": lm}
