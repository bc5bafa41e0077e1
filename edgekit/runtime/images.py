"""Images in and pictures out for `edgekit run` (Pillow + numpy; optional on a board).

Pre-processing follows what the exporter recorded in the ONNX metadata
(copied into the artifact as `zoo`): keys ``preprocess`` (``mean``, ``std``,
``scale``) and ``task`` (pose / depth / deblur). Without it an image is
scaled to [0, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError


def _zoo_get(zoo: dict, key: str, default=None):
    for k in (key, f"edgekit.{key}", f"edgekit_{key}"):
        if k in zoo:
            return zoo[k]
    return default


def image_to_input(path: Path, spec: dict, zoo: dict) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise EdgekitError("image inputs need Pillow (pip install pillow), or pass a .npy") from None
    shape = spec["shape"]
    if len(shape) != 4 or shape[1] not in (1, 3):
        raise EdgekitError(f"--input {path}: the model input {spec['name']!r} has shape {shape}, not an NCHW image")
    try:
        img = Image.open(path).convert("RGB" if shape[1] == 3 else "L")
    except OSError as exc:
        raise EdgekitError(f"--input {path}: not a readable image ({exc})") from None
    img = img.resize((shape[3], shape[2]), Image.BILINEAR)
    arr = np.asarray(img, np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    pre = _zoo_get(zoo, "preprocess", {}) or {}
    arr = arr * float(pre.get("scale", 1.0 / 255.0))
    if "mean" in pre:
        arr = arr - np.asarray(pre["mean"], np.float32)
    if "std" in pre:
        arr = arr / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None]).astype(spec["dtype"])


def _colormap(values: np.ndarray) -> np.ndarray:
    """2-D array -> RGB uint8 with a perceptual colour map."""
    v = values.astype(np.float64)
    lo, hi = np.nanmin(v), np.nanmax(v)
    v = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    try:
        from matplotlib import colormaps

        return (colormaps["magma"](v)[..., :3] * 255).astype(np.uint8)
    except ImportError:
        g = (v * 255).astype(np.uint8)
        return np.stack([g, g, g], -1)


def _to_rgb(chw: np.ndarray, zoo: dict) -> np.ndarray:
    pre = _zoo_get(zoo, "preprocess", {}) or {}
    x = chw.transpose(1, 2, 0).astype(np.float64)
    if "std" in pre:
        x = x * np.asarray(pre["std"])
    if "mean" in pre:
        x = x + np.asarray(pre["mean"])
    x = x / float(pre.get("scale", 1.0 / 255.0))
    if x.shape[2] == 1:
        x = np.repeat(x, 3, 2)
    return np.clip(x, 0, 255).astype(np.uint8)


def save_picture(outputs: dict, feeds: dict, zoo: dict, path: Path) -> Path | None:
    """A human-readable picture of the first image-like output; None when there is none."""
    try:
        from PIL import Image
    except ImportError:
        return None
    task = str(_zoo_get(zoo, "task", "") or "")
    first = next(iter(outputs.values()))
    image_in = next((v for v in feeds.values() if np.asarray(v).ndim == 4), None)
    if first.ndim != 4:
        return None
    if task == "deblur" or (task == "" and first.shape[1] == 3):
        rgb = _to_rgb(first[0], zoo)
    elif task == "pose":
        heat = first[0, : max(1, first.shape[1] // 2)].max(0)  # heatmaps come first, tags after
        rgb = _colormap(heat)
        if image_in is not None:
            base = np.asarray(Image.fromarray(_to_rgb(np.asarray(image_in)[0], zoo)).resize(rgb.shape[1::-1]))
            rgb = (0.5 * base + 0.5 * rgb).astype(np.uint8)
    else:
        rgb = _colormap(first[0, 0] if first.shape[1] == 1 else first[0].max(0))
    from edgekit.fileio import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return path
