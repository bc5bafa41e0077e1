"""The accelerator program container: instructions + DRAM image + metadata.

On disk a program is a folder:

    program.json   metadata (format, hardware config, where instructions,
                   inputs and outputs live in DRAM, their shapes/dtypes/layouts)
    dram.bin       the complete initial DRAM image (instructions included,
                   at byte `insn_addr`)
    program.s      the instructions as assembly text (for people; informational)

The compiler writes one with `ProgramBuilder`; `edgekit simulate` runs one on
the golden model or the RTL.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.fileio import atomic_dir
from edgekit.jsondoc import DocCheck, is_int, read_object

from . import asm, isa

FORMAT = "edgekit-accel-program"
VERSION = 1


# Limits of a sound program.json (anything beyond them is corruption, not a program).
MAX_DRAM = (1 << 29) * isa.WORD_BYTES   # load/store address DRAM in 29-bit counts of 64-bit words
ARRAY_SIZES = (8, 16, 32)               # the MAC array sizes the compiler and the RTL support
HW_MAX = {"MAX_BURST": 256}             # AXI4: at most 256 beats a burst
HW_MAX_DEFAULT = 1 << 16                # buffer depths, queue entries, post rows
REQUIRED = ("format", "version", "insn_addr", "insn_count", "dram_size", "dram_image")


@dataclass
class Tensor:
    """A tensor placed in DRAM: `addr` in bytes; layout is a free-form tag (e.g. 'rows:N', 'NHWC8')."""

    name: str
    addr: int
    shape: tuple
    dtype: str = "int8"
    layout: str = "raw"

    def to_json(self) -> dict:
        return {"name": self.name, "addr": self.addr, "shape": list(self.shape), "dtype": self.dtype,
                "layout": self.layout}

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize   # Python ints: no overflow

    def read(self, dram: np.ndarray) -> np.ndarray:
        raw = np.asarray(dram, np.uint8)[self.addr:self.addr + self.nbytes]
        return raw.view(self.dtype).reshape(self.shape)

    def write(self, dram: np.ndarray, values: np.ndarray) -> None:
        dram[self.addr:self.addr + self.nbytes] = np.ascontiguousarray(values, self.dtype).view(np.uint8).reshape(-1)

    @classmethod
    def from_json(cls, spec, field: str, dram_size: int, check: DocCheck) -> "Tensor":
        spec = check.of_type(spec, field, dict, "an object {name, addr, shape, dtype, layout}")
        name = check.text(check.get(spec, "name", f"{field}.name"), f"{field}.name")
        sub = lambda key: f"{field}.{key} (tensor {name})"  # noqa: E731
        addr = check.integer(check.get(spec, "addr", sub("addr")), sub("addr"))
        shape = check.of_type(check.get(spec, "shape", sub("shape")), sub("shape"), list, "a list of positive integers")
        for i, dim in enumerate(shape):
            check.integer(dim, sub(f"shape[{i}]"), lo=1)
        dtype = check.get(spec, "dtype", sub("dtype"))
        if not (isinstance(dtype, str) and _numeric_dtype(dtype)):
            check.fail(sub("dtype"), "a numeric numpy dtype (int8, uint8, <i4, float32...)", dtype)
        layout = check.text(spec.get("layout", "raw"), sub("layout"))
        tensor = cls(name, addr, tuple(shape), dtype, layout)
        end = addr + tensor.nbytes
        if end > dram_size:
            raise EdgekitError(f"{check.doc_path}: field {field} (tensor {name}): bytes [{addr}, {end}) lie "
                               f"outside the DRAM image of {dram_size} bytes")
        return tensor


def _numeric_dtype(text: str) -> bool:
    try:
        return np.dtype(text).kind in "biuf"
    except (TypeError, ValueError):
        return False


def _tensors(doc: dict, key: str, dram_size: int, check: DocCheck) -> list[Tensor]:
    specs = check.of_type(doc.get(key, []), key, list, "a list of tensors {name, addr, shape, dtype}")
    tensors = [Tensor.from_json(spec, f"{key}[{i}]", dram_size, check) for i, spec in enumerate(specs)]
    names = [t.name for t in tensors]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise EdgekitError(f"{check.doc_path}: field {key}: tensor {twice[0]!r} appears twice")
    return tensors


def _hw(doc: dict, check: DocCheck) -> dict:
    hw = check.of_type(doc.get("hw", {}), "hw", dict, "an object of hardware parameters")
    for key, value in hw.items():
        if key not in isa.HW_DEFAULTS:
            raise EdgekitError(f"{check.doc_path}: field hw.{key} is not a hardware parameter "
                               f"(known: {', '.join(isa.HW_DEFAULTS)})")
        if key == "N" and not (is_int(value) and value in ARRAY_SIZES):
            check.fail("hw.N", f"one of {', '.join(map(str, ARRAY_SIZES))}", value)
        check.integer(value, f"hw.{key}", lo=1, hi=HW_MAX.get(key, HW_MAX_DEFAULT))
    return dict(isa.HW_DEFAULTS, **hw)   # the golden model and the compiled-model runner read every key


def _read_doc(meta_file: Path) -> dict:
    """program.json as a JSON object, or a one-line EdgekitError."""
    if not meta_file.is_file():
        raise EdgekitError(f"{meta_file.parent}: not an accelerator program folder (no program.json)")
    return read_object(meta_file)


def _image(folder: Path, doc: dict, dram_size: int, check: DocCheck) -> np.ndarray:
    image = check.file_inside(folder, doc["dram_image"], "dram_image", "program folder")
    size = image.stat().st_size
    if size != dram_size:
        state = "truncated" if size < dram_size else "longer than dram_size"
        raise EdgekitError(f"{image}: DRAM image of {size} bytes is {state}: program.json field dram_size "
                           f"says {dram_size}")
    return np.fromfile(image, np.uint8)


@dataclass
class Program:
    insns: list[int]
    dram: np.ndarray
    insn_addr: int
    hw: dict = field(default_factory=lambda: dict(isa.HW_DEFAULTS))
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def insn_count(self) -> int:
        return len(self.insns)

    def save(self, path) -> None:
        path = Path(path)
        with atomic_dir(path) as tmp:
            (tmp / "dram.bin").write_bytes(np.asarray(self.dram, np.uint8).tobytes())
            (tmp / "program.s").write_text(asm.disassemble(self.insns))
            doc = {"format": FORMAT, "version": VERSION, "hw": self.hw, "insn_addr": self.insn_addr,
                   "insn_count": self.insn_count, "dram_size": int(self.dram.size), "dram_image": "dram.bin",
                   "inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs],
                   "meta": self.meta}
            (tmp / "program.json").write_text(json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, path) -> "Program":
        """Read a program folder; program.json is checked field by field before anything uses it."""
        path = Path(path)
        meta_file = path / "program.json"
        doc = _read_doc(meta_file)
        check = DocCheck(meta_file)
        for key in REQUIRED:
            check.get(doc, key, key)
        if doc["format"] != FORMAT:
            check.fail("format", repr(FORMAT), doc["format"])
        if doc["version"] != VERSION or not is_int(doc["version"]):
            check.fail("version", f"{VERSION} (this edgekit reads version {VERSION} programs)", doc["version"])
        dram_size = check.integer(doc["dram_size"], "dram_size", lo=isa.WORD_BYTES, hi=MAX_DRAM,
                                  multiple=isa.WORD_BYTES)
        addr = check.integer(doc["insn_addr"], "insn_addr", multiple=isa.INSN_BYTES)
        count = check.integer(doc["insn_count"], "insn_count", lo=1)
        end = addr + count * isa.INSN_BYTES
        if end > dram_size:
            raise EdgekitError(f"{meta_file}: fields insn_addr/insn_count: instructions [{addr}, {end}) lie "
                               f"outside the DRAM image of {dram_size} bytes")
        hw = _hw(doc, check)
        inputs, outputs = (_tensors(doc, key, dram_size, check) for key in ("inputs", "outputs"))
        meta = check.of_type(doc.get("meta", {}), "meta", dict, "an object")
        dram = _image(path, doc, dram_size, check)
        insns = asm.from_bytes(dram[addr:end].tobytes())
        return cls(insns, dram, addr, hw, inputs, outputs, meta)

    @classmethod
    def from_assembly(cls, text: str, dram_size: int = 1 << 16) -> "Program":
        """A bare program from assembly text: instructions at 0, the rest of DRAM zero."""
        if not (is_int(dram_size) and isa.WORD_BYTES <= dram_size <= MAX_DRAM and dram_size % isa.WORD_BYTES == 0):
            raise EdgekitError(f"DRAM size {dram_size!r}: must be a multiple of {isa.WORD_BYTES} bytes in "
                               f"[{isa.WORD_BYTES}, {MAX_DRAM}]")
        insns = asm.assemble(text)
        if not insns:
            raise EdgekitError("no instructions (only blank lines and comments)")
        dram = np.zeros(max(dram_size, len(insns) * isa.INSN_BYTES), np.uint8)
        dram[:len(insns) * isa.INSN_BYTES] = np.frombuffer(asm.to_bytes(insns), np.uint8)
        return cls(insns, dram, 0)


def check_feeds(feeds: dict, specs: dict, label: str, need_all: bool = True) -> dict:
    """{name: array} checked against `specs` ({name: (shape, dtype)}): known names, shapes, numeric
    element types, values the tensor's dtype holds (finite; integral and in range for integer
    tensors). Returns the arrays converted to their tensor's dtype."""
    if not isinstance(feeds, dict):
        raise EdgekitError(f"{label}: a dict {{input name: array}} expected, got {type(feeds).__name__}")
    unknown = [name for name in feeds if name not in specs]
    if unknown:
        raise EdgekitError(f"{label}: no input named {unknown[0]!r} (inputs: {', '.join(specs) or 'none'})")
    missing = [name for name in specs if name not in feeds]
    if need_all and missing:
        raise EdgekitError(f"{label}: missing input {missing[0]!r} (inputs: {', '.join(specs)})")
    return {name: _checked_array(np.asarray(value), *specs[name], f"{label}: input {name!r}")
            for name, value in feeds.items()}


def _checked_array(value: np.ndarray, shape, dtype, label: str) -> np.ndarray:
    want = np.dtype(dtype)
    if value.dtype.kind not in "biuf":
        raise EdgekitError(f"{label}: dtype {value.dtype} is not numeric (expected {want})")
    if tuple(value.shape) != tuple(shape):
        raise EdgekitError(f"{label} has shape {list(value.shape)}, expected {list(shape)}")
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise EdgekitError(f"{label}: holds NaN or inf where {want} values are expected")
    if want.kind in "iub":
        if value.dtype.kind == "f" and not np.all(value == np.round(value)):
            raise EdgekitError(f"{label}: holds fractions where {want} values are expected")
        lo, hi = (0, 1) if want.kind == "b" else (int(np.iinfo(want).min), int(np.iinfo(want).max))
        vmin, vmax = (value.min().item(), value.max().item()) if value.size else (lo, hi)
        if vmin < lo or vmax > hi:
            raise EdgekitError(f"{label}: values [{vmin}, {vmax}] lie outside the {want} range [{lo}, {hi}]")
        return value.astype(want)
    with np.errstate(over="ignore"):
        converted = value.astype(want)
    if not np.all(np.isfinite(converted)):   # float64 beyond float32's range
        raise EdgekitError(f"{label}: values beyond the {want} range")
    return converted


def read_feeds(path, specs: dict, need_all: bool = True) -> dict:
    """An --input file (.npy for a one-input program, .npz by input name) checked by `check_feeds`."""
    from edgekit.quant.calib import read_array

    path = Path(path)
    label = f"--input {path}"
    if not path.is_file():
        raise EdgekitError(f"{label}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    if path.suffix.lower() not in (".npy", ".npz"):
        raise EdgekitError(f"{label}: use a .npy (one input) or .npz (arrays by input name) file")
    arrays = read_array(path, "--input")
    if isinstance(arrays, np.ndarray):
        if len(specs) != 1:
            raise EdgekitError(f"{label}: there are {len(specs)} inputs ({', '.join(specs) or 'none'}); "
                               "give an .npz of arrays by input name")
        arrays = {next(iter(specs)): arrays}
    if not arrays:
        raise EdgekitError(f"{label}: the .npz archive holds no arrays")
    return check_feeds(arrays, specs, label, need_all)


class ProgramBuilder:
    """Lay out tensors in DRAM, emit instructions, produce a `Program`.

    Data goes from `data_base` upwards; the instructions are placed after
    the data when `build()` is called.
    """

    def __init__(self, dram_size: int = 1 << 20, hw: dict | None = None, data_base: int = 0):
        self.hw = dict(isa.HW_DEFAULTS, **(hw or {}))
        self.dram = np.zeros(dram_size, np.uint8)
        self.cursor = data_base
        self.insns: list[int] = []
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []

    def alloc(self, nbytes: int, align: int = 64) -> int:
        addr = -(-self.cursor // align) * align
        if addr + nbytes > self.dram.size:
            raise EdgekitError(f"DRAM image of {self.dram.size} bytes too small for {nbytes} more bytes")
        self.cursor = addr + nbytes
        return addr

    def place(self, data, align: int = 64) -> int:
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        addr = self.alloc(raw.size, align)
        self.dram[addr:addr + raw.size] = raw
        return addr

    def emit(self, name: str, **fields) -> None:
        self.insns.append(asm.encode(name, **fields))

    def build(self, finish: bool = True, meta: dict | None = None) -> Program:
        insns = list(self.insns) + ([asm.encode("finish")] if finish else [])
        raw = np.frombuffer(asm.to_bytes(insns), np.uint8)
        addr = self.alloc(raw.size, isa.INSN_BYTES)
        self.dram[addr:addr + raw.size] = raw
        return Program(insns, self.dram.copy(), addr, self.hw, list(self.inputs), list(self.outputs), meta or {})
