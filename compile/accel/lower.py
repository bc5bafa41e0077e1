"""Lowering of integer ops to accelerator instructions: tiling, buffer planning, fused epilogues.

The op table (`compiler.LOWERINGS`, one class per kind) decides whether the
accelerator can run a `QOp` (`unsupported(...)` returns the reason or None);
the compiler's `_lower_conv` / `_lower_add` then call the functions here
(`lower_conv_like`, `lower_depthwise`, `lower_add`), which emit the
instructions through an `Emitter`.

Buffer plan (rows; the default 2048-row act buffer in brackets):
  act:   IN0, IN1 input tiles (double buffered) [2 x 640], OUT0, OUT1 post
         outputs [2 x 192], RES residual tile [192], MID fused intermediate [192]
  acc:   two halves, alternated per output tile (the next tile's GEMMs
         overlap the previous tile's post + store)
  wgt:   two halves, alternated per weight load (a depthwise block's tap-row tiles: ceil(taps/N))
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

from dataclasses import dataclass

import numpy as np

from edgekit.errors import EdgekitError

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
class Weights:
    """A layer's weight tiles in DRAM: int8 bytes, or, when every weight fits in 4 bits, packed
    int4 (two per byte) that the load unit unpacks (`int4=1`): half the weight traffic."""

    word: int                # DRAM word of tile 0
    packed: bool

    def load(self, em: "Emitter", sram: int, first_tile: int, count: int) -> None:
        tile_words = em.n * em.n // isa.WORD_BYTES // (2 if self.packed else 1)
        em.emit("load", buf="wgt", sram=sram, dram=self.word + first_tile * tile_words, ysize=1, xsize=count,
                xstride=0, int4=int(self.packed), int4_signed=int(self.packed))


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
class Strip:
    """A column strip of the output: [x0, x0 + wt) and the input columns it reads (with padding)."""

    x0: int
    wt: int
    in_x0: int       # first input column loaded from DRAM
    in_cols: int     # columns loaded
    pl: int          # zero-point columns left / right of them
    pr: int

    @property
    def wp(self) -> int:
        return self.pl + self.in_cols + self.pr


@dataclass
class Epilogue:
    y: Act                   # where the final result goes (the Add's output when fused)
    conv_q: object           # the conv's own output grid
    lo: int
    hi: int
    param_base: int
    fused: bool
    add: AddFusion | None = None
    tmp_addr: int = -1       # unfused: int32 accumulator spill area in DRAM (CBHW x N int32)
    param_word: int = -1     # >= 0: too many output blocks for the parameter buffer; load per group
    param_of: dict | None = None

    def load_group_params(self, em: Emitter, obs: list[int], cbo: int) -> None:
        """Layers with more output blocks than parameter rows: each output-block group loads its own."""
        if self.param_word < 0:
            return
        extra = 1 if self.add else 0
        slot = em.param_slot(len(obs) + extra)
        em.load_rows("param", slot, self.param_word + obs[0] * em.n, len(obs))
        if self.add:
            em.load_rows("param", slot + len(obs), self.param_word + cbo * em.n, 1)
            self.add.param_row = slot + len(obs)
        self.param_of = {ob: slot + i for i, ob in enumerate(obs)}

    def run(self, em: Emitter, ob: int, oy0: int, th: int, strip: Strip, acc: int) -> None:
        wt, n, rw = strip.wt, em.n, em.rw
        count = th * wt
        y = self.y
        out = em.take("out")
        if not self.fused:
            # Separate pass over DRAM: spill the int32 accumulators, read them back.
            word = self.tmp_addr // isa.WORD_BYTES + ((ob * y.h + oy0) * y.w + strip.x0) * 4 * rw
            em.emit("store", buf="acc", sram=acc, dram=word, ysize=th, xsize=wt, xstride=y.w * 4 * rw)
            em.emit("load", buf="acc", sram=acc, dram=word, ysize=th, xsize=wt, xstride=y.w * 4 * rw)
        q = self.conv_q
        target = em.reg.mid if self.add else out
        row = self.param_of[ob] if self.param_of is not None else self.param_base + ob
        em.emit("post", out_type=q.qtype.name, count=count, acc=acc, out=target, param=row,
                zp=q.zero_point, lo=self.lo, hi=self.hi)
        if self.add:
            a = self.add
            em.emit("load", buf="act", sram=em.reg.res, dram=a.other.word(n, ob, oy0, strip.x0), ysize=th,
                    xsize=wt, xstride=a.other.w * rw)
            em.emit("vec", op="set", act_signed=int(q.qtype.signed), za=q.zero_point, mult=a.k_self,
                    outer=count, inner=1, acc=acc, act=em.reg.mid, acc_so=1, act_so=1)
            em.emit("post", out_type=a.out_q.qtype.name, count=count, acc=acc, out=out, param=a.param_row,
                    zp=a.out_q.zero_point, lo=a.lo, hi=a.hi, res_en=1,
                    res_signed=int(a.other.q.qtype.signed), res=em.reg.res, res_zp=a.other.q.zero_point,
                    res_mult=a.k_other)
        em.emit("store", buf="act", sram=out, dram=y.word(n, ob, oy0, strip.x0), ysize=th, xsize=wt,
                xstride=y.w * rw)


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
    """Where the input rows/columns of an output tile come from and which GEMMs compute it."""

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
    dy: tuple = (0, 0)       # transposed: input row offset range
    dx: tuple = (0, 0)

    def __post_init__(self):
        if self.kind == "transposed":
            sy, sx = self.stride
            self.row_step = sy
            dys = self._offsets(sy, self.pads[0], self.kh)
            dxs = self._offsets(sx, self.pads[1], self.kw)
            self.dy = (min(dys), max(dys))
            self.dx = (min(dxs), max(dxs))

    @staticmethod
    def _offsets(s, p, k):
        return [(r + p - kk) // s for r in range(s) for kk in range(k) if (r + p - kk) % s == 0]

    def _span(self, o0: int, count: int, axis: int) -> tuple[int, int]:
        """[first, last) input index along an axis for outputs [o0, o0 + count)."""
        if self.kind == "transposed":
            s = self.stride[axis]
            d = self.dy if axis == 0 else self.dx
            return o0 // s + d[0], (o0 + count) // s + d[1]
        s, dil, k = self.stride[axis], self.dil[axis], (self.kh, self.kw)[axis]
        first = o0 * s - self.pads[axis]
        return first, (o0 + count - 1) * s - self.pads[axis] + (k - 1) * dil + 1

    def input_rows(self, oy0: int, th: int) -> tuple[int, int]:
        return self._span(oy0, th, 0)

    def strip(self, x0: int, wt: int) -> Strip:
        first, last = self._span(x0, wt, 1)
        c0, c1 = max(first, 0), min(last, self.w)
        return Strip(x0, wt, c0, max(0, c1 - c0), max(0, -first), max(0, last - max(c1, first, 0)))

    def strips(self, wt: int) -> list[Strip]:
        return [self.strip(x0, min(wt, self.wo - x0)) for x0 in range(0, self.wo, wt)]

    def gemms(self, th: int, st: Strip) -> list[Gemm]:
        out = []
        wp = st.wp
        if self.kind == "transposed":
            s, p = self.stride, self.pads
            for ky in range(self.kh):
                for kx in range(self.kw):
                    ry, rx = (ky - p[0]) % s[0], (kx - p[1]) % s[1]
                    dy, dx = (ry + p[0] - ky) // s[0], (rx + p[1] - kx) // s[1]
                    out.append(Gemm(ky * self.kw + kx, (dy - self.dy[0]) * wp + dx - self.dx[0],
                                    ry * st.wt + rx, th // s[0], st.wt // s[1], wp, 1, s[0] * st.wt, s[1],
                                    ry * s[1] + rx))
        else:
            sy, sx = self.stride
            for ky in range(self.kh):
                for kx in range(self.kw):
                    out.append(Gemm(ky * self.kw + kx, ky * self.dil[0] * wp + kx * self.dil[1], 0, th,
                                    st.wt, sy * wp, sx, st.wt, 1, 0))
        return out


def _load_input_tile(em: Emitter, x: Act, cb: int, geo: ConvGeometry, oy0: int, th: int, st: Strip,
                     sram: int) -> int:
    """Load one channel block of the input tile with zero-point padding; returns rows written."""
    first, last = geo.input_rows(oy0, th)
    top, bottom = max(0, -first), max(0, last - max(x.h, first, 0))
    y0, y1 = max(first, 0), min(last, x.h)
    lines = max(0, y1 - y0)
    pad = x.q.zero_point & 0xFF
    if lines == 0 or st.in_cols == 0:
        # The whole tile is padding: a one-row load whose data row is overwritten below never happens
        # in practice (every output reads some input); keep the buffer defined anyway.
        raise EdgekitError("internal: an output tile that reads no input")
    em.emit("load", buf="act", sram=sram, dram=x.word(em.n, cb, y0, st.in_x0), ysize=lines, xsize=st.in_cols,
            xstride=x.w * em.rw, pad_value=pad, pad_top=top, pad_bottom=bottom, pad_left=st.pl, pad_right=st.pr)
    return (last - first) * st.wp


@dataclass
class Tiling:
    th: int          # output rows per band
    wt: int          # output columns per strip
    group: int       # output blocks per accumulator half
    chunk: int       # input blocks per input load
    cost: float


def _strip_widths(geo: ConvGeometry) -> list[int]:
    # transposed convs: strips hold whole groups of `stride` columns (all column phases of an input column)
    step = geo.stride[1] if geo.kind == "transposed" else 1
    units = geo.wo // step
    widths = []
    for k in range(1, units + 1):
        wt = step * -(-units // k)
        if wt not in widths:
            widths.append(wt)
    return widths


def choose_tiling(geo: ConvGeometry, cbi: int, cbo: int, reg: Regions, n: int, depthwise: bool) -> Tiling | None:
    """Smallest estimated DRAM traffic (+ instruction bytes) among tilings that fit the buffers."""
    best = None
    taps = geo.kh * geo.kw
    for wt in _strip_widths(geo):
        if wt > 1023 or any(st.pl > 15 or st.pr > 15 for st in geo.strips(wt)):
            continue
        wp = max(st.wp for st in geo.strips(wt))
        strips = -(-geo.wo // wt)
        for th in range(geo.row_step, geo.ho + 1, geo.row_step):
            rows = th * wt
            if rows > reg.small or th > 1023:
                break
            first, last = geo.input_rows(0, th)
            band = (last - first) * wp
            if band > reg.in_rows or last - first > 1023:
                break
            tiles = -(-geo.ho // th) * strips
            for g in ([1] if depthwise else range(1, min(cbo, reg.param_depth - 1) + 1)):
                if g * rows > reg.acc_rows:
                    break
                chunk = 1 if depthwise else max(1, min(cbi, reg.in_rows // band))
                passes = -(-cbo // g)
                if depthwise:
                    # tap-row tiles stay resident per channel block; the empty pixel lanes of a
                    # row's last partial group still cost array cycles (priced at 8 bytes a cycle)
                    in_bytes = tiles * cbo * band * n
                    w_bytes = cbo * -(-taps // n) * n * n
                    insns = tiles * cbo * (taps + 4)
                    in_bytes += 8 * tiles * cbo * taps * th * (-(-wt // n) - wt / n)
                else:
                    in_bytes = tiles * passes * cbi * band * n
                    w_bytes = tiles * cbo * cbi * taps * n * n
                    insns = tiles * passes * (-(-cbi // chunk)) * (chunk + g * (chunk * taps + 1)) + tiles * cbo * 4
                cost = in_bytes + w_bytes + 48 * insns
                if best is None or cost < best.cost:
                    best = Tiling(th, wt, g, chunk, cost)
    return best


def lower_depthwise(em: Emitter, geo: ConvGeometry, x: Act, cbo: int, weights: Weights, epi: Epilogue,
                    tiling: Tiling) -> None:
    """Depthwise conv on the depthwise gemm mode, channel block by channel block: the block's
    tap-row tiles (N taps per tile) are loaded once and serve every output tile of the block; per
    tap one `gemm dw=1` computes N channels x N output pixels per cycle (output rows x pixel
    groups; strides and dilations are loop strides, as for dense convs)."""
    n = em.n
    taps = geo.kh * geo.kw
    tiles = -(-taps // n)
    for cb in range(cbo):
        wbase = em.take("wgt")
        weights.load(em, wbase, cb * tiles, tiles)
        for oy0 in range(0, geo.ho, tiling.th):
            th = min(tiling.th, geo.ho - oy0)
            for st in geo.strips(tiling.wt):
                gemms = geo.gemms(th, st)
                acc = em.take("acc")
                base = em.take("in")
                _load_input_tile(em, x, cb, geo, oy0, th, st, base)
                for t, gm in enumerate(gemms):
                    em.emit("gemm", dw=1, dw_row=t % n, reset=int(t == 0), act_signed=int(x.q.qtype.signed),
                            za=x.q.zero_point, outer=gm.outer, inner=gm.inner, acc=acc + gm.acc,
                            act=base + gm.act, wgt=wbase + t // n, acc_so=gm.acc_so, acc_si=gm.acc_si,
                            act_so=gm.act_so, act_si=gm.act_si)
                epi.run(em, cb, oy0, th, st, acc)


def lower_conv_like(em: Emitter, geo: ConvGeometry, x: Act, cbo: int, weights: Weights, epi: Epilogue,
                    tiling: Tiling) -> None:
    """Emit a conv / depthwise conv / transposed conv over the whole output."""
    if geo.kind == "depthwise":
        return lower_depthwise(em, geo, x, cbo, weights, epi, tiling)
    n, reg = em.n, em.reg
    cbi = x.blocks(n)
    taps = geo.kh * geo.kw
    for oy0 in range(0, geo.ho, tiling.th):
        th = min(tiling.th, geo.ho - oy0)
        for st in geo.strips(tiling.wt):
            gemms = geo.gemms(th, st)
            for g0 in range(0, cbo, tiling.group):
                obs = list(range(g0, min(cbo, g0 + tiling.group)))
                epi.load_group_params(em, obs, cbo)
                acc = em.take("acc")
                acc_of = {ob: acc + i * th * st.wt for i, ob in enumerate(obs)}
                started = {ob: set() for ob in obs}
                ib_chunks = [list(range(c, min(cbi, c + tiling.chunk))) for c in range(0, cbi, tiling.chunk)]
                for chunk in ib_chunks:
                    base = em.take("in")
                    band = 0
                    for i, ib in enumerate(chunk):
                        band = _load_input_tile(em, x, ib, geo, oy0, th, st, base + i * band)
                    for ob in obs:
                        seq = [(i, ib, t) for i, ib in enumerate(chunk) for t in range(taps)]
                        for s0 in range(0, len(seq), reg.wgt_rows):
                            part = seq[s0:s0 + reg.wgt_rows]
                            _, ib_first, t_first = part[0]
                            tile0 = (ob * cbi + ib_first) * taps + t_first
                            wbase = em.take("wgt")
                            weights.load(em, wbase, tile0, len(part))
                            for k, (i, _ib, t) in enumerate(part):
                                gm = gemms[t]
                                reset = gm.group not in started[ob]
                                started[ob].add(gm.group)
                                em.emit("gemm", reset=int(reset), act_signed=int(x.q.qtype.signed),
                                        za=x.q.zero_point, outer=gm.outer, inner=gm.inner,
                                        acc=acc_of[ob] + gm.acc, act=base + i * band + gm.act, wgt=wbase + k,
                                        acc_so=gm.acc_so, acc_si=gm.acc_si, act_so=gm.act_so, act_si=gm.act_si)
                for ob in obs:
                    epi.run(em, ob, oy0, th, st, acc_of[ob])


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
