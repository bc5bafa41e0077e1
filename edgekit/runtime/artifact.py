"""An artifact folder: the compiled library and its metadata, verified before use.

Imports only the standard library, numpy, edgekit.errors and edgekit.jsondoc, so that it runs
on a board that has just Python, numpy and the TVM runtime.
"""
from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.jsondoc import inside_folder, is_int, read_object, shown
from edgekit.runtime import native

METADATA = "edgekit-artifact.json"
LIBRARY = "model.so"       # the name compile gives the library (the reader takes the metadata's)
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _major_minor(version: str) -> tuple:
    parts = str(version).split(".")
    return tuple(parts[:2])


# Path fields of the metadata: each must name a file inside the artifact folder.
OPTIONAL_PATH_FIELDS = ("dram_image",)
DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64")
MAX_ELEMENTS = 1 << 32  # per tensor: a shape beyond this is corruption, not a model


def _type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def validate_metadata(meta, meta_path) -> None:
    """The one schema check of `edgekit-artifact.json`: raise EdgekitError naming the first field
    that is missing or of the wrong type/value (every later use of `meta` may then trust it)."""

    def fail(field: str, what: str, value=None, show=True):
        visible = show and not isinstance(value, (dict, list)) and value is not None
        got = f", got {_type_name(value)}" + (f" {shown(value)}" if visible else "")
        raise EdgekitError(f"{meta_path}: corrupted metadata: field {field} must be {what}{got}")

    if not isinstance(meta, dict):
        raise EdgekitError(f"{meta_path}: corrupted metadata (a JSON object expected, got {_type_name(meta)})")
    required = ("format_version", "kind", "library", "sha256", "inputs", "outputs", "target", "versions")
    missing = [k for k in required if k not in meta]
    if missing:
        raise EdgekitError(f"{meta_path}: corrupted metadata (missing {', '.join(missing)})")
    version = meta["format_version"]
    if not is_int(version):
        fail("format_version", "an integer", version)
    if version != FORMAT_VERSION:
        raise EdgekitError(f"{meta_path}: artifact format {version} is not supported by this "
                           f"edgekit (expects {FORMAT_VERSION}); recompile the model")
    if not isinstance(meta["kind"], str):
        fail("kind", "a string", meta["kind"])
    if meta["kind"] != "tvm":
        raise EdgekitError(f"{meta_path.parent}: a {meta['kind']!r} artifact cannot be run by the TVM runtime "
                           "(field kind must be 'tvm')")
    for field in ("library",) + OPTIONAL_PATH_FIELDS:
        if field in meta and not (isinstance(meta[field], str) and meta[field].strip() and "\0" not in meta[field]):
            fail(field, "a file name inside the artifact folder", meta[field])
    sha = meta["sha256"]
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdefABCDEF" for c in sha)):
        fail("sha256", "a string of 64 hex digits", sha)
    for group in ("inputs", "outputs"):
        specs = meta[group]
        if not isinstance(specs, list):
            fail(group, "a list of tensors ({name, shape, dtype})", specs)
        if group == "outputs" and not specs:
            fail(group, "a non-empty list of tensors", specs, show=False)
        seen = set()
        for i, spec in enumerate(specs):
            where = f"{group}[{i}]"
            if not isinstance(spec, dict):
                fail(where, "an object {name, shape, dtype}", spec)
            for key in ("name", "shape", "dtype"):
                if key not in spec:
                    raise EdgekitError(f"{meta_path}: corrupted metadata: field {where} has no {key}")
            name = spec["name"]
            if not (isinstance(name, str) and name):
                fail(f"{where}.name", "a non-empty string", name)
            if name in seen:
                raise EdgekitError(f"{meta_path}: corrupted metadata: field {where}.name {name!r} appears twice")
            seen.add(name)
            shape = spec["shape"]
            if not isinstance(shape, list):
                fail(f"{where}.shape ({name})", "a list of non-negative integers", shape)
            elements = 1
            for j, dim in enumerate(shape):
                if not is_int(dim) or dim < 0:
                    fail(f"{where}.shape[{j}] ({name})", "a non-negative integer", dim)
                elements *= dim
                if elements > MAX_ELEMENTS:
                    raise EdgekitError(f"{meta_path}: corrupted metadata: field {where}.shape ({name}) "
                                       f"{shape} has more than {MAX_ELEMENTS} elements")
            dtype = spec["dtype"]
            if not isinstance(dtype, str) or dtype not in DTYPES:
                fail(f"{where}.dtype ({name})", f"one of {', '.join(DTYPES)}", dtype)
    target = meta["target"]
    if not isinstance(target, dict):
        fail("target", "an object {name, arch, ...}", target)
    if not (isinstance(target.get("arch"), str) and target["arch"]):
        fail("target.arch", "a non-empty string (x86_64 or aarch64)", target.get("arch"))
    for key in ("name", "triple", "mcpu"):
        if target.get(key) is not None and not isinstance(target[key], str):
            fail(f"target.{key}", "a string or null", target[key])
    if "num_cores" in target and target["num_cores"] is not None and not (
            is_int(target["num_cores"]) and target["num_cores"] >= 1):
        fail("target.num_cores", "a positive integer", target["num_cores"])
    if target.get("mattr") is not None and not (isinstance(target["mattr"], list)
                                  and all(isinstance(a, str) for a in target["mattr"])):
        fail("target.mattr", "a list of strings", target["mattr"])
    versions = meta["versions"]
    if not isinstance(versions, dict):
        fail("versions", "an object {tvm, edgekit, python}", versions)
    if not (isinstance(versions.get("tvm"), str) and versions["tvm"]):
        fail("versions.tvm", "a version string", versions.get("tvm"))
    for key, value in versions.items():
        if value is not None and not isinstance(value, str):
            fail(f"versions.{key}", "a version string", value)
    zoo = meta.get("zoo", {})
    if zoo is not None:
        if not isinstance(zoo, dict):
            fail("zoo", "an object", zoo)
        for key in ("preprocess", "edgekit.preprocess", "edgekit_preprocess"):
            pre = zoo.get(key)
            if pre is None:
                continue
            if not isinstance(pre, dict):
                fail(f"zoo.{key}", "an object {scale, mean, std}", pre)
            for k in ("scale", "mean", "std"):
                if k in pre and not _numbers(pre[k]):
                    fail(f"zoo.{key}.{k}", "a finite number or a list of 1 or 3 of them", pre[k])


def _numbers(value) -> bool:
    """A finite number, or a list of 1 or 3 (one per colour channel)."""
    if isinstance(value, list):
        return len(value) in (1, 3) and all(_numbers(v) for v in value if not isinstance(v, list)) \
            and not any(isinstance(v, list) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and abs(value) != float("inf")


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
        target = self.meta.get("target")
        return target.get("arch", "?") if isinstance(target, dict) else "?"

    @classmethod
    def load(cls, folder, *, verify_checksum: bool = True) -> "Artifact":
        """Read and check an artifact folder: metadata schema, paths inside the folder, the
        library's checksum and ELF structure. Every problem is one EdgekitError line."""
        folder = Path(folder)
        meta_path = folder / METADATA
        if not folder.is_dir():
            raise EdgekitError(f"{folder}: no such artifact folder (make one with `edgekit compile`)")
        if not meta_path.is_file():
            raise EdgekitError(f"{folder}: not an edgekit artifact (missing {METADATA})")
        meta = read_object(meta_path, "corrupted metadata: ")
        validate_metadata(meta, meta_path)
        art = cls(folder, meta)
        lib = inside_folder(folder, meta["library"], "library", meta_path, "artifact folder")
        for field in OPTIONAL_PATH_FIELDS:
            if field in meta:
                inside_folder(folder, meta[field], field, meta_path, "artifact folder")
        if not lib.is_file():
            raise EdgekitError(f"{folder}: library {meta['library']} is missing")
        if verify_checksum:
            actual = sha256_file(lib)
            if actual != meta["sha256"].lower():
                raise EdgekitError(f"{lib}: checksum mismatch (sha256 {actual[:12]}..., metadata says "
                                   f"{meta['sha256'][:12]}...): the library is corrupted or was replaced; recompile")
        # The structure only: which machine may load it is checked by the session (check_library).
        native.check_library(lib)
        return art

    def check_library(self, host: str | None = None, path=None) -> None:
        """The library (or its copy at `path`) is a sound ELF file for the artifact's arch and `host`."""
        native.check_library(path or self.library, self.arch, host)

    def check_runtime(self, tvm_version: str, machine: str | None = None) -> None:
        """Refuse to load on a runtime of another TVM version or another CPU architecture."""
        built = self.meta["versions"].get("tvm", "?")
        if _major_minor(built) != _major_minor(tvm_version):
            raise EdgekitError(f"{self.folder}: compiled with TVM {built}, but this runtime is TVM {tvm_version}; "
                               "recompile with the runtime's TVM version")
        machine = native.normalise_arch(machine or platform.machine())
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
