"""Schedule rules for CPU (llvm) kernels.

Each rule is a dlight ScheduleRule: it looks at one PrimFunc and returns a schedule, or None when
the function is not its kind. Sizes (threads, vector lanes) come from the target through
`CPUShape`, so one target decides them all.
"""

from __future__ import annotations

import dataclasses

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target
from tvm.target.codegen import llvm_cpu_has_features

from codegen.build.cpu import int8_dot, prefetch, quantized_matmul

# Weight rows computed together, each with one vector accumulator. More rows in flight help a
# single-row GEMV hide memory latency; with many rows, 8 keeps the weight tile in L1 between rows.
WEIGHT_TILE = 8
SINGLE_ROW_WEIGHT_TILE = 16
# Many rows (prefill): GEMM_MR rows x GEMM_VECTORS vectors of outputs as register accumulators;
# weights packed k-major (see PACK_BLOCK below). Twelve independent accumulators cover
# the FMA latency x throughput of two FMA ports; 4 x 1 left them idle (measured: bench/README.md).
GEMM_MR = 6
GEMM_VECTORS = 2
# A float weight panel whose NV source rows span at most GATHERED_PANEL_BYTES is packed by gathering
# one value per row per k into vector stores, a longer one PACK_BLOCK values of a row at a time.
# AVX-512, 2 threads, 128 rows, caches flushed before each call: K=768 GEMMs ran 5-9% faster
# gathered than in blocks; K=3072 ones 17% faster in blocks of 64 (or 128) than of 16 or 32, and
# (caches warm) 4-7% slower gathered than in blocks of 16.
PACK_BLOCK = 64
GATHERED_PANEL_BYTES = 128 << 10
# Decode (one activation row): each weight row a dot product with ROW_DOT_VECTORS vector
# accumulators; fewer accumulators keep more bytes in flight per row (measured: bench/README.md).
ROW_DOT_VECTORS = 2
# Weight rows per parallel task of the per-row kernels (chosen by measurement: bench/README.md).
TASK_ROWS = 64
# A reduction axis that splits into fewer lanes than this is left to the unscheduled kernel.
MIN_LANES = 4
# Scope of accumulator tiles. TVM makes a CPU buffer a stack alloca only when its scope is "global"
# and it is under 1 KB; otherwise it comes from TVMBackendAllocWorkspace, a pointer LLVM must assume
# aliases the operands, so every accumulator is stored back on every k step: half the GEMM speed
# (GEMM_MR x GEMM_VECTORS AVX-512 vectors is 768 B). Memory-bound GEMV tiles are less sensitive.
ACCUMULATOR_SCOPE = "global"


@dataclasses.dataclass(frozen=True)
class CPUShape:
    """What the target says about the CPU: threads and float32 lanes per vector register."""

    threads: int
    lanes: int

    @classmethod
    def of(cls, target: Target) -> "CPUShape":
        threads = int(target.attrs.get("num-cores", 1) or 1)
        return cls(threads=threads, lanes=_vector_bits(target) // 32)


def _vector_bits(target: Target) -> int:
    # llvm_get_vector_width answers for the host, whatever the target's mcpu says.
    if llvm_cpu_has_features("avx512f", target):
        return 512
    if llvm_cpu_has_features("avx", target):
        return 256
    return 128


def _static(extent) -> int | None:
    return int(extent) if isinstance(extent, (int, tirx.IntImm)) else None


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    return _static(sch.get(loop).extent)


def _iter_kinds(sch: s_tir.Schedule, block) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def _is_spatial(sch: s_tir.Schedule, block) -> bool:
    return all(kind == tirx.IterVar.DataPar for kind in _iter_kinds(sch, block))


def _weight_operand(sch: s_tir.Schedule, block) -> bool:
    """True if the block is C[..., n] += A[..., k] * W[n, k] with a static 2-D weight W."""
    stmt = sch.get(block)
    kinds = _iter_kinds(sch, block)
    reduce = tirx.IterVar.CommReduce
    if kinds.count(reduce) != 1 or kinds[-1] != reduce or len(kinds) < 2 or len(stmt.reads) != 2:
        return False
    n_var, k_var = stmt.iter_vars[-2].var, stmt.iter_vars[-1].var
    for region in stmt.reads:
        buffer = region.source
        if len(buffer.shape) != 2 or any(_static(d) is None for d in buffer.shape):
            continue
        starts = [r.min for r in region.region]
        if starts[0].same_as(n_var) and starts[1].same_as(k_var):
            return True
    return False


class WeightMatmul(ScheduleRule):
    """C[m, n] = sum_k A[m, k] * W[n, k] (the NT_matmul of every nn.Linear), plus a fused epilogue.

    The reduction axis is split into vectors and rfactor-ed, so each output keeps one vector
    accumulator that is summed once at the end. A tile of weight rows is computed for every
    activation row before moving on, so in prefill the tile is read from memory once and from L1
    after; tiles are split across threads (the outer loop is parallel). Rows are never tiled, so a
    dynamic row count (sequence length, batch size) needs no bounds checks in the inner loops.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        kernel = _weight_matmul_kernel(func, target)
        if kernel is None:
            return None
        sch, blocks, matmul = kernel
        if not _inline_around(sch, blocks, matmul):
            return None
        epilogue = _single_consumer(sch, matmul)
        try:
            return _schedule_matmul(sch, matmul, epilogue, CPUShape.of(target))
        except s_tir.ScheduleError:
            # A matmul shape this schedule cannot transform keeps TVM's default lowering.
            return None


def _weight_matmul_kernel(func, target: Target):
    """(schedule, the root's blocks, the matmul) for an llvm kernel whose one reduction multiplies
    by a 2-D weight; else None."""
    kernel = _llvm_kernel(func, target)
    if kernel is None:
        return None
    sch, blocks, reductions = kernel
    if len(reductions) != 1 or not _weight_operand(sch, reductions[0]):
        return None
    return sch, blocks, reductions[0]


def _llvm_kernel(func, target: Target):
    """(schedule, the root's blocks, those that reduce) for a PrimFunc built for llvm; else None."""
    if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
        return None
    sch = s_tir.Schedule(func)
    blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
    return sch, blocks, [b for b in blocks if not _is_spatial(sch, b)]


def _inline_around(sch: s_tir.Schedule, blocks: list, matmul) -> bool:
    """Inline elementwise blocks before the matmul and all but the last after it."""
    position = [sch.get(b).same_as(sch.get(matmul)) for b in blocks].index(True)
    for block in blocks[:position] + blocks[position + 1 : -1]:
        try:
            sch.compute_inline(block)
        except s_tir.ScheduleError:
            return False
    return True


def _single_consumer(sch: s_tir.Schedule, matmul):
    consumers = sch.get_consumers(matmul)
    return consumers[0] if len(consumers) == 1 else None


def _schedule_matmul(sch: s_tir.Schedule, matmul, epilogue, cpu: CPUShape) -> s_tir.Schedule | None:
    *rows, n, k = sch.get_loops(matmul)
    k_extent, n_extent = _extent(sch, k), _extent(sch, n)
    if k_extent is None or n_extent is None:
        return None
    lanes = _largest_power_of_two_dividing(k_extent, cpu.lanes)
    if lanes < MIN_LANES:
        return None
    m = _fused_rows(sch, matmul, rows)
    if _many_rows(sch.get(m).extent):
        gemm = _schedule_gemm(sch, matmul, epilogue, cpu, m, n, k, lanes, n_extent)
        if gemm is not None:
            return gemm
    width = ROW_DOT_VECTORS * lanes
    if _extent(sch, m) == 1 and k_extent % width == 0:
        # One row: each thread reads its weight rows one after another (one memory stream), each a
        # dot product; tiles of rows read side by side, as below, stream slower.
        return _schedule_dots(sch, matmul, epilogue, cpu, m, n, k, width, tile_rows=None)
    wanted_tile = SINGLE_ROW_WEIGHT_TILE if _extent(sch, m) == 1 else WEIGHT_TILE
    weight_tile = _largest_power_of_two_dividing(n_extent, wanted_tile)
    return _schedule_dots(sch, matmul, epilogue, cpu, m, n, k, lanes, tile_rows=weight_tile)


def _place_write_back(sch: s_tir.Schedule, matmul, vector_sums, epilogue, at, row):
    """After an rfactor: the vector sums (if any, vectorised over lanes) and the write-back under
    loop ``at``, the epilogue under the activation row, with the matmul's result then on the stack.
    Returns the vector sums' loop over vectors (None without them), where their reduction starts."""
    vectors = None
    if vector_sums is not None:
        sch.reverse_compute_at(vector_sums, at)
        lane, vectors = sch.get_loops(vector_sums)[-2:]
        sch.reorder(vectors, lane)
        sch.vectorize(lane)
    sch.reverse_compute_at(matmul, at, preserve_unit_loops=True)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, row, preserve_unit_loops=True)
        sch.set_scope(matmul, 0, ACCUMULATOR_SCOPE)
    return vectors


def _schedule_dots(sch, matmul, epilogue, cpu, m, n, k, width: int, tile_rows: int | None):
    """Parallel tasks of TASK_ROWS weight rows; each output accumulates `width` lanes of K, summed at
    the end.

    With tile_rows, tiles of that many weight rows advance together along K (one vector each per
    step, the tile reused from L1 by every activation row); without, each weight row is finished
    before the next (one contiguous stream).
    """
    side_by_side = tile_rows is not None
    weight = sch.get(matmul).reads[_weight_read_index(sch, matmul)].source
    k_outer, k_inner = sch.split(k, [None, width])
    if side_by_side:
        task, tile, n_inner = sch.split(n, [None, TASK_ROWS // tile_rows, tile_rows])
        sch.reorder(task, tile, m, k_outer, n_inner, k_inner)
    else:
        task, n_inner = sch.split(n, [None, TASK_ROWS])
        sch.reorder(task, m, n_inner, k_outer, k_inner)
    # The lane axis last, so each accumulator is one contiguous vector (LLVM keeps it in a register).
    output_rank = len(sch.get(matmul).writes[0].source.shape)
    partial = sch.rfactor(k_inner, factor_axis=output_rank)
    sch.set_scope(partial, 0, ACCUMULATOR_SCOPE)
    # Only row dots have more lanes than a vector (side-by-side tiles pass width = lanes).
    vector_sums = None if side_by_side or width == cpu.lanes else _sum_vectors_first(sch, matmul, cpu.lanes, output_rank)
    # rfactor moves the split loops to the write-back block; the partial sums get fresh ones.
    loops = sch.get_loops(partial)
    if side_by_side:
        task, _tile, m, k_outer, n_inner, k_inner = loops
        _place_write_back(sch, matmul, None, epilogue, at=m, row=m)
    else:
        task, m, n_inner, k_outer, k_inner = loops
        vectors = _place_write_back(sch, matmul, vector_sums, epilogue, at=n_inner, row=m)
        prefetch.mark(sch, k_outer, weight, width)

    # Loop kinds first: vectorize and parallel need the block before decompose_reduction splits it.
    sch.vectorize(k_inner)
    if side_by_side:
        sch.unroll(n_inner)
    if cpu.threads > 1:
        sch.parallel(task)
    sch.decompose_reduction(partial, k_outer)
    if vector_sums is not None:
        sch.decompose_reduction(vector_sums, vectors)
    return sch


def _sum_vectors_first(sch, write_back, lanes: int, output_rank: int):
    """Add an output's `width` partial sums as vectors into one vector, leaving `lanes` scalar adds:
    one serial chain of `width` scalar adds per output held the kernel below memory speed even from
    cache (figures: bench/README.md)."""
    loops = sch.get_loops(write_back)
    vectors, lane = sch.split(loops[-1], [None, lanes])
    partial = sch.rfactor(lane, factor_axis=output_rank)
    sch.set_scope(partial, 0, ACCUMULATOR_SCOPE)
    return partial


def _schedule_gemm(sch, matmul, epilogue, cpu, m, n, k, lanes, n_extent, unpacking=None):
    """Many rows (a dynamic count): a register tile of MR rows x NV outputs, vectorised along n.

    For each tile of NV weight rows (the parallel loop), the weights are packed k-major, so the
    micro-kernel loads NV contiguous weights per k and broadcasts one activation per row: MR x NV/lanes
    vector accumulators stay in registers over all of K and need no horizontal sums. Rows are split
    by MR; TVM's loop partitioning runs the full tiles without bounds checks and the last partial one
    with them. With `unpacking` (a quantized weight), that block itself fills the panel: each weight
    is unpacked once per kernel instead of once per activation row.
    """
    nv = _largest_power_of_two_dividing(n_extent, GEMM_VECTORS * cpu.lanes)
    if nv < cpu.lanes:
        return None
    mr = GEMM_MR
    weight_index = _weight_read_index(sch, matmul)
    accumulator = str(sch.get(matmul).writes[0].source.dtype)
    weight_bytes = tvm.DataType(sch.get(matmul).reads[weight_index].source.dtype).bits // 8
    activation_index = next(i for i in range(len(sch.get(matmul).reads)) if i != weight_index)
    n_outer, n_inner = sch.split(n, [None, nv])
    m_outer, m_inner = sch.split(m, [None, mr])
    sch.reorder(n_outer, m_outer, k, m_inner, n_inner)
    widened = []
    if _narrower(sch.get(matmul).reads[activation_index].source.dtype, accumulator):
        # Converted once for the whole kernel instead of once per weight panel and element.
        activations = sch.cache_read(matmul, activation_index, "global")
        sch.unsafe_set_dtype(activations, 0, accumulator)
        sch.vectorize(sch.split(sch.get_loops(activations)[-1], [None, cpu.lanes])[-1])
        widened.append(sch.get(activations).writes[0].source)
    if unpacking is None:
        packed = sch.cache_read(matmul, weight_index, "global")
    else:
        packed = unpacking.block
    if _narrower(sch.get(packed).writes[0].source.dtype, accumulator):
        # The panel holds the accumulator's type: each weight converted once, not once per row tile.
        sch.unsafe_set_dtype(packed, 0, accumulator)
        widened.append(sch.get(packed).writes[0].source)
    sch.compute_at(packed, n_outer, preserve_unit_loops=True)
    sch.transform_layout(packed, ("write", 0), lambda i, j: (j, i % nv), assume_injective_transform=True)
    if epilogue is None:
        epilogue = sch.cache_write(matmul, 0, ACCUMULATOR_SCOPE)
        sch.reverse_compute_at(epilogue, m_outer, preserve_unit_loops=True)
    else:
        sch.reverse_compute_at(epilogue, m_outer, preserve_unit_loops=True)
        sch.set_scope(matmul, 0, ACCUMULATOR_SCOPE)
    sch.vectorize(sch.get_loops(epilogue)[-1])
    # Each tile's accumulators live only inside its iteration: map them onto one MR x NV tile (the
    # predicate on the last tile would otherwise stop TVM from shrinking the buffer).
    sch.transform_layout(matmul, ("write", 0), lambda *i: (i[-2] % mr, i[-1] % nv), assume_injective_transform=True)
    sch.vectorize(n_inner)
    sch.unroll(m_inner)
    pack_n, pack_k = sch.get_loops(packed)[-2:]
    if unpacking is None and nv * _extent(sch, pack_k) * weight_bytes <= GATHERED_PANEL_BYTES:
        # One vector per k across the NV rows, gathered: its stores contiguous (as the unpacking).
        sch.reorder(pack_k, pack_n)
        sch.vectorize(pack_n)
    elif unpacking is None:
        # Pack in blocks of PACK_BLOCK along k: a few cache lines of each weight row at a time.
        pack_k_outer, pack_k_inner = sch.split(pack_k, [None, _largest_power_of_two_dividing(_extent(sch, pack_k), PACK_BLOCK)])
        sch.reorder(pack_k_outer, pack_n, pack_k_inner)
    else:
        # One vector per k across the NV rows (its stores contiguous); the codes of a word unrolled,
        # so the NV words are loaded once per word.
        word, code = sch.split(pack_k, [None, unpacking.codes_per_word])
        sch.reorder(word, code, pack_n)
        sch.vectorize(pack_n)
        sch.unroll(code)
    sch.annotate(m_outer, "pragma_loop_partition_hint", 1)
    if cpu.threads > 1:
        sch.parallel(n_outer)
    sch.decompose_reduction(matmul, k)
    return _without_round_trips(sch, widened)


def _without_round_trips(sch: s_tir.Schedule, widened: list[tirx.Buffer]) -> s_tir.Schedule:
    """unsafe_set_dtype leaves readers of a widened copy narrowing each value back and widening it
    again; every value in the copy came from the narrow type, so that round trip is exact: drop it."""
    if not widened:
        return sch
    names = {buffer.name for buffer in widened}

    def load_directly(cast: tirx.Cast) -> tirx.PrimExpr:
        inner = cast.value
        if isinstance(inner, tirx.Cast) and isinstance(inner.value, tvm.ir.TensorLoad):  # a BufferLoad
            load = inner.value
            if load.source.name in names and str(load.source.dtype) == str(cast.ty):
                return load
        return cast

    func = sch.mod["main"]
    return s_tir.Schedule(func.with_body(tvm_ffi.structural_map(func.body, (tirx.Cast, load_directly))))


def _narrower(dtype: str, accumulator: str) -> bool:
    """True for a float operand of fewer bits than the float accumulator (float16 or bfloat16 into
    float32)."""
    operand, wide = tvm.DataType(dtype), tvm.DataType(accumulator)
    floats = (tvm.DataTypeCode.FLOAT, tvm.DataTypeCode.BFLOAT)
    return operand.type_code in floats and wide.type_code in floats and operand.bits < wide.bits


def _many_rows(extent) -> bool:
    """True when the row count is a sequence length (prefill), which is worth the GEMM kernel.

    Its weight packing costs about one extra pass over the weights, which a batch of a few decoded
    tokens (a row count named batch_size) does not earn back: those keep the per-row kernel. The
    names are the symbolic dims of the export spec in templates/model.py.j2 ("seq_len", "batch_size").
    """
    if _static(extent) is not None:
        return _static(extent) >= 2 * GEMM_MR
    names = [v.name for v in tirx.analysis.undefined_vars(extent)]
    return any("seq" in name for name in names)


def _weight_read_index(sch: s_tir.Schedule, block) -> int:
    stmt = sch.get(block)
    n_var, k_var = stmt.iter_vars[-2].var, stmt.iter_vars[-1].var
    for index, region in enumerate(stmt.reads):
        starts = [r.min for r in region.region]
        if len(starts) == 2 and starts[0].same_as(n_var) and starts[1].same_as(k_var):
            return index
    raise s_tir.ScheduleError("no weight operand")


def _largest_power_of_two_dividing(extent: int, limit: int) -> int:
    size = 1
    while size * 2 <= limit and extent % (size * 2) == 0:
        size *= 2
    return size


def _fused_rows(sch: s_tir.Schedule, block, rows: list):
    """All loops before the last axis (the weight rows; a norm's or an elementwise kernel's features)
    as one row loop (a unit loop when there are none)."""
    if not rows:
        return sch.add_unit_loop(block)
    return sch.fuse(*rows) if len(rows) > 1 else rows[0]


@dataclasses.dataclass(frozen=True)
class _Unpacking:
    """The block that unpacks a group-quantized weight: W[n, k] is code k % codes_per_word of the
    uint32 word [n, k // codes_per_word], times a scale read from `scales`."""

    block: s_tir.SBlockRV
    words: tirx.Buffer
    scales: tirx.Buffer
    codes_per_word: int


def _unpacking(sch: s_tir.Schedule, matmul) -> _Unpacking | None:
    """The block computing the matmul's weight if it reads uint32 words [N, K / codes_per_word] and
    one other [N, ...] buffer (the scales); None for a weight that is a parameter."""
    weight = sch.get(matmul).reads[_weight_read_index(sch, matmul)].source
    n_extent, k_extent = (int(d) for d in weight.shape)
    for block in sch.get_producers(matmul):
        stmt = sch.get(block)
        if not stmt.writes[0].source.same_as(weight):
            continue
        reads = [r.source for r in stmt.reads]
        words = [b for b in reads if b.dtype == "uint32" and len(b.shape) == 2]
        scales = [b for b in reads if b.dtype != "uint32"]
        if not _is_spatial(sch, block) or len(reads) != 2 or len(words) != 1 or len(scales) != 1:
            return None
        word_count = _static(words[0].shape[1])
        if not word_count or k_extent % word_count or k_extent // word_count < 2:
            return None
        if _static(words[0].shape[0]) != n_extent or _static(scales[0].shape[0]) != n_extent:
            return None
        return _Unpacking(block, words[0], scales[0], k_extent // word_count)
    return None


class QuantizedWeightMatmul(ScheduleRule):
    """WeightMatmul for a group-quantized weight: a block unpacks W from uint32 words of codes and
    scales, the matmul reads it (the kernel of every quantized linear layer), plus a fused epilogue.

    Decode unpacks in registers as it streams the codes, so nothing [N, K] is written; prefill
    unpacks one panel of weight rows at a time for the float GEMM, once for all activation rows.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        kernel = _weight_matmul_kernel(func, target)
        if kernel is None:
            return None
        sch, blocks, matmul = kernel
        unpacking = _unpacking(sch, matmul)
        if unpacking is None:
            return None
        unpack = sch.get(unpacking.block)
        if not _inline_around(sch, [b for b in blocks if not sch.get(b).same_as(unpack)], matmul):
            return None
        epilogue = _single_consumer(sch, matmul)
        try:
            return _schedule_quantized(sch, matmul, epilogue, unpacking, CPUShape.of(target))
        except s_tir.ScheduleError:
            # As WeightMatmul: a shape this schedule cannot transform keeps TVM's default lowering.
            return None


def _schedule_quantized(sch, matmul, epilogue, unpacking: _Unpacking, cpu: CPUShape):
    """Many rows: the GEMM on unpacked panels; one row, or weight rows the GEMM cannot tile: row dots."""
    *rows, n, k = sch.get_loops(matmul)
    k_extent, n_extent = _extent(sch, k), _extent(sch, n)
    if k_extent is None or n_extent is None:
        return None
    m = _fused_rows(sch, matmul, rows)
    if _many_rows(sch.get(m).extent):
        gemm = _schedule_gemm(sch, matmul, epilogue, cpu, m, n, k, cpu.lanes, n_extent, unpacking)
        if gemm is not None:
            return gemm
    lanes = _largest_power_of_two_dividing(k_extent // unpacking.codes_per_word, cpu.lanes)
    if lanes < MIN_LANES:
        return None
    weight = sch.get(matmul).reads[_weight_read_index(sch, matmul)].source
    activations = next(r.source for r in sch.get(matmul).reads if not r.source.same_as(weight))
    sch.compute_inline(unpacking.block)
    return _schedule_unpacking_dots(sch, matmul, epilogue, cpu, m, n, k, unpacking, activations, lanes)


def _schedule_unpacking_dots(sch, matmul, epilogue, cpu, m, n, k, unpacking, activations, lanes: int):
    """The row dots of _schedule_dots, each weight row unpacked in registers as it is read.

    The vector lanes run over `lanes` consecutive words (a power of two dividing the row's words, so
    any K a scheme allows) and the codes of a word are an unrolled loop: each code is a shift of the
    word vector by a constant and a mask, with its own vector accumulator. Lanes then hold k
    positions codes_per_word apart, so the activation row is copied into that order first (once
    per kernel: it is small). Vectorising k itself instead loads each word once per lane.
    """
    per_word = unpacking.codes_per_word
    step = lanes * per_word
    x_order = sch.cache_read(matmul, _read_index(sch, matmul, activations), "global")
    sch.transform_layout(
        x_order,
        ("write", 0),
        lambda *i: (*i[:-1], i[-1] // step, i[-1] % per_word, i[-1] // per_word % lanes),
        assume_injective_transform=True,
    )
    task, n_inner = sch.split(n, [None, TASK_ROWS])
    k_outer, word, code = sch.split(k, [None, lanes, per_word])
    sch.reorder(task, m, n_inner, k_outer, code, word)
    output_rank = len(sch.get(matmul).writes[0].source.shape)
    partial = sch.rfactor(sch.fuse(code, word), factor_axis=output_rank)
    sch.set_scope(partial, 0, ACCUMULATOR_SCOPE)
    vector_sums = _sum_vectors_first(sch, matmul, lanes, output_rank)
    task, m, n_inner, k_outer, k_inner = sch.get_loops(partial)
    code, word = sch.split(k_inner, [per_word, lanes])
    _copy_step_scales(sch, partial, unpacking.scales, at=k_outer)
    vectors = _place_write_back(sch, matmul, vector_sums, epilogue, at=n_inner, row=m)
    prefetch.mark(sch, k_outer, unpacking.words, lanes)

    _finish_code_loops(sch, cpu, task, [word], code, [(partial, k_outer), (vector_sums, vectors)])
    return sch


def _finish_code_loops(sch, cpu: CPUShape, task, vectorised, code, reductions) -> None:
    """The last steps of both decode schedules: vector lanes, codes unrolled, tasks on the threads,
    then each (block, loop) reduction's init split off at its loop."""
    for loop in vectorised:
        sch.vectorize(loop)
    sch.unroll(code)
    if cpu.threads > 1:
        sch.parallel(task)
    for block, loop in reductions:
        sch.decompose_reduction(block, loop)


class FactoredQuantizedDecode(ScheduleRule):
    """The one-row quantized matmul as build/cpu/quantized_matmul.py factors it, plus a fused epilogue.

    Parallel tasks of TASK_ROWS weight rows. Each step reads a vector of `lanes` consecutive words of
    a row; their codes are an unrolled chain of FMAs into one vector of word dots, which adds its
    offsets and accumulates, times the scales, into the row's vector accumulator. The activation
    terms are computed first, once per call. (Two rows side by side, two chains of FMAs in flight,
    ran no faster for 4 bits and 1.5-2x slower cold for 8: bench/quantized_kernels.py, 2026-12-07.)
    """

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        kernel = _llvm_kernel(func, target)
        if kernel is None:
            return None
        sch, blocks, _ = kernel
        names = [sch.get(b).name_hint for b in blocks]
        if sorted(names[: len(quantized_matmul.BLOCKS)]) != sorted(quantized_matmul.BLOCKS):
            return None
        matmul = blocks[names.index(quantized_matmul.MATMUL)]
        word_dots = blocks[names.index(quantized_matmul.WORD_DOTS)]
        if not _inline_around(sch, blocks[names.index(quantized_matmul.MATMUL) :], matmul):
            return None
        epilogue = _single_consumer(sch, matmul)
        try:
            return _schedule_factored_decode(sch, word_dots, matmul, epilogue, CPUShape.of(target))
        except s_tir.ScheduleError:
            return None


def _schedule_factored_decode(sch, word_dots, matmul, epilogue, cpu: CPUShape):
    *rows, n, w = sch.get_loops(matmul)
    lanes = _largest_power_of_two_dividing(_extent(sch, w), cpu.lanes)
    if lanes < MIN_LANES:
        return None
    m = _fused_rows(sch, matmul, rows)
    task, n_inner = sch.split(n, [None, TASK_ROWS])
    w_outer, lane = sch.split(w, [None, lanes])
    sch.reorder(task, m, n_inner, w_outer, lane)
    output_rank = len(sch.get(matmul).writes[0].source.shape)
    partial = sch.rfactor(lane, factor_axis=output_rank)
    sch.set_scope(partial, 0, ACCUMULATOR_SCOPE)
    task, m, n_inner, w_outer, lane = sch.get_loops(partial)
    sch.compute_at(word_dots, w_outer)
    sch.set_scope(word_dots, 0, ACCUMULATOR_SCOPE)
    dot_word, code = sch.get_loops(word_dots)[-2:]
    sch.reorder(code, dot_word)
    words = next(r.source for r in sch.get(word_dots).reads if r.source.dtype == "uint32")
    dots = sch.get(word_dots).writes[0].source
    scales = next(
        r.source
        for r in sch.get(partial).reads
        if len(r.source.shape) == 2 and not r.source.same_as(dots)
    )
    _copy_step_scales(sch, partial, scales, at=w_outer)
    _place_write_back(sch, matmul, None, epilogue, at=n_inner, row=m)
    prefetch.mark(sch, w_outer, words, lanes)

    _finish_code_loops(sch, cpu, task, [lane, dot_word], code, [(partial, w_outer), (word_dots, code)])
    return sch


def _copy_step_scales(sch: s_tir.Schedule, block, scales: tirx.Buffer, at) -> None:
    """The few scales of one step's words, copied first to a stack array (ACCUMULATOR_SCOPE): read
    straight from the scales, each lane was a scalar load (TVM hoists the lane indices into a
    vector LLVM cannot see through); from the copy LLVM loads one vector and permutes it."""
    copy = sch.cache_read(block, _read_index(sch, block, scales), ACCUMULATOR_SCOPE)
    sch.compute_at(copy, at)
    loop = sch.get_loops(copy)[-1]
    # A step within one group copies a single scale: then the copy has no loop of its own.
    if not sch.get(loop).same_as(sch.get(at)) and _extent(sch, loop) > 1:
        sch.vectorize(loop)


def _read_index(sch: s_tir.Schedule, block, buffer: tirx.Buffer) -> int:
    return [r.source.same_as(buffer) for r in sch.get(block).reads].index(True)


class Int8DotEpilogue(ScheduleRule):
    """The elementwise epilogue (bias, activation, residual) FuseOps put after build/cpu/int8_dot.py's
    decode kernel, which comes written: inlined into one loop over the outputs, vectorised
    (unscheduled, each op was a scalar loop through a buffer of its own)."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        kernel = _llvm_kernel(func, target)
        if kernel is None:
            return None
        sch, blocks, _ = kernel
        names = [sch.get(b).name_hint for b in blocks]
        if int8_dot.BLOCK not in names:
            return None
        written = names.index(int8_dot.BLOCK)
        if not _inline_around(sch, blocks[written:], blocks[written]):
            return None
        if written < len(blocks) - 1:
            _vectorize_last(sch, blocks[-1], CPUShape.of(target).lanes)
        return sch


class Elementwise(ScheduleRule):
    """A kernel of elementwise blocks only (a bias, activation and residual after a kernel that
    FuseOps could not fuse them into, a cast): inlined into one loop nest over the output, vectorised
    along its last axis, its rows in parallel when they are a sequence (prefill). Unscheduled, each
    block was a scalar loop through a buffer of its own."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        kernel = _llvm_kernel(func, target)
        if kernel is None:
            return None
        sch, blocks, reductions = kernel
        if reductions or not blocks or not all(_plain_store(sch, b) for b in blocks):
            return None
        for block in blocks[:-1]:
            try:
                sch.compute_inline(block)
            except s_tir.ScheduleError:  # e.g. a second output: not one loop nest
                return None
        loops = sch.get_loops(blocks[-1])
        if not loops:
            return None
        rows = loops[:-1]
        _vectorize_last(sch, blocks[-1], CPUShape.of(target).lanes)
        if rows and CPUShape.of(target).threads > 1:
            row = _fused_rows(sch, blocks[-1], rows)
            if _many_rows(sch.get(row).extent):
                sch.parallel(row)
        return sch


def _plain_store(sch: s_tir.Schedule, block) -> bool:
    """True for a block of iteration variables whose body is one store of an expression without
    Let bindings. Not: opaque blocks (hand-written kernels), stores under a condition (the KV
    cache's rotary kernel, whose Lets in two branches bind one variable and fail to vectorise)."""
    stmt = sch.get(block)
    if not stmt.iter_vars or not isinstance(stmt.body, tirx.BufferStore):
        return False
    lets = []
    tvm_ffi.structural_walk(stmt.body, [(tirx.Let, lets.append)])
    return not lets


class SingleRowReduction(ScheduleRule):
    """A norm over one row (decode's static [1, 1, hidden] norms): one thread, vectorised output,
    its sums in vector partial sums.

    dlight.cpu.Reduction parallelises the spatial loop; with a single row that is the row's output
    elements, and every one of them recomputes the row's statistics into one shared buffer (a race,
    and hidden-size times the work: 0.5 ms instead of a few microseconds).
    """

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        kernel = _llvm_kernel(func, target)
        if kernel is None:
            return None
        sch, blocks, reductions = kernel
        if not reductions or not all(_single_row(sch, b) for b in reductions) or not _is_spatial(sch, blocks[-1]):
            return None
        lanes = CPUShape.of(target).lanes
        partial_sums = [_sum_in_vectors(sch, block, lanes) for block in reductions]
        _vectorize_last(sch, blocks[-1], lanes)
        for partial in partial_sums:
            if partial is not None:
                sch.vectorize(sch.get_loops(partial)[-1])
        return sch


class RowReduction(ScheduleRule):
    """A norm over many rows (prefill's [1, seq_len, hidden]): each row's sums in vector partial
    sums, all of a row's blocks computed under one loop over the rows, parallel across them, the
    output vectorised. (dlight.cpu.Reduction, which the rest keeps, sums each row in one serial
    chain of scalar adds: a norm took ~2.5 us per 768-wide row.)"""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool):
        kernel = _llvm_kernel(func, target)
        if kernel is None:
            return None
        sch, blocks, reductions = kernel
        if not reductions or not _is_spatial(sch, blocks[-1]):
            return None
        cpu = CPUShape.of(target)
        for block in blocks[:-1]:
            if _is_spatial(sch, block):
                try:
                    sch.compute_inline(block)  # e.g. the norm into the cast after it: one vector loop
                except s_tir.ScheduleError:
                    pass  # a value per row (the mean) stays a block of its own
        try:
            partial_sums = [_sum_in_vectors(sch, block, cpu.lanes) for block in reductions]
            *rows, _features = sch.get_loops(blocks[-1])
            if not rows:
                return None
            row = _fused_rows(sch, blocks[-1], rows)
            if not _many_rows(sch.get(row).extent):
                return None
            for block in reversed(sch.get_child_blocks(sch.get_sblock("root"))[:-1]):
                sch.compute_at(block, row, preserve_unit_loops=True)
        except s_tir.ScheduleError:  # rows the reductions do not share: dlight's rule
            return None
        _vectorize_last(sch, blocks[-1], cpu.lanes)
        for partial in partial_sums:
            if partial is not None:
                # compute_at put the partial sums' lane loop first under the row: move it innermost.
                _row, lane, *_, along_row = sch.get_loops(partial)
                sch.reorder(along_row, lane)
                sch.vectorize(lane)
        if cpu.threads > 1:
            sch.parallel(row)
        return sch


def _vectorize_last(sch: s_tir.Schedule, block, lanes: int) -> None:
    loop = sch.get_loops(block)[-1]
    extent = _extent(sch, loop)
    width = _largest_power_of_two_dividing(extent, lanes) if extent else 1
    if width > 1:
        sch.vectorize(sch.split(loop, [None, width])[-1])


def _sum_in_vectors(sch: s_tir.Schedule, block, lanes: int):
    """Split a sum along the row into ROW_DOT_VECTORS vectors of partial sums, added up at the end;
    returns the partial sums' block (None where the row is not whole vectors), to be vectorised
    once its loops are placed."""
    loop = sch.get_loops(block)[-1]
    extent = _extent(sch, loop)
    width = ROW_DOT_VECTORS * lanes
    if extent is None or extent % width or _iter_kinds(sch, block)[-1] != tirx.IterVar.CommReduce:
        return None
    inner = sch.split(loop, [None, width])[-1] if extent > width else loop
    output_rank = len(sch.get(block).writes[0].source.shape)
    return sch.rfactor(inner, factor_axis=output_rank)


def _single_row(sch: s_tir.Schedule, block) -> bool:
    """True if every spatial axis of the block has extent 1."""
    spatial = [iv.dom.extent for iv in sch.get(block).iter_vars if int(iv.iter_type) == tirx.IterVar.DataPar]
    return all(_static(extent) == 1 for extent in spatial)
