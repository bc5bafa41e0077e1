"""Int8 dot-product kernels for the CPUs users have: x86 with AVX-512 VNNI (`vpdpbusd` on zmm),
AVX-VNNI (`vpdpbusd` on ymm: Intel's client CPUs since Alder Lake) or AVX2 only (`vpmaddubsw` +
`vpmaddwd`), arm64 with the dot-product extension (`sdot`, `+dotprod`) or NEON only (`smull` +
`saddlp` + `addp`). `detect` picks one from the target's features.

The kernels of the integer lowering (`qlower`) on such CPUs: the dense product of linear / gemm
layers (below), the products of two activations (attention), and convolutions ("convolution"
further down: groups 1 at stride 1 or 2, depthwise, and ConvTranspose rewritten as a
convolution). The dense product:

    C[M, N] (int32) = A[M, K] (8-bit codes) x W[K, N] (int8 codes)

with W packed once at compile time as [N/L, K/4, L, 4] (L output channels x 4 reduction steps
per vector, the operand layout of the instruction: L = 16 int32 lanes for vpdpbusd's 512-bit
vectors, 8 for AVX-VNNI's and AVX2's 256-bit ones, 4 for arm64's 128-bit ones). The accumulation wraps in int32
like the instruction, so results are the integer reference's bit for bit. One `DotIsa` per
instruction says what differs: the lanes, the signedness activations enter with (vpdpbusd and
vpmaddubsw multiply uint8 by int8, sdot and smull int8 by int8), the register budget, the largest
weight the step is exact for, and the instruction sequence.

Why our own tensor intrinsics: TVM 0.27 ships one for VNNI (`dot_16x4_vnni`), but it calls
`llvm.x86.avx512.vpdpbusd.512` with <16 x i32> operands, and the LLVM 22 inside TVM 0.27 declares
<64 x i8> ones: the call fails LLVM's verifier, so every MetaSchedule candidate that tensorizes
with it fails to build (seen as "LocalBuilder: An exception occurred"). `_register` pairs TVM's
description with the call LLVM 22 accepts; the arm64 one follows TVM's `dot_4x4_i8i8s32_sdot`,
and both have a second form whose lanes are words of 4 activation bytes (the convolutions).

Why a fixed schedule instead of tuning: the kernel is one register tile (`tiles`), `MR` rows x
`NR` vectors of L columns, accumulated over all of K with one instruction per accumulator and
step of 4, in a stack buffer of under 1 KiB. TVM lowers every "local" buffer, and "global" ones
of 1 KiB or more, to heap workspaces that LLVM cannot keep in registers; under the limit it is an
alloca, which LLVM promotes to vector registers. `tools/bench_int8_gemm.py` compares it with
`torch._int_mm`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KERNEL_ATTR = "edgekit.kernel"   # marks the kernels edgekit wrote itself (compile reports count them apart)
# its values: a dot-product kernel, the layout one feeding it, a float kernel (float_ops.py)
DOT_KERNEL, LAYOUT_KERNEL, FLOAT_KERNEL = "dot", "layout", "float"
STACK_LIMIT = 1024          # bytes: TVM keeps smaller constant "global" buffers on the stack


@dataclass(frozen=True)
class DotIsa:
    """One int8 dot-product step: per int32 lane, the sum of 4 byte products added to the lane
    (one instruction where the CPU has it, a short sequence where it does not)."""

    name: str                 # what qlower's `dot` attribute and the compile report call it
    lanes: int                # int32 accumulators per vector register
    activation: str           # the dtype activation codes enter as ("uint8" / "int8"); weights are int8
    features: tuple           # the LLVM target features it needs
    accumulators: int         # vector registers the register tile may take (the rest: operands)
    nr_choices: tuple         # vectors per tile row, largest first (the one dividing the columns wins)
    step: str                 # the instruction sequence `_step_expression` emits
    max_weight: int = 128     # |int8 operand| up to which the step is exact (pmaddubsw saturates)
    kstep: int = 4            # reduction steps per lane and instruction (operand elements per int32)
    weight: str = "int8"      # the dtype of the other operand
    wide: str | None = None   # the step (a name in ISAS) for operands beyond max_weight

    @property
    def dot(self) -> str:     # tensor intrinsic: 4 activation bytes broadcast x `lanes` x 4 int8 weights
        return f"edgekit_{self.name}_dot_{self.lanes}x4"

    @property
    def words(self) -> str:   # tensor intrinsic: 4 int8 weights broadcast x `lanes` words of 4 activation bytes
        return f"edgekit_{self.name}_dot_{self.lanes}x4_words"

    def exact_for(self, weights: np.ndarray) -> bool:
        """Does the step compute sum a*w exactly for int8 operands `weights` (and any activations)?"""
        return weights.size == 0 or int(np.abs(weights.astype(np.int64)).max()) <= self.max_weight

    @property
    def exact_for_any_int8(self) -> bool:
        """Exact whatever the int8 operand (an activation, as in the products of attention)?"""
        return self.max_weight >= 128

    def for_operand(self, weights: np.ndarray | None = None) -> "DotIsa | None":
        """The step exact for int8 operand `weights` (None: an activation, any int8 value): this
        one, its `wide` one, or None (the layer stays on the generic lowering)."""
        exact = self.exact_for_any_int8 if weights is None else self.exact_for(weights)
        return self if exact else ISAS.get(self.wide)


# vpdpbusd (AVX-512 VNNI): 32 zmm registers; a tile of 15 accumulators is the stack limit's (15 x 64 bytes)
VNNI = DotIsa("vnni", 16, "uint8", ("avx512f", "avx512bw", "avx512vnni"), 15, (3, 2, 1), "vpdpbusd")
# vpdpbusd on ymm (AVX-VNNI, VEX-encoded: Alder Lake and later Intel client CPUs, which have no
# AVX-512): 16 ymm registers, 12 accumulators
AVXVNNI = DotIsa("avxvnni", 8, "uint8", ("avxvnni",), 12, (3, 2, 1), "vpdpbusd256")
# AVX2 (no VNNI): vpmaddubsw sums adjacent u8 x s8 products to int16 with saturation, exact while
# 2 * 255 * |w| <= 32767, i.e. |w| <= 64 (every 4-bit weight; 8-bit weights beyond it and the
# products of two activations take the int16 step below); vpmaddwd by ones sums the pairs to
# int32. 16 ymm registers: 12 accumulators, the rest for the ones, the operands and the pairs.
AVX2 = DotIsa("avx2", 8, "uint8", ("avx2",), 12, (3, 2, 1), "pmaddubsw", max_weight=64, wide="avx2_int16")
# ... and for the layers beyond that bound, and the products of two activations: both operands as
# int16, vpmaddwd (2 products per lane, no saturation for 8-bit codes) + vpaddd
AVX2_INT16 = DotIsa("avx2_int16", 8, "int16", ("avx2",), 12, (3, 2, 1), "pmaddwd", max_weight=1 << 15, kstep=2,
                    weight="int16")
# sdot (arm64 +dotprod): 32 q registers; 24 accumulators leave 8 for the weight vectors and the broadcast
SDOT = DotIsa("sdot", 4, "int8", ("neon", "dotprod"), 24, (4, 2, 1), "sdot")
# NEON without dotprod: smull (8 int16 products), saddlp and addp (pairs, then pairs of pairs, to int32);
# int8 x int8 products fit int16, so the step is exact
NEON = DotIsa("neon", 4, "int8", ("neon",), 20, (4, 2, 1), "smull")
DETECT_ORDER = (VNNI, AVXVNNI, AVX2, SDOT, NEON)   # detect() takes the first the target has
ISAS = {isa.name: isa for isa in DETECT_ORDER + (AVX2_INT16,)}
_registered: set = set()


def _step_expression(isa: DotIsa, T, acc, activations, weights):
    """acc (int32 x lanes) + per lane the 4 products of `activations` (bytes, isa.activation) and
    `weights` (int8 bytes) at the same positions, as one TIR expression (intermediate names would
    become buffers: TVM's FlattenBuffer)."""
    lanes, act = isa.lanes, isa.activation

    def call(name, *args, dtype):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype=dtype)

    acc_vector = f"int32x{lanes}"
    if isa.step == "vpdpbusd":   # its first byte operand is the unsigned one
        return call("llvm.x86.avx512.vpdpbusd.512", acc, activations, weights, dtype=acc_vector)
    if isa.step == "vpdpbusd256":   # LLVM encodes it with VEX under avxvnni, EVEX under avx512vl + vnni
        return call("llvm.x86.avx512.vpdpbusd.256", acc, activations, weights, dtype=acc_vector)
    if isa.step == "sdot":
        return call("llvm.aarch64.neon.sdot.v4i32.v16i8", acc, activations, weights, dtype=acc_vector)
    if isa.step == "pmaddwd":
        return acc + call("llvm.x86.avx2.pmadd.wd", activations, weights, dtype=acc_vector)
    if isa.step == "pmaddubsw":
        pairs = call("llvm.x86.avx2.pmadd.ub.sw", activations, weights, dtype="int16x16")
        return acc + call("llvm.x86.avx2.pmadd.wd", pairs, T.broadcast(T.int16(1), 16), dtype=acc_vector)
    if isa.step == "smull":
        def pair_sums(half):   # 2 lanes x 4 products -> 4 int32 sums of 2
            return call("llvm.aarch64.neon.saddlp.v4i32.v8i16",
                        call("llvm.aarch64.neon.smull.v8i16", half(activations, dtype=f"{act}x8"),
                             half(weights, dtype="int8x8"), dtype="int16x8"), dtype=acc_vector)
        return acc + call("llvm.aarch64.neon.addp.v4i32", pair_sums(T.vectorlow), pair_sums(T.vectorhigh),
                          dtype=acc_vector)
    raise ValueError(f"unknown dot-product step {isa.step!r}")


def detect(target) -> DotIsa | None:
    """The dot-product instruction `target` (a tvm.target.Target) generates code for, or None."""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return None
    for isa in DETECT_ORDER:
        try:
            if codegen.target_has_features(list(isa.features), target):
                return isa
        except Exception:  # a target LLVM cannot describe, or features of another architecture
            continue
    return None


def available(target) -> bool:
    """Does `target` generate AVX-512 VNNI code? (the x86 kernels' benchmarks and tests ask)"""
    return detect(target) is VNNI


def _register(isa: DotIsa) -> None:
    if isa.name in _registered:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    lanes, act, kstep, wt = isa.lanes, isa.activation, isa.kstep, isa.weight
    act_vector, weight_vector, acc_vector = f"{act}x{kstep * lanes}", f"{wt}x{kstep * lanes}", f"int32x{lanes}"

    def instruction(acc, activations, weights):
        return _step_expression(isa, T, acc, activations, weights)

    def broadcast(step, dtype):   # one lane's operands (4 bytes) read as one int32, repeated in every lane
        return T.reinterpret(T.broadcast(T.reinterpret(step, dtype="int32"), lanes), dtype=dtype)

    # TVM's own description (tvm.s_tir.tensor_intrin.x86 / arm_cpu), written out: importing those
    # modules imports every tensor_intrin module of TVM, 33 s on this machine
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((kstep,), act, offset_factor=1), B: T.Buffer((lanes, kstep), wt, offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:kstep], B[0:lanes, 0:kstep])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, kstep):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((kstep,), act, offset_factor=1), B: T.Buffer((lanes, kstep), wt, offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:kstep], B[0:lanes, 0:kstep])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = instruction(
                C.vload([0], dtype=acc_vector), broadcast(A.vload([0], f"{act}x{kstep}"), act_vector),
                B.vload([0, 0], dtype=weight_vector))

    TensorIntrin.register(isa.dot, desc, impl, override=True)
    _registered.add(isa.name)
    if kstep != 4:
        return   # the convolutions' words hold 4 bytes: only the byte steps have that form

    # the convolutions' order: the 4 broadcast bytes are int8 weights; the lanes are uint32 words
    # of 4 activation codes each (byte i = code i), which the layout kernels write whole
    @T.prim_func(s_tir=True)
    def lanes_desc(A: T.Buffer((4,), "int8", offset_factor=1), B: T.Buffer((lanes,), "uint32", offset_factor=1),
                   C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * _byte(B[vi], vk, act)

    @T.prim_func(s_tir=True)
    def lanes_impl(A: T.Buffer((4,), "int8", offset_factor=1), B: T.Buffer((lanes,), "uint32", offset_factor=1),
                   C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = instruction(
                C.vload([0], dtype=acc_vector),
                T.reinterpret(B.vload([0], dtype=f"uint32x{lanes}"), dtype=act_vector),
                broadcast(A.vload([0], "int8x4"), weight_vector))

    TensorIntrin.register(isa.words, lanes_desc, lanes_impl, override=True)


def tiles(rows: int, blocks: int, isa: DotIsa = VNNI) -> tuple[int, int]:
    """(MR, NR) of the register tile for `rows` x `blocks` vectors of `isa.lanes` columns: NR
    dividing `blocks` (the largest of isa.nr_choices), MR as large as the register budget allows,
    then the MR that pads `rows` least."""
    nr = next(n for n in isa.nr_choices if blocks % n == 0)
    mr_max = max(1, isa.accumulators // nr)
    candidates = range(mr_max, max(1, mr_max // 2) - 1, -1)
    mr = min(candidates, key=lambda m: (-(-rows // m) * m, -m))
    return mr, nr


def padded(k: int, n: int, isa: DotIsa = VNNI) -> tuple[int, int]:
    """(K, N) rounded up to the kernel's steps: K to isa.kstep, N to a whole number of vectors."""
    return -(-k // isa.kstep) * isa.kstep, -(-n // isa.lanes) * isa.lanes


def padded_rows(rows: int, n: int, isa: DotIsa = VNNI) -> int:
    """`rows` rounded up to a whole number of register tiles for `n` (padded) columns."""
    mr, _ = tiles(rows, n // isa.lanes, isa)
    return -(-rows // mr) * mr


def pack_weight(w_kn: np.ndarray, isa: DotIsa = VNNI) -> np.ndarray:
    """int codes [K, N] -> isa.weight [N/L, K/S, L, S] (L = isa.lanes, S = isa.kstep), zero-padded to
    the kernel's steps."""
    k, n = w_kn.shape
    kp, np_ = padded(k, n, isa)
    lanes, step = isa.lanes, isa.kstep
    w = np.zeros((kp, np_), isa.weight)
    w[:k, :n] = w_kn
    return np.ascontiguousarray(w.T.reshape(np_ // lanes, lanes, kp // step, step).transpose(0, 2, 1, 3))


def _requantize_te(te, tirx, acc, bias, mult, shift, qparams, out_dtype, axis: int = -1, shape=None):
    """formats.requantize as a TE expression builder: int32 wrap of acc + bias, int64 product,
    right shift rounding ties to even, zero point, clamp. bias, mult, shift: per index of `axis`
    of acc; qparams = [zero point, lo, hi] (int32); `shape`: the part of acc written (default all)."""
    def y(*index):
        j = index[axis]
        return _requantize_value(tirx, acc[index] + bias[j], mult[j], shift[j], qparams, out_dtype)
    return te.compute(shape or acc.shape, y, name="Y")


def _requantize_value(tirx, total, mult, shift, qparams, out_dtype):
    """One int32 accumulator `total` (its additions wrap, as the reference's) -> its output code."""
    # qlower.rshift_half_even_relax's rounding: (x + 2^(s-1) - 1 + bit s of x) >> s, a zero
    # shift as x doubled and shifted by one (7 operations per element instead of 11)
    one = tirx.const(1, "int64")
    prod = tirx.shift_left(total.astype("int64") * mult, tirx.Select(shift > 0, tirx.const(0, "int64"), one))
    s = tirx.max(shift, one)
    odd = tirx.bitwise_and(tirx.shift_right(prod, s), one)
    shifted = tirx.shift_right(prod + (tirx.shift_left(one, s - 1) - one) + odd, s)
    v = shifted + qparams[0].astype("int64")
    v = tirx.min(tirx.max(v, qparams[1].astype("int64")), qparams[2].astype("int64"))
    return v.astype(out_dtype)


def dense_func(rows: int, k: int, n: int, out_dtype: str, rows_out: int | None = None, isa: DotIsa = VNNI):
    """The scheduled kernel Y[rows_out, n] = requantize(A[rows, k] (isa.activation) x packed W (s8) +
    bias), rows a multiple of the tile's MR, k of 4, n of isa.lanes; the padding rows (past `rows_out`, default all
    rows) are computed but not written, so the output needs no slice. Every number of the layer is
    an argument (bias, multiplier and shift per column, [zero point, lo, hi]), so one kernel serves
    every layer of its shape."""
    from tvm import s_tir, te, tirx

    _register(isa)
    lanes, step = isa.lanes, isa.kstep
    mr, nr = tiles(rows, n // lanes, isa)
    assert rows % mr == 0 and k % step == 0 and n % lanes == 0, (rows, k, n, mr)
    a = te.placeholder((rows, k), isa.activation, name="A")
    b = te.placeholder((n // lanes, k // step, lanes, step), isa.weight, name="B")
    bias = te.placeholder((n,), "int32", name="bias")
    mult = te.placeholder((n,), "int64", name="mult")
    shift = te.placeholder((n,), "int64", name="shift")
    qparams = te.placeholder((3,), "int32", name="qparams")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((rows, n), lambda i, j: te.sum(
        a[i, r].astype("int32") * b[j // lanes, r // step, j % lanes, r % step].astype("int32"), axis=r), name="C")
    y = _requantize_te(te, tirx, c, bias, mult, shift, qparams, out_dtype, shape=(rows_out or rows, n))
    sch = s_tir.Schedule(te.create_prim_func([a, b, bias, mult, shift, qparams, y]))
    block, epilogue = sch.get_sblock("C"), sch.get_sblock("Y")
    i, j, kk = sch.get_loops(block)
    io, ii = sch.split(i, [None, mr])
    jo, jr, ji = sch.split(j, [None, nr, lanes])
    ko, ki = sch.split(kk, [None, step])
    # a column panel of W stays in cache across row tiles
    return _register_tile(sch, block, epilogue, (jo, io), [ko], (ii, jr, ji, ki), isa.dot)


def _register_tile(sch, block, epilogue, outer, reduce, tile, intrinsic: str):
    """The schedule every kernel here shares, finished: loops `outer` (one parallel loop), the
    `reduce` loops, then the register tile `tile` = (MR rows, NR vectors, L lanes, 4 bytes) of
    int32 accumulators, one `intrinsic` per L x 4; the requantization `epilogue` straight from
    the tile. Returns the kernel, marked scheduled."""
    rows, vectors, lanes, _ = tile
    sch.reorder(*outer, *reduce, *tile)
    sch.set_scope(block, 0, "global")            # the MR x NR*L int32 tile < STACK_LIMIT: registers
    sch.reverse_compute_at(epilogue, outer[-1])  # requantized straight from the registers
    sch.parallel(sch.fuse(*outer))
    init = sch.decompose_reduction(block, reduce[0])
    sch.unroll(rows)
    sch.unroll(vectors)
    sch.tensorize(lanes, intrinsic)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(epilogue)[-1])
    func = sch.mod["main"]
    # scheduled here: no tuning task, no default schedule, and FuseOps keeps it whole
    return func.with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8).with_attr(KERNEL_ATTR, DOT_KERNEL)


def static_shape(bb, x) -> list[int] | None:
    """The shape of Relax expression `x` as ints, or None when a dimension is symbolic."""
    dims = getattr(bb.normalize(x).ty, "shape", None)
    if dims is None:
        return None
    values = [getattr(d, "value", d) for d in dims]
    return [int(v) for v in values] if all(isinstance(v, (int, np.integer)) for v in values) else None


def emit_dense(bb, x, w_kn: np.ndarray, zero_point: int, bias, mult, shift, out_zp: int, lo: int, hi: int,
               out_dtype: str, isa: DotIsa = VNNI):
    """Codes y[..., N] = requantize(sum_k (x[..., k] - zero_point) * w_kn[k, :] + bias) on the `isa` kernel.

    The zero point leaves the product: sum (x - zp) w = sum x w - zp * colsum(w), folded into the
    bias (int32 arithmetic wraps alike). Activations enter as isa.activation (`_recoded`).
    `bias`, `mult`, `shift`: per output column or one value."""
    from tvm import relax

    op = relax.op
    x_ty = bb.normalize(x).ty
    shape = static_shape(bb, x)
    k, n = w_kn.shape
    rows = int(np.prod(shape[:-1]))
    x, zero_point = _recoded(x, x_ty, zero_point, isa.activation)
    kp, np_ = padded(k, n, isa)
    rows_p = padded_rows(rows, np_, isa)
    a = op.reshape(x, (rows, k))
    if rows_p != rows or kp != k:
        a = op.nn.pad(a, [0, rows_p - rows, 0, kp - k])
    gv = _kernel(bb, f"edgekit_{isa.name}_dense_{rows_p}x{kp}x{np_}_to{rows}_{out_dtype}",
                 lambda: dense_func(rows_p, kp, np_, out_dtype, rows_out=rows, isa=isa))

    args = [a, relax.const(pack_weight(w_kn, isa), isa.weight),
            *_requant_args(w_kn.astype(np.int64).sum(axis=0), zero_point, bias, mult, shift, out_zp, lo, hi, np_)]
    y = bb.emit(relax.call_tir(gv, args, relax.TensorType((rows, np_), out_dtype)))
    if np_ != n:
        y = op.strided_slice(y, axes=[1], begin=[0], end=[n])
    return op.reshape(y, shape[:-1] + [n])


def _recoded(x, x_ty, zero_point: int, dtype: str):
    """8-bit codes `x` as `dtype` (uint8 or int8): shifted by 128 and their zero point with them
    when they are of the other signedness (the value x - zero point is unchanged)."""
    from tvm import relax

    op = relax.op
    if str(x_ty.dtype) == dtype:
        return x, zero_point
    if dtype == "int16":   # every 8-bit code as it is
        return op.astype(x, dtype), zero_point
    delta = 128 if dtype == "uint8" else -128
    shifted = op.add(op.astype(x, "int16"), relax.const(np.array([delta], np.int16)))
    return op.astype(shifted, dtype), zero_point + delta


def _kernel(bb, name: str, build):
    """The GlobalVar of kernel `name`, added once: layers of the same shape share it."""
    known = {gv.name_hint: gv for gv in bb.get().get_global_vars()}
    if name in known:
        return known[name]
    return bb.add_func(build().with_attr("global_symbol", name), name)


def _requant_args(weight_sums: np.ndarray, zero_point: int, bias, mult, shift, out_zp: int, lo: int, hi: int,
                  channels_padded: int) -> list:
    """The kernels' requantization arguments as Relax constants, per (padded) output channel.

    The input zero point leaves the product: sum (x - zp) w = sum x w - zp * sum w, folded into
    the bias (int32 arithmetic wraps alike)."""
    from tvm import relax

    from edgekit.quant.formats import wrap_int32

    n = len(weight_sums)

    def column(values, dtype):
        out = np.zeros(channels_padded, dtype)
        out[:n] = np.broadcast_to(np.asarray(values).reshape(-1), (n,))
        return relax.const(out, dtype)

    corrected = wrap_int32(np.broadcast_to(np.asarray(bias, np.int64).reshape(-1), (n,))
                           - int(zero_point) * weight_sums)
    return [column(corrected, np.int32), column(mult, np.int64), column(shift, np.int64),
            relax.const(np.array([out_zp, lo, hi], np.int32), "int32")]


# --------------------------------------------------------------------------- activation x activation
# The matrix products of attention (Q x K^T, probabilities x V) multiply two quantized activations:
#
#     C[b, i, j] = sum_k (A[b, i, k] - za) (B[b, k, j] - zb)
#                = sum_k A B  -  zb * rowsum(A)[b, i]  -  za * colsum(B)[b, j]  +  K za zb
#
# A enters as the instruction's activation dtype (uint8 for vpdpbusd, int8 for sdot), B as int8
# (codes of the other signedness move by 128, their zero points alike), so sum A B is the dense
# kernel's product; B is packed per call into the kernel's [N/L, K/4, L, 4] layout (one small
# layout kernel; B is an activation, not a constant). The two
# sums are the per-row and per-column terms added before the requantization. In int32 every term
# wraps alike, so the result is the reference's wrap_int32 of the exact product, bit for bit.

def matmul_func(batch: int, rows: int, k: int, n: int, out_dtype: str, rows_out: int, isa: DotIsa = VNNI):
    """The scheduled kernel Y[batch, rows_out, n] = requantize(A[batch, rows, k] (isa.activation) x
    packed B[batch] (s8) + col_bias[batch, n] + row_bias[batch, rows_out]) with one multiplier and
    shift; rows a multiple of the tile's MR, k of 4, n of isa.lanes (padding rows computed, not written)."""
    from tvm import s_tir, te, tirx

    _register(isa)
    lanes, step = isa.lanes, isa.kstep
    mr, nr = tiles(rows, n // lanes, isa)
    assert rows % mr == 0 and k % step == 0 and n % lanes == 0, (rows, k, n, mr)
    a = te.placeholder((batch, rows, k), isa.activation, name="A")
    b = te.placeholder((batch, n // lanes, k // step, lanes, step), isa.weight, name="B")
    col_bias = te.placeholder((batch, n), "int32", name="col_bias")
    row_bias = te.placeholder((batch, rows_out), "int32", name="row_bias")
    mult = te.placeholder((1,), "int64", name="mult")
    shift = te.placeholder((1,), "int64", name="shift")
    qparams = te.placeholder((3,), "int32", name="qparams")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((batch, rows, n), lambda h, i, j: te.sum(
        a[h, i, r].astype("int32") * b[h, j // lanes, r // step, j % lanes, r % step].astype("int32"), axis=r),
        name="C")
    y = te.compute((batch, rows_out, n), lambda h, i, j: _requantize_value(
        tirx, c[h, i, j] + col_bias[h, j] + row_bias[h, i], mult[0], shift[0], qparams, out_dtype), name="Y")
    sch = s_tir.Schedule(te.create_prim_func([a, b, col_bias, row_bias, mult, shift, qparams, y]))
    block, epilogue = sch.get_sblock("C"), sch.get_sblock("Y")
    h, i, j, kk = sch.get_loops(block)
    io, ii = sch.split(i, [None, mr])
    jo, jr, ji = sch.split(j, [None, nr, lanes])
    ko, ki = sch.split(kk, [None, step])
    return _register_tile(sch, block, epilogue, (h, jo, io), [ko], (ii, jr, ji, ki), isa.dot)


def matmul_supported(a_shape, b_shape, a_dtype: str, b_dtype: str) -> bool:
    """Static shapes, 8-bit codes, the same leading (batch) dimensions on both sides: no broadcast."""
    return (a_shape is not None and b_shape is not None and len(a_shape) >= 2 and len(a_shape) == len(b_shape)
            and a_shape[:-2] == b_shape[:-2] and a_shape[-1] == b_shape[-2]
            and {a_dtype, b_dtype} <= {"uint8", "int8"})


def emit_matmul(bb, a, b, zero_points, mult, shift, out_zp: int, lo: int, hi: int, out_dtype: str,
                isa: DotIsa = VNNI):
    """Codes y[..., M, N] = requantize(sum_k (a[..., M, K] - za) (b[..., K, N] - zb)) on the `isa`
    kernel (see above); `matmul_supported` must hold for the operands."""
    from tvm import relax

    from edgekit.quant.formats import wrap_int32

    op = relax.op
    a_shape, b_shape = static_shape(bb, a), static_shape(bb, b)
    *lead, m, k = a_shape
    n = b_shape[-1]
    batch = int(np.prod(lead, dtype=np.int64))
    a, za = _recoded(a, bb.normalize(a).ty, int(zero_points[0]), isa.activation)
    b, zb = _recoded(b, bb.normalize(b).ty, int(zero_points[1]), isa.weight)
    kp, np_ = padded(k, n, isa)
    rows_p = padded_rows(m, np_, isa)

    def scalar(value):     # a kernel argument, not an immediate (see qlower._param)
        return relax.const(np.array([value], np.int32), "int32")

    a3, b3 = op.reshape(a, (batch, m, k)), op.reshape(b, (batch, k, n))
    row_bias = op.multiply(op.sum(op.astype(a3, "int32"), axis=[2]), scalar(-zb))
    col_bias = op.add(op.multiply(op.sum(op.astype(b3, "int32"), axis=[1]), scalar(-za)),
                      scalar(int(wrap_int32(np.int64(k * za * zb)))))   # int32 terms wrap alike
    if np_ != n:
        col_bias = op.nn.pad(col_bias, [0, 0, 0, np_ - n])
    if rows_p != m or kp != k:
        a3 = op.nn.pad(a3, [0, 0, 0, rows_p - m, 0, kp - k])
    if kp != k or np_ != n:
        b3 = op.nn.pad(b3, [0, 0, 0, kp - k, 0, np_ - n])
    lanes, step = isa.lanes, isa.kstep
    packed = op.permute_dims(op.reshape(b3, (batch, kp // step, step, np_ // lanes, lanes)), [0, 3, 1, 4, 2])
    gv = _kernel(bb, f"edgekit_{isa.name}_matmul_{batch}x{rows_p}x{kp}x{np_}_to{m}_{out_dtype}",
                 lambda: matmul_func(batch, rows_p, kp, np_, out_dtype, m, isa))
    args = [a3, packed, col_bias, row_bias,
            relax.const(np.asarray(mult, np.int64).reshape(1), "int64"),
            relax.const(np.asarray(shift, np.int64).reshape(1), "int64"),
            relax.const(np.array([out_zp, lo, hi], np.int32), "int32")]
    y = bb.emit(relax.call_tir(gv, args, relax.TensorType((batch, m, np_), out_dtype)))
    if np_ != n:
        y = op.strided_slice(y, axes=[2], begin=[0], end=[n])
    return op.reshape(y, [*lead, m, n])


# --------------------------------------------------------------------------- convolution
# A convolution as one product over the flattened, padded image ("pixels in lanes"): with the
# input padded to Hp x Wp and read as one row of Hp*Wp pixels, output pixel (oh, ow) of a stride-1
# convolution sits at p = oh*Wp + ow and tap (r, s) reads pixel p + r*Wp + s. So L consecutive
# outputs read L consecutive input pixels for every tap, and the last kw-1 columns of each output
# row are computed and dropped. The operand is uint32 words of 4 channels' codes ([C/4, pixels],
# written by the layout kernel) so one vector load gives the instruction its L lanes x 4 channels;
# the 4 weights of a tap are broadcast. The output comes out channel-major (NCHW) with no transpose.
#
# A stride-2 convolution becomes a stride-1 one over the 4 phase images x[c, 2i + a, 2j + b]
# (space-to-depth): tap (r, s) is tap (r // 2, s // 2) of phase (r % 2, s % 2). The 4 phases of a
# channel are the 4 interleaved bytes, so the same kernel runs it with ceil(k/2) x ceil(k/2) taps.

STRIDES = (1, 2)   # the convolution strides the kernel runs (4 interleaved bytes: channels or phases)


def conv_tiles(channels: int, positions: int, depthwise: bool = False, isa: DotIsa = VNNI) -> tuple[int, int]:
    """(MR output channels, NR vectors of L pixels) of the register tile within the register budget
    with the fewest instructions in all: per tile and step, MR*NR dot products, MR broadcasts and NR
    loads (MR*NR for a depthwise convolution, whose channels read their own pixels); padded
    channels and pixels count as work."""
    def cost(mr, nr):
        loads = mr * nr if depthwise else nr
        return -(-channels // mr) * -(-positions // (isa.lanes * nr)) * (mr * nr + mr + loads)

    shapes = [(mr, nr) for nr in isa.nr_choices for mr in range(1, isa.accumulators // nr + 1)]
    return min(shapes, key=lambda t: (cost(*t), -t[0] * t[1]))


class _LanesGeometry:
    """What the layout kernel, the kernels and their emission share: the output tile (`mr`, `nr`),
    channels padded to it (`oc_p`), outputs per channel padded to whole tiles (`positions`),
    operand row pitch and length, and the kernels' names."""

    kind = layout_kind = ""

    def _tile(self, depthwise: bool) -> None:
        self.mr, self.nr = conv_tiles(self.oc, self.ho * self.pitch, depthwise, self.isa)
        self.oc_p = -(-self.oc // self.mr) * self.mr
        step = self.isa.lanes * self.nr
        self.positions = -(-(self.ho * self.pitch) // step) * step

    def dims(self) -> str:
        raise NotImplementedError

    def name(self, out_dtype: str) -> str:
        return (f"edgekit_{self.isa.name}_{self.kind}_{self.dims()}_p{self.positions}_w{self.pitch}_l{self.length}"
                f"_{out_dtype}")

    def layout_name(self) -> str:
        return (f"edgekit_{self.isa.name}_{self.layout_kind}_{self.layout_shape[0]}x{self.c}x{self.h}x{self.w}"
                f"_s{self.stride}_p{'_'.join(map(str, self.pads))}_w{self.pitch}_l{self.length}")


class ConvGeometry(_LanesGeometry):
    """Sizes of one convolution on the flattened padded (phase) image (see above).

    The kernel sees: `groups4` groups of 4 interleaved bytes, `taps` (rows, cols) over an image of
    row pitch `pitch`, `positions` outputs per channel (padded to whole tiles), `length` pixels."""

    def __init__(self, channels_in: int, channels_out: int, height: int, width: int, kh: int, kw: int,
                 pads: tuple[int, int, int, int], stride: int = 1, isa: DotIsa = VNNI):
        assert stride in STRIDES, stride
        self.isa = isa
        top, left, bottom, right = pads
        self.c, self.oc, self.h, self.w = channels_in, channels_out, height, width
        self.pads, self.stride = tuple(pads), stride
        hp, wp = height + top + bottom, width + left + right
        self.ho, self.wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
        self.taps = (-(-kh // stride), -(-kw // stride))
        rows = max(-(-hp // stride), self.ho + self.taps[0] - 1)
        self.pitch = max(-(-wp // stride), self.wo + self.taps[1] - 1)
        self.groups4 = -(-channels_in // 4) if stride == 1 else channels_in
        self._tile(depthwise=False)
        self.length = _whole_rows(max(rows * self.pitch, self.positions + (self.taps[0] - 1) * self.pitch
                                      + self.taps[1] - 1), self.pitch)

    @property
    def layout_shape(self) -> tuple:
        return (self.groups4, self.length)

    def word_planes(self) -> list:
        """[(plane index, bytes)]: operand word [group, *plane, row*pitch + col] holds, in byte i,
        the input code at channel ch_mul*group + ch_add, padded row S*row + a, padded column
        S*col + b, for bytes[i] = (ch_mul, ch_add, a, b): 4 channels, or the 4 phases of one."""
        if self.stride == 1:
            return [((), [(4, i, 0, 0) for i in range(4)])]
        return [((), [(1, 0, i // 2, i % 2) for i in range(4)])]

    kind, layout_kind = "conv", "layout"

    def dims(self) -> str:
        return f"{self.oc_p}x{self.groups4}x{self.taps[0]}x{self.taps[1]}_s{self.stride}"


def _whole_rows(length: int, pitch: int) -> int:
    return -(-length // pitch) * pitch


def layout_func(g):
    """The kernel writing the operand of a convolution kernel from NCHW codes X[1, C, H, W] (of the
    instruction's activation dtype):
    uint32 words (g.layout_shape, see g.word_planes), the input zero point wherever a byte falls
    in the padding or past the channels.

    A kernel of its own, not Relax pad/reshape/transpose: those fuse into the producer's epilogue
    (which then no longer matches its tuning record) and run as slow gathers. Here each row of
    words is three loops: the columns where every byte is inside the image, as vectors of 16 words
    (4 contiguous or stride-2 loads, one store), and the padding columns on either side."""
    from tvm.script.ir_builder import IRBuilder
    from tvm.script.ir_builder import tirx as T

    rows = g.length // g.pitch
    with IRBuilder() as builder:
        with T.prim_func():
            T.func_name("main")
            x = T.match_buffer(T.arg("X", T.handle()), (1, g.c, g.h, g.w), g.isa.activation)
            zp = T.match_buffer(T.arg("zero_point", T.handle()), (1,), g.isa.activation)
            out = T.match_buffer(T.arg("P", T.handle()), g.layout_shape, "uint32")
            with T.parallel(0, g.layout_shape[0] * rows) as task:
                group, row = task // rows, task % rows
                for plane, sources in g.word_planes():
                    # (channel, image row, column offset) of each byte: column S*col + offset
                    srcs = [(ch_mul * group + ch_add, g.stride * row + a - g.pads[0], b - g.pads[1])
                            for ch_mul, ch_add, a, b in sources]
                    _layout_row(T, g, x, zp, out, (group, *plane), row * g.pitch, srcs)
    func = builder.get()
    return (func.with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8).with_attr("tirx.noalias", True)
            .with_attr(KERNEL_ATTR, LAYOUT_KERNEL))


def _layout_row(T, g, x, zp, out, index, start, srcs) -> None:
    """One row of operand words out[*index, start + col] for col < pitch (see layout_func)."""
    # the columns where every byte's column is inside the image: [first, last)
    first = min(g.pitch, max(-(off // g.stride) for _, _, off in srcs))
    last = max(first, min(g.pitch, min((g.w - 1 - off) // g.stride + 1 for _, _, off in srcs)))

    def store(col, inside: bool):
        T.buffer_store(out, _layout_word(g, x, zp, srcs, col, inside), [*index, start + col])

    done = first
    for lanes in (16, 4):   # stores of 16 words, then of 4 for small images
        vectors = (last - done) // lanes
        if vectors:
            with T.serial(0, vectors) as vo:
                with T.vectorized(0, lanes) as vi:
                    store(done + vo * lanes + vi, inside=True)
            done += vectors * lanes
    for begin, end in ((0, first), (done, g.pitch)):
        if end > begin:
            with T.serial(begin, end) as col:
                store(col, inside=False)


def _layout_word(g, x, zp, srcs, col, inside: bool):
    """The word at column `col`: byte i = x[ch, row, S*col + offset] of srcs[i], or the zero point.
    `inside`: every column is known to be in the image (no test, no clamp: vector loads)."""
    from tvm import tirx

    total = None
    for i, (ch, row, off) in enumerate(srcs):
        column = g.stride * col + off
        ok = tirx.all(ch < g.c, row >= 0, row < g.h)
        if not inside:
            ok = tirx.all(ok, column >= 0, column < g.w)
            column = tirx.max(tirx.min(column, g.w - 1), 0)
        code = x[0, tirx.min(ch, g.c - 1), tirx.max(tirx.min(row, g.h - 1), 0), column]
        code = tirx.Select(ok, code, zp[0])
        if g.isa.activation != "uint8":   # int8 codes: their two's-complement byte, not a sign-extended word
            code = code.astype("uint8")
        byte = code.astype("uint32") << tirx.const(8 * i, "uint32")
        total = byte if total is None else total | byte
    return total


def _byte(word, i, dtype: str):
    """Byte i of a uint32 operand word read as a `dtype` (uint8 or int8) code, as int32: the lanes
    intrinsic's description."""
    from tvm import tirx

    byte = tirx.bitwise_and(tirx.shift_right(word, tirx.Cast("uint32", i * 8)), tirx.const(255, "uint32"))
    return tirx.Cast("int32", byte if dtype == "uint8" else tirx.Cast(dtype, byte))


def pack_conv_weight(w: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """int codes [OC, C, kh, kw] -> int8 [OC padded, groups, taps rows, taps cols, 4]: byte i of
    tap (r, s) of a group holds w[oc, c, S*r + a, S*s + b] for the (c, a, b) of operand byte i
    (g.word_planes), or 0."""
    oc, c, kh, kw = w.shape
    out = np.zeros((g.oc_p, g.groups4, g.taps[0], g.taps[1], 4), np.int8)
    (_, sources), = g.word_planes()
    for group in range(g.groups4):
        for i, (ch_mul, ch_add, a, b) in enumerate(sources):
            ch = ch_mul * group + ch_add
            if ch < c:
                taps = w[:, ch, a::g.stride, b::g.stride]
                out[:oc, group, :taps.shape[1], :taps.shape[2], i] = taps
    return out


def _lanes_kernel(g, operand, weight, product, reduce_axes, out_dtype: str):
    """The scheduled kernel Y[oc, p] = requantize(C[oc, p] + bias[oc]) with C = sum over
    `reduce_axes` of `product(o, p)`, the last reduce axis being the 4 bytes of one instruction: an
    MR x NR*L register tile of C, L pixels per vector."""
    from tvm import s_tir, te, tirx

    _register(g.isa)
    bias = te.placeholder((g.oc_p,), "int32", name="bias")
    mult = te.placeholder((g.oc_p,), "int64", name="mult")
    shift = te.placeholder((g.oc_p,), "int64", name="shift")
    qparams = te.placeholder((3,), "int32", name="qparams")
    c = te.compute((g.oc_p, g.positions), lambda o, p: te.sum(product(o, p), axis=reduce_axes), name="C")
    y = _requantize_te(te, tirx, c, bias, mult, shift, qparams, out_dtype, axis=0)
    sch = s_tir.Schedule(te.create_prim_func([operand, weight, bias, mult, shift, qparams, y]))
    block, epilogue = sch.get_sblock("C"), sch.get_sblock("Y")
    o, p, *taps, ki = sch.get_loops(block)
    oo, oi = sch.split(o, [None, g.mr])
    po, pr, pi = sch.split(p, [None, g.nr, g.isa.lanes])
    # a pixel panel stays in cache across channel tiles
    return _register_tile(sch, block, epilogue, (po, oo), taps, (oi, pr, pi, ki), g.isa.words)


def conv_func(g: ConvGeometry, out_dtype: str):
    """The convolution kernel: C[oc, p] = sum over (group, r, s, i) of W[oc, group, r, s, i] *
    P[group, p + r*pitch + s, i], P [groups, length] words of 4 codes, W int8 packed."""
    from tvm import te

    p_in = te.placeholder(g.layout_shape, "uint32", name="P")
    w = te.placeholder((g.oc_p, g.groups4, g.taps[0], g.taps[1], 4), "int8", name="W")
    axes = [te.reduce_axis((0, g.groups4), name="rc"), te.reduce_axis((0, g.taps[0]), name="r"),
            te.reduce_axis((0, g.taps[1]), name="s"), te.reduce_axis((0, 4), name="i")]
    rc, rr, rs, ri = axes
    return _lanes_kernel(g, p_in, w, lambda o, p: w[o, rc, rr, rs, ri].astype("int32")
                         * _byte(p_in[rc, p + rr * g.pitch + rs], ri, g.isa.activation), axes, out_dtype)


def _lanes_shape(shape, weight_shape, strides, dilations) -> bool:
    """What every convolution kernel here needs: batch 1, 2-D, the same stride 1 or 2 on both axes,
    no dilation."""
    return (shape is not None and len(shape) == 4 and shape[0] == 1 and len(weight_shape) == 4
            and len(set(strides)) == 1 and strides[0] in STRIDES and list(dilations) == [1, 1])


def conv_supported(shape, weight_shape, strides, dilations, group: int) -> bool:
    """What the convolution kernel runs: groups 1 (`_lanes_shape` besides)."""
    return group == 1 and _lanes_shape(shape, weight_shape, strides, dilations)


def emit_conv(bb, x, weight: np.ndarray, pads, stride: int, zero_point: int, bias, mult, shift, out_zp: int,
              lo: int, hi: int, out_dtype: str, isa: DotIsa = VNNI):
    """Codes y[1, OC, Ho, Wo] = requantize(conv(x - zero_point, weight) + bias) on the `isa` kernel.

    pads: ONNX order (top, left, bottom, right); padding takes the input zero point (a real 0)."""
    _, c, h, w_in = static_shape(bb, x)
    oc, _, kh, kw = weight.shape
    g = ConvGeometry(c, oc, h, w_in, kh, kw, tuple(int(v) for v in pads), stride, isa)
    return _emit_on_lanes(bb, x, g, conv_func, pack_conv_weight(weight, g), weight.astype(np.int64).sum(axis=(1, 2, 3)),
                          zero_point, bias, mult, shift, out_zp, lo, hi, out_dtype)


def _emit_on_lanes(bb, x, g, kernel_func, packed: np.ndarray, weight_sums: np.ndarray, zero_point: int, bias, mult,
                   shift, out_zp: int, lo: int, hi: int, out_dtype: str):
    """x (NCHW codes) -> layout kernel -> `kernel_func(g, out_dtype)` -> y[1, OC, Ho, Wo]."""
    from tvm import relax

    op = relax.op
    x, zero_point = _recoded(x, bb.normalize(x).ty, zero_point, g.isa.activation)
    layout = _kernel(bb, g.layout_name(), lambda: layout_func(g))
    zp = relax.const(np.array([zero_point], g.isa.activation), g.isa.activation)
    operand = bb.emit(relax.call_tir(layout, [x, zp],
                                     relax.TensorType(g.layout_shape, "uint32")))
    gv = _kernel(bb, g.name(out_dtype), lambda: kernel_func(g, out_dtype))
    args = [operand, relax.const(packed, "int8"),
            *_requant_args(weight_sums, zero_point, bias, mult, shift, out_zp, lo, hi, g.oc_p)]
    y = bb.emit(relax.call_tir(gv, args, relax.TensorType((g.oc_p, g.positions), out_dtype)))
    y = op.strided_slice(y, axes=[0, 1], begin=[0, 0], end=[g.oc, g.ho * g.pitch])
    y = op.reshape(y, (1, g.oc, g.ho, g.pitch))
    if g.wo != g.pitch:
        y = op.strided_slice(y, axes=[3], begin=[0], end=[g.wo])
    return y


# --------------------------------------------------------------------------- depthwise convolution
# A depthwise convolution reduces over no channels, so its 4 bytes per vpdpbusd are 4 kernel rows:
# the operand Q[c, b, l, i] holds input row S*(l // pitch) + i, column S*(l % pitch) + b of
# channel c (each input row 4/S times over), and tap (4*r4 + i, S*s + b) of output l reads
# Q[c, b, l + r4*(4/S)*pitch + s, i]. A 7x7 filter is 14 vpdpbusd per 16 outputs instead of 49
# multiply-adds.

class DepthwiseGeometry(_LanesGeometry):
    """Sizes of one depthwise convolution (stride 1 or 2) on its row-interleaved operand."""

    def __init__(self, channels: int, height: int, width: int, kh: int, kw: int, pads, stride: int = 1,
                 isa: DotIsa = VNNI):
        assert stride in STRIDES, stride
        self.isa = isa
        top, left, bottom, right = pads
        self.c = self.oc = channels
        self.h, self.w, self.kh, self.kw, self.pads, self.stride = height, width, kh, kw, tuple(pads), stride
        hp, wp = height + top + bottom, width + left + right
        self.ho, self.wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
        self.row_groups, self.taps_c = -(-kh // 4), -(-kw // stride)
        self.row_step = 4 // stride                      # operand rows between two groups of 4 kernel rows
        self.pitch = self.wo + self.taps_c - 1
        self._tile(depthwise=True)
        self.length = _whole_rows(self.positions + (self.row_groups - 1) * self.row_step * self.pitch
                                  + self.taps_c - 1, self.pitch)

    @property
    def layout_shape(self) -> tuple:
        return (self.oc_p, self.stride, self.length)

    def word_planes(self) -> list:
        """As ConvGeometry.word_planes: plane b (the column phase) holds 4 rows of one channel."""
        return [((b,), [(1, 0, i, b) for i in range(4)]) for b in range(self.stride)]

    kind, layout_kind = "depthwise", "rows"

    def dims(self) -> str:
        return f"{self.oc_p}x{self.row_groups}x{self.taps_c}_s{self.stride}"


def pack_depthwise_weight(w: np.ndarray, g: DepthwiseGeometry) -> np.ndarray:
    """int codes [C, 1, kh, kw] -> int8 [C padded, row groups, taps, S, 4]: byte i of (r4, s, b) holds
    w[c, 0, 4*r4 + i, S*s + b], or 0 past the filter."""
    out = np.zeros((g.oc_p, g.row_groups * 4, g.taps_c * g.stride), np.int8)
    out[:g.c, :g.kh, :g.kw] = w[:, 0]
    out = out.reshape(g.oc_p, g.row_groups, 4, g.taps_c, g.stride)
    return np.ascontiguousarray(out.transpose(0, 1, 3, 4, 2))


def depthwise_func(g: DepthwiseGeometry, out_dtype: str):
    """The depthwise kernel: C[c, p] = sum over (r4, s, b, i) of W[c, r4, s, b, i] *
    Q[c, b, p + r4*row_step*pitch + s, i]."""
    from tvm import te

    q = te.placeholder(g.layout_shape, "uint32", name="Q")
    w = te.placeholder((g.oc_p, g.row_groups, g.taps_c, g.stride, 4), "int8", name="W")
    axes = [te.reduce_axis((0, g.row_groups), name="r"), te.reduce_axis((0, g.taps_c), name="s"),
            te.reduce_axis((0, g.stride), name="b"), te.reduce_axis((0, 4), name="i")]
    rr, rs, rb, ri = axes
    return _lanes_kernel(g, q, w, lambda o, p: w[o, rr, rs, rb, ri].astype("int32")
                         * _byte(q[o, rb, p + rr * g.row_step * g.pitch + rs], ri, g.isa.activation), axes,
                         out_dtype)


def depthwise_supported(shape, weight_shape, strides, dilations, group: int) -> bool:
    """What the depthwise kernel runs: one filter per channel, groups == channels (`_lanes_shape` besides)."""
    return (_lanes_shape(shape, weight_shape, strides, dilations) and weight_shape[1] == 1
            and group == shape[1] == weight_shape[0])


def emit_depthwise(bb, x, weight: np.ndarray, pads, stride: int, zero_point: int, bias, mult, shift, out_zp: int,
                   lo: int, hi: int, out_dtype: str, isa: DotIsa = VNNI):
    """Codes y[1, C, Ho, Wo] of a depthwise convolution on the `isa` kernel (see above)."""
    _, c, h, w_in = static_shape(bb, x)
    g = DepthwiseGeometry(c, h, w_in, weight.shape[2], weight.shape[3], tuple(int(v) for v in pads), stride, isa)
    return _emit_on_lanes(bb, x, g, depthwise_func, pack_depthwise_weight(weight, g),
                          weight.astype(np.int64).sum(axis=(1, 2, 3)), zero_point, bias, mult, shift, out_zp, lo, hi,
                          out_dtype)


# --------------------------------------------------------------------------- transposed convolution
# ConvTranspose (stride S) as one stride-1 convolution with S*S times the output channels, then a
# pixel shuffle ("sub-pixel" form): output o = S*m + a of phase a reads inputs i = m + e, tap
# k = a + pad - S*e, for the e where 0 <= k < K. One window of taps covers every phase (zeros
# where a phase has no tap): at most ceil(K/S)+1 taps per axis instead of the K of the zero-inserted
# input, with no zeros inserted.

def _phase_taps(k: int, stride: int, pad: int) -> tuple[int, int, list]:
    """Along one axis: (first input offset e0, window size, [(phase a, window tap t, kernel tap k)])."""
    pairs = [(a, e, a + pad - stride * e) for a in range(stride)
             for e in range(-(k // stride) - 2, k // stride + 3) if 0 <= a + pad - stride * e < k]
    e0 = min(e for _, e, _ in pairs)
    size = max(e for _, e, _ in pairs) - e0 + 1
    return e0, size, [(a, e - e0, kk) for a, e, kk in pairs]


def transpose_as_conv(weight: np.ndarray, in_hw, strides, pads, output_padding) -> tuple[np.ndarray, tuple, tuple]:
    """ConvTranspose weight [C, OC, K_h, K_w] (groups 1) -> (correlation weight [S_h*S_w*OC, C, T_h, T_w]
    with output channel (a_h*S_w + a_w)*OC + oc, the stride-1 pads (top, left, bottom, right), the
    phase grid (M_h, M_w)): the convolution's output, pixel-shuffled, is the transposed one's,
    cropped to (H_out, W_out)."""
    c, oc, kh, kw = weight.shape
    out_hw, grid, pads1, axes = [], [], [[0, 0], [0, 0]], []
    for axis, (n, k, s) in enumerate(zip(in_hw, (kh, kw), strides)):
        begin, end = pads[axis], pads[axis + 2]
        size_out = s * (n - 1) + k - begin - end + output_padding[axis]
        e0, taps, pairs = _phase_taps(k, s, begin)
        m = -(-size_out // s)                       # outputs per phase (the last ones cropped)
        pads1[axis] = [-e0, max(0, m - 1 + e0 + taps - n)]
        out_hw.append(size_out)
        grid.append(m)
        axes.append((s, taps, pairs))
    (sh, th, ph), (sw, tw, pw) = axes
    corr = np.zeros((sh * sw * oc, c, th, tw), weight.dtype)
    for ah, rh, kh_ in ph:
        for aw, rw, kw_ in pw:
            phase = ah * sw + aw
            corr[phase * oc:(phase + 1) * oc, :, rh, rw] = weight[:, :, kh_, kw_].T
    (top, bottom), (left, right) = pads1
    return corr, (top, left, bottom, right), tuple(grid), tuple(out_hw)


def conv_transpose_supported(shape, weight_shape, pads, dilations, group: int) -> bool:
    """What runs as a convolution: groups 1, batch 1, 2-D, no dilation, and each pad shorter than
    the kernel (a longer one would need the convolution's input cropped, not padded)."""
    return (group == 1 and _lanes_shape(shape, weight_shape, [1, 1], dilations)
            and all(p < k for p, k in zip(pads, 2 * list(weight_shape[2:]))))


def emit_conv_transpose(bb, x, weight: np.ndarray, strides, pads, output_padding, zero_point: int, bias, mult,
                        shift, out_zp: int, lo: int, hi: int, out_dtype: str, isa: DotIsa = VNNI):
    """Codes y[1, OC, H_out, W_out] of a ConvTranspose (groups 1) on the convolution kernel (see above)."""
    from tvm import relax

    op = relax.op
    _, _, h, w_in = static_shape(bb, x)
    oc = weight.shape[1]
    corr, pads1, (mh, mw), (ho, wo) = transpose_as_conv(weight, (h, w_in), strides, pads, output_padding)
    sh, sw = strides
    phases = sh * sw

    def per_phase(values):
        return np.tile(np.broadcast_to(np.asarray(values).reshape(-1), (oc,)), phases)

    y = emit_conv(bb, x, corr, pads1, 1, zero_point, per_phase(bias), per_phase(mult), per_phase(shift), out_zp,
                  lo, hi, out_dtype, isa)
    y = op.strided_slice(y, axes=[2, 3], begin=[0, 0], end=[mh, mw])
    y = op.reshape(y, (sh, sw, oc, mh, mw))
    y = op.permute_dims(y, [2, 3, 0, 4, 1])            # [OC, M_h, S_h, M_w, S_w]
    y = op.reshape(y, (1, oc, mh * sh, mw * sw))
    if (mh * sh, mw * sw) != (ho, wo):
        y = op.strided_slice(y, axes=[2, 3], begin=[0, 0], end=[ho, wo])
    return y
