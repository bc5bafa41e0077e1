"""The accelerator's instruction set: THE single source of truth.

Everything else is generated from or reads these tables:
  * the Python assembler / disassembler (`edgekit.compile.accel.asm`),
  * the golden model (`edgekit.compile.accel.golden`),
  * the Verilog header `hw/rtl/accel_isa.vh` (`python tools/gen_isa.py`),
  * the ISA section of `hw/README.md` (same tool).

Instructions are 128 bits, stored little-endian in DRAM (two 64-bit words,
low word first). Bits [3:0] are the opcode; each opcode lists its fields
from bit 4 upwards in order, and every bit above the last field is reserved
(must be zero, else the machine stops with RESERVED_BITS).
"""
from __future__ import annotations

from dataclasses import dataclass, field

INSN_BITS = 128
INSN_BYTES = INSN_BITS // 8
WORD_BYTES = 8  # bus data width: 64 bits; DRAM addresses in instructions count 64-bit words
OPCODE_BITS = 4

# Default hardware configuration (Verilog parameters of `accel_top`).
HW_DEFAULTS = {
    "N": 8,              # MAC array is N x N: one N-vector x (N x N) tile per cycle
    "ACT_DEPTH": 2048,   # activation rows of N bytes
    "WGT_DEPTH": 64,     # weight tiles of N*N bytes
    "ACC_DEPTH": 1024,   # accumulator rows of N int32
    "PARAM_DEPTH": 64,   # parameter rows: N entries of PARAM_ENTRY_BYTES (PARAM_FIELDS)
    "IQ_DEPTH": 16,      # instruction queue entries
    "MAX_BURST": 16,     # AXI burst length cap (beats)
    "POST_ROWS": 2,      # rows `post` requantizes per cycle (P x N post lanes)
}


@dataclass(frozen=True)
class Field:
    """An instruction field. An enumerated field carries its table of names (`enum`): the assembler
    accepts and prints the names, and its documentation lists them."""

    name: str
    width: int
    signed: bool = False
    doc: str = ""
    enum: dict | None = field(default=None, hash=False, compare=False)

    def __post_init__(self):
        if self.enum is not None:
            assert all(self.lo <= v <= self.hi for v in self.enum.values()), f"{self.name}: enum exceeds the width"
            listing = ", ".join(f"{v} {k}" for k, v in self.enum.items())
            object.__setattr__(self, "doc", f"{self.doc}: {listing}" if self.doc else listing)

    @property
    def lo(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1


@dataclass(frozen=True)
class Opcode:
    name: str
    code: int
    unit: str            # load | compute | store | control
    fields: tuple[Field, ...]
    doc: str

    def layout(self) -> list[tuple[Field, int]]:
        """(field, lsb) pairs; the opcode occupies [3:0]."""
        out, lsb = [], OPCODE_BITS
        for f in self.fields:
            out.append((f, lsb))
            lsb += f.width
        assert lsb <= INSN_BITS, f"{self.name} uses {lsb} bits"
        return out

    @property
    def used_bits(self) -> int:
        return OPCODE_BITS + sum(f.width for f in self.fields)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)


# Enumerations carried in fields.
BUFFERS = {"act": 0, "wgt": 1, "param": 2, "acc": 3}
VEC_OPS = {"set": 0, "add": 1, "max": 2, "min": 3}
OUT_TYPES = {"int8": 0, "uint8": 1, "int4": 2, "uint4": 3}

_DMA_COMMON = (
    Field("buf", 2, doc="buffer", enum=BUFFERS),
)
_DMA_GEOMETRY = (
    Field("sram", 12, doc="first buffer row"),
    Field("dram", 29, doc="DRAM address in 64-bit words"),
    Field("ysize", 10, doc="lines"),
    Field("xsize", 10, doc="buffer rows per line (contiguous in DRAM)"),
    Field("xstride", 16, doc="DRAM words from one line to the next"),
)

OPCODES: tuple[Opcode, ...] = (
    Opcode("load", 1, "load", _DMA_COMMON + (Field("pad_value", 8, doc="byte written into padding rows"),)
           + _DMA_GEOMETRY + (
               Field("pad_top", 4), Field("pad_bottom", 4), Field("pad_left", 4), Field("pad_right", 4),
               Field("int4", 1, doc="DRAM holds packed 4-bit values (2 per byte, low nibble first)"),
               Field("int4_signed", 1, doc="sign-extend unpacked nibbles (int4) instead of zero-extending")),
           "DRAM -> buffer, 2-D with zero-point padding: writes (pad_top+ysize+pad_bottom) x "
           "(pad_left+xsize+pad_right) rows from `sram` on; nothing if ysize or xsize is 0. With int4=1 "
           "each DRAM byte becomes two buffer bytes (half the DRAM traffic; xsize x row words must be even)."),
    Opcode("store", 2, "store", _DMA_COMMON + _DMA_GEOMETRY,
           "buffer (act or acc) -> DRAM, 2-D: ysize lines of xsize rows from `sram` on."),
    Opcode("gemm", 3, "compute", (
        Field("reset", 1, doc="1: acc = product, 0: acc += product"),
        Field("act_signed", 1, doc="activation bytes are signed"),
        Field("za", 9, True, doc="activation zero point subtracted before multiplying"),
        Field("outer", 10), Field("inner", 10),
        Field("acc", 11), Field("act", 12), Field("wgt", 8),
        Field("acc_so", 11), Field("acc_si", 8),
        Field("act_so", 12), Field("act_si", 8),
        Field("wgt_so", 8), Field("wgt_si", 8),
        Field("dw", 1, doc="depthwise mode: N channels x N output pixels per cycle"),
        Field("dw_row", 5, doc="depthwise: row of tile `wgt` holding this tap's N per-channel weights")),
     "dw=0: for o<outer, i<inner: acc[a] (+)= W[w] . (act[x] - za), a = acc + o*acc_so + i*acc_si, "
     "x, w likewise; one N x N tile-vector product per cycle, int32 wraparound. "
     "dw=1 (depthwise): the same loops, N consecutive i per cycle (outer x ceil(inner/N) cycles; "
     "the last group of a row masks its missing pixels): acc[a][c] (+)= W[w][dw_row][c] * (act[x][c] - za) "
     "per channel c, i.e. N act rows x one weight row broadcast -> N acc rows; needs acc_si = 1, "
     "wgt_si = 0 and dw_row < N (else bad_operand)."),
    Opcode("vec", 4, "compute", (
        Field("op", 2, doc="element-wise operation (add wraps)", enum=VEC_OPS),
        Field("act_signed", 1),
        Field("za", 9, True),
        Field("mult", 16, True, doc="term = (act - za) * mult"),
        Field("outer", 10), Field("inner", 10),
        Field("acc", 11), Field("act", 12),
        Field("acc_so", 11), Field("acc_si", 8),
        Field("act_so", 12), Field("act_si", 8)),
     "element-wise / pooling on N lanes: acc[a] = op(acc[a], (act[x] - za) * mult) over the same "
     "two loops as gemm (add for residual/average, max/min for pooling)."),
    Opcode("post", 5, "compute", (
        Field("out_type", 2, doc="saturation range", enum=OUT_TYPES),
        Field("count", 12, doc="rows"),
        Field("acc", 11), Field("out", 12), Field("param", 8),
        Field("zp", 9, True, doc="output zero point"),
        Field("lo", 9, True, doc="clamp low (ReLU: zp)"),
        Field("hi", 9, True, doc="clamp high (ReLU6: zp + 6/scale)"),
        Field("res_en", 1, doc="add residual rows"),
        Field("res_signed", 1),
        Field("res", 12), Field("res_zp", 9, True), Field("res_mult", 16, True)),
     "fused output stage for rows r<count: t = acc[acc+r] + (res_en ? (act[res+r] - res_zp) * "
     "res_mult : 0); act[out+r] = requantize(t, bias, M, shift, zp, out_type, lo, hi) with "
     "per-channel bias/M/shift from param row `param` (edgekit.quant.formats.requantize). "
     "POST_ROWS rows per cycle (one row per cycle when res_en and 0 < out - res < POST_ROWS, "
     "where a row reads what the row before it wrote)."),
    Opcode("fence", 6, "control", (),
           "wait until every unit is idle (for measurement; hazards are interlocked anyway)."),
    Opcode("finish", 7, "control", (), "wait until every unit is idle, then raise done."),
)
BY_NAME = {op.name: op for op in OPCODES}
BY_CODE = {op.code: op for op in OPCODES}
# field name -> its enumeration (a name means one field wherever it occurs)
ENUM_FIELDS = {f.name: f.enum for op in OPCODES for f in op.fields if f.enum is not None}

# Error codes (CSR ERROR_CODE); ERROR_PC holds the index of the faulting instruction.
ERRORS = {
    "none": (0, "no error"),
    "illegal_opcode": (1, "opcode not in the table"),
    "reserved_bits": (2, "a reserved bit is set"),
    "bad_operand": (3, "an operand combination is unsupported (store from wgt/param; int4 load of an odd word count; "
                    "depthwise gemm with acc_si != 1, wgt_si != 0 or dw_row >= N)"),
    "addr_range": (4, "a buffer row beyond the buffer's depth, or a DRAM address beyond 2^32 bytes"),
    "fetch_bus": (5, "bus error response while fetching the instruction"),
    "load_bus": (6, "bus error response on a load's read burst"),
    "store_bus": (7, "bus error response on a store's write burst"),
}
ERROR_CODES = {name: code for name, (code, _) in ERRORS.items()}
ERROR_NAMES = {code: name for name, (code, _) in ERRORS.items()}

# Bit positions inside the ctrl (written) and status (read) registers.
CTRL_BITS = {"start": 0, "soft_reset": 1}
STATUS_BITS = {"busy": 0, "done": 1, "error": 2}

# Control/status block: 32-bit registers at byte offsets.
CSRS = {
    "ctrl": (0x00, "W: " + ", ".join(f"bit{b} {n.replace('_', ' ')}" for n, b in CTRL_BITS.items())
             + " (self-clearing)"),
    "status": (0x04, "R: " + ", ".join(f"bit{b} {n}" for n, b in STATUS_BITS.items())),
    "error_code": (0x08, "R: error code (table below)"),
    "error_pc": (0x0C, "R: index of the faulting instruction"),
    "insn_addr": (0x10, "RW: byte address of the first instruction (16-byte aligned)"),
    "insn_count": (0x14, "RW: number of instructions (running past the last one = finish)"),
}
# 64-bit performance counters: low word at `base`, high word at `base + 4`.
COUNTER_BASE = 0x40
COUNTERS = (
    ("cycles", "cycles from start to done/error"),
    ("load_busy", "cycles the load unit holds an instruction"),
    ("compute_busy", "cycles the compute unit holds an instruction"),
    ("store_busy", "cycles the store unit holds an instruction"),
    ("mac_busy", "cycles the MAC array does a gemm step"),
    ("macs", "multiply-accumulates the array performs (N*N per gemm step, either mode)"),
    ("dram_rd_bytes", "bytes read by loads"),
    ("dram_wr_bytes", "bytes written by stores"),
    ("fetch_bytes", "bytes read by instruction fetch"),
    ("insns", "instructions dispatched (incl. fence/finish)"),
    ("hazard_stalls", "cycles the head instruction waits on a hazard or a busy unit"),
    ("fetch_stalls", "cycles the dispatcher waits on an empty instruction queue"),
)
COUNTER_ADDR = {name: COUNTER_BASE + 8 * i for i, (name, _) in enumerate(COUNTERS)}

# One parameter-row entry per output channel, little-endian: field -> (byte offset, bytes,
# bits the post unit reads). Read by the compiler's layout, the golden model and (through the
# generated header) the RTL's post lanes.
PARAM_ENTRY_BYTES = 8
PARAM_FIELDS = {"bias": (0, 4, 32), "mult": (4, 2, 16), "shift": (6, 1, 6)}

# AXI bursts (and instruction fetch bursts) never cross a boundary of this many bytes.
BURST_BOUNDARY_BYTES = 4096

# The row-address width of each buffer: the width of the field that addresses its rows in a gemm
# (a post's `param` for the parameter buffer). The RTL sizes its buffer ports from these.
BUFFER_ADDR_FIELDS = {"act": ("gemm", "act"), "wgt": ("gemm", "wgt"), "acc": ("gemm", "acc"),
                      "param": ("post", "param")}


def buffer_addr_bits(buf: str) -> int:
    op, field = BUFFER_ADDR_FIELDS[buf]
    return next(o for o in OPCODES if o.name == op).field(field).width


# Bytes per buffer row, as a function of N.
def row_bytes(buf: str, n: int) -> int:
    return {"act": n, "wgt": n * n, "param": 8 * n, "acc": 4 * n}[buf]


def buffer_depth(buf: str, hw: dict | None = None) -> int:
    hw = hw or HW_DEFAULTS
    return hw[{"act": "ACT_DEPTH", "wgt": "WGT_DEPTH", "param": "PARAM_DEPTH", "acc": "ACC_DEPTH"}[buf]]
