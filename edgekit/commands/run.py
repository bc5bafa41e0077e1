"""`edgekit run`: run a compiled artifact on an input (.npy/.npz or an image) and save the outputs."""
from __future__ import annotations

from pathlib import Path

from edgekit.commands import add_command
from edgekit.errors import EdgekitError

EXAMPLES = """\
  edgekit run build/litepose --input person.png                 (writes litepose outputs + a PNG)
  edgekit run build/m --input x.npy --output y.npy
  edgekit run build/m --input inputs.npz --output outputs.npz    (one array per input name)
  edgekit run build/m-arm --input x.npy --device 192.168.1.7:9090
  edgekit run build/m-arm --input x.npy --tracker 10.0.0.2:9190 --key rk3588
"""


def add_device_flags(p):
    p.add_argument("--device", default=None, metavar="HOST:PORT", help="run on a board's TVM RPC server")
    p.add_argument("--tracker", default=None, metavar="HOST:PORT", help="get a board from a TVM RPC tracker")
    p.add_argument("--key", default=None, help="device key at the tracker")
    p.add_argument("--threads", type=int, default=None, help="runtime threads (default: the compile's num-cores)")


def register(subparsers):
    p = add_command(subparsers, "run", "Run a compiled artifact on an input and save its outputs.", EXAMPLES, run)
    p.add_argument("artifact", help="artifact folder written by `edgekit compile`")
    p.add_argument("--input", required=True, help=".npy (one input), .npz (by input name), or an image (.png/.jpg)")
    p.add_argument("--output", default=None,
                   help=".npy (first output) or .npz (all outputs); default: ARTIFACT/outputs.npz")
    p.add_argument("--picture", default=None, help="PNG with a human-readable result (zoo models; default beside --output)")
    p.add_argument("--json", action="store_true", help="print output names, shapes and statistics as JSON")
    add_device_flags(p)


def load_feeds(path: str, artifact) -> dict:
    """Input file -> {input name: array} (images are resized and normalised for the model)."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise EdgekitError(f"--input {path}: no such file")
    specs = artifact.inputs
    suffix = p.suffix.lower()
    if suffix == ".npy":
        if len(specs) != 1:
            raise EdgekitError(f"--input {path}: the model has {len(specs)} inputs; give an .npz with "
                               f"arrays {', '.join(s['name'] for s in specs)}")
        try:
            return {specs[0]["name"]: np.load(p, allow_pickle=False)}
        except ValueError as exc:
            raise EdgekitError(f"--input {path}: not a readable .npy file ({exc})") from None
    if suffix == ".npz":
        with np.load(p, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if suffix in (".png", ".jpg", ".jpeg", ".bmp"):
        from edgekit.runtime import images

        return {specs[0]["name"]: images.image_to_input(p, specs[0], artifact.meta.get("zoo", {}))}
    raise EdgekitError(f"--input {path}: unsupported file type {suffix!r} (use .npy, .npz or an image)")


def save_outputs(outputs: dict, path: Path) -> None:
    import numpy as np

    from edgekit.fileio import atomic_path

    if path.suffix == ".npy":
        with atomic_path(path) as tmp:
            np.save(tmp, next(iter(outputs.values())))
    else:
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **outputs)


def run(args) -> int:
    import json

    import numpy as np

    from edgekit.runtime import open_session

    with open_session(args.artifact, device=args.device, tracker=args.tracker, key=args.key,
                      num_threads=args.threads) as session:
        feeds = load_feeds(args.input, session.artifact)
        outputs = session.run(feeds)
        artifact = session.artifact
    out_path = Path(args.output) if args.output else Path(args.artifact) / "outputs.npz"
    if out_path.suffix not in (".npy", ".npz"):
        raise EdgekitError(f"--output {out_path}: use a .npy or .npz file name")
    save_outputs(outputs, out_path)
    picture = None
    zoo = artifact.meta.get("zoo", {})
    if args.picture or zoo:
        from edgekit.runtime import images

        picture = Path(args.picture) if args.picture else out_path.with_suffix(".png")
        picture = images.save_picture(outputs, feeds, zoo, picture)
    summary = {name: {"shape": list(v.shape), "dtype": v.dtype.name,
                      "min": float(np.min(v)) if v.size else None, "max": float(np.max(v)) if v.size else None}
               for name, v in outputs.items()}
    if args.json:
        print(json.dumps({"outputs": summary, "saved": str(out_path), "picture": str(picture) if picture else None},
                         indent=2))
    else:
        for name, s in summary.items():
            print(f"{name}: shape {s['shape']} {s['dtype']} range [{s['min']:.4g}, {s['max']:.4g}]")
        print(f"saved {out_path}" + (f" and {picture}" if picture else ""))
    return 0
