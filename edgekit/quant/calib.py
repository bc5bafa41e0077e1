"""Calibration data sources: a zoo dataset name, a folder of images, or .npy/.npz files."""
from __future__ import annotations

import glob
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
                require(min(out["size"]) >= 1, f"--preprocess: size must be at least 1x1, got {value!r}")
            elif key in ("mean", "std"):
                out[key] = [float(v) for v in value.split(":")]
            elif key == "scale":
                out["scale"] = float(value)
            else:
                raise EdgekitError(f"--preprocess: unknown key {key!r} (size, mean, std, scale)")
        except ValueError:
            raise EdgekitError(f"--preprocess: bad value for {key}: {value!r}") from None
    for key in ("mean", "std", "scale"):
        values = np.atleast_1d(np.asarray(out[key], np.float64))
        require(bool(np.all(np.isfinite(values))), f"--preprocess: {key} must be finite, got {values.tolist()}")
    require(all(v != 0 for v in out["std"]) and out["scale"] != 0, "--preprocess: std and scale must not be 0")
    for key in ("mean", "std"):
        require(len(out[key]) in (1, 3), f"--preprocess: {key} takes 1 or 3 values (m or m:m:m), "
                                         f"got {len(out[key])}")
    return out


def read_array(path: Path, what: str = "calibration file") -> np.ndarray | dict:
    """A .npy array or a .npz {name: array}, with one-line errors for anything unreadable.

    Pickled (object) arrays are refused: loading them would run code from the file.
    """
    import tokenize
    import zipfile
    import zlib

    # numpy falls back to unpickling a file without the NumPy header: say what the file really is
    suffix = path.suffix.lower()
    magic = {".npz": (b"PK", "not a zip archive"), ".npy": (b"\x93NUMPY", "no NumPy header")}.get(suffix)
    if magic and path.is_file():
        with open(path, "rb") as f:
            head = f.read(len(magic[0]))
        if head != magic[0]:
            raise EdgekitError(f"{what} {path}: not a readable {suffix} file ({magic[1]}"
                               f"{'; it is empty' if not head else ''})")
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: np.asarray(data[k]) for k in data.files}
        else:
            arrays = np.load(path, allow_pickle=False)
            if not isinstance(arrays, np.ndarray):
                raise ValueError("not an .npy array")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, TypeError, SyntaxError,
            tokenize.TokenError) as exc:  # the last two: numpy parsing a corrupted header dict
        reason = "it holds Python objects (pickle), which are refused" if "pickle" in str(exc).lower() \
            else f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else 'unreadable'}"
        raise EdgekitError(f"{what} {path}: not a readable {path.suffix.lower()} file ({reason})") from None
    for name, arr in (arrays.items() if isinstance(arrays, dict) else [("", arrays)]):
        label = f"{path}" + (f" array {name!r}" if name else "")
        require(arr.dtype.kind in "biuf", f"{what} {label}: dtype {arr.dtype} is not numeric")
    return arrays


def _check_array(arr: np.ndarray, label: str, dtype, shape) -> None:
    """One calibration array against the model input's element type and rank."""
    if dtype is not None:
        want = np.dtype(dtype)
        ok = arr.dtype.kind == "f" if want.kind == "f" else arr.dtype.kind in "iub" if want.kind in "iu" \
            else arr.dtype == want
        require(ok, f"{label}: dtype {arr.dtype}, but the model input is {want} "
                    f"(convert and scale the data first: image bytes need --preprocess or an image folder)")
    if shape is not None:
        require(arr.ndim == len(shape), f"{label}: shape {list(arr.shape)}, model expects "
                                        f"{['?' if d is None else d for d in shape]}")


def _image_sample(path: Path, input_name: str, shape, pre: dict) -> dict:
    from skimage import io, transform

    try:
        img = io.imread(str(path))
    except Exception as exc:
        raise EdgekitError(f"{path}: cannot read image ({type(exc).__name__})") from None
    require(len(shape) == 4, f"{path}: images feed a 4-D NCHW input; model input {input_name!r} has "
                             f"shape {['?' if d is None else d for d in shape]}")
    img = np.asarray(img, np.float32)
    require(img.ndim in (2, 3) and img.size > 0, f"{path}: not a 2-D image (array of shape {list(img.shape)})")
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[2] in (2, 4):  # drop the alpha channel
        img = img[..., :-1]
    channels = shape[1] if shape[1] else img.shape[2]
    if img.shape[2] == 1 and channels == 3:
        img = np.repeat(img, 3, axis=2)
    if img.shape[2] == 3 and channels == 1:
        img = img.mean(axis=2, keepdims=True)
    require(img.shape[2] == channels, f"{path}: image has {img.shape[2]} channels, model input {input_name!r} "
                                      f"takes {channels}")
    size = pre["size"] or (shape[2], shape[3])
    require(all(size), f"{path}: model input {input_name!r} has dynamic height/width: give "
                       "--preprocess size=HxW")
    img = transform.resize(img, size, preserve_range=True, anti_aliasing=True).astype(np.float32)
    img = img / pre["scale"]
    img = (img - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return {input_name: img.transpose(2, 0, 1)[None].astype(np.float32)}


def calibration_files(source: str, count: int = DEFAULT_COUNT) -> list[Path] | None:
    """The files `source` names (a folder or a glob), the first `count`; None for a zoo dataset name."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS + (".npy", ".npz"))
    elif any(ch in source for ch in "*?[") or path.suffix.lower() in (".npy", ".npz"):
        files = [Path(p) for p in sorted(glob.glob(source))]
        require(files or not path.suffix, f"--calib {source}: no such files")
    else:
        return None
    require(len(files) > 0, f"--calib {source}: empty calibration set (no images, .npy or .npz files)")
    return files[:count]


def load_calibration(source: str, input_names: list[str], input_shapes: list, count: int = DEFAULT_COUNT,
                     preprocess: str | None = None, dtypes: list | None = None) -> list[dict]:
    """A list of feeds {input name: array} from `source` (see module doc)."""
    require(count >= 1, f"--calib-count must be >= 1, got {count}")
    pre = parse_preprocess(preprocess)
    dtypes = dtypes or [None] * len(input_names)
    files = calibration_files(source, count)
    if files is None:
        return _zoo_samples(source, input_names, count)
    feeds = []
    for p in files:
        require(p.is_file(), f"--calib {source}: {p} is not a file")
        if p.suffix.lower() == ".npz":
            data = read_array(p)
            missing = [n for n in input_names if n not in data]
            require(not missing, f"{p}: missing arrays for inputs {', '.join(missing)}")
            for n, dt, shape in zip(input_names, dtypes, input_shapes):
                _check_array(data[n], f"calibration file {p} array {n!r}", dt, shape)
            feeds.append({n: data[n] for n in input_names})
        elif p.suffix.lower() == ".npy":
            require(len(input_names) == 1, f"{p}: a .npy file feeds one input; the model has "
                                           f"{len(input_names)} (use .npz keyed by input name)")
            arr = read_array(p)
            if len(input_shapes[0]) == arr.ndim + 1:
                arr = arr[None]
            _check_array(arr, f"calibration file {p}", dtypes[0], input_shapes[0])
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
