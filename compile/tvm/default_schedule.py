"""Default CPU schedules for kernels that no tuning record covers.

Without a record a kernel runs as TVM's unscheduled loops: one thread, no vectors
(LitePose FP32 on an AVX2 machine: 110 ms against onnxruntime's 3.6 ms). These rules
give every such kernel a reasonable schedule without measuring anything, in the
style of TVM's dlight rules (whose CPU set covers only GEMV and reductions such as softmax):

  * ``tiled_reduction`` (convolutions, matmuls, pooling: spatial loops, then reduction loops):
    the innermost spatial loop is split into vector lanes. One other spatial loop is split
    into a register tile: the one that the fewest inputs are indexed by, so their loads are
    shared across the tile (output channels for a pointwise conv or a matmul's rows). The
    remaining spatial loops are fused and run in parallel. Producers such as padding are
    computed per tile, so the inner loop has no branch. The accumulator is a tile-sized cache,
    written back with the fused epilogue (bias, activation, requantization).
    An integer reduction along the contiguous last axis of its inputs, one output per row (softmax's
    and LayerNorm's sums and maxima on the integer path), runs its rows in parallel instead, each one
    plain loop with its accumulator in a stack cache (a tile across rows would gather along them).
  * ``injective`` (element-wise ops, layout changes): loops fused, run in parallel, vectorized
    (by rows, each left to LLVM's loop vectorizer, when rows are not whole vectors).

Neither rule splits or reorders the reduction loops among themselves, so every output sums
its terms in the same order as the unscheduled loops. The integer path computes exactly (small
integers in float32 or int32), so its results are bit-identical to the unscheduled code. In FP32,
an element-wise chain inlined into one expression (x + w * y) may be contracted into a fused
multiply-add by LLVM, as in tuned kernels: the last bit of such outputs can differ.
"""
from __future__ import annotations

REGISTER_TILE = 4
MIN_PARALLEL_EXTENT = 2


def vector_lanes(target) -> int:
    """32-bit lanes of one vector register of `target`: 16 with AVX-512, 8 with AVX2, else 4."""
    from tvm.target.codegen import target_has_features

    for feature, lanes in (("avx512f", 16), ("avx2", 8)):
        try:
            if target_has_features(feature, target):
                return lanes
        except Exception:  # not an x86 target: the feature name is unknown to it
            break
    return 4


def _largest_divisor(extent: int, limit: int) -> int:
    for factor in range(min(extent, limit), 0, -1):
        if extent % factor == 0:
            return factor
    return 1


def _extent(sch, loop) -> int | None:
    from tvm import tirx

    ext = sch.get(loop).extent
    return int(ext.value) if isinstance(ext, tirx.IntImm) else None


def _iter_kinds(sch, block) -> str:
    """'S'/'R'/'O' per block iterator (spatial, reduction, other)."""
    from tvm import tirx

    kinds = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    return "".join(kinds.get(int(iv.iter_type), "O") for iv in sch.get(block).iter_vars)


def _reuse_axis(sch, block, candidates: list[int], vec_axis: int) -> int | None:
    """Of the spatial iterator positions `candidates`, the one that the fewest vector-loaded
    inputs (those indexed by `vec_axis`) are indexed by, so a tile along it loads them once
    (ties: the innermost). None when there is no candidate."""
    used_by = [0] * len(sch.get(block).iter_vars)
    for _, indexed in _read_indices(sch, block):
        if indexed[vec_axis]:
            used_by = [count + flag for count, flag in zip(used_by, indexed)]
    if not candidates:
        return None
    return min(reversed(candidates), key=lambda i: used_by[i])


def producer_buffer(sch, producer):
    return sch.get(producer).writes[0].source


def _read_indices(sch, block):
    """[(buffer, [is block iterator i in its index, per i])] for each read of `block`."""
    from tvm.tirx.analysis import undefined_vars

    stmt = sch.get(block)
    iter_vars = [iv.var for iv in stmt.iter_vars]
    result = []
    for region in stmt.reads:
        if region.source.same_as(stmt.writes[0].source):
            continue  # the accumulator itself
        seen = [var for rng in region.region for var in undefined_vars(rng.min)]
        result.append((region.source, [any(var.same_as(other) for other in seen) for var in iter_vars]))
    return result


def _indexed_reads(sch, block, axes: list[int]) -> dict:
    """{buffer: whether every iterator in `axes` indexes its read}."""
    return {buffer: all(indexed[i] for i in axes) for buffer, indexed in _read_indices(sch, block)}


def _parallel_vectorize(sch, loops, lanes: int) -> None:
    """Fuse `loops` and run the result in parallel chunks whose inner part is one vector."""
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = _extent(sch, fused)
    if extent is None:
        sch.parallel(fused)
        return
    vec = _largest_divisor(extent, lanes)
    if vec > 1:
        outer, inner = sch.split(fused, factors=[None, vec])
        if extent // vec >= MIN_PARALLEL_EXTENT:
            sch.parallel(outer)
        sch.vectorize(inner)
    elif extent >= MIN_PARALLEL_EXTENT:
        sch.parallel(fused)


def _vectorize_innermost(sch, block, depth: int, lanes: int) -> None:
    """Vectorize the innermost loop of `block` below loop depth `depth` when it is short."""
    loops = sch.get_loops(block)[depth:]
    if not loops:
        return
    extent = _extent(sch, loops[-1])
    if extent is not None and 1 < extent <= 4 * lanes:
        try:
            sch.vectorize(loops[-1])
        except Exception:  # e.g. a loop the vectorizer cannot take: it stays scalar
            pass


def injective(sch, block, lanes: int) -> None:
    """All loops fused, run in parallel, vectorized, when rows are whole vectors (or one element
    long). Otherwise the rows run in parallel and each row is one plain loop that LLVM's loop
    vectorizer takes whole: a vector that crossed a row boundary (rows of 257, say) computes each
    lane's index with a division and gathers its operands, and a predicated tail vector stops
    TVM from proving the loads contiguous. On depth's [4, 257, 257] softmax kernels: 0.24 ms and
    0.70 ms those two ways, 0.07 ms by rows (a padding kernel: 1.17 / 0.04 / 0.006 ms)."""
    loops = sch.get_loops(block)
    if not loops:
        return
    row = _extent(sch, loops[-1])
    outer = loops[:-1]
    rows = 1
    for loop in outer:
        rows *= _extent(sch, loop) or MIN_PARALLEL_EXTENT
    if not outer or row is None or row == 1 or row % lanes == 0 or rows < MIN_PARALLEL_EXTENT:
        _parallel_vectorize(sch, loops, lanes)
        return
    sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def tiled_reduction(sch, block, lanes: int) -> None:
    """Block with spatial loops S..., then reduction loops R... -> parallel tiles of
    REGISTER_TILE x lanes outputs, each summed in a cache over the unchanged R loops."""
    kinds = _iter_kinds(sch, block)
    loops = sch.get_loops(block)
    n_spatial = kinds.index("R")
    spatial, reduction = loops[:n_spatial], loops[n_spatial:]
    extents = [_extent(sch, loop) for loop in spatial]
    if None in extents or not spatial:
        raise ValueError("dynamic or missing spatial extent")
    if _integer_row_reduction(sch, block, n_spatial):
        # one output per row of a contiguous integer row (LayerNorm / softmax sums and maxima):
        # rows in parallel, each reduced by one inner loop that LLVM may vectorize (integer adds
        # and maxima are exact in any order); a tile across rows would gather along the row
        par = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        sch.parallel(par)
        _inline_chain(sch, sch.get_producers(block))
        for producer in sch.get_producers(block):
            sch.compute_at(producer, par, preserve_unit_loops=True)
        # the sum in a one-element stack cache, its init outside the loop (no test inside it)
        writeback = sch.cache_write(block, 0, "global")
        sch.reverse_compute_at(writeback, par, preserve_unit_loops=True)
        sch.decompose_reduction(block, sch.get_loops(block)[-1])
        return
    outer, tile = list(spatial), []
    vec_axis = n_spatial - 1  # the innermost spatial loop: contiguous in the output
    rows_axis = _reuse_axis(sch, block, [i for i in range(n_spatial) if i != vec_axis and extents[i] > 1], vec_axis)
    if rows_axis is not None:
        rows = _largest_divisor(extents[rows_axis], REGISTER_TILE)
        if rows > 1:
            outer[rows_axis], row_inner = sch.split(spatial[rows_axis], factors=[None, rows])
            tile.append(row_inner)
    # a short row is one (possibly odd-sized) vector; a longer one splits into equal pieces
    vec = extents[vec_axis] if extents[vec_axis] <= 3 * lanes else _largest_divisor(extents[vec_axis], 2 * lanes)
    if vec < lanes < extents[vec_axis]:
        vec = lanes  # an awkward (e.g. prime) length: whole vectors and a predicated tail
    vectorized = vec > 1
    if vectorized:
        outer[vec_axis], col_inner = sch.split(spatial[vec_axis], factors=[None, vec])
        tile.append(col_inner)
    per_tile = _indexed_reads(sch, block, [i for i, loop in enumerate(outer) if _extent(sch, loop) != 1])
    sch.reorder(*outer, *reduction, *tile)
    par = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(par)
    depth = 1  # `par` is the outermost loop: every outer spatial loop was fused into it
    writeback = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(writeback, par, preserve_unit_loops=True)
    for consumer in sch.get_consumers(writeback):
        _fuse_epilogue(sch, consumer, writeback, par)
    for producer in sch.get_producers(block):
        if per_tile.get(producer_buffer(sch, producer), False):
            # each tile reads its own part (plus a halo): computed per tile, no branch inside the tile
            sch.compute_at(producer, par, preserve_unit_loops=True)
            _vectorize_innermost(sch, producer, depth, lanes)
        else:  # tiles share its output (a regular conv's input): computed once, in full
            injective(sch, producer, lanes)
    if tile and (len(tile) == 2 or not vectorized):
        sch.unroll(tile[0])
    if vectorized:
        sch.vectorize(tile[-1])
    if reduction:
        sch.decompose_reduction(block, reduction[0])
    _vectorize_innermost(sch, writeback, depth, lanes)


def _integer_row_reduction(sch, block, n_spatial: int) -> bool:
    """An integer reduction over one innermost loop that indexes the last (contiguous) axis of
    the inputs it reads along (others, such as a zero point, do not depend on it), and no other
    axis of theirs."""
    from tvm.tirx.analysis import undefined_vars

    stmt = sch.get(block)
    if "int" not in str(stmt.writes[0].source.dtype) or len(stmt.iter_vars) != n_spatial + 1:
        return False
    k = stmt.iter_vars[-1].var
    along_rows = False
    for region in stmt.reads:
        if region.source.same_as(stmt.writes[0].source):
            continue
        uses = [any(v.same_as(k) for v in undefined_vars(rng.min)) for rng in region.region]
        if any(uses[:-1]):
            return False
        along_rows = along_rows or bool(uses and uses[-1])
    return along_rows


def _fuse_epilogue(sch, consumer, writeback, par) -> None:
    """Element-wise consumers of the result join its write-back, tile by tile."""
    try:
        sch.reverse_compute_inline(consumer)
        return
    except Exception:  # not a plain element-wise consumer
        pass
    try:
        sch.reverse_compute_at(consumer, par, preserve_unit_loops=True)
    except Exception:  # it needs the whole result: it runs after the kernel
        pass


def _elements(sch, block) -> int | None:
    size = 1
    for dim in sch.get(block).writes[0].source.shape:
        if not hasattr(dim, "value"):
            return None
        size *= int(dim.value)
    return size


def _broadcast_read(sch, block) -> bool:
    """Does a consumer write more elements than `block`? Then inlining it would recompute each of
    its values once per element that reads it: LayerNorm's per-row variance, square root and
    division, inlined into the per-element normalization, cost the LM 0.7 ms per LayerNorm."""
    size = _elements(sch, block)
    if size is None:
        return False
    return any((_elements(sch, consumer) or 0) > size for consumer in sch.get_consumers(block))


def _inline_chain(sch, blocks) -> list:
    """Inline each element-wise block that can be (epilogue chains, broadcasts); padding and
    other blocks with conditions stay, to be computed per tile, and so do blocks whose values
    are read many times each (`_broadcast_read`). Returns what remains."""
    remaining = list(blocks)
    changed = True
    while changed:
        changed = False
        for block in list(remaining):
            if "R" in _iter_kinds(sch, block) or _has_condition(sch, block):
                continue
            if _broadcast_read(sch, block):
                continue
            for inline in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    inline(block)
                except Exception:  # not inlinable this way (an output, a reduction's input, ...)
                    continue
                remaining.remove(block)
                changed = True
                break
    return remaining


def _has_condition(sch, block) -> bool:
    # TVM 0.27's Python API has no TIR expression visitor; the printed body names the call
    return "if_then_else" in str(sch.get(block).body)


def schedule_func(func, target):
    """A scheduled copy of PrimFunc `func`, or None when neither rule applies."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    lanes = vector_lanes(target)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    reductions = [b for b in blocks if "R" in _iter_kinds(sch, b)]
    if len(reductions) > 1 or any("O" in _iter_kinds(sch, b) for b in blocks):
        return None  # softmax-like chains and opaque blocks: dlight's Reduction, or nothing
    if reductions:
        (block,) = reductions
        kinds = _iter_kinds(sch, block)
        n_spatial = kinds.index("R")
        if "S" in kinds[n_spatial:] or len(sch.get_loops(block)) != len(kinds):
            return None  # reduction iterators interleaved with spatial ones, or loops != iterators
        _inline_chain(sch, [b for b in blocks if b != block])
        tiled_reduction(sch, block, lanes)
        return sch
    for block in _inline_chain(sch, blocks):
        injective(sch, block, lanes)
    return sch


def is_scheduled(func) -> bool:
    attrs = func.attrs or {}
    return bool(attrs.get("tirx.is_scheduled", False) or attrs.get("tir.is_scheduled", False))


def apply(mod, target):
    """Schedule every unscheduled PrimFunc of `mod` that a rule covers; returns (mod, count)."""
    import tvm

    updated = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or is_scheduled(func):
            continue
        sch = first_schedule(func, target)
        if sch is not None:
            updated[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    mod = mod.clone()  # the caller's module stays as it was
    for gv, func in updated.items():
        mod[gv] = func
    return mod, len(updated)


def first_schedule(func, target):
    """The schedule (with its trace) that our rules, else dlight's GEMV / Reduction rules, give
    PrimFunc `func`; None when no rule fits."""
    from tvm.s_tir import dlight

    fallback_rules = [dlight.cpu.GEMV(), dlight.cpu.Reduction()]
    try:
        sch = schedule_func(func, target)
    except Exception:  # our rules do not fit this kernel: try dlight's
        sch = None
    for rule in fallback_rules:
        if sch is not None:
            break
        try:
            sch = rule.apply(func, target, False)
        except Exception:  # this rule does not fit either
            sch = None
    return sch[0] if isinstance(sch, list) else sch
