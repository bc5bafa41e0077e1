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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.fileio import atomic_dir

from . import asm, isa

FORMAT = "edgekit-accel-program"
VERSION = 1


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
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def read(self, dram: np.ndarray) -> np.ndarray:
        raw = np.asarray(dram, np.uint8)[self.addr:self.addr + self.nbytes]
        return raw.view(self.dtype).reshape(self.shape)


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
        path = Path(path)
        meta_file = path / "program.json"
        if not meta_file.is_file():
            raise EdgekitError(f"{path}: not an accelerator program folder (no program.json)")
        try:
            doc = json.loads(meta_file.read_text())
        except json.JSONDecodeError as exc:
            raise EdgekitError(f"{meta_file}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        if doc.get("format") != FORMAT:
            raise EdgekitError(f"{meta_file}: format is {doc.get('format')!r}, expected {FORMAT!r}")
        image = path / doc.get("dram_image", "dram.bin")
        if not image.is_file():
            raise EdgekitError(f"{path}: DRAM image {image.name} is missing")
        dram = np.frombuffer(image.read_bytes(), np.uint8).copy()
        if dram.size != doc["dram_size"] or dram.size % isa.WORD_BYTES:
            raise EdgekitError(f"{image}: {dram.size} bytes, program.json says {doc['dram_size']} (multiple of 8)")
        addr, count = int(doc["insn_addr"]), int(doc["insn_count"])
        if addr % isa.INSN_BYTES or addr + count * isa.INSN_BYTES > dram.size:
            raise EdgekitError(f"{meta_file}: instructions [{addr}, +{count * 16}) do not fit the DRAM image")
        insns = asm.from_bytes(dram[addr:addr + count * isa.INSN_BYTES].tobytes())
        tensors = lambda key: [Tensor(t["name"], t["addr"], tuple(t["shape"]), t["dtype"], t["layout"])
                               for t in doc.get(key, [])]
        return cls(insns, dram, addr, doc.get("hw", dict(isa.HW_DEFAULTS)), tensors("inputs"), tensors("outputs"),
                   doc.get("meta", {}))

    @classmethod
    def from_assembly(cls, text: str, dram_size: int = 1 << 16) -> "Program":
        """A bare program from assembly text: instructions at 0, the rest of DRAM zero."""
        insns = asm.assemble(text)
        dram = np.zeros(max(dram_size, len(insns) * isa.INSN_BYTES), np.uint8)
        dram[:len(insns) * isa.INSN_BYTES] = np.frombuffer(asm.to_bytes(insns), np.uint8)
        return cls(insns, dram, 0)


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
