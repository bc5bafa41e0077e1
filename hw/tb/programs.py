"""Test programs for the accelerator: per-instruction, errors, corner cases,
constrained-random streams, a fused conv layer, a matmul and a GEMM sequence
for utilization. Pure Python (no simulator): each returns `Program`s that the
cocotb tests run on the RTL and the golden model.
"""
from __future__ import annotations

import random

import numpy as np

from edgekit.compile.accel import ProgramBuilder, Tensor, asm, isa
from edgekit.quant import formats

N = isa.HW_DEFAULTS["N"]
DRAM = 1 << 16


def params_block(bias, mult, shift) -> np.ndarray:
    """One parameter row per N channels: {bias int32, mult int16, shift uint8, pad} little-endian."""
    bias, mult, shift = (np.asarray(v, np.int64).reshape(-1) for v in (bias, mult, shift))
    rows = np.zeros((len(bias), 8), np.uint8)
    rows[:, 0:4] = bias.astype("<i4").view(np.uint8).reshape(-1, 4)
    rows[:, 4:6] = mult.astype("<i2").view(np.uint8).reshape(-1, 2)
    rows[:, 6] = shift.astype(np.uint8)
    return rows.reshape(-1)


def _rand_bytes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, n, dtype=np.uint8)


def _seed_buffers(b: ProgramBuilder, rng: np.random.Generator, act=128, wgt=8, param=4, acc=64,
                  param_shift_max=63) -> None:
    """Fill buffer windows with random data so programs never read unwritten rows."""
    a = b.place(_rand_bytes(rng, act * N))
    b.emit("load", buf="act", sram=0, dram=a // 8, ysize=1, xsize=act, xstride=0)
    w = b.place(_rand_bytes(rng, wgt * N * N))
    b.emit("load", buf="wgt", sram=0, dram=w // 8, ysize=1, xsize=wgt, xstride=0)
    p = b.place(params_block(rng.integers(-2**31, 2**31, param * N), rng.integers(-2**15, 2**15, param * N),
                             rng.integers(0, param_shift_max + 1, param * N)))
    b.emit("load", buf="param", sram=0, dram=p // 8, ysize=1, xsize=param, xstride=0)
    c = b.place(_rand_bytes(rng, acc * 4 * N))
    b.emit("load", buf="acc", sram=0, dram=c // 8, ysize=1, xsize=acc, xstride=0)


def _dump_buffers(b: ProgramBuilder, act=128, acc=64) -> None:
    """Store the act and acc windows so every on-chip result becomes visible in DRAM."""
    o = b.alloc(act * N)
    b.emit("store", buf="act", sram=0, dram=o // 8, ysize=1, xsize=act, xstride=0)
    o = b.alloc(acc * 4 * N)
    b.emit("store", buf="acc", sram=0, dram=o // 8, ysize=1, xsize=acc, xstride=0)


def single(label_insns, seed=0, **seed_kw):
    """A program: seed the buffers, run the given instructions, dump the buffers."""
    rng = np.random.default_rng(seed)
    b = ProgramBuilder(DRAM)
    _seed_buffers(b, rng, **seed_kw)
    for name, fields in label_insns:
        b.emit(name, **fields)
    _dump_buffers(b)
    return b.build()


def each_instruction() -> list[tuple[str, object]]:
    """At least one program per instruction kind and option."""
    out = []
    rng = np.random.default_rng(7)
    # load: every buffer, with padding; store: act and acc
    for buf, rows in (("act", 4), ("wgt", 2), ("param", 2), ("acc", 3)):
        b = ProgramBuilder(DRAM)
        _seed_buffers(b, rng)
        src = b.place(_rand_bytes(rng, 4096))
        b.emit("load", buf=buf, sram=1, dram=src // 8, ysize=2, xsize=rows, xstride=40, pad_value=0x5A,
               pad_top=1, pad_bottom=1, pad_left=1, pad_right=2 if buf == "act" else 0)
        _dump_buffers(b)
        if buf in ("wgt", "param"):  # make wgt/param visible through compute
            pass
        out.append((f"load_{buf}", b.build()))
    for signed in (0, 1):  # packed int4 -> bytes, 2-D with padding
        b = ProgramBuilder(DRAM)
        _seed_buffers(b, rng)
        src = b.place(_rand_bytes(rng, 2048))
        b.emit("load", buf="act", sram=2, dram=src // 8, ysize=3, xsize=4, xstride=5, int4=1, int4_signed=signed,
               pad_value=0xF8, pad_top=1, pad_left=1, pad_right=1)
        b.emit("load", buf="wgt", sram=3, dram=src // 8 + 100, ysize=2, xsize=1, xstride=9, int4=1,
               int4_signed=signed)
        b.emit("gemm", reset=1, act_signed=signed, outer=4, inner=2, acc=0, act=2, wgt=3, acc_so=2, acc_si=1,
               act_so=3, act_si=1, wgt_si=1)
        _dump_buffers(b)
        out.append((f"load_int4_s{signed}", b.build()))
    out.append(("store_act_2d", single([("store", dict(buf="act", sram=3, dram=0xC000 // 8,
                                                        ysize=3, xsize=5, xstride=7))])))
    out.append(("store_acc_2d", single([("store", dict(buf="acc", sram=2, dram=0xC000 // 8,
                                                        ysize=2, xsize=3, xstride=17))])))
    for reset in (0, 1):
        for signed in (0, 1):
            out.append((f"gemm_r{reset}_s{signed}", single([("gemm", dict(
                reset=reset, act_signed=signed, za=-37 if signed else 100, outer=3, inner=4, acc=5, act=7, wgt=1,
                acc_so=4, acc_si=1, act_so=9, act_si=2, wgt_so=1, wgt_si=1))])))
    # depthwise gemm: N pixels per cycle, a partial last group (inner % N != 0), pixel strides 1 and 2
    for reset, signed, inner, act_si, row in ((1, 0, 11, 1, 3), (0, 1, 16, 2, N - 1), (0, 0, 3, 1, 0)):
        out.append((f"gemm_dw_r{reset}_s{signed}_i{inner}_x{act_si}", single([("gemm", dict(
            dw=1, dw_row=row, reset=reset, act_signed=signed, za=-37 if signed else 100, outer=2, inner=inner,
            acc=5, act=7, wgt=2, acc_so=inner + 2, acc_si=1, act_so=40, act_si=act_si, wgt_so=1))])))
    for op in isa.VEC_OPS:
        out.append((f"vec_{op}", single([("vec", dict(op=op, act_signed=1, za=3, mult=-300, outer=2, inner=5, acc=1,
                                                       act=10, acc_so=3, acc_si=1, act_so=5, act_si=1))])))
    for out_type in isa.OUT_TYPES:
        for res_en in (0, 1):
            out.append((f"post_{out_type}_res{res_en}", single([("post", dict(
                out_type=out_type, count=20, acc=3, out=30, param=1, zp=5, lo=-200, hi=200, res_en=res_en,
                res_signed=1, res=60, res_zp=-4, res_mult=1234))], param_shift_max=40)))
    out.append(("fence", single([("gemm", dict(reset=1, outer=2, inner=2, acc_so=2, acc_si=1, act_so=2, act_si=1)),
                                 ("fence", {}),
                                 ("vec", dict(op="add", mult=5, outer=1, inner=4, acc=0, act=0, acc_si=1, act_si=1))])))
    # finish in the middle: the instructions after it never run
    b = ProgramBuilder(DRAM)
    _seed_buffers(b, rng)
    b.emit("finish")
    b.emit("store", buf="act", sram=0, dram=0xC000 // 8, ysize=1, xsize=4, xstride=0)
    out.append(("finish_early", b.build(finish=False)))
    return out


def _with_insns(words: list[int], dram_size: int = DRAM, data_seed: int = 3):
    """A raw program from instruction words (after a buffer seed) for error tests."""
    rng = np.random.default_rng(data_seed)
    b = ProgramBuilder(dram_size)
    _seed_buffers(b, rng)
    b.emit("store", buf="act", sram=0, dram=0xC000 // 8, ysize=1, xsize=8, xstride=0)
    b.insns.extend(words)
    b.emit("store", buf="act", sram=8, dram=0xC100 // 8, ysize=1, xsize=8, xstride=0)
    return b.build()


def error_programs() -> list[tuple[str, str, object]]:
    """(label, expected error name, program) for every error code."""
    e = asm.encode
    out = [
        ("illegal_opcode", "illegal_opcode", _with_insns([0xF])),
        ("illegal_zero", "illegal_opcode", _with_insns([0])),
        ("reserved_gemm", "reserved_bits", _with_insns([e("gemm") | 1 << 127])),
        ("reserved_finish", "reserved_bits", _with_insns([e("finish") | 1 << 4])),
        ("bad_operand", "bad_operand", _with_insns([e("store", buf="wgt", xsize=1, ysize=1)])),
        ("bad_operand_int4", "bad_operand", _with_insns([e("load", buf="act", xsize=3, ysize=1, int4=1)])),
        ("bad_operand_dw_acc_si", "bad_operand", _with_insns([e("gemm", dw=1, outer=1, inner=4, acc_si=2)])),
        ("bad_operand_dw_wgt_si", "bad_operand", _with_insns([e("gemm", dw=1, outer=0, inner=4, acc_si=1,
                                                                 wgt_si=1)])),
        ("bad_operand_dw_row", "bad_operand", _with_insns([e("gemm", dw=1, outer=1, inner=1, acc_si=1,
                                                             dw_row=N)])),
        ("range_act_gemm", "addr_range", _with_insns([e("gemm", outer=2, inner=1, act=2047, act_so=1)])),
        ("range_acc_vec", "addr_range", _with_insns([e("vec", outer=1, inner=2, acc=1023, acc_si=1)])),
        ("range_wgt", "addr_range", _with_insns([e("gemm", outer=1, inner=1, wgt=64)])),
        ("range_load", "addr_range", _with_insns([e("load", buf="param", sram=60, xsize=5, ysize=1)])),
        ("range_post_param", "addr_range", _with_insns([e("post", count=1, param=64)])),
        ("range_dram", "addr_range", _with_insns([e("load", buf="act", dram=(1 << 29) - 1, xsize=2, ysize=1)])),
        ("load_bus", "load_bus", _with_insns([e("load", buf="act", dram=(DRAM // 8) - 4, xsize=8, ysize=1)])),
        ("store_bus", "store_bus", _with_insns([e("store", buf="acc", dram=(DRAM // 8) - 8, xsize=1, ysize=3,
                                                   xstride=4)])),
    ]
    # fetch bus error: the instruction count runs past the end of DRAM
    b = ProgramBuilder(8192)
    _seed_buffers(b, np.random.default_rng(4), act=16, acc=8)
    b.emit("gemm", reset=1, outer=4, inner=2, acc_so=1, act_so=1, act_si=1)
    p = b.build(finish=False)
    room = (p.dram.size - p.insn_addr) // isa.INSN_BYTES
    fences = np.frombuffer(asm.to_bytes([asm.encode("fence")] * (room - len(p.insns))), np.uint8)
    p.dram[p.insn_addr + len(p.insns) * isa.INSN_BYTES:] = fences
    p.insns += [asm.encode("fence")] * (room - len(p.insns) + 3)
    out.append(("fetch_bus", "fetch_bus", p))
    return out


def corner_programs() -> list[tuple[str, object]]:
    out = []
    rng = np.random.default_rng(11)
    # -8 x -8: int4 extremes through the MAC array and the vec unit
    b = ProgramBuilder(DRAM)
    _seed_buffers(b, rng)
    a = b.place(np.full(N * 4, -8, np.int8))
    w = b.place(formats.pack_int4(np.full(N * N, -8)))            # packed int4 weights
    b.emit("load", buf="act", sram=0, dram=a // 8, ysize=1, xsize=4)
    b.emit("load", buf="wgt", sram=0, dram=w // 8, ysize=1, xsize=1, int4=1, int4_signed=1)
    b.emit("gemm", reset=1, act_signed=1, outer=4, inner=1, acc_so=1, act_so=1)
    b.emit("vec", op="add", act_signed=1, mult=-8, outer=4, inner=1, acc=0, act=0, acc_so=1, act_so=1)
    _dump_buffers(b)
    out.append(("int4_min_times_min", b.build()))
    # accumulator wraparound: preload acc near +/-2^31 and accumulate past it
    b = ProgramBuilder(DRAM)
    _seed_buffers(b, rng)
    c = b.place(np.array([2**31 - 5, -2**31 + 3] * (N // 2) * 2, "<i4"))
    b.emit("load", buf="acc", sram=0, dram=c // 8, ysize=1, xsize=2)
    a = b.place(np.full(N, 127, np.int8))
    w = b.place(np.full(N * N, 127, np.int8))
    b.emit("load", buf="act", sram=0, dram=a // 8, ysize=1, xsize=1)
    b.emit("load", buf="wgt", sram=0, dram=w // 8, ysize=1, xsize=1)
    b.emit("gemm", act_signed=1, za=-128, outer=2, inner=3, acc_so=1)  # 3 accumulations per row
    b.emit("vec", op="add", act_signed=1, mult=-32768, outer=1, inner=2, acc=0, act=0, acc_si=1)
    _dump_buffers(b)
    out.append(("acc_wraparound", b.build()))
    # rounding ties and extreme shifts: acc values chosen so (acc+bias)*M / 2^s ends in exactly .5
    b = ProgramBuilder(DRAM)
    _seed_buffers(b, rng)
    accs = np.array([1, 3, 5, -1, -3, -5, 7, -7] * 4, "<i4")       # odd * M(=1) / 2 -> ties
    c = b.place(accs)
    b.emit("load", buf="acc", sram=0, dram=c // 8, ysize=1, xsize=4)
    shifts = [(1, 1), (1, 0), (2**14, 15), (16383, 62), (32767, 62), (32767, 63), (-32768, 1), (1, 2)]
    for r, (m, s) in enumerate(shifts):
        p = b.place(params_block([0] * N, [m] * N, [s] * N))
        b.emit("load", buf="param", sram=r % 4, dram=p // 8, ysize=1, xsize=1)
        b.emit("post", out_type="int8", count=4, acc=0, out=r * 4, param=r % 4, zp=0, lo=-128, hi=127)
    bias_big = b.place(params_block([2**31 - 1] * N, [32767] * N, [62] * N))
    b.emit("load", buf="param", sram=3, dram=bias_big // 8, ysize=1, xsize=1)
    b.emit("post", out_type="uint8", count=4, acc=0, out=40, param=3, zp=255, lo=-256, hi=255)
    _dump_buffers(b)
    out.append(("rounding_ties_shifts", b.build()))
    # clamp with lo > hi and relu6-style narrowing; uint4/int4 saturation
    out.append(("clamp_inverted", single([("post", dict(out_type="int8", count=8, acc=0, out=0, param=0, zp=3,
                                                        lo=50, hi=-50))], param_shift_max=20)))
    # post at POST_ROWS rows per cycle: odd counts (a partial last group) and residual rows that are
    # outputs of the same post (out - res = 1: one row per cycle, = 2, 3: whole groups), in place
    posts = []
    for count, dst, res in ((7, 70, 90), (9, 41, 40), (9, 42, 40), (11, 43, 40), (5, 40, 40)):
        posts.append(("post", dict(out_type="int8", count=count, acc=2, out=dst, param=1, zp=2, lo=-100, hi=90,
                                   res_en=1, res_signed=1, res=res, res_zp=1, res_mult=-77)))
    out.append(("post_rows_chained", single(posts, param_shift_max=30)))
    # zero-length loops do nothing (but still take a cycle)
    out.append(("zero_length", single([
        ("gemm", dict(reset=1, outer=0, inner=5, acc=0)), ("gemm", dict(outer=3, inner=0)),
        ("vec", dict(op="set", outer=0, inner=0)), ("post", dict(count=0, out=0)),
        ("load", dict(buf="act", xsize=0, ysize=3, pad_top=2)), ("store", dict(buf="act", xsize=4, ysize=0))])))
    # same-address hazards: every unit touching the same rows / DRAM words back to back
    b = ProgramBuilder(DRAM)
    _seed_buffers(b, rng)
    src = b.place(_rand_bytes(rng, 2048))
    mid = b.alloc(2048)
    b.emit("load", buf="act", sram=0, dram=src // 8, ysize=1, xsize=64)           # RAW act -> gemm
    b.emit("gemm", reset=1, act_signed=1, outer=64, inner=1, acc=0, act=0, acc_so=1, act_so=1)
    b.emit("load", buf="act", sram=0, dram=src // 8 + 64, ysize=1, xsize=64)      # WAR gemm -> load
    b.emit("post", out_type="int8", count=64, acc=0, out=64, param=0, zp=1)       # RAW acc
    b.emit("store", buf="act", sram=64, dram=mid // 8, ysize=1, xsize=64)        # RAW act -> store
    b.emit("load", buf="act", sram=0, dram=mid // 8, ysize=1, xsize=64)           # RAW through DRAM
    b.emit("post", out_type="int8", count=32, acc=0, out=65, param=1, zp=-3, res_en=1, res_signed=1,
           res=64, res_mult=3)                                                    # output runs ahead of residual
    b.emit("vec", op="max", act_signed=1, outer=8, inner=8, acc=0, act=0, acc_so=0, acc_si=1, act_so=8, act_si=1)
    b.emit("gemm", act_signed=1, outer=4, inner=4, acc=3, act=0, acc_so=0, acc_si=0, act_so=1, act_si=1)
    _dump_buffers(b)
    out.append(("same_address_hazards", b.build()))
    return out


# ---------------------------------------------------------------- random
WIN = {"act": 64, "wgt": 8, "param": 4, "acc": 32}


def random_program(seed: int, n_insns: int = 14, p_error: float = 0.04):
    """A constrained-random instruction stream; buffer windows pre-seeded so every read is defined."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    dw_rng = random.Random(seed + 0xD3)             # its own stream: the dense programs of a seed stay the same
    b = ProgramBuilder(DRAM)
    _seed_buffers(b, nrng, act=WIN["act"], wgt=WIN["wgt"], param=WIN["param"], acc=WIN["acc"])
    data_hi = 0x8000                                 # loads read [0, 0xC000), stores write [0x8000, 0xC000)
    for _ in range(n_insns):
        kind = rng.choices(["load", "store", "gemm", "vec", "post", "fence", "bad"],
                           [3, 2, 5, 3, 3, 1, 17 * p_error / (1 - p_error)])[0]
        if kind == "bad":
            choice = rng.randrange(5)
            if choice == 4:  # store running off the end of DRAM: a write burst answered with SLVERR
                b.emit("store", buf="acc", sram=rng.randrange(WIN["acc"] - 2), dram=(DRAM // 8) - rng.randrange(1, 12),
                       xsize=2, ysize=1)
                continue
            if choice == 0:
                b.insns.append(rng.choice([0, 8, 9, 15]) | rng.getrandbits(124) << 4)
            elif choice == 1:
                b.insns.append(asm.encode("fence") | 1 << rng.randrange(4, 128))
            elif choice == 2:
                b.emit("load", buf="act", dram=(DRAM // 8) - rng.randrange(1, 8), xsize=rng.randrange(1, 9), ysize=1)
            else:
                b.emit("gemm", outer=1, inner=1, acc=rng.randrange(64, 1024), act=rng.randrange(2048),
                       wgt=rng.randrange(64, 256))
            continue
        if kind == "load":
            buf = rng.choice(list(WIN))
            pads = [rng.choice([0, 0, 1, 2]) for _ in range(4)] if buf == "act" else [0, 0, 0, 0]
            x, y = rng.randrange(1, 5), rng.randrange(1, 4)
            rows = (pads[0] + y + pads[1]) * (pads[2] + x + pads[3])
            if rows > WIN[buf]:
                continue
            rw = isa.row_bytes(buf, N) // 8
            int4 = int((x * rw) % 2 == 0 and rng.random() < 0.3)
            stride = rng.randrange(x * rw, x * rw + 6)
            dram = rng.randrange(0, (0xC000 // 8) - y * stride - 1)
            b.emit("load", buf=buf, sram=rng.randrange(0, WIN[buf] - rows + 1), dram=dram, ysize=y, xsize=x,
                   xstride=stride, pad_value=rng.randrange(256), pad_top=pads[0], pad_bottom=pads[1],
                   pad_left=pads[2], pad_right=pads[3], int4=int4, int4_signed=rng.randrange(2))
        elif kind == "store":
            buf = rng.choice(["act", "acc"])
            x, y = rng.randrange(1, 6), rng.randrange(1, 4)
            if x * y > WIN[buf]:
                continue
            rw = isa.row_bytes(buf, N) // 8
            stride = rng.randrange(0, x * rw + 8)
            b.emit("store", buf=buf, sram=rng.randrange(0, WIN[buf] - x * y + 1),
                   dram=rng.randrange(data_hi // 8, (0xC000 // 8) - y * (stride + x * rw)), ysize=y, xsize=x,
                   xstride=stride)
        elif kind in ("gemm", "vec"):
            outer, inner = rng.randrange(1, 6), rng.randrange(1, 6)
            f = {"outer": outer, "inner": inner, "act_signed": rng.randrange(2), "za": rng.randrange(-256, 256)}
            for key in ("acc", "act") + (("wgt",) if kind == "gemm" else ()):
                win = WIN[key]
                so = rng.randrange(0, max(1, (win - 1) // max(1, outer - 1) + 1)) if outer > 1 else rng.randrange(4)
                si = rng.randrange(0, 4)
                span = (outer - 1) * so + (inner - 1) * si
                if span >= win:
                    so, si = 0, 1 if inner - 1 < win else 0
                    span = (inner - 1) * si
                f[key], f[key + "_so"], f[key + "_si"] = rng.randrange(0, win - span), so, si
            if kind == "gemm":
                f["reset"] = rng.randrange(2)
                acc_last = f["acc"] + (outer - 1) * f["acc_so"] + (inner - 1)
                if dw_rng.random() < 0.35 and acc_last < WIN["acc"]:   # depthwise: consecutive acc rows
                    f.update(dw=1, dw_row=dw_rng.randrange(N), acc_si=1, wgt_si=0)
            else:
                f["op"], f["mult"] = rng.randrange(4), rng.randrange(-32768, 32768)
            b.emit(kind, **f)
        elif kind == "post":
            count = rng.randrange(1, 17)
            b.emit("post", out_type=rng.randrange(4), count=count, acc=rng.randrange(0, WIN["acc"] - count + 1),
                   out=rng.randrange(0, WIN["act"] - count + 1), param=rng.randrange(WIN["param"]),
                   zp=rng.randrange(-256, 256), lo=rng.randrange(-256, 100), hi=rng.randrange(-50, 256),
                   res_en=rng.randrange(2), res_signed=rng.randrange(2),
                   res=rng.randrange(0, WIN["act"] - count + 1), res_zp=rng.randrange(-256, 256),
                   res_mult=rng.randrange(-32768, 32768))
        else:
            b.emit("fence")
    _dump_buffers(b, act=WIN["act"], acc=WIN["acc"])
    return b.build()


# ---------------------------------------------------------------- layers
def conv_layer(seed: int = 5, h: int = 8, w: int = 8, cin: int = N, cout: int = N, stride: int = 1):
    """3x3 conv, pad 1, uint8 activations, int4 weights, fused bias + requant + ReLU + residual add,
    channels in blocks of N (DRAM layout [C/N][H][W][N]). Returns (program, expected uint8 output
    [cout/N][OH][OW][N]); the expectation is computed independently with numpy + edgekit.quant.formats."""
    rng = np.random.default_rng(seed)
    cb, ob = cin // N, cout // N
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    zx, zr, zy = 17, -3, 9
    x = rng.integers(0, 256, (h, w, cin)).astype(np.int64)
    wt = rng.integers(-8, 8, (cout, cin, 3, 3)).astype(np.int64)     # [co, ci, ky, kx], int4 range
    res = rng.integers(-128, 128, (oh, ow, cout)).astype(np.int64)
    bias = rng.integers(-5000, 5000, cout)
    mult, shift = formats.quantize_multiplier(rng.uniform(0.002, 0.02, cout) / cb)
    res_mult = 211
    # reference: integer conv on (x - zx) with zero-point padding
    xp = np.pad(x - zx, ((1, 1), (1, 1), (0, 0)))
    acc = np.zeros((oh, ow, cout), np.int64)
    for ky in range(3):
        for kx in range(3):
            win = xp[ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride]
            acc += np.einsum("yxc,oc->yxo", win, wt[:, :, ky, kx])
    t = formats.wrap_int32(acc + (res - zr) * res_mult)
    expected = formats.requantize(t, bias, mult, shift, zy, formats.UINT8, lo=zy, hi=255)
    def blocked(a, nb):
        return a.reshape(a.shape[0], a.shape[1], nb, N).transpose(2, 0, 1, 3)

    b = ProgramBuilder(DRAM)
    xa = b.place(blocked(x, cb).astype(np.uint8))
    tiles = [wt[o * N:(o + 1) * N, c * N:(c + 1) * N, ky, kx]
             for o in range(ob) for c in range(cb) for ky in range(3) for kx in range(3)]
    wa = b.place(formats.pack_int4(np.stack(tiles)))                  # W4: packed, half the DRAM bytes
    ra = b.place(blocked(res, ob).astype(np.int8))
    pa = b.place(params_block(bias, mult, shift))
    ya = b.alloc(oh * ow * cout)
    b.inputs += [Tensor("x", xa, (cb, h, w, N), "uint8", "CB,H,W,8")]
    b.outputs += [Tensor("y", ya, (ob, oh, ow, N), "uint8", "OB,H,W,8")]
    hp, wp = h + 2, w + 2
    for c in range(cb):
        b.emit("load", buf="act", sram=c * hp * wp, dram=xa // 8 + c * h * w, ysize=h, xsize=w, xstride=w,
               pad_value=zx, pad_top=1, pad_bottom=1, pad_left=1, pad_right=1)
    b.emit("load", buf="wgt", sram=0, dram=wa // 8, ysize=1, xsize=len(tiles), int4=1, int4_signed=1)
    b.emit("load", buf="param", sram=0, dram=pa // 8, ysize=1, xsize=ob)
    rbase = cb * hp * wp
    b.emit("load", buf="act", sram=rbase, dram=ra // 8, ysize=1, xsize=ob * oh * ow)
    obase = rbase + ob * oh * ow
    for o in range(ob):
        for c in range(cb):
            for tap in range(9):
                ky, kx = divmod(tap, 3)
                b.emit("gemm", reset=int(c == 0 and tap == 0), act_signed=0, za=zx, outer=oh, inner=ow,
                       acc=o * oh * ow, act=c * hp * wp + ky * wp + kx, wgt=(o * cb + c) * 9 + tap,
                       acc_so=ow, acc_si=1, act_so=stride * wp, act_si=stride)
        b.emit("post", out_type="uint8", count=oh * ow, acc=o * oh * ow, out=obase + o * oh * ow, param=o,
               zp=zy, lo=zy, hi=255, res_en=1, res_signed=1, res=rbase + o * oh * ow, res_zp=zr,
               res_mult=res_mult)
    b.emit("store", buf="act", sram=obase, dram=ya // 8, ysize=1, xsize=ob * oh * ow)
    expected = blocked(expected, ob)
    return b.build(meta={"layer": f"conv3x3 {cin}->{cout} stride {stride}"}), expected.astype(np.uint8)


def depthwise_layer(seed: int = 9, h: int = 12, w: int = 13, c: int = 2 * N, k: int = 3, stride: int = 1):
    """Depthwise KxK conv, pad K//2, int8 activations, int4 weights, fused bias + requant + ReLU, on the
    depthwise gemm mode: one gemm per (channel block, tap) computes N channels x N output pixels per
    cycle; the weight tile of a channel block holds N taps (row = tap). Returns (program, expected int8
    output [C/N][OH][OW][N], steps): the expectation is numpy + edgekit.quant.formats, `steps` the
    array cycles the gemms take (taps x OH x ceil(OW / N) per block)."""
    rng = np.random.default_rng(seed)
    cb, pad, taps = c // N, k // 2, k * k
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    zx, zy = -5, 3
    x = rng.integers(-128, 128, (h, w, c)).astype(np.int64)
    wt = rng.integers(-8, 8, (c, taps)).astype(np.int64)            # [channel, tap], int4 range
    bias = rng.integers(-3000, 3000, c)
    mult, shift = formats.quantize_multiplier(rng.uniform(0.004, 0.03, c))
    xp = np.pad(x - zx, ((pad, pad), (pad, pad), (0, 0)))
    acc = np.zeros((oh, ow, c), np.int64)
    for t in range(taps):
        ky, kx = divmod(t, k)
        acc += xp[ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride] * wt[:, t]
    expected = formats.requantize(acc, bias, mult, shift, zy, formats.INT8, lo=zy, hi=127)
    def blocked(a):
        return a.reshape(a.shape[0], a.shape[1], cb, N).transpose(2, 0, 1, 3)

    tiles_per_block = -(-taps // N)
    rows = np.zeros((cb, tiles_per_block * N, N), np.int64)        # [block, tap row, lane]
    rows[:, :taps] = wt.reshape(cb, N, taps).transpose(0, 2, 1)
    b = ProgramBuilder(DRAM)
    xa = b.place(blocked(x).astype(np.int8))
    wa = b.place(formats.pack_int4(rows.reshape(-1)))
    pa = b.place(params_block(bias, mult, shift))
    ya = b.alloc(cb * oh * ow * N)
    b.outputs += [Tensor("y", ya, (cb, oh, ow, N), "int8", "CB,H,W,8")]
    hp, wp = h + 2 * pad, w + 2 * pad
    b.emit("load", buf="wgt", sram=0, dram=wa // 8, ysize=1, xsize=cb * tiles_per_block, int4=1, int4_signed=1)
    b.emit("load", buf="param", sram=0, dram=pa // 8, ysize=1, xsize=cb)
    obase = cb * hp * wp
    for blk in range(cb):
        b.emit("load", buf="act", sram=blk * hp * wp, dram=xa // 8 + blk * h * w, ysize=h, xsize=w, xstride=w,
               pad_value=zx & 0xFF, pad_top=pad, pad_bottom=pad, pad_left=pad, pad_right=pad)
        for t in range(taps):
            ky, kx = divmod(t, k)
            b.emit("gemm", dw=1, dw_row=t % N, reset=int(t == 0), act_signed=1, za=zx, outer=oh, inner=ow,
                   acc=blk * oh * ow, act=blk * hp * wp + ky * wp + kx, wgt=blk * tiles_per_block + t // N,
                   acc_so=ow, acc_si=1, act_so=stride * wp, act_si=stride)
        b.emit("post", out_type="int8", count=oh * ow, acc=blk * oh * ow, out=obase + blk * oh * ow, param=blk,
               zp=zy, lo=zy, hi=127)
    b.emit("store", buf="act", sram=obase, dram=ya // 8, ysize=1, xsize=cb * oh * ow)
    steps = cb * taps * oh * -(-ow // N)
    return (b.build(meta={"layer": f"depthwise {k}x{k} stride {stride}"}), blocked(expected).astype(np.int8),
            steps)


def matmul(seed: int = 6, m: int = 16, k: int = 32, n: int = 16):
    """int8 A[m,k] @ int4 B[k,n] -> int32 C, stored straight from the accumulators."""
    rng = np.random.default_rng(seed)
    a = rng.integers(-128, 128, (m, k))
    bm = rng.integers(-8, 8, (k, n))
    kb, nb = k // N, n // N
    b = ProgramBuilder(DRAM)
    aa = b.place(a.reshape(m, kb, N).astype(np.int8))                 # act row m*kb + j = A[m, j*N:(j+1)*N]
    tiles = np.stack([bm[j * N:(j + 1) * N, q * N:(q + 1) * N].T for q in range(nb) for j in range(kb)])
    ba = b.place(tiles.astype(np.int8))                                # tile q*kb + j, [out][in]
    ca = b.alloc(m * n * 4)
    b.outputs += [Tensor("c", ca, (nb, m, N), "<i4", "NB,M,8")]
    b.emit("load", buf="act", sram=0, dram=aa // 8, ysize=1, xsize=m * kb)
    b.emit("load", buf="wgt", sram=0, dram=ba // 8, ysize=1, xsize=nb * kb)
    for q in range(nb):
        b.emit("gemm", reset=1, act_signed=1, outer=m, inner=1, acc=q * m, act=0, wgt=q * kb,
               acc_so=1, act_so=kb)
        b.emit("gemm", reset=0, act_signed=1, outer=m, inner=kb - 1, acc=q * m, act=1, wgt=q * kb + 1,
               acc_so=1, act_so=kb, act_si=1, wgt_si=1)
    b.emit("store", buf="acc", sram=0, dram=ca // 8, ysize=1, xsize=nb * m)
    expected = (a @ bm).reshape(m, nb, N).transpose(1, 0, 2)
    return b.build(meta={"layer": "matmul"}), expected.astype(np.int32)


def gemm_sequence(tiles: int = 6, m: int = 32, kb: int = 8, nb: int = 8):
    """Compute-bound GEMM tile sequence: weights stay on chip (kb x nb tiles), activation tiles of
    m x kb rows are double-buffered (load of tile t+1 overlaps compute of tile t), each tile
    feeds nb output blocks, then a fused post + store per tile."""
    rng = np.random.default_rng(1)
    b = ProgramBuilder(1 << 20)
    wa = b.place(_rand_bytes(rng, kb * nb * N * N // 2))          # packed int4 weights (W4A8)
    pa = b.place(params_block(rng.integers(-1000, 1000, N), [20000] * N, [20] * N))
    xs = [b.place(_rand_bytes(rng, m * kb * N)) for _ in range(tiles)]
    ys = [b.alloc(nb * m * N) for _ in range(tiles)]
    b.emit("load", buf="wgt", sram=0, dram=wa // 8, ysize=1, xsize=kb * nb, int4=1, int4_signed=1)
    b.emit("load", buf="param", sram=0, dram=pa // 8, ysize=1, xsize=1)
    half = m * kb
    b.emit("load", buf="act", sram=0, dram=xs[0] // 8, ysize=1, xsize=half)
    for t in range(tiles):
        base = (t % 2) * half
        if t + 1 < tiles:  # prefetch the next tile into the other half
            b.emit("load", buf="act", sram=((t + 1) % 2) * half, dram=xs[t + 1] // 8, ysize=1, xsize=half)
        acc0 = (t % 2) * nb * m
        for q in range(nb):
            b.emit("gemm", reset=1, act_signed=1, outer=m, inner=1, acc=acc0 + q * m, act=base, wgt=q * kb,
                   acc_so=1, act_so=kb)
            b.emit("gemm", act_signed=1, outer=m, inner=kb - 1, acc=acc0 + q * m, act=base + 1, wgt=q * kb + 1,
                   acc_so=1, act_so=kb, act_si=1, wgt_si=1)
        out = 2 * half + (t % 2) * nb * m
        b.emit("post", out_type="int8", count=nb * m, acc=acc0, out=out, param=0)
        b.emit("store", buf="act", sram=out, dram=ys[t] // 8, ysize=1, xsize=nb * m)
    return b.build(meta={"layer": "gemm_sequence"})
