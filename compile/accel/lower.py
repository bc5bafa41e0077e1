"""Lowering of integer ops to accelerator instructions: tiling, buffer planning, fused epilogues.

One lowering class per op kind (the op table `LOWERINGS`); each knows whether
it can run a `QOp` (`unsupported(...)` returns the reason or None) and emits
its instructions through an `Emitter`.

Buffer plan (rows; the default 2048-row act buffer in brackets):
  act:   IN0, IN1 input tiles (double buffered) [2 x 640], OUT0, OUT1 post
         outputs [2 x 192], RES residual tile [192], MID fused intermediate [192]
  acc:   two halves, alternated per output tile (the next tile's GEMMs
         overlap the previous tile's post + store)
  wgt:   two halves, alternated per weight load
  param: a ring; each layer loads its parameter rows once
The hardware interlocks every buffer hazard, so alternation only buys
overlap between the load, compute and store units; correctness never
depends on it.

Fusion (fusion=True): conv/conv_transpose + bias + requantization +
activation clamp run as one `post` straight from the accumulators; a
residual Add that consumes the conv's output is folded in as
post -> MID (the conv's quantized output, bit-exact with the reference),
vec set (MID - zp) * k_a, post with the other operand as the residual term.
Without fusion the int32 accumulators go to DRAM and come back for a
separate post pass, and every Add is its own pass over DRAM.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import asm, isa
from . import layout as L


@dataclass
class Act:
    """An activation tensor [1, C, H, W] in DRAM (layout CBHWN); addr < 0: kept on chip only."""

    name: str
    c: int
    h: int
    w: int
    q: object            # edgekit.quant.qgraph.QTensor
    addr: int = -1       # bytes

    def blocks(self, n: int) -> int:
        return L.blocks(self.c, n)

    def nbytes(self, n: int) -> int:
        return self.blocks(n) * self.h * self.w * n

    def word(self, n: int, cb: int, y: int = 0, x: int = 0) -> int:
        return self.addr // isa.WORD_BYTES + ((cb * self.h + y) * self.w + x) * (n // isa.WORD_BYTES)


@dataclass
class Regions:
    """The buffer plan for one hardware configuration."""

    in_base: tuple
    in_rows: int
    out_base: tuple
    small: int
    res: int
    mid: int
    acc_base: tuple
    acc_rows: int
    wgt_base: tuple
    wgt_rows: int
    param_depth: int

    @classmethod
    def of(cls, hw: dict) -> "Regions":
        act, acc, wgt = hw["ACT_DEPTH"], hw["ACC_DEPTH"], hw["WGT_DEPTH"]
        in_rows, small = act * 5 // 16, act * 3 // 32
        o = 2 * in_rows
        return cls((0, in_rows), in_rows, (o, o + small), small, o + 2 * small, o + 3 * small,
                   (0, acc // 2), acc // 2, (0, wgt // 2), wgt // 2, hw["PARAM_DEPTH"])


class Emitter:
    """Instruction list + the alternation state of the double-buffered regions."""

    def __init__(self, hw: dict):
        self.hw = hw
        self.n = hw["N"]
        self.rw = self.n // isa.WORD_BYTES          # DRAM words per act row
        self.reg = Regions.of(hw)
        self.insns: list[int] = []
        self._flip = {"in": 0, "out": 0, "acc": 0, "wgt": 0}
        self.param_cursor = 0

    def emit(self, name: str, **fields) -> None:
        self.insns.append(asm.encode(name, **fields))

    def take(self, kind: str) -> int:
        """Base row of the next half of a double-buffered region."""
        k = self._flip[kind]
        self._flip[kind] ^= 1
        bases = {"in": self.reg.in_base, "out": self.reg.out_base, "acc": self.reg.acc_base,
                 "wgt": self.reg.wgt_base}[kind]
        return bases[k]

    def param_slot(self, rows: int) -> int:
        if self.param_cursor + rows > self.reg.param_depth:
            self.param_cursor = 0
        base = self.param_cursor
        self.param_cursor += rows
        return base

    # ---- DMA helpers ----------------------------------------------------
    def load_rows(self, buf: str, sram: int, dram_word: int, rows: int) -> None:
        self.emit("load", buf=buf, sram=sram, dram=dram_word, ysize=1, xsize=rows, xstride=0)

    def store_rows(self, buf: str, sram: int, dram_word: int, rows: int) -> None:
        self.emit("store", buf=buf, sram=sram, dram=dram_word, ysize=1, xsize=rows, xstride=0)


@dataclass
class AddFusion:
    """A residual Add folded into the epilogue of the conv producing one of its operands."""

    other: Act               # the operand read from DRAM
    k_self: int              # multiplier of the conv's own (quantized) output
    k_other: int
    param_row: int           # parameter row: bias 0, the Add's (M, shift) in every lane
    out_q: object
    lo: int
    hi: int


@dataclass
class Epilogue:
    y: Act                   # where the final result goes (the Add's output when fused)
    conv_q: object           # the conv's own output grid
    lo: int
    hi: int
    param_base: int
    fused: bool
    add: AddFusion | None = None
    tmp_addr: int = -1       # unfused: int32 accumulator spill area in DRAM
    wo: int = 0

    def run(self, em: Emitter, ob: int, oy0: int, th: int, acc: int) -> None:
        count = th * self.wo
        n = em.n
        out = em.take("out")
        if not self.fused:
            # Separate pass over DRAM: spill the int32 accumulators, read them back.
            word = self.tmp_addr // isa.WORD_BYTES + (ob * self.y.h + oy0) * self.y.w * 4 * em.rw
            em.store_rows("acc", acc, word, count)
            em.load_rows("acc", acc, word, count)
        q = self.conv_q
        target = em.reg.mid if self.add else out
        em.emit("post", out_type=q.qtype.name, count=count, acc=acc, out=target, param=self.param_base + ob,
                zp=q.zero_point, lo=self.lo, hi=self.hi)
        if self.add:
            a = self.add
            em.load_rows("act", em.reg.res, a.other.word(n, ob, oy0), count)
            em.emit("vec", op="set", act_signed=int(q.qtype.signed), za=q.zero_point, mult=a.k_self,
                    outer=count, inner=1, acc=acc, act=em.reg.mid, acc_so=1, act_so=1)
            em.emit("post", out_type=a.out_q.qtype.name, count=count, acc=acc, out=out, param=a.param_row,
                    zp=a.out_q.zero_point, lo=a.lo, hi=a.hi, res_en=1,
                    res_signed=int(a.other.q.qtype.signed), res=em.reg.res, res_zp=a.other.q.zero_point,
                    res_mult=a.k_other)
        em.store_rows("act", out, self.y.word(n, ob, oy0), count)


# --------------------------------------------------------------------------- geometry
@dataclass
class Gemm:
    """One GEMM loop nest relative to a tile: act offset in the tile, acc offset, loops, reset group."""

    tap: int
    act: int
    acc: int
    outer: int
    inner: int
    act_so: int
    act_si: int
    acc_so: int
    acc_si: int
    group: int


@dataclass
class ConvGeometry:
    """Where the input rows of an output band come from and which GEMMs compute it."""

    kind: str                # conv | depthwise | transposed
    h: int
    w: int
    ho: int
    wo: int
    kh: int
    kw: int
    stride: tuple
    pads: tuple              # top, left, bottom, right (ONNX begin/end)
    dil: tuple
    row_step: int = 1
    pl: int = 0
    pr: int = 0
    wp: int = 0
    dy: tuple = (0, 0)       # transposed: input row offset range
    gemms_cache: dict = field(default_factory=dict)

    def __post_init__(self):
        sy, sx = self.stride
        if self.kind == "transposed":
            self.row_step = sy
            dys = self._offsets(sy, self.pads[0], self.kh)
            dxs = self._offsets(sx, self.pads[1], self.kw)
            self.dy = (min(dys), max(dys))
            self.pl, self.pr = max(0, -min(dxs)), max(0, max(dxs))
            self.wp = self.w + self.pl + self.pr
        else:
            self.pl = self.pads[1]
            need = (self.wo - 1) * sx + (self.kw - 1) * self.dil[1] + 1
            self.pr = max(0, need - self.w - self.pl)
            self.wp = self.w + self.pl + self.pr

    @staticmethod
    def _offsets(s, p, k):
        return [(r + p - kk) // s for r in range(s) for kk in range(k) if (r + p - kk) % s == 0]

    def input_rows(self, oy0: int, th: int) -> tuple[int, int]:
        """[first, last) input rows (may reach outside the image: zero-point padding)."""
        if self.kind == "transposed":
            s = self.stride[0]
            q0, tq = oy0 // s, th // s
            return q0 + self.dy[0], q0 + tq + self.dy[1]
        sy, dy = self.stride[0], self.dil[0]
        first = oy0 * sy - self.pads[0]
        return first, (oy0 + th - 1) * sy - self.pads[0] + (self.kh - 1) * dy + 1

    def gemms(self, th: int) -> list[Gemm]:
        if th in self.gemms_cache:
            return self.gemms_cache[th]
        out = []
        if self.kind == "transposed":
            s, p = self.stride, self.pads
            for ky in range(self.kh):
                for kx in range(self.kw):
                    ry, rx = (ky - p[0]) % s[0], (kx - p[1]) % s[1]
                    dy, dx = (ry + p[0] - ky) // s[0], (rx + p[1] - kx) // s[1]
                    out.append(Gemm(ky * self.kw + kx, (dy - self.dy[0]) * self.wp + dx + self.pl,
                                    ry * self.wo + rx, th // s[0], self.w, self.wp, 1, s[0] * self.wo, s[1],
                                    ry * s[1] + rx))
        else:
            sy, sx = self.stride
            for ky in range(self.kh):
                for kx in range(self.kw):
                    out.append(Gemm(ky * self.kw + kx, ky * self.dil[0] * self.wp + kx * self.dil[1], 0, th,
                                    self.wo, sy * self.wp, sx, self.wo, 1, 0))
        self.gemms_cache[th] = out
        return out

    def phases(self) -> int:
        return self.stride[0] * self.stride[1] if self.kind == "transposed" else 1


def _load_input_band(em: Emitter, x: Act, cb: int, geo: ConvGeometry, oy0: int, th: int, sram: int) -> int:
    """Load one channel block of the input band with zero-point padding; returns rows written."""
    first, last = geo.input_rows(oy0, th)
    top, bottom = max(0, -first), max(0, last - x.h)
    y0, y1 = max(first, 0), min(last, x.h)
    lines = max(0, y1 - y0)
    pad = x.q.zero_point & 0xFF
    if lines == 0:  # the whole band is padding (can happen at the border of a transposed conv)
        top, bottom = last - first, 0
    em.emit("load", buf="act", sram=sram, dram=x.word(em.n, cb, y0 if lines else 0), ysize=lines if lines else 1,
            xsize=x.w, xstride=x.w * em.rw, pad_value=pad, pad_top=top, pad_bottom=bottom,
            pad_left=geo.pl, pad_right=geo.pr)
    return (last - first) * geo.wp


@dataclass
class Tiling:
    th: int          # output rows per band
    group: int       # output blocks per accumulator half
    chunk: int       # input blocks per input load
    cost: float


def choose_tiling(geo: ConvGeometry, cbi: int, cbo: int, reg: Regions, n: int, depthwise: bool) -> Tiling | None:
    """Smallest estimated DRAM traffic (+ instruction bytes) among tilings that fit the buffers."""
    best = None
    taps = geo.kh * geo.kw
    for th in range(geo.row_step, geo.ho + 1, geo.row_step):
        rows = th * geo.wo
        if rows > reg.small or th > 1023:
            break
        first, last = geo.input_rows(0, th)
        band = (last - first) * geo.wp
        if band > reg.in_rows:
            break
        bands = -(-geo.ho // th)
        groups_opts = [1] if depthwise else range(1, cbo + 1)
        for g in groups_opts:
            if g * rows > reg.acc_rows:
                break
            chunk = 1 if depthwise else max(1, min(cbi, reg.in_rows // band))
            passes = -(-cbo // g)
            if depthwise:
                in_bytes = bands * cbo * band * n
                w_bytes = bands * cbo * taps * n * n
                insns = bands * cbo * (taps + 4 + -(-taps // reg.wgt_rows))
            else:
                in_bytes = bands * passes * cbi * band * n
                w_bytes = bands * cbo * cbi * taps * n * n
                insns = bands * passes * (-(-cbi // chunk)) * (chunk + g * (chunk * taps + 1)) + bands * cbo * 4
            cost = in_bytes + w_bytes + 16 * insns + 32 * insns
            if best is None or cost < best.cost:
                best = Tiling(th, g, chunk, cost)
    return best


def lower_conv_like(em: Emitter, geo: ConvGeometry, x: Act, cbo: int, wt_word: int, epi: Epilogue,
                    tiling: Tiling) -> None:
    """Emit a conv / depthwise conv / transposed conv over the whole output."""
    n, reg = em.n, em.reg
    cbi = x.blocks(n)
    depthwise = geo.kind == "depthwise"
    taps = geo.kh * geo.kw
    tile_words = n * n // isa.WORD_BYTES
    for oy0 in range(0, geo.ho, tiling.th):
        th = min(tiling.th, geo.ho - oy0)
        gemms = geo.gemms(th)
        for g0 in range(0, cbo, tiling.group):
            obs = list(range(g0, min(cbo, g0 + tiling.group)))
            acc = em.take("acc")
            acc_of = {ob: acc + i * th * geo.wo for i, ob in enumerate(obs)}
            started = {ob: set() for ob in obs}
            ib_chunks = [[ob] for ob in obs] if depthwise else \
                [list(range(c, min(cbi, c + tiling.chunk))) for c in range(0, cbi, tiling.chunk)]
            for chunk in ib_chunks:
                base = em.take("in")
                band = 0
                for i, ib in enumerate(chunk):
                    band = _load_input_band(em, x, ib, geo, oy0, th, base + i * band)
                for ob in ([chunk[0]] if depthwise else obs):
                    seq = [(i, ib, t) for i, ib in enumerate(chunk) for t in range(taps)]
                    for s0 in range(0, len(seq), reg.wgt_rows):
                        part = seq[s0:s0 + reg.wgt_rows]
                        _, ib_first, t_first = part[0]
                        tile0 = (ob * taps + t_first) if depthwise else ((ob * cbi + ib_first) * taps + t_first)
                        wbase = em.take("wgt")
                        em.load_rows("wgt", wbase, wt_word + tile0 * tile_words, len(part))
                        for k, (i, ib, t) in enumerate(part):
                            gm = gemms[t]
                            reset = gm.group not in started[ob]
                            started[ob].add(gm.group)
                            em.emit("gemm", reset=int(reset), act_signed=int(x.q.qtype.signed),
                                    za=x.q.zero_point, outer=gm.outer, inner=gm.inner,
                                    acc=acc_of[ob] + gm.acc, act=base + i * band + gm.act, wgt=wbase + k,
                                    acc_so=gm.acc_so, acc_si=gm.acc_si, act_so=gm.act_so, act_si=gm.act_si)
            for ob in obs:
                epi.run(em, ob, oy0, th, acc_of[ob])


def lower_add(em: Emitter, a: Act, b: Act, y: Act, ka: int, kb: int, param_row: int, lo: int, hi: int) -> None:
    """Element-wise Add over the flat row range (all three tensors share the CBHWN layout)."""
    n, reg = em.n, em.reg
    total = a.blocks(n) * a.h * a.w
    step = reg.small
    for r0 in range(0, total, step):
        count = min(step, total - r0)
        base = em.take("in")
        em.load_rows("act", base, a.addr // isa.WORD_BYTES + r0 * em.rw, count)
        em.load_rows("act", base + step, b.addr // isa.WORD_BYTES + r0 * em.rw, count)
        acc = em.take("acc")
        em.emit("vec", op="set", act_signed=int(a.q.qtype.signed), za=a.q.zero_point, mult=ka, outer=count,
                inner=1, acc=acc, act=base, acc_so=1, act_so=1)
        out = em.take("out")
        em.emit("post", out_type=y.q.qtype.name, count=count, acc=acc, out=out, param=param_row,
                zp=y.q.zero_point, lo=lo, hi=hi, res_en=1, res_signed=int(b.q.qtype.signed), res=base + step,
                res_zp=b.q.zero_point, res_mult=kb)
        em.store_rows("act", out, y.addr // isa.WORD_BYTES + r0 * em.rw, count)


def add_param_row(mult: int, shift: int, n: int) -> np.ndarray:
    return L.param_rows(np.zeros(n), np.full(n, int(mult)), np.full(n, int(shift)), n)
