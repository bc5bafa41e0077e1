"""Calibration data sources: a zoo dataset name, a folder of images, or .npy/.npz files."""
from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError, require

DEFAULT_COUNT = 32
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def parse_preprocess(spec: str | None) -> dict:
    """'size=128x128,mean=0.5,std=0.5,scale=255' -> dict (mean/std per channel with ':')."""
    out = {"size": None, "mean": [0.0], "std": [1.0], "scale": 255.0}
    if not spec:
        return out
    for part in spec.split(","):
        require("=" in part, f"--preprocess: expected key=value, got {part!r}")
        key, value = (s.strip() for s in part.split("=", 1))
        try:
            if key == "size":
                h, w = value.lower().split("x")
                out["size"] = (int(h), int(w))
            elif key in ("mean", "std"):
                out[key] = [float(v) for v in value.split(":")]
            elif key == "scale":
                out["scale"] = float(value)
            else:
                raise EdgekitError(f"--preprocess: unknown key {key!r} (size, mean, std, scale)")
        except ValueError:
            raise EdgekitError(f"--preprocess: bad value for {key}: {value!r}") from None
    return out


def _image_sample(path: Path, input_name: str, shape, pre: dict) -> dict:
    from skimage import io, transform

    try:
        img = io.imread(str(path))
    except Exception as exc:
        raise EdgekitError(f"{path}: cannot read image ({type(exc).__name__})") from None
    img = np.asarray(img, np.float32)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] == 4:
        img = img[..., :3]
    channels = shape[1] if len(shape) == 4 and shape[1] else img.shape[2]
    if img.shape[2] == 1 and channels == 3:
        img = np.repeat(img, 3, axis=2)
    if img.shape[2] == 3 and channels == 1:
        img = img.mean(axis=2, keepdims=True)
    size = pre["size"] or (shape[2], shape[3])
    img = transform.resize(img, size, preserve_range=True, anti_aliasing=True).astype(np.float32)
    img = img / pre["scale"]
    img = (img - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return {input_name: img.transpose(2, 0, 1)[None].astype(np.float32)}


def load_calibration(source: str, input_names: list[str], input_shapes: list, count: int = DEFAULT_COUNT,
                     preprocess: str | None = None) -> list[dict]:
    """A list of feeds {input name: array} from `source` (see module doc)."""
    require(count >= 1, f"--calib-count must be >= 1, got {count}")
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS + (".npy", ".npz"))
    elif any(ch in source for ch in "*?[") or path.suffix.lower() in (".npy", ".npz"):
        files = [Path(p) for p in sorted(glob.glob(source))]
        require(files or not path.suffix, f"--calib {source}: no such files")
    else:
        return _zoo_samples(source, input_names, count)
    require(len(files) > 0, f"--calib {source}: empty calibration set (no images, .npy or .npz files)")
    feeds = []
    pre = parse_preprocess(preprocess)
    for p in files[:count]:
        if p.suffix.lower() == ".npz":
            with np.load(p) as data:
                missing = [n for n in input_names if n not in data]
                require(not missing, f"{p}: missing arrays for inputs {', '.join(missing)}")
                feeds.append({n: np.asarray(data[n]) for n in input_names})
        elif p.suffix.lower() == ".npy":
            require(len(input_names) == 1, f"{p}: a .npy file feeds one input; the model has "
                                           f"{len(input_names)} (use .npz keyed by input name)")
            arr = np.load(p)
            if len(input_shapes[0]) == arr.ndim + 1:
                arr = arr[None]
            feeds.append({input_names[0]: arr})
        else:
            require(len(input_names) == 1, f"{p}: images feed one input; the model has {len(input_names)}")
            feeds.append(_image_sample(p, input_names[0], input_shapes[0], pre))
    return feeds


def _zoo_samples(name: str, input_names: list[str], count: int) -> list[dict]:
    try:
        from edgekit.data import samples
    except ImportError:
        raise EdgekitError(f"--calib {name}: not a folder or files, and zoo datasets are unavailable") from None
    try:
        got = samples(name, "calib", count)
    except EdgekitError:
        raise
    except Exception as exc:
        raise EdgekitError(f"--calib {name}: not a folder, .npy/.npz files or zoo dataset ({exc})") from None
    feeds = [dict(s.inputs) for s in got]
    if feeds:
        missing = [n for n in input_names if n not in feeds[0]]
        require(not missing, f"--calib {name}: dataset has no inputs named {', '.join(missing)}")
        feeds = [{n: f[n] for n in input_names} for f in feeds]
    return feeds
