"""`edgekit run`: run a compiled artifact on an input (.npy/.npz or an image) and save the outputs."""
from __future__ import annotations

import os
from pathlib import Path

from edgekit.commands import add_command, add_json_flags, check_json_file, positive_int, print_json
from edgekit.errors import EdgekitError, warn

EXAMPLES = """\
  edgekit run build/litepose --input person.png                 (writes litepose outputs + a PNG)
  edgekit run build/m --input x.npy --output y.npy
  edgekit run build/m --input inputs.npz --output outputs.npz    (one array per input name)
  edgekit run build/m --input x.npy --json                       (output shapes and ranges as JSON)
  edgekit run build/m-arm --input x.npy --device 192.168.1.7:9090
  edgekit run build/m-arm --input x.npy --tracker 10.0.0.2:9190 --key rk3588
"""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def add_device_flags(p):
    p.add_argument("--device", default=None, metavar="HOST:PORT", help="run on a board's TVM RPC server")
    p.add_argument("--tracker", default=None, metavar="HOST:PORT", help="get a board from a TVM RPC tracker")
    p.add_argument("--key", default=None, help="device key at the tracker")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="runtime threads, at least 1 (default: the compile's num-cores)")


def register(subparsers):
    p = add_command(subparsers, "run", "Run a compiled artifact on an input and save its outputs.", EXAMPLES, run)
    p.add_argument("artifact", help="artifact folder written by `edgekit compile`")
    p.add_argument("--input", required=True, help=".npy (one input), .npz (by input name), or an image (.png/.jpg)")
    p.add_argument("--output", default=None,
                   help=".npy (first output) or .npz (all outputs); default: ARTIFACT/outputs.npz")
    p.add_argument("--picture", default=None,
                   help="PNG with a human-readable result (zoo models; default beside --output)")
    add_json_flags(p)
    add_device_flags(p)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _load_npy(p: Path):
    import numpy as np

    try:
        value = np.load(p, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc) or "Object arrays" in str(exc):
            raise EdgekitError(f"--input {p}: holds Python objects (object arrays / pickled data are not "
                               "accepted): save a numeric array") from None
        raise EdgekitError(f"--input {p}: not a readable .npy file ({_first_line(exc)})") from None
    except Exception as exc:  # EOFError, OSError, zipfile errors...
        raise EdgekitError(f"--input {p}: not a readable .npy file ({_first_line(exc)})") from None
    if not isinstance(value, np.ndarray):
        if hasattr(value, "close"):
            value.close()
        raise EdgekitError(f"--input {p}: is an .npz archive, not an .npy array: rename it to .npz")
    return value


def _load_npz(p: Path) -> dict:
    import numpy as np

    try:
        data = np.load(p, allow_pickle=False)
    except ValueError as exc:
        why = "it holds pickled Python objects" if "pickle" in str(exc) else _first_line(exc)
        raise EdgekitError(f"--input {p}: not a readable .npz archive ({why})") from None
    except Exception as exc:  # BadZipFile, EOFError, OSError...
        raise EdgekitError(f"--input {p}: not a readable .npz archive ({_first_line(exc)})") from None
    if isinstance(data, np.ndarray):
        raise EdgekitError(f"--input {p}: is an .npy array, not an .npz archive: rename it to .npy")
    feeds = {}
    with data:
        for key in data.files:
            try:
                feeds[key] = data[key]
            except ValueError as exc:
                if "Object arrays" in str(exc) or "pickle" in str(exc):
                    raise EdgekitError(f"--input {p}: array {key!r} holds Python objects (object arrays are "
                                       "not accepted)") from None
                raise EdgekitError(f"--input {p}: array {key!r} cannot be read ({_first_line(exc)})") from None
            except Exception as exc:  # a corrupted member: bad CRC, zlib error, truncated
                raise EdgekitError(f"--input {p}: array {key!r} cannot be read ({_first_line(exc)})") from None
    if not feeds:
        raise EdgekitError(f"--input {p}: the .npz archive holds no arrays")
    return feeds


def load_feeds(path: str, artifact) -> dict:
    """Input file -> {input name: array}, checked against the artifact's inputs (images are
    resized and normalised for the model). Every problem names the file."""
    p = Path(path)
    if p.is_dir():
        raise EdgekitError(f"--input {path}: is a folder, expected a .npy, .npz or image file")
    if not p.is_file():
        raise EdgekitError(f"--input {path}: no such file")
    specs = artifact.inputs
    if not specs:
        raise EdgekitError(f"{artifact.folder}: the model has no inputs, so --input {path} cannot feed it")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        if len(specs) != 1:
            raise EdgekitError(f"--input {path}: the model has {len(specs)} inputs; give an .npz with "
                               f"arrays {', '.join(s['name'] for s in specs)}")
        feeds = {specs[0]["name"]: _load_npy(p)}
    elif suffix == ".npz":
        feeds = _load_npz(p)
    elif suffix in IMAGE_SUFFIXES:
        from edgekit.runtime import images

        try:
            feeds = {specs[0]["name"]: images.image_to_input(p, specs[0], artifact.meta.get("zoo") or {})}
        except EdgekitError:
            raise
        except Exception as exc:  # PIL: truncated data, decompression bombs, broken headers...
            raise EdgekitError(f"--input {path}: not a readable image ({type(exc).__name__}: "
                               f"{_first_line(exc)})") from None
    else:
        raise EdgekitError(f"--input {path}: unsupported file type {suffix!r} (use .npy, .npz or an image)")
    for name, value in feeds.items():
        if value.dtype.hasobject:
            raise EdgekitError(f"--input {path}: array {name!r} holds Python objects (dtype object)")
    try:
        artifact.validate(feeds)
    except EdgekitError as exc:
        raise EdgekitError(f"--input {path}: {exc}") from None
    return feeds


def write_npz(path: Path, arrays: dict) -> None:
    """np.savez without its keyword-argument names (an output may be called `file`)."""
    import zipfile

    import numpy as np

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def _write_outputs(outputs: dict, tmp: Path, suffix: str) -> None:
    import numpy as np

    if suffix == ".npy":
        with open(tmp, "wb") as fh:
            np.lib.format.write_array(fh, np.asanyarray(next(iter(outputs.values()))), allow_pickle=False)
    else:
        write_npz(tmp, outputs)


def _picture_plan(args, artifact, out_path: Path) -> Path | None:
    """Where the picture goes, or None when this model's first output cannot make one."""
    import numpy as np

    zoo = artifact.meta.get("zoo") or {}
    if not (args.picture or zoo):
        return None
    first = artifact.outputs[0]
    why = None
    try:
        import PIL  # noqa: F401
    except ImportError:
        why = "Pillow is not installed"
    if why is None and len(first["shape"]) != 4:
        why = f"the first output {first['name']!r} of shape {first['shape']} is not an NCHW image"
    if why is None and int(np.prod(first["shape"])) == 0:
        why = f"the first output {first['name']!r} of shape {first['shape']} is empty"
    if why:
        if args.picture:
            warn(f"--picture {args.picture}: no picture drawn ({why})")
        return None
    if args.picture:
        picture = Path(args.picture)
        if picture.suffix.lower() != ".png":
            raise EdgekitError(f"--picture {picture}: use a .png file name")
        return picture
    picture = out_path.with_suffix(".png")
    if os.path.realpath(picture) == os.path.realpath(args.input):
        picture = out_path.with_name(out_path.stem + "-picture.png")  # never the input image itself
    return picture


def summarize(outputs: dict) -> dict:
    import numpy as np

    summary = {}
    for name, v in outputs.items():
        finite = v.size > 0 and v.dtype.kind in "biuf"
        summary[name] = {"shape": list(v.shape), "dtype": v.dtype.name,
                         "min": float(np.min(v)) if finite else None,
                         "max": float(np.max(v)) if finite else None}
    return summary


def _range(s: dict) -> str:
    if s["min"] is None:
        return "empty" if 0 in s["shape"] else "no range"
    return f"range [{s['min']:.4g}, {s['max']:.4g}]"


def run(args) -> int:
    import json

    from edgekit.fileio import OutputSet
    from edgekit.runtime import load, open_session

    check_json_file(args)
    artifact = load(args.artifact)
    feeds = load_feeds(args.input, artifact)  # every input checked before any work
    out_path = Path(args.output) if args.output else Path(args.artifact) / "outputs.npz"
    if out_path.suffix.lower() not in (".npy", ".npz"):
        raise EdgekitError(f"--output {out_path}: use a .npy or .npz file name")
    picture = _picture_plan(args, artifact, out_path)
    inputs = [args.input, artifact.folder / "edgekit-artifact.json", artifact.library]
    planned = [(out_path, "--output"), (picture, "--picture"), (args.json_file, "--json-file")]
    OutputSet.precheck(planned, inputs)  # before any work, and before any temporary appears
    with open_session(artifact, device=args.device, tracker=args.tracker, key=args.key,
                      num_threads=args.threads) as session:
        outputs = session.run(feeds)
    with OutputSet(inputs=inputs) as out:
        out_tmp = out.file(out_path, "--output")
        picture_tmp = out.file(picture, "--picture") if picture else None
        json_tmp = out.file(args.json_file, "--json-file") if args.json_file else None
        _write_outputs(outputs, out_tmp, out_path.suffix.lower())
        if picture_tmp is not None:
            from edgekit.runtime import images

            if images.save_picture(outputs, feeds, artifact.meta.get("zoo") or {}, picture_tmp) is None:
                first = next(iter(outputs))
                raise EdgekitError(f"--picture {picture}: the output {first!r} of shape "
                                   f"{list(outputs[first].shape)} is not an image (the metadata says "
                                   f"{artifact.outputs[0]['shape']}): the artifact is inconsistent")
        summary = summarize(outputs)
        document = {"outputs": summary, "saved": str(out_path), "picture": str(picture) if picture else None}
        if json_tmp is not None:
            json_tmp.write_text(json.dumps(document, indent=2) + "\n")
    if print_json(args, document):
        return 0
    for name, s in summary.items():
        print(f"{name}: shape {s['shape']} {s['dtype']} {_range(s)}")
    print(f"saved {out_path}" + (f" and {picture}" if picture else ""))
    return 0
