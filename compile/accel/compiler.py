"""Compile a quantized (QDQ) ONNX model for edgekit's accelerator.

    compile_accel("m.q.onnx", "build/m-accel", array=8, fusion=True, fallback=None)

Pipeline: `edgekit.quant.qgraph.parse` gives the integer ops; the op table
below says which run on the accelerator (conv incl. depthwise / strided /
dilated, transposed conv, residual add); shapes come from one run of the
integer reference on a zero input; a fusion pass folds each residual Add into
the conv that produces one of its operands; every accelerator op (with its
fused Add) becomes one *segment* of instructions ending in `finish`, so
per-layer counters are exact on the golden model and the RTL alike. Graph
input quantization and output dequantization, and with `fallback="cpu"` any
op the accelerator cannot run, are *host steps* between segments (executed
with the integer reference's own op table, so results stay bit-exact).

Output folder (an `edgekit.compile.accel.Program` plus the source model):
    program.json   hw config, DRAM layout, meta.kind = "compiled-model",
                   meta.steps (segments and host steps), meta.tensors
    dram.bin       weights, parameters, activations, all instructions
    program.s      assembly (all segments)
    model.q.onnx   the quantized model (host steps and the reference check)
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError, require
from edgekit.fileio import atomic_dir
from edgekit.quant import formats

from . import asm, isa
from . import layout as L
from .lower import (
    Act,
    AddFusion,
    ConvGeometry,
    Emitter,
    Epilogue,
    Regions,
    Weights,
    add_param_row,
    choose_tiling,
    lower_add,
    lower_conv_like,
)
from .model_meta import FORMAT_KIND, AccelStep, HostStep, Placement, Tiling
from .program import Program, Tensor

HOST_KINDS = ("quantize", "dequantize")   # always on the host: the float <-> int boundary


# --------------------------------------------------------------------------- op table
def act_dims(shape) -> tuple[int, int, int, str]:
    """(C, H, W, view) of a tensor on the accelerator: [1,C,H,W] as is ("nchw"); any other shape
    [..., T, K] as K channels x T rows x 1 ("rows": tokens of a Gemm/MatMul)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 4 and shape[0] == 1:
        return shape[1], shape[2], shape[3], "nchw"
    require(len(shape) >= 1 and int(np.prod(shape[:-1])) >= 1, f"cannot place a tensor of shape {list(shape)}")
    return shape[-1], int(np.prod(shape[:-1])), 1, "rows"


def conv_weight(op) -> np.ndarray:
    """The op's weight as a conv kernel: Gemm/MatMul weights become [N, K, 1, 1]."""
    w = op.params.weight
    if op.kind == "gemm":
        w = w if op.attrs.get("transB", 0) else w.T
        return w[:, :, None, None]
    if op.kind == "linear":
        return w.T[:, :, None, None]
    return w


def conv_shape(shape) -> tuple:
    c, h, w, _ = act_dims(shape)
    return (1, c, h, w)


class ConvLowering:
    """Conv (dense or depthwise), ConvTranspose and Gemm/MatMul-with-weights (as 1x1 convs over
    token rows) with fused bias/requant/activation(/residual add)."""

    def geometry(self, op, x_shape, y_shape) -> ConvGeometry:
        a = op.attrs if op.kind in ("conv", "conv_transpose") else {}
        x_shape, y_shape = conv_shape(x_shape), conv_shape(y_shape)
        w = conv_weight(op)
        kh, kw = w.shape[2], w.shape[3]
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if op.kind == "conv_transpose":
            kind = "transposed"
        else:
            kind = "depthwise" if int(a.get("group", 1)) > 1 else "conv"
        return ConvGeometry(kind, x_shape[2], x_shape[3], y_shape[2], y_shape[3], kh, kw,
                            tuple(a.get("strides", [1, 1])), (pads[0], pads[1], pads[2], pads[3]),
                            tuple(a.get("dilations", [1, 1])))

    def unsupported(self, op, shapes, hw) -> str | None:
        x_shape, y_shape = shapes.get(op.inputs[0]), shapes.get(op.outputs[0])
        if op.kind in ("gemm", "linear"):
            if x_shape is None or y_shape is None or len(x_shape) < 2 or op.params.weight.ndim != 2:
                return "only 2-D weights on [..., tokens, features] inputs are supported"
            return self.fits(op, shapes, hw)
        if x_shape is None or len(x_shape) != 4 or len(y_shape) != 4 or x_shape[0] != 1:
            return "only 2-D convolutions on batch 1 are supported"
        if op.params.weight.ndim != 4:
            return "only 2-D kernels are supported"
        a = op.attrs
        auto_pad = a.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad not in ("NOTSET", "VALID"):
            return f"auto_pad={auto_pad} is not supported (export with explicit pads)"
        group = int(a.get("group", 1))
        cin = x_shape[1]
        if op.kind == "conv_transpose":
            if group != 1:
                return "grouped transposed convolution is not supported"
            s = a.get("strides", [1, 1])
            if y_shape[2] != s[0] * x_shape[2] or y_shape[3] != s[1] * x_shape[3] or any(
                    d != 1 for d in a.get("dilations", [1, 1])):
                return "transposed convolution needs output = stride x input (kernel - 2*pad = stride)"
            pads = a.get("pads", [0] * 4)
            kernel = op.params.weight.shape[2:]
            for sd, pd, k in ((s[0], pads[0], kernel[0]), (s[1], pads[1], kernel[1])):
                if not all(any((r + pd - kk) % sd == 0 for kk in range(k)) for r in range(sd)):
                    return "a transposed convolution phase without taps is not supported"
        elif group != 1 and not (group == cin == y_shape[1] and op.params.weight.shape[1] == 1):
            return f"grouped convolution (group={group}) other than depthwise is not supported"
        pads = a.get("pads", [0, 0, 0, 0])
        if max(pads) > 15:
            return "padding above 15 is not supported"
        if group != 1 and L.blocks(y_shape[1], hw["N"]) + 1 > hw["PARAM_DEPTH"]:
            return f"depthwise conv with {y_shape[1]} channels exceeds the parameter buffer"
        taps = op.params.weight.shape[2] * op.params.weight.shape[3]
        if group != 1 and L.blocks(taps, hw["N"]) > Regions.of(hw).wgt_rows:
            return f"depthwise kernel with {taps} taps exceeds half the weight buffer"
        return self.fits(op, shapes, hw)

    def fits(self, op, shapes, hw) -> str | None:
        geo = self.geometry(op, shapes[op.inputs[0]], shapes[op.outputs[0]])
        n = hw["N"]
        cbi = L.blocks(conv_shape(shapes[op.inputs[0]])[1], n)
        cbo = L.blocks(conv_shape(shapes[op.outputs[0]])[1], n)
        if choose_tiling(geo, cbi, cbo, Regions.of(hw), n, geo.kind == "depthwise") is None:
            return "no tiling of this layer fits the on-chip buffers"
        return None


class AddLowering:
    """Element-wise residual add of two equal-shape tensors (fused into the producing conv's
    output stage where it can be)."""

    def unsupported(self, op, shapes, hw) -> str | None:
        sa, sb, sy = (shapes.get(t) for t in (op.inputs[0], op.inputs[1], op.outputs[0]))
        if sa is None or sb is None or tuple(sa) != tuple(sb) or len(sa) == 0:
            return "only element-wise adds of two equal-shape tensors are supported (no broadcasting)"
        if any(abs(k) >= 1 << 15 for k in op.params.k):
            return "add multipliers exceed 16 bits"
        if min(op.params.k) < 0:
            return "subtraction (a negative add multiplier) runs on the host"
        return None


# one lowering per integer-op kind (edgekit.quant.kinds) the accelerator runs; the other kinds
# run on the host (HOST_KINDS) or are refused by name
LOWERINGS = {"conv": ConvLowering(), "conv_transpose": ConvLowering(), "gemm": ConvLowering(),
             "linear": ConvLowering(), "add": AddLowering()}


# --------------------------------------------------------------------------- the compiler
@dataclass
class CompileOptions:
    array: int = isa.HW_DEFAULTS["N"]
    fusion: bool = True
    fallback: str | None = None     # None | "cpu"

    def hw(self) -> dict:
        require(self.array in (8, 16, 32), f"--array {self.array}: the array size must be 8, 16 or 32")
        return dict(isa.HW_DEFAULTS, N=self.array)


def tensor_shapes(qg) -> dict:
    """Shapes of every integer-environment tensor, from one integer-reference run on zeros."""
    from edgekit.quant import intref

    feeds = {}
    for inp in qg.model.graph.input:
        if inp.name not in qg.inputs:
            continue
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        require(all(d > 0 for d in dims), f"model input {inp.name}: static shape needed, got "
                                          f"{[d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]}")
        feeds[inp.name] = np.zeros(dims, np.float32)
    env = intref.run(qg, feeds, keep_intermediates=True)
    return {k: tuple(np.shape(v)) for k, v in env.items()}


def plan_fusion(qg, placement: dict, fusion: bool) -> dict:
    """add op name -> index of the conv op it folds into (the conv right before it producing an operand)."""
    if not fusion:
        return {}
    consumers: dict[str, int] = {}
    for op in qg.ops:
        for t in op.inputs:
            consumers[t] = consumers.get(t, 0) + 1
    fused = {}
    for i, op in enumerate(qg.ops):
        if op.kind != "add" or placement[op.name] != "accel" or i == 0:
            continue
        prev = qg.ops[i - 1]
        if prev.kind not in ("conv", "conv_transpose", "gemm", "linear") or placement[prev.name] != "accel":
            continue
        out = prev.outputs[0]
        if out in op.inputs and op.inputs[0] != op.inputs[1] and consumers.get(out) == 1 \
                and out not in qg.outputs:
            fused[op.name] = i - 1
    return fused


class _Image:
    """A growing DRAM image (bytes), 64-byte aligned allocations."""

    def __init__(self):
        self.chunks: list[tuple[int, np.ndarray]] = []
        self.size = 0

    def alloc(self, nbytes: int, align: int = 64) -> int:
        addr = -(-self.size // align) * align
        self.size = addr + int(nbytes)
        return addr

    def place(self, data, align: int = 64) -> int:
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        addr = self.alloc(raw.size, align)
        self.chunks.append((addr, raw))
        return addr

    def build(self, extra: int = 0) -> np.ndarray:
        size = -(-(self.size + extra) // 64) * 64
        dram = np.zeros(size, np.uint8)
        for addr, raw in self.chunks:
            dram[addr:addr + raw.size] = raw
        return dram


def compile_accel(onnx_path, out_dir, array: int | None = None, fusion: bool = True,
                  fallback: str | None = None) -> dict:
    """Lower a QDQ model to an accelerator program folder; returns its metadata.

    Phases: parse (qgraph) -> place (accelerator or host, per op) -> allocate (DRAM for every
    tensor an accelerator step touches) -> emit (one instruction segment per step) -> package
    (DRAM image + program.json, written atomically)."""
    from edgekit.quant.qgraph import parse

    opts = CompileOptions(array or isa.HW_DEFAULTS["N"], fusion, fallback)
    require(fallback in (None, "cpu"), f"--fallback {fallback}: only 'cpu' is supported")
    hw = opts.hw()
    src = Path(onnx_path)
    parent = Path(out_dir).resolve().parent
    require(parent.is_dir(), f"cannot write {out_dir}: folder {parent} does not exist")   # before any work
    qg = parse(src)
    shapes = tensor_shapes(qg)
    placement, refused = place(qg, shapes, hw, fallback, src)
    fused = plan_fusion(qg, placement, opts.fusion)
    image = _Image()
    acts = allocate(qg, placement, fused, shapes, hw["N"], image)
    em, steps = emit(qg, placement, fused, acts, shapes, image, opts, hw)
    program, meta = package(qg, em, steps, acts, shapes, image, placement, fused, refused, src, opts, hw)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        program.save(tmp)
        shutil.copyfile(src, tmp / "model.q.onnx")
    summary = meta["summary"]
    return {"target": "accel", "output": str(out_dir), "array": hw["N"], "fusion": opts.fusion,
            "library": (f"accelerator program: {summary['segments']} segments, {summary['instructions']} "
                        f"instructions, {len(refused)} host fallback ops, {'fused' if opts.fusion else 'unfused'}"),
            "fallback_op_list": refused, **summary}


def place(qg, shapes: dict, hw: dict, fallback: str | None, src: Path) -> tuple[dict, list[str]]:
    """op name -> 'accel' or 'host', and the ops refused by the accelerator (with the reason)."""
    placement, refused = {}, []
    for op in qg.ops:
        if op.kind in HOST_KINDS:
            placement[op.name] = "host"
            continue
        low = LOWERINGS.get(op.kind)
        reason = f"no accelerator lowering for op kind {op.kind!r}" if low is None else low.unsupported(op, shapes, hw)
        if reason is None and any(q is not None and q.qtype.bits > 8 for q in [*op.in_q, op.out_q]):
            reason = "16-bit activations (polish's wide points) are not supported"
        if reason is None:
            placement[op.name] = "accel"
        else:
            placement[op.name] = "host"
            refused.append(f"{op.name} ({op.kind}/{op.op_type}): {reason}")
    if refused and fallback != "cpu":
        raise EdgekitError(f"{src}: {len(refused)} op(s) cannot run on the accelerator: " + _group(refused)
                           + " (use --fallback cpu to run them on the host)")
    return placement, refused


def allocate(qg, placement: dict, fused: dict, shapes: dict, n: int, image: "_Image") -> dict[str, Act]:
    """Every tensor an accelerator step reads or writes, placed in DRAM (fused intermediates stay
    on chip). Host-computed tensors the accelerator reads are among them, as accelerator inputs."""
    acts: dict[str, Act] = {}
    on_chip = {qg.ops[i].outputs[0] for i in fused.values()}

    def act(name, q) -> Act:
        if name not in acts:
            c, h, w, _ = act_dims(shapes[name])
            a = Act(name, c, h, w, q)
            if name not in on_chip:
                a.addr = image.alloc(a.nbytes(n))
            acts[name] = a
        return acts[name]

    for op in qg.ops:
        if placement[op.name] != "accel":
            continue
        for t, q in zip(op.inputs, op.in_q):
            act(t, q)
        act(op.outputs[0], op.out_q)
    return acts


def emit(qg, placement: dict, fused: dict, acts: dict, shapes: dict, image: "_Image", opts: CompileOptions,
         hw: dict) -> tuple[Emitter, list[HostStep | AccelStep]]:
    """The program's steps in graph order: host ops, and accelerator segments (each ends in finish)."""
    fused_into = {v: k for k, v in fused.items()}   # conv index -> add name
    by_name = {op.name: op for op in qg.ops}
    em = Emitter(hw)
    steps = []
    for i, op in enumerate(qg.ops):
        if placement[op.name] == "host":
            steps.append(HostStep(op.name, op.kind, list(op.inputs), list(op.outputs),
                                  fallback=op.kind not in HOST_KINDS, params=op.params.to_json()))
            continue
        if op.name in fused:
            continue   # emitted with its conv
        start = len(em.insns)
        step = AccelStep(op.name, [op.name], [op.kind], start, 0, 0)
        if op.kind in ("conv", "conv_transpose", "gemm", "linear"):
            add = by_name[fused_into[i]] if i in fused_into else None
            _lower_conv(em, op, add, acts, shapes, image, opts, step)
            if add is not None:
                step.ops.append(add.name)
                step.op_kinds.append(add.kind)
        else:
            _lower_add(em, op, acts, image, step)
        em.emit("finish")
        step.insn_count = len(em.insns) - start
        step.params = {name: by_name[name].params.to_json() for name in step.ops}
        steps.append(step)
    return em, steps


def package(qg, em: Emitter, steps: list[HostStep | AccelStep], acts: dict, shapes: dict, image: "_Image",
            placement: dict, fused: dict, refused: list[str], src: Path, opts: CompileOptions,
            hw: dict) -> tuple[Program, dict]:
    """Instructions into the DRAM image, and the program container with its metadata."""
    n = hw["N"]
    insn_bytes = asm.to_bytes(em.insns)
    insn_addr = image.alloc(len(insn_bytes), isa.INSN_BYTES)
    image.chunks.append((insn_addr, np.frombuffer(insn_bytes, np.uint8)))
    dram = image.build()
    segments = [s for s in steps if isinstance(s, AccelStep)]
    for s in segments:
        s.insn_addr = insn_addr + s.insn_start * isa.INSN_BYTES
    tensors = {a.name: Placement(a.name, a.addr, a.c, a.h, a.w, a.q.scale, a.q.zero_point, a.q.qtype.name,
                                 act_dims(shapes[a.name])[3], list(shapes[a.name])) for a in acts.values()}

    def as_tensor(a: Act) -> Tensor:
        return Tensor(a.name, a.addr, (a.blocks(n), a.h, a.w, n), "int8" if a.q.qtype.signed else "uint8", "CBHWN")

    graph_in = [acts[o] for op in qg.ops if op.kind == "quantize" for o in op.outputs if o in acts]
    graph_out = [acts[op.inputs[0]] for op in qg.ops if op.kind == "dequantize" and op.inputs[0] in acts]
    accel_ops = [op for op in qg.ops if placement[op.name] == "accel"]
    meta = {
        "kind": FORMAT_KIND, "source": "model.q.onnx", "source_name": src.name, "fusion": opts.fusion,
        "fallback": opts.fallback, "array": n, "steps": [s.to_json() for s in steps],
        "tensors": {name: t.to_json() for name, t in tensors.items()},
        "inputs": list(qg.inputs), "outputs": list(qg.outputs),
        "fused_adds": sorted(fused), "host_ops": refused,
        "summary": {"accel_ops": len(accel_ops), "host_ops": len(qg.ops) - len(accel_ops),
                    "fallback_ops": len(refused), "segments": len(segments),
                    "instructions": len(em.insns), "dram_bytes": int(dram.size),
                    "macs": int(sum(s.macs for s in segments))},
    }
    program = Program(em.insns, dram, insn_addr, hw, [as_tensor(a) for a in graph_in],
                      [as_tensor(a) for a in graph_out], meta)
    return program, meta


def _group(refused: list[str], per_kind: int = 6) -> str:
    """'name (kind/Op): reason' lines grouped by reason, a few names each (all are in program.json)."""
    groups: dict[str, list[str]] = {}
    for line in refused:
        head, reason = line.split(": ", 1)
        name, kind = head.rsplit(" (", 1)
        groups.setdefault(f"{kind[:-1]} ({reason})", []).append(name)
    parts = []
    for key, names in groups.items():
        shown = ", ".join(names[:per_kind]) + (f", ... {len(names) - per_kind} more" if len(names) > per_kind else "")
        parts.append(f"{len(names)} x {key}: {shown}")
    return "; ".join(parts)


def _lower_conv(em: Emitter, op, add, acts: dict, shapes: dict, image: _Image, opts: CompileOptions,
                step: AccelStep) -> None:
    """Emit a weighted layer (with its fused add); record in `step` where its data went and its MACs."""
    n = em.n
    x, y1 = acts[op.inputs[0]], acts[op.outputs[0]]
    geo = ConvLowering().geometry(op, shapes[op.inputs[0]], shapes[op.outputs[0]])
    weight = conv_weight(op)
    if geo.kind == "depthwise":
        tiles = L.depthwise_tiles(weight, n)
    elif geo.kind == "transposed":
        tiles = L.transposed_tiles(weight, n)
    else:
        tiles = L.dense_tiles(weight, n)
    packed = bool(tiles.size) and -8 <= int(tiles.min()) and int(tiles.max()) <= 7   # W4: two weights a byte
    wt_addr = image.place(formats.pack_int4(tiles.reshape(-1)) if packed else tiles)
    cbo = L.blocks(y1.c, n)
    p = op.params
    params = L.param_rows(p.bias, np.broadcast_to(p.mult, p.bias.shape), np.broadcast_to(p.shift, p.bias.shape), n)
    fusion = None
    y = y1
    rows = cbo
    if add is not None:
        other_name = add.inputs[1] if add.inputs[0] == op.outputs[0] else add.inputs[0]
        ks = add.params.k
        k_self, k_other = (ks[0], ks[1]) if add.inputs[0] == op.outputs[0] else (ks[1], ks[0])
        params = np.concatenate([params, add_param_row(int(np.reshape(add.params.mult, -1)[0]),
                                                       int(np.reshape(add.params.shift, -1)[0]), n)])
        rows += 1
        y = acts[add.outputs[0]]
        fusion = AddFusion(acts[other_name], int(k_self), int(k_other), -1, add.out_q, add.params.lo, add.params.hi)
    p_addr = image.place(params)
    per_group = rows > em.reg.param_depth        # loaded by each output-block group instead
    pbase = -1
    if not per_group:
        pbase = em.param_slot(rows)
        em.load_rows("param", pbase, p_addr // isa.WORD_BYTES, rows)
        if fusion is not None:
            fusion.param_row = pbase + cbo
    tmp_addr = -1
    if not opts.fusion:
        tmp_addr = image.alloc(cbo * y1.h * y1.w * n * 4)
    epi = Epilogue(y, op.out_q, p.lo, p.hi, pbase, opts.fusion, fusion, tmp_addr,
                   p_addr // isa.WORD_BYTES if per_group else -1)
    tiling = choose_tiling(geo, x.blocks(n), cbo, em.reg, n, geo.kind == "depthwise")
    lower_conv_like(em, geo, x, cbo, Weights(wt_addr // isa.WORD_BYTES, packed), epi, tiling)
    step.weights_addr, step.weights_packed_int4, step.params_addr = wt_addr, packed, p_addr
    step.tiling = Tiling(tiling.th, tiling.wt, tiling.group, tiling.chunk)
    if op.kind == "conv_transpose":
        step.macs = int(np.prod(weight.shape)) * x.h * x.w
    else:
        step.macs = int(y1.c * weight.shape[1] * geo.kh * geo.kw * y1.h * y1.w)


def _lower_add(em: Emitter, op, acts: dict, image: _Image, step: AccelStep) -> None:
    a, b, y = acts[op.inputs[0]], acts[op.inputs[1]], acts[op.outputs[0]]
    p = op.params
    ka, kb = p.k
    p_addr = image.place(add_param_row(int(np.reshape(p.mult, -1)[0]), int(np.reshape(p.shift, -1)[0]), em.n))
    row = em.param_slot(1)
    em.load_rows("param", row, p_addr // isa.WORD_BYTES, 1)
    lower_add(em, a, b, y, int(ka), int(kb), row, p.lo, p.hi)
    step.params_addr = p_addr
