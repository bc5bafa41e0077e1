"""The compiled-model part of program.json (`meta.*`): steps and tensor placements.

A compiled model is an accelerator program (`program.Program`) whose `meta` says how to run it:

    meta.steps     in graph order: `HostStep` (an op of the quantized model run on the host) and
                   `AccelStep` (an instruction segment ending in `finish`)
    meta.tensors   {name: `Placement`}: where each activation lives in DRAM ([CB, H, W, N] codes)

The compiler (`compiler.package`) writes these dataclasses with `to_json`; the simulator
(`edgekit.hw.sim.model`) and the cost model read them back with `read_steps` / `read_tensors`,
which check every field (a one-line error naming the field) before anything trusts it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.jsondoc import DocCheck

from . import isa
from . import layout as L

FORMAT_KIND = "compiled-model"   # meta.kind of a compiled model (a bare program has none)


@dataclass
class HostStep:
    """An op of the quantized model (by name) run on the host with the integer reference's kernel."""

    op: str
    op_kind: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    fallback: bool = False     # an op the accelerator refused (not the input/output (de)quantizers)
    params: dict = field(default_factory=dict)   # the op's parameters, JSON form (for people)

    kind = "host"

    def to_json(self) -> dict:
        return {"kind": self.kind, "op": self.op, "op_kind": self.op_kind, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "fallback": self.fallback, "params": self.params}

    @classmethod
    def from_json(cls, step: dict, where: str, check: DocCheck) -> "HostStep":
        op = check.text(check.get(step, "op", f"{where}.op"), f"{where}.op")
        names = {key: _names(step.get(key, []), f"{where}.{key}", check) for key in ("inputs", "outputs")}
        fallback = step.get("fallback", False)
        if not isinstance(fallback, bool):
            check.fail(f"{where}.fallback", "true or false", fallback)
        params = check.of_type(step.get("params", {}), f"{where}.params", dict, "an object")
        return cls(op, check.text(step.get("op_kind", "?"), f"{where}.op_kind"), names["inputs"],
                   names["outputs"], fallback, params)


@dataclass
class Tiling:
    """How a layer's output was cut to fit the buffers: rows x cols pixels, blocks of channels."""

    rows: int
    cols: int
    out_blocks: int
    in_blocks: int

    def to_json(self) -> dict:
        return {"rows": self.rows, "cols": self.cols, "out_blocks": self.out_blocks, "in_blocks": self.in_blocks}


@dataclass
class AccelStep:
    """One accelerator segment: `insn_count` instructions from byte `insn_addr` (the last is `finish`),
    running the ops `ops` (a layer and what is fused into it)."""

    name: str
    ops: list[str]
    op_kinds: list[str]
    insn_start: int            # index of the first instruction in the program
    insn_count: int
    macs: int                  # useful multiply-accumulates
    insn_addr: int = -1        # byte address in DRAM (set when the program is packaged)
    params_addr: int = -1      # the parameter rows (bias, multiplier, shift)
    weights_addr: int | None = None    # weighted layers: the weight tiles ...
    weights_packed_int4: bool | None = None   # ... two 4-bit weights a byte
    tiling: Tiling | None = None
    params: dict = field(default_factory=dict)   # each op's parameters, JSON form (for people)

    kind = "accel"

    def to_json(self) -> dict:
        doc = {"kind": self.kind, "name": self.name, "ops": list(self.ops), "op_kinds": list(self.op_kinds),
               "insn_start": self.insn_start, "insn_count": self.insn_count, "insn_addr": self.insn_addr,
               "macs": self.macs, "params_addr": self.params_addr}
        if self.weights_addr is not None:
            doc.update(weights_addr=self.weights_addr, weights_packed_int4=self.weights_packed_int4)
        if self.tiling is not None:
            doc["tiling"] = self.tiling.to_json()
        doc["params"] = self.params
        return doc

    @classmethod
    def from_json(cls, step: dict, where: str, check: DocCheck, first: int, end: int) -> "AccelStep":
        """`first`, `end`: the program's instruction bytes; a segment runs only its own instructions."""
        name = check.text(check.get(step, "name", f"{where}.name"), f"{where}.name")
        ops, kinds = (_names(check.get(step, key, f"{where}.{key}"), f"{where}.{key}", check)
                      for key in ("ops", "op_kinds"))
        macs = check.integer(check.get(step, "macs", f"{where}.macs"), f"{where}.macs")
        addr = check.integer(check.get(step, "insn_addr", f"{where}.insn_addr"), f"{where}.insn_addr", lo=first,
                             hi=end - isa.INSN_BYTES, multiple=isa.INSN_BYTES)
        count = check.integer(check.get(step, "insn_count", f"{where}.insn_count"), f"{where}.insn_count", lo=1,
                              hi=(end - addr) // isa.INSN_BYTES)
        params = check.of_type(step.get("params", {}), f"{where}.params", dict, "an object")
        # Read back: what running and costing a segment need. The weight/parameter addresses and
        # the tiling are a record for people; the instruction index follows from the address.
        return cls(name, ops, kinds, (addr - first) // isa.INSN_BYTES, count, macs, addr, params=params)


def _names(value, where: str, check: DocCheck) -> list[str]:
    items = check.of_type(value, where, list, "a list of names")
    return [check.text(item, f"{where}[{j}]") for j, item in enumerate(items)]


def read_steps(meta: dict, program, check: DocCheck) -> list[HostStep | AccelStep]:
    """meta.steps, checked: every segment inside the program's own instructions."""
    steps = check.of_type(check.get(meta, "steps", "meta.steps"), "meta.steps", list, "a list of steps")
    first, end = program.insn_addr, program.insn_addr + program.insn_count * isa.INSN_BYTES
    out = []
    for i, step in enumerate(steps):
        where = f"meta.steps[{i}]"
        step = check.of_type(step, where, dict, "an object {kind, ...}")
        kind = check.get(step, "kind", f"{where}.kind")
        if kind == "host":
            out.append(HostStep.from_json(step, where, check))
        elif kind == "accel":
            out.append(AccelStep.from_json(step, where, check, first, end))
        else:
            check.fail(f"{where}.kind", "'host' or 'accel'", kind)
    return out


@dataclass
class Placement:
    """An activation in DRAM as the array lays it out: [CB, H, W, N] codes at byte `addr`
    (-1: never leaves the chip), with its grid and the logical shape it stands for."""

    name: str
    addr: int
    c: int
    h: int
    w: int
    scale: float
    zero_point: int
    type: str                  # a formats.QTYPES name
    view: str                  # 'nchw' ([1, C, H, W]) or 'rows' ([..., T, K] stored as C=K, H=T)
    shape: list[int]

    @property
    def signed(self) -> bool:
        return self.type.startswith("int")

    @property
    def in_dram(self) -> bool:
        return self.addr >= 0

    def nbytes(self, n: int) -> int:
        return L.blocks(self.c, n) * self.h * self.w * n

    def to_json(self) -> dict:
        return {"addr": self.addr, "c": self.c, "h": self.h, "w": self.w, "scale": self.scale,
                "zero_point": self.zero_point, "type": self.type, "view": self.view, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, name: str, spec, where: str, program, check: DocCheck) -> "Placement":
        """Checked: its [CB, H, W, N] bytes lie inside DRAM, its shape has c*h*w elements."""
        from edgekit.quant.formats import QTYPES

        spec = check.of_type(spec, where, dict, "an object {addr, c, h, w, type, zero_point, shape}")
        c, h, w = (check.integer(check.get(spec, k, f"{where}.{k}"), f"{where}.{k}", lo=1) for k in "chw")
        addr = check.integer(check.get(spec, "addr", f"{where}.addr"), f"{where}.addr", lo=-1)
        qtype = check.get(spec, "type", f"{where}.type")
        types = [name for name, q in QTYPES.items() if q.bits <= 8]   # no 16-bit tensors on the accelerator
        if not (isinstance(qtype, str) and qtype in types):
            check.fail(f"{where}.type", f"one of {', '.join(types)}", qtype)
        zp = check.integer(check.get(spec, "zero_point", f"{where}.zero_point"), f"{where}.zero_point",
                           lo=-128, hi=255)
        view = spec.get("view", "nchw")
        if view not in ("nchw", "rows"):
            check.fail(f"{where}.view", "'nchw' or 'rows'", view)
        shape = check.of_type(check.get(spec, "shape", f"{where}.shape"), f"{where}.shape", list,
                              "a list of integers")
        for i, dim in enumerate(shape):
            check.integer(dim, f"{where}.shape[{i}]", lo=1)
        if math.prod(shape) != c * h * w:
            check.fail(f"{where}.shape", f"of c*h*w = {c * h * w} elements", shape)
        scale = spec.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            check.fail(f"{where}.scale", "a finite number", scale)
        placement = cls(name, addr, c, h, w, float(scale), zp, qtype, view, list(shape))
        nbytes = placement.nbytes(program.hw["N"])
        if addr >= 0 and addr + nbytes > program.dram.size:
            raise EdgekitError(f"{check.doc_path}: field {where}: bytes [{addr}, {addr + nbytes}) lie outside "
                               f"the DRAM image of {program.dram.size} bytes")
        return placement


def read_tensors(meta: dict, program, check: DocCheck) -> dict[str, Placement]:
    tensors = check.of_type(check.get(meta, "tensors", "meta.tensors"), "meta.tensors", dict,
                            "an object {tensor name: placement}")
    return {name: Placement.from_json(name, spec, f"meta.tensors.{name}", program, check)
            for name, spec in tensors.items()}


@dataclass
class ModelMeta:
    """The checked compiled-model metadata of one program folder."""

    source: Path               # the quantized model (model.q.onnx), inside the folder
    inputs: list[str]
    outputs: list[str]
    tensors: dict[str, Placement]
    steps: list[HostStep | AccelStep]


def read_model_meta(meta: dict, folder: Path, program) -> ModelMeta:
    """meta.* of a compiled-model folder, checked field by field before `execute` trusts it."""
    check = DocCheck(folder / "program.json")
    source = check.file_inside(folder, check.get(meta, "source", "meta.source"), "meta.source", "program folder")
    names = {key: _names(check.get(meta, key, f"meta.{key}"), f"meta.{key}", check) for key in ("inputs", "outputs")}
    return ModelMeta(source, names["inputs"], names["outputs"], read_tensors(meta, program, check),
                     read_steps(meta, program, check))
