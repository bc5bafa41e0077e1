"""An artifact folder: the compiled library and its metadata, verified before use.

Imports only the standard library, numpy and edgekit.errors, so that it runs
on a board that has just Python, numpy and the TVM runtime.
"""
from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

METADATA = "edgekit-artifact.json"
FORMAT_VERSION = 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _major_minor(version: str) -> tuple:
    parts = str(version).split(".")
    return tuple(parts[:2])


@dataclass
class Artifact:
    folder: Path
    meta: dict

    @property
    def library(self) -> Path:
        return self.folder / self.meta["library"]

    @property
    def inputs(self) -> list[dict]:
        return self.meta["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.meta["outputs"]

    @property
    def arch(self) -> str:
        return self.meta.get("target", {}).get("arch", "?")

    @classmethod
    def load(cls, folder, *, verify_checksum: bool = True) -> "Artifact":
        folder = Path(folder)
        meta_path = folder / METADATA
        if not folder.is_dir():
            raise EdgekitError(f"{folder}: no such artifact folder (make one with `edgekit compile`)")
        if not meta_path.is_file():
            raise EdgekitError(f"{folder}: not an edgekit artifact (missing {METADATA})")
        try:
            meta = json.loads(meta_path.read_text())
        except (ValueError, UnicodeDecodeError):
            raise EdgekitError(f"{meta_path}: corrupted metadata (not valid JSON)") from None
        required = ("format_version", "kind", "library", "sha256", "inputs", "outputs", "target", "versions")
        missing = [k for k in required if k not in meta] if isinstance(meta, dict) else list(required)
        if missing:
            raise EdgekitError(f"{meta_path}: corrupted metadata (missing {', '.join(missing)})")
        if meta["format_version"] != FORMAT_VERSION:
            raise EdgekitError(f"{meta_path}: artifact format {meta['format_version']} is not supported by this "
                               f"edgekit (expects {FORMAT_VERSION}); recompile the model")
        if meta["kind"] != "tvm":
            raise EdgekitError(f"{folder}: a {meta['kind']!r} artifact cannot be run by the TVM runtime")
        art = cls(folder, meta)
        lib = art.library
        if not lib.is_file():
            raise EdgekitError(f"{folder}: library {meta['library']} is missing")
        if verify_checksum:
            actual = _sha256(lib)
            if actual != meta["sha256"]:
                raise EdgekitError(f"{lib}: checksum mismatch (sha256 {actual[:12]}..., metadata says "
                                   f"{str(meta['sha256'])[:12]}...): the library is corrupted or was replaced; recompile")
        return art

    def check_runtime(self, tvm_version: str, machine: str | None = None) -> None:
        """Refuse to load on a runtime of another TVM version or another CPU architecture."""
        built = self.meta["versions"].get("tvm", "?")
        if _major_minor(built) != _major_minor(tvm_version):
            raise EdgekitError(f"{self.folder}: compiled with TVM {built}, but this runtime is TVM {tvm_version}; "
                               "recompile with the runtime's TVM version")
        machine = machine or platform.machine()
        aliases = {"AMD64": "x86_64", "arm64": "aarch64"}
        machine = aliases.get(machine, machine)
        if self.arch != machine:
            raise EdgekitError(f"{self.folder}: compiled for {self.arch} ({self.meta['target'].get('name')}), "
                               f"this machine is {machine}: run it on such a device (--device HOST:PORT) or "
                               "recompile with --target x86-64")

    def validate(self, feeds) -> list[np.ndarray]:
        """dict name->array (or a single array for one-input models) -> arrays in input order."""
        specs = self.inputs
        if not isinstance(feeds, dict):
            if len(specs) != 1:
                raise EdgekitError(f"the model has {len(specs)} inputs ({', '.join(s['name'] for s in specs)}): "
                                   "pass them by name")
            feeds = {specs[0]["name"]: feeds}
        expected = [s["name"] for s in specs]
        unknown = [k for k in feeds if k not in expected]
        missing = [k for k in expected if k not in feeds]
        if unknown or missing:
            raise EdgekitError(f"inputs: expected {expected}, got {list(feeds)}"
                               + (f" (missing {missing})" if missing else "")
                               + (f" (unknown {unknown})" if unknown else ""))
        arrays = []
        for spec in specs:
            arr = np.asarray(feeds[spec["name"]])
            want_shape, want_dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
            if arr.shape != want_shape or arr.dtype != want_dtype:
                raise EdgekitError(f"input {spec['name']!r}: expected shape {list(want_shape)} {want_dtype.name}, "
                                   f"got shape {list(arr.shape)} {arr.dtype.name}")
            arrays.append(np.ascontiguousarray(arr))
        return arrays
