"""Golden model: a pure-integer, instruction-level simulator of the accelerator ISA.

Bit-exact with the RTL for every program (the RTL interlocks hazards in
hardware, so its results equal sequential execution in program order), and
precise on faults: on an error at instruction `pc` the DRAM holds exactly the
effects of instructions before `pc` (plus, for a store fault, the store's
bursts before the failing one). Requantization is `edgekit.quant.formats`.

It also counts what the RTL's counters count exactly (MACs, MAC-busy and
compute-busy cycles, DRAM bytes, instructions) and estimates load/store/total
cycles for a given memory latency, so the compiler can cost a schedule
without RTL.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgekit.quant import formats

from . import isa
from .asm import decode

OUT_QTYPES = {0: formats.INT8, 1: formats.UINT8, 2: formats.INT4, 3: formats.UINT4}
ADDR_LIMIT_WORDS = 1 << 29  # 2^32 bytes of address space
BOUNDARY_WORDS = 4096 // isa.WORD_BYTES  # AXI: a burst never crosses 4 KiB
BUFFER_NAMES = {code: name for name, code in isa.BUFFERS.items()}  # the buf field -> buffer name


class Fault(Exception):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def split_bursts(word_addr: int, nwords: int, max_burst: int) -> list[tuple[int, int]]:
    """(first word, beats) bursts: at most max_burst beats, never across a 4 KiB boundary."""
    out = []
    while nwords > 0:
        to_boundary = BOUNDARY_WORDS - (word_addr % BOUNDARY_WORDS)
        beats = min(nwords, max_burst, to_boundary)
        out.append((word_addr, beats))
        word_addr += beats
        nwords -= beats
    return out


@dataclass
class Result:
    error: str = "none"
    error_pc: int = 0
    counters: dict = field(default_factory=dict)
    dram: np.ndarray | None = None

    @property
    def error_code(self) -> int:
        return isa.ERROR_CODES[self.error]


class Golden:
    """Architectural state + one method per instruction kind (the op table)."""

    def __init__(self, dram: np.ndarray, hw: dict | None = None):
        self.hw = dict(isa.HW_DEFAULTS, **(hw or {}))
        n = self.n = self.hw["N"]
        self.dram = np.array(dram, dtype=np.uint8).reshape(-1)
        self.buf = {b: np.zeros((isa.buffer_depth(b, self.hw), isa.row_bytes(b, n)), np.uint8)
                    for b in isa.BUFFERS}
        self.counters = {name: 0 for name, _ in isa.COUNTERS}
        self.load_words = self.store_words = self.pad_words = self.bursts = 0

    # ---- helpers -------------------------------------------------------
    def _dram_ok(self, word_addr: int, nwords: int) -> bool:
        return (word_addr + nwords) * isa.WORD_BYTES <= self.dram.size

    def acc_rows(self, rows) -> np.ndarray:
        return self.buf["acc"][rows].view("<i4").astype(np.int64)

    def set_acc_rows(self, rows, values) -> None:
        self.buf["acc"][rows] = formats.wrap_int32(values).astype("<i4").view(np.uint8).reshape(len(values), -1)

    def act_values(self, rows, signed: int) -> np.ndarray:
        raw = self.buf["act"][rows]
        return (raw.view(np.int8) if signed else raw).astype(np.int64)

    def params(self, row: int):
        p = self.buf["param"][row].reshape(self.n, isa.PARAM_ENTRY_BYTES)

        def entry(name):  # little-endian, signed, then the bits the post unit reads
            at, size, bits = isa.PARAM_FIELDS[name]
            value = p[:, at:at + size].copy().view(f"<i{size}").reshape(-1).astype(np.int64)
            return value if bits == 8 * size else value & ((1 << bits) - 1)
        return entry("bias"), entry("mult"), entry("shift")

    @staticmethod
    def loop_index(base, outer, inner, so, si) -> np.ndarray:
        o, i = np.meshgrid(np.arange(outer), np.arange(inner), indexing="ij")
        return (base + o * so + i * si).reshape(-1)

    @staticmethod
    def loop_last(base, outer, inner, so, si) -> int:
        return base + (outer - 1) * so + (inner - 1) * si

    # ---- decode-time checks (what the RTL's dispatcher checks) ---------
    def check(self, name: str, f: dict) -> None:
        depth = {b: isa.buffer_depth(b, self.hw) for b in isa.BUFFERS}
        if name == "store" and BUFFER_NAMES[f["buf"]] not in ("act", "acc"):
            raise Fault("bad_operand")
        if name in ("load", "store"):
            b = BUFFER_NAMES[f["buf"]]
            if f["xsize"] == 0 or f["ysize"] == 0:
                return
            rw = isa.row_bytes(b, self.n) // isa.WORD_BYTES
            packed = name == "load" and f["int4"]
            if packed and (f["xsize"] * rw) % 2:
                raise Fault("bad_operand")
            if name == "load":
                rows = (f["pad_top"] + f["ysize"] + f["pad_bottom"]) * (f["pad_left"] + f["xsize"] + f["pad_right"])
            else:
                rows = f["ysize"] * f["xsize"]
            end_word = f["dram"] + (f["ysize"] - 1) * f["xstride"] + f["xsize"] * rw // (2 if packed else 1)
            if f["sram"] + rows > depth[b] or end_word > ADDR_LIMIT_WORDS:
                raise Fault("addr_range")
        elif name in ("gemm", "vec"):
            if name == "gemm" and f["dw"] and (f["acc_si"] != 1 or f["wgt_si"] != 0 or f["dw_row"] >= self.n):
                raise Fault("bad_operand")   # lanes write N consecutive acc rows from one weight row
            if f["outer"] == 0 or f["inner"] == 0:
                return
            ranges = [("acc", "acc"), ("act", "act")] + ([("wgt", "wgt")] if name == "gemm" else [])
            for key, b in ranges:
                last = self.loop_last(f[key], f["outer"], f["inner"], f[key + "_so"], f[key + "_si"])
                if last >= depth[b]:
                    raise Fault("addr_range")
        elif name == "post":
            if f["count"] == 0:
                return
            ok = (f["acc"] + f["count"] <= depth["acc"] and f["out"] + f["count"] <= depth["act"]
                  and f["param"] < depth["param"]
                  and (not f["res_en"] or f["res"] + f["count"] <= depth["act"]))
            if not ok:
                raise Fault("addr_range")

    # ---- the op table --------------------------------------------------
    def op_load(self, f):
        buf = self.buf[BUFFER_NAMES[f["buf"]]]
        x, y = f["xsize"], f["ysize"]
        if x == 0 or y == 0:
            return
        rb = buf.shape[1]
        rw = rb // isa.WORD_BYTES
        width = f["pad_left"] + x + f["pad_right"]
        height = f["pad_top"] + y + f["pad_bottom"]
        data_rows = []
        packed = f["int4"]
        beats_per_line = x * rw // 2 if packed else x * rw
        for ly in range(y):
            w0 = f["dram"] + ly * f["xstride"]
            for b0, beats in split_bursts(w0, beats_per_line, self.hw["MAX_BURST"]):
                if not self._dram_ok(b0, beats):
                    raise Fault("load_bus")
                self.bursts += 1
            raw = self.dram[w0 * 8:(w0 + beats_per_line) * 8]
            if packed:
                raw = (formats.unpack_int4(raw, x * rb, bool(f["int4_signed"])) & 0xFF).astype(np.uint8)
            data_rows.append(raw.reshape(x, rb))
        block = np.full((height, width, rb), f["pad_value"], np.uint8)
        block[f["pad_top"]:f["pad_top"] + y, f["pad_left"]:f["pad_left"] + x] = np.stack(data_rows)
        buf[f["sram"]:f["sram"] + height * width] = block.reshape(-1, rb)
        self.counters["dram_rd_bytes"] += y * beats_per_line * isa.WORD_BYTES
        self.load_words += x * y * rw
        self.pad_words += (height * width - x * y) * rw

    def op_store(self, f):
        buf = self.buf[BUFFER_NAMES[f["buf"]]]
        x, y = f["xsize"], f["ysize"]
        if x == 0 or y == 0:
            return
        rb = buf.shape[1]
        rw = rb // isa.WORD_BYTES
        for ly in range(y):
            w0 = f["dram"] + ly * f["xstride"]
            line = buf[f["sram"] + ly * x:f["sram"] + (ly + 1) * x].reshape(-1)
            for b0, beats in split_bursts(w0, x * rw, self.hw["MAX_BURST"]):
                if not self._dram_ok(b0, beats):
                    raise Fault("store_bus")
                off = (b0 - w0) * 8
                self.dram[b0 * 8:(b0 + beats) * 8] = line[off:off + beats * 8]
                self.counters["dram_wr_bytes"] += beats * 8
                self.store_words += beats
                self.bursts += 1

    def op_gemm(self, f):
        steps = gemm_steps(f, self.n)
        self.counters["compute_busy"] += max(1, steps)
        if steps == 0:
            return
        idx = {k: self.loop_index(f[k], f["outer"], f["inner"], f[k + "_so"], f[k + "_si"])
               for k in ("acc", "act", "wgt")}
        n = self.n
        pixels = f["outer"] * f["inner"]
        for c0 in range(0, pixels, 1 << 15):  # bounded memory for long loops
            sl = slice(c0, c0 + (1 << 15))
            a = self.act_values(idx["act"][sl], f["act_signed"]) - f["za"]
            tiles = self.buf["wgt"][idx["wgt"][sl]].view(np.int8).astype(np.int64).reshape(-1, n, n)
            if f["dw"]:
                # Depthwise: lane c of pixel s is W[w][dw_row][c] * act[x][c]; lanes of one cycle write
                # distinct rows (acc_si = 1), so the result equals the sequential per-pixel loop.
                prod = tiles[:, f["dw_row"], :] * a
            else:
                prod = np.einsum("sjk,sk->sj", tiles, a)
            rows = idx["acc"][sl]
            if f["reset"]:
                self._assign_last(rows, prod)
            else:
                acc = self.acc_rows(np.unique(rows))
                uniq, inv = np.unique(rows, return_inverse=True)
                total = np.zeros((len(uniq), n), np.int64)
                np.add.at(total, inv, prod)
                self.set_acc_rows(uniq, acc + total)
        self.counters["mac_busy"] += steps
        self.counters["macs"] += steps * n * n

    def _assign_last(self, rows, values):
        """Sequential overwrite semantics: for repeated rows the last step wins."""
        rev_rows = rows[::-1]
        uniq, first_in_rev = np.unique(rev_rows, return_index=True)
        self.set_acc_rows(uniq, values[::-1][first_in_rev])

    def op_vec(self, f):
        steps = f["outer"] * f["inner"]
        self.counters["compute_busy"] += max(1, steps)
        if steps == 0:
            return
        rows = self.loop_index(f["acc"], f["outer"], f["inner"], f["acc_so"], f["acc_si"])
        xs = self.loop_index(f["act"], f["outer"], f["inner"], f["act_so"], f["act_si"])
        term = formats.wrap_int32((self.act_values(xs, f["act_signed"]) - f["za"]) * f["mult"])
        op = f["op"]
        if op == isa.VEC_OPS["set"]:
            self._assign_last(rows, term)
            return
        uniq, inv = np.unique(rows, return_inverse=True)
        acc = self.acc_rows(uniq)
        if op == isa.VEC_OPS["add"]:
            np.add.at(acc, inv, term)
        elif op == isa.VEC_OPS["max"]:
            np.maximum.at(acc, inv, term)
        else:
            np.minimum.at(acc, inv, term)
        self.set_acc_rows(uniq, acc)

    def op_post(self, f):
        count = f["count"]
        self.counters["compute_busy"] += max(1, post_cycles(f, self.hw["POST_ROWS"]))
        if count == 0:
            return
        bias, mult, shift = self.params(f["param"])
        out_q = OUT_QTYPES[f["out_type"]]
        # Row r reads act[res + r] before writing act[out + r]; when the output
        # runs ahead into rows still to be read, go row by row like the RTL.
        forward = f["res_en"] and f["res"] < f["out"] + count and f["out"] > f["res"]
        chunks = [slice(r, r + 1) for r in range(count)] if forward else [slice(0, count)]
        for ch in chunks:
            rows = np.arange(count)[ch]
            t = self.acc_rows(f["acc"] + rows)
            if f["res_en"]:
                res = self.act_values(f["res"] + rows, f["res_signed"])
                t = formats.wrap_int32(t + formats.wrap_int32((res - f["res_zp"]) * f["res_mult"]))
            y = formats.requantize(t, bias, mult, shift, f["zp"], out_q, f["lo"], f["hi"])
            self.buf["act"][f["out"] + rows] = (y & 0xFF).astype(np.uint8)

    # ---- the run loop --------------------------------------------------
    def run(self, insn_addr: int, insn_count: int) -> Result:
        res = Result()
        pc = 0
        try:
            for pc in range(insn_count):
                addr = insn_addr + pc * isa.INSN_BYTES
                if addr + isa.INSN_BYTES > self.dram.size:
                    raise Fault("fetch_bus")
                word = int.from_bytes(self.dram[addr:addr + isa.INSN_BYTES].tobytes(), "little")
                name, f, reserved = decode(word)
                if name is None:
                    raise Fault("illegal_opcode")
                if reserved:
                    raise Fault("reserved_bits")
                self.check(name, f)
                self.counters["insns"] += 1
                if name == "finish":
                    break
                if name != "fence":
                    getattr(self, "op_" + name)(f)
        except Fault as fault:
            res.error, res.error_pc = fault.name, pc
        res.counters = dict(self.counters)
        res.dram = self.dram
        return res

    def estimate_cycles(self, latency: int = 4) -> dict:
        """Cycle estimates for ideal memory of `latency` cycles (what the compiler can cost)."""
        load = self.load_words + self.pad_words
        store = self.store_words
        mem = load + store + self.bursts * (latency + 2)
        compute = self.counters["compute_busy"]
        return {"compute": compute, "memory": mem, "serial": compute + mem,
                "overlapped": max(compute, mem)}


def gemm_steps(f: dict, n: int) -> int:
    """Array cycles of one gemm: one per (o, i), or per group of N pixels (i) in depthwise mode
    (shared with the static cost model)."""
    groups = -(-f["inner"] // n) if f["dw"] else f["inner"]
    return f["outer"] * groups


def post_cycles(f: dict, rows: int) -> int:
    """Cycles of one post: `rows` rows per cycle, except one at a time when a row's residual is
    the output of a row before it in the same group (0 < out - res < rows)."""
    chained = f["res_en"] and 0 < f["out"] - f["res"] < rows
    return f["count"] if chained else -(-f["count"] // rows)


def simulate(dram: np.ndarray, insn_addr: int, insn_count: int, hw: dict | None = None) -> Result:
    """Run a program already placed in `dram` (its instructions at byte `insn_addr`)."""
    g = Golden(dram, hw)
    result = g.run(insn_addr, insn_count)
    result.counters["estimate"] = g.estimate_cycles()
    return result
