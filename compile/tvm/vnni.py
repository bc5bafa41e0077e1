"""Int8 dot-product kernels for x86 CPUs with AVX-512 VNNI (`vpdpbusd`).

The dense product of the integer lowering (linear / gemm layers, `qlower`) on such CPUs:

    C[M, N] (int32) = A[M, K] (uint8 codes) x W[K, N] (int8 codes)

with W packed once at compile time as [N/16, K/4, 16, 4] (16 output channels x 4 reduction steps
per 64-byte row, the operand layout of vpdpbusd). The accumulation wraps in int32 like the
instruction, so results are the integer reference's bit for bit.

Why our own tensor intrinsic: TVM 0.27 ships one (`dot_16x4_vnni`), but it calls
`llvm.x86.avx512.vpdpbusd.512` with <16 x i32> operands, and the LLVM 22 inside TVM 0.27 declares
<64 x i8> ones: the call fails LLVM's verifier, so every MetaSchedule candidate that tensorizes
with it fails to build (seen as "LocalBuilder: An exception occurred"). `DOT_16x4` below pairs TVM's
description with the call LLVM 22 accepts.

Why a fixed schedule instead of tuning: the kernel is one register tile (`tiles`), `MR` rows x
`NR` vectors of 16 columns, accumulated over all of K with one vpdpbusd per accumulator and
step of 4, in a stack buffer of under 1 KiB. TVM lowers every "local" buffer, and "global" ones
of 1 KiB or more, to heap workspaces that LLVM cannot keep in registers; under the limit it is an
alloca, which LLVM promotes to zmm registers. `tools/bench_int8_gemm.py` compares it with
`torch._int_mm`.
"""
from __future__ import annotations

import numpy as np

DOT_16x4 = "edgekit_vnni_dot_16x4"
KERNEL_ATTR = "edgekit.int8_dot"   # marks the kernels scheduled here (compile reports count them apart)
STACK_LIMIT = 1024          # bytes: TVM keeps smaller constant "global" buffers on the stack
_registered = False


def available(target) -> bool:
    """Does `target` (a tvm.target.Target) generate AVX-512 VNNI code?"""
    from tvm.target import codegen

    if target.kind.name != "llvm":
        return False
    try:
        return bool(codegen.target_has_features(["avx512f", "avx512bw", "avx512vnni"], target))
    except Exception:  # a target LLVM cannot describe: no VNNI
        return False


def _register() -> None:
    global _registered
    if _registered:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    # TVM's own description (tvm.s_tir.tensor_intrin.x86), written out: importing that module
    # imports every tensor_intrin module of TVM, 33 s on this machine
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i, k in T.grid(16, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            # one expression: intermediate names would become buffers (TVM's FlattenBuffer)
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16),
                              dtype="uint8x64"),
                B.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    TensorIntrin.register(DOT_16x4, desc, impl, override=True)
    _registered = True


def tiles(rows: int, blocks: int) -> tuple[int, int]:
    """(MR, NR) of the register tile for `rows` x `blocks` vectors of 16 columns: NR dividing
    `blocks` (3, 2 or 1), MR as large as the stack limit allows, then the MR that pads `rows` least."""
    nr = next(n for n in (3, 2, 1) if blocks % n == 0)
    mr_max = max(1, (STACK_LIMIT - 1) // (nr * 16 * 4))
    candidates = range(mr_max, max(1, mr_max // 2) - 1, -1)
    mr = min(candidates, key=lambda m: (-(-rows // m) * m, -m))
    return mr, nr


def padded(k: int, n: int) -> tuple[int, int]:
    """(K, N) rounded up to the kernel's steps: K to 4, N to a whole number of 16-column vectors."""
    return -(-k // 4) * 4, -(-n // 16) * 16


def padded_rows(rows: int, n: int) -> int:
    """`rows` rounded up to a whole number of register tiles for `n` (padded) columns."""
    mr, _ = tiles(rows, n // 16)
    return -(-rows // mr) * mr


def pack_weight(w_kn: np.ndarray) -> np.ndarray:
    """int codes [K, N] -> int8 [N/16, K/4, 16, 4], zero-padded to the kernel's steps."""
    k, n = w_kn.shape
    kp, np_ = padded(k, n)
    w = np.zeros((kp, np_), np.int8)
    w[:k, :n] = w_kn
    return np.ascontiguousarray(w.T.reshape(np_ // 16, 16, kp // 4, 4).transpose(0, 2, 1, 3))


def _requantize_te(te, tirx, acc, bias, mult, shift, qparams, out_dtype):
    """formats.requantize as a TE expression builder: int32 wrap of acc + bias, int64 product,
    right shift rounding ties to even, zero point, clamp. qparams = [zero point, lo, hi] (int32)."""
    def y(i, j):
        total = (acc[i, j] + bias[j]).astype("int64")          # int32 addition wraps, as the reference
        prod = total * mult[j]
        s = tirx.max(shift[j], tirx.const(1, "int64"))
        q = tirx.shift_right(prod, s)
        rem = prod - tirx.shift_left(q, s)
        half = tirx.shift_left(tirx.const(1, "int64"), s - 1)
        odd = tirx.bitwise_and(q, tirx.const(1, "int64")) == 1
        up = tirx.Select(tirx.Or(rem > half, tirx.And(rem == half, odd)), tirx.const(1, "int64"),
                         tirx.const(0, "int64"))
        shifted = tirx.Select(shift[j] > 0, q + up, prod)
        v = shifted + qparams[0].astype("int64")
        v = tirx.min(tirx.max(v, qparams[1].astype("int64")), qparams[2].astype("int64"))
        return v.astype(out_dtype)
    return te.compute(acc.shape, y, name="Y")


def dense_func(rows: int, k: int, n: int, out_dtype: str):
    """The scheduled kernel Y[rows, n] = requantize(A[rows, k] (u8) x packed W (s8) + bias), rows a
    multiple of the tile's MR, k of 4, n of 16. Every number of the layer is an argument (bias,
    multiplier and shift per column, [zero point, lo, hi]), so one kernel serves every layer of its
    shape."""
    from tvm import s_tir, te, tirx

    _register()
    mr, nr = tiles(rows, n // 16)
    assert rows % mr == 0 and k % 4 == 0 and n % 16 == 0, (rows, k, n, mr)
    a = te.placeholder((rows, k), "uint8", name="A")
    b = te.placeholder((n // 16, k // 4, 16, 4), "int8", name="B")
    bias = te.placeholder((n,), "int32", name="bias")
    mult = te.placeholder((n,), "int64", name="mult")
    shift = te.placeholder((n,), "int64", name="shift")
    qparams = te.placeholder((3,), "int32", name="qparams")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((rows, n), lambda i, j: te.sum(
        a[i, r].astype("int32") * b[j // 16, r // 4, j % 16, r % 4].astype("int32"), axis=r), name="C")
    y = _requantize_te(te, tirx, c, bias, mult, shift, qparams, out_dtype)
    sch = s_tir.Schedule(te.create_prim_func([a, b, bias, mult, shift, qparams, y]))
    block, epilogue = sch.get_sblock("C"), sch.get_sblock("Y")
    i, j, kk = sch.get_loops(block)
    io, ii = sch.split(i, [None, mr])
    jo, jr, ji = sch.split(j, [None, nr, 16])
    ko, ki = sch.split(kk, [None, 4])
    sch.reorder(jo, io, ko, ii, jr, ji, ki)      # a column panel of W stays in cache across row tiles
    sch.set_scope(block, 0, "global")            # the MR x NR*16 int32 tile < STACK_LIMIT: registers
    sch.reverse_compute_at(epilogue, io)         # requantized straight from the registers
    sch.parallel(sch.fuse(jo, io))
    init = sch.decompose_reduction(block, ko)
    sch.unroll(ii)
    sch.unroll(jr)
    sch.tensorize(ji, DOT_16x4)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(epilogue)[-1])
    func = sch.mod["main"]
    # scheduled here: no tuning task, no default schedule, and FuseOps keeps it whole
    return func.with_attr("tirx.is_scheduled", True).with_attr("op_pattern", 8).with_attr(KERNEL_ATTR, "vnni")


def static_shape(bb, x) -> list[int] | None:
    """The shape of Relax expression `x` as ints, or None when a dimension is symbolic."""
    dims = getattr(bb.normalize(x).ty, "shape", None)
    if dims is None:
        return None
    values = [getattr(d, "value", d) for d in dims]
    return [int(v) for v in values] if all(isinstance(v, (int, np.integer)) for v in values) else None


def emit_dense(bb, x, w_kn: np.ndarray, zero_point: int, bias, mult, shift, out_zp: int, lo: int, hi: int,
               out_dtype: str):
    """Codes y[..., N] = requantize(sum_k (x[..., k] - zero_point) * w_kn[k, :] + bias) on the VNNI kernel.

    The zero point leaves the product: sum (x - zp) w = sum x w - zp * colsum(w), folded into the
    bias (int32 arithmetic wraps alike). int8 activations enter as uint8 (x + 128, zero point + 128).
    `bias`, `mult`, `shift`: per output column or one value."""
    from tvm import relax

    from edgekit.quant.formats import wrap_int32

    op = relax.op
    x_ty = bb.normalize(x).ty
    shape = static_shape(bb, x)
    k, n = w_kn.shape
    rows = int(np.prod(shape[:-1]))
    if str(x_ty.dtype) == "int8":
        x = op.astype(op.add(op.astype(x, "int16"), relax.const(np.array([128], np.int16))), "uint8")
        zero_point += 128
    kp, np_ = padded(k, n)
    rows_p = padded_rows(rows, np_)
    a = op.reshape(x, (rows, k))
    if rows_p != rows or kp != k:
        a = op.nn.pad(a, [0, rows_p - rows, 0, kp - k])
    name = f"edgekit_vnni_dense_{rows_p}x{kp}x{np_}_{out_dtype}"
    known = {gv.name_hint: gv for gv in bb.get().get_global_vars()}
    gv = known.get(name)
    if gv is None:   # one kernel per shape, shared by the layers of that shape
        func = dense_func(rows_p, kp, np_, out_dtype)
        gv = bb.add_func(func.with_attr("global_symbol", name), name)

    def column(values, dtype):
        out = np.zeros(np_, dtype)
        out[:n] = np.broadcast_to(np.asarray(values).reshape(-1), (n,))
        return relax.const(out, dtype)

    corrected = wrap_int32(np.broadcast_to(np.asarray(bias, np.int64).reshape(-1), (n,))
                           - int(zero_point) * w_kn.astype(np.int64).sum(axis=0))
    args = [a, relax.const(pack_weight(w_kn), "int8"), column(corrected, np.int32), column(mult, np.int64),
            column(shift, np.int64), relax.const(np.array([out_zp, lo, hi], np.int32), "int32")]
    y = bb.emit(relax.call_tir(gv, args, relax.TensorType((rows_p, np_), out_dtype)))
    if rows_p != rows or np_ != n:
        y = op.strided_slice(y, axes=[0, 1], begin=[0, 0], end=[rows, n])
    return op.reshape(y, shape[:-1] + [n])
