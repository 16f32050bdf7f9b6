"""The quantized matmul on int8 dot products (AVX512-VNNI `vpdpbusd`), as llama.cpp does.

For a scheme that declares `cpu_activations: int8`. Each call first quantizes the activation rows
like llama.cpp's q8_0: per group of 32, d = max|x| / 127 and x_q = round(x / d) (half to even) in
int8. Then one `vpdpbusd` multiplies 64 weight codes (unsigned bytes) by 64 activation bytes and
sums each 4 into an int32 lane: exact integer sums, no per-code conversion or FMA. Per weight word
w (whose codes share the scale s[n, g]):

    y[m, n] = sum_w  s[n, g(w)] * d[m, g(w)] * (sum_j code_j(q[n, w]) * x_q[m, w, j]  -  max_code * sum_j x_q[m, w, j])

The second term is computed with the activations and starts each word's int32 sum. For 4 bits a
byte holds two codes: the low nibbles of a vector are the even codes, the high nibbles the odd
ones, so the activations are stored split into their even and odd elements and each word takes
two `vpdpbusd`. The 8-bit codes are bytes as stored.

The result differs from the float kernels by the activations' rounding (at most d / 2 each),
which is why a scheme opts in: tests/test_quantized_kernels.py checks the kernels against a numpy
model of exactly this arithmetic, `make eval` (bench/quality.py) the perplexity it costs.

The kernels are written as vector TIR (no schedule). Decode (one row): one parallel task per
thread, each quantizing the row into arrays of its own (no barrier), then streaming its share of
the weight rows, prefetching ahead as the factored kernel does. Prefill: the rows are quantized in
parallel first; then each task takes GEMM_TILE_N weight rows and, for each tile of GEMM_MR
activation rows, unpacks each vector of codes once for the tile's rows. FuseOps appends the bias,
activation or residual after the decode kernel (rules.Int8DotEpilogue schedules that loop nest);
after prefill's they are a kernel of their own (rules.Elementwise)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tvm import tirx
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import llvm_cpu_has_features

from codegen.build.cpu import prefetch

if TYPE_CHECKING:
    from codegen.build.cpu.quantized_matmul import _Kernel

BLOCK = "int8_dot"  # the opaque block of each parallel task; a fused epilogue follows it
QUANTIZE_BLOCK = "int8_dot_quantize"  # prefill: the activations, all rows in parallel first
GEMM_MR = 4  # prefill: activation rows per register tile
LANES = 16  # int32 / float32 lanes of a 512-bit vector
_GROUP = 32
_DOT = "llvm.x86.avx512.vpdpbusd.512"
_NIBBLES = 0x0F0F0F0F


def target_supports(target: Target) -> bool:
    """True if the target CPU has the 512-bit integer dot product (and byte shuffles)."""
    return target.kind.name == "llvm" and llvm_cpu_has_features(["avx512vnni", "avx512bw"], target)


def fits(kernel: _Kernel) -> bool:
    """True if the kernel's codes are 4 or 8 bits in groups of 32, each weight row is whole vectors
    of LANES words and the weight rows are whole tasks of LANES (the prefill's)."""
    return (
        kernel.bits in (4, 8)
        and kernel.words_per_group * kernel.codes_per_word == _GROUP
        and int(kernel.words.shape[1]) % LANES == 0
        and int(kernel.words.shape[0]) % LANES == 0
        and len(kernel.x.shape) == len(kernel.out.shape) == 3  # [1, rows, K], as exported
        and isinstance(kernel.x.shape[0], tirx.IntImm)
        and int(kernel.x.shape[0]) == 1
    )


def int8_dot_kernel(kernel: _Kernel, threads: int) -> tirx.PrimFunc:
    """The kernel for `kernel`'s operands (same parameters), in `threads` parallel tasks."""
    k = int(kernel.x.shape[-1])
    n_rows, words = (int(d) for d in kernel.words.shape)
    rows = kernel.x.shape[1]  # of activations: 1 in decode, the sequence length in prefill
    groups = k // _GROUP
    per_word = kernel.codes_per_word
    words_per_group = kernel.words_per_group
    planes = 2 if kernel.bits == 4 else 1
    per_plane = _GROUP // planes
    vectors = words // LANES
    groups_per_vector = LANES // words_per_group
    max_code = int(kernel.max_code)
    rows_per_task = -(-n_rows // threads)
    # The generated kernel's shapes (int64, as exported): fusion matches the buffers by type.
    x_shape, x_dtype = list(kernel.x.shape), kernel.x.dtype
    out_shape, out_dtype = list(kernel.out.shape), kernel.out.dtype
    word_shape, scale_shape = list(kernel.words.shape), list(kernel.scales.shape)
    scale_dtype = kernel.scales.dtype
    # Plane p of word w, byte b holds code j = planes * b + p of that word.
    plane_lanes = [[planes * i + p for i in range(_GROUP // planes)] for p in range(planes)]
    # The codes of word w of a group: j + per_word * w, for the offsets' shuffles.
    word_lanes = [[per_word * w + j for w in range(words_per_group)] for j in range(per_word)]

    # Decode: op_pattern 4 (kOutEWiseFusable), FuseOps appends the elementwise epilogue. Prefill: 8
    # (kOpaque), the epilogue stays a kernel of its own (rules.Elementwise): TVM's schedule cannot
    # inline blocks after one whose written rows have no constant extent (its region-cover check
    # fails), and left in the kernel they were scalar loops, one buffer each.
    attributes = {"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 4 if kernel.one_row else 8}

    # Macros, not functions: meta_var makes each value an expression, not a variable (FlattenBuffer
    # would make each variable of a block a one-element buffer, stored and reloaded).
    @T.macro
    def quantize_row(x_full, m, codes_x, offsets, step, a):
        """Activation row x[0, m] into row a of the arrays."""
        for g in range(groups):
            low = T.meta_var(_load_f32(x_full, m, g * _GROUP))
            high = T.meta_var(_load_f32(x_full, m, g * _GROUP + LANES))
            amax = T.meta_var(_reduce(tirx.max, T.max(T.abs(low), T.abs(high))))
            inverse = T.meta_var(T.Select(amax > T.float32(0), T.float32(127) / amax, T.float32(0)))
            q_low = T.meta_var(_rounded(low, inverse))
            q_high = T.meta_var(_rounded(high, inverse))
            at = T.meta_var(T.ramp(g * per_plane, 1, per_plane))
            codes_x[a, 0, at] = T.Cast(f"int8x{per_plane}", _pick([q_low, q_high], plane_lanes[0]))
            if planes == 2:
                codes_x[a, 1, at] = T.Cast(f"int8x{per_plane}", _pick([q_low, q_high], plane_lanes[1]))
            these_words = T.meta_var(T.ramp(g * words_per_group, 1, words_per_group))
            offsets[a, these_words] = _word_sums([q_low, q_high], word_lanes) * T.broadcast(
                T.int32(-max_code), words_per_group
            )
            step[a, these_words] = T.broadcast(amax / T.float32(127), words_per_group)

    @T.macro
    def accumulate(acc, r, q, s, n, codes_x, offsets, step, a, v):
        """acc[r] += weight row n's words of vector v times activation row a, lane by lane."""
        dots = T.meta_var(
            _dots(
                offsets[a, T.ramp(v * LANES, 1, LANES)],
                q[n, T.ramp(v * LANES, 1, LANES)],
                [codes_x[a, p, T.ramp(v * 64, 1, 64)] for p in range(planes)],
            )
        )
        row_scales = T.meta_var(
            _spread(s[n, T.ramp(v * groups_per_vector, 1, groups_per_vector)], words_per_group)
        )
        acc[r, T.ramp(0, 1, LANES)] = (
            T.Cast("float32x16", dots) * step[a, T.ramp(v * LANES, 1, LANES)]
        ) * row_scales + acc[r, T.ramp(0, 1, LANES)]

    @T.prim_func(private=True, s_tir=True)
    def decode(
        x_full: T.Buffer(x_shape, x_dtype),
        q: T.Buffer(word_shape, "uint32"),
        s: T.Buffer(scale_shape, scale_dtype),
        out_full: T.Buffer(out_shape, out_dtype),
    ):
        T.func_attr(attributes)
        with T.sblock("root"):
            for task in T.parallel(threads):
                with T.sblock(BLOCK):
                    T.reads(x_full[0, 0, 0:k], q[0:n_rows, 0:words], s[0:n_rows, 0:groups])
                    T.writes(out_full[0, 0, 0:n_rows])
                    # "global" below 1 KiB is a stack array LLVM keeps in registers (rules.py).
                    codes_x = T.alloc_buffer((1, planes, per_plane * groups), "int8", scope="global")
                    offsets = T.alloc_buffer((1, words), "int32", scope="global")
                    step = T.alloc_buffer((1, words), "float32", scope="global")
                    quantize_row(x_full, 0, codes_x, offsets, step, 0)
                    for i in range(rows_per_task):
                        n = T.meta_var(task * rows_per_task + i)
                        if n < n_rows:
                            acc = T.alloc_buffer((1, LANES), "float32", scope="global")
                            acc[0, T.ramp(0, 1, LANES)] = T.broadcast(T.float32(0), LANES)
                            for v in range(vectors):
                                # A vector of words is a cache line (build/cpu/prefetch.py).
                                ahead = T.meta_var(T.min(n + prefetch.ROWS_AHEAD, n_rows - 1))
                                T.evaluate(prefetch.line_read(q, [ahead, v * LANES]))
                                accumulate(acc, 0, q, s, n, codes_x, offsets, step, 0, v)
                            out_full[0, 0, n] = T.Cast(out_dtype, _reduce(tirx.Add, acc[0, T.ramp(0, 1, LANES)]))

    @T.macro
    def gemm_tile(panel, panel_scales, codes_x, group_offsets, step, out_full, first, count, n0):
        """Outputs [first, first + count) x [n0, n0 + LANES): lanes are weight rows, each vpdpbusd
        one word of LANES rows times the same 4 activation bytes; int32 sums over a group."""
        sums = T.alloc_buffer((count, LANES), "float32", scope="global")
        dots = T.alloc_buffer((count, LANES), "int32", scope="global")
        for r in T.unroll(count):
            sums[r, T.ramp(0, 1, LANES)] = T.broadcast(T.float32(0), LANES)
        for g in range(groups):
            for r in T.unroll(count):
                dots[r, T.ramp(0, 1, LANES)] = T.broadcast(group_offsets[first + r, g], LANES)
            for j in T.unroll(words_per_group):
                for p in T.unroll(planes):
                    for r in T.unroll(count):
                        dots[r, T.ramp(0, 1, LANES)] = _dot(
                            dots[r, T.ramp(0, 1, LANES)],
                            panel[p, g * words_per_group + j, T.ramp(0, 1, LANES)],
                            codes_x[first + r, p, T.ramp((g * words_per_group + j) * 4, 1, 4)],
                        )
            for r in T.unroll(count):
                sums[r, T.ramp(0, 1, LANES)] = (
                    T.Cast("float32x16", dots[r, T.ramp(0, 1, LANES)])
                    * (panel_scales[g, T.ramp(0, 1, LANES)] * T.broadcast(step[first + r, g * words_per_group], LANES))
                    + sums[r, T.ramp(0, 1, LANES)]
                )
        for r in T.unroll(count):
            out_full[0, first + r, T.ramp(n0, 1, LANES)] = T.Cast(f"{out_dtype}x16", sums[r, T.ramp(0, 1, LANES)])

    @T.prim_func(private=True, s_tir=True)
    def gemm(
        x_full: T.Buffer(x_shape, x_dtype),
        q: T.Buffer(word_shape, "uint32"),
        s: T.Buffer(scale_shape, scale_dtype),
        out_full: T.Buffer(out_shape, out_dtype),
    ):
        T.func_attr(attributes)
        with T.sblock("root"):
            codes_x = T.alloc_buffer((rows, planes, per_plane * groups), "int8")
            offsets = T.alloc_buffer((rows, words), "int32")
            group_offsets = T.alloc_buffer((rows, groups), "int32")
            step = T.alloc_buffer((rows, words), "float32")
            for m in T.parallel(rows):
                with T.sblock(QUANTIZE_BLOCK):
                    T.reads(x_full[0, m, 0:k])
                    T.writes(
                        codes_x[m, 0:planes, 0 : per_plane * groups],
                        offsets[m, 0:words],
                        group_offsets[m, 0:groups],
                        step[m, 0:words],
                    )
                    quantize_row(x_full, m, codes_x, offsets, step, m)
                    for g in range(groups):
                        group_offsets[m, g] = _reduce(
                            tirx.Add, offsets[m, T.ramp(g * words_per_group, 1, words_per_group)], words_per_group
                        )
            for task in T.parallel(n_rows // LANES):
                with T.sblock(BLOCK):
                    T.reads(
                        codes_x[0:rows, 0:planes, 0 : per_plane * groups],
                        group_offsets[0:rows, 0:groups],
                        step[0:rows, 0:words],
                        q[task * LANES : task * LANES + LANES, 0:words],
                        s[task * LANES : task * LANES + LANES, 0:groups],
                    )
                    T.writes(out_full[0, 0:rows, task * LANES : task * LANES + LANES])
                    # The task's LANES weight rows transposed (word-major), their codes unpacked into
                    # byte planes, once for all activation rows.
                    panel = T.alloc_buffer((planes, words, LANES), "uint32")
                    panel_scales = T.alloc_buffer((groups, LANES), "float32")
                    for w, r in T.grid(words, LANES):
                        panel[0, w, r] = _plane(q[task * LANES + r, w], planes, 0)
                        if planes == 2:
                            panel[1, w, r] = _plane(q[task * LANES + r, w], planes, 1)
                    for g, r in T.grid(groups, LANES):
                        panel_scales[g, r] = T.Cast("float32", s[task * LANES + r, g])
                    for tile in range(rows // GEMM_MR):
                        gemm_tile(panel, panel_scales, codes_x, group_offsets, step, out_full, tile * GEMM_MR, GEMM_MR, task * LANES)
                    for m in range(rows // GEMM_MR * GEMM_MR, rows):
                        gemm_tile(panel, panel_scales, codes_x, group_offsets, step, out_full, m, 1, task * LANES)

    return decode if kernel.one_row else gemm


def _pick(vectors: list[tirx.PrimExpr], lanes: list[int]) -> tirx.PrimExpr:
    """The given lanes of the vectors laid end to end."""
    return tirx.Shuffle(vectors, [tirx.const(i, "int32") for i in lanes])


def _load_f32(x: tirx.Buffer, row, start) -> tirx.PrimExpr:
    """LANES activations from x[0, row, start], as float32."""
    return tirx.Cast("float32x16", tirx.BufferLoad(x, [0, row, tirx.Ramp(start, 1, LANES)]))


def _rounded(values: tirx.PrimExpr, inverse: tirx.PrimExpr) -> tirx.PrimExpr:
    """values * inverse rounded half to even (llvm.nearbyint), as int32."""
    return tirx.Cast("int32x16", tirx.round(values * tirx.Broadcast(inverse, LANES)))


def _reduce(combine, vector: tirx.PrimExpr, width: int = LANES) -> tirx.PrimExpr:
    """The lanes of a `width`-lane vector combined pairwise down to one scalar."""
    while width > 1:
        width //= 2
        vector = combine(_pick([vector], range(width)), _pick([vector], range(width, 2 * width)))
    return vector


def _plane(word: tirx.PrimExpr, planes: int, p: int, lanes: int = 1) -> tirx.PrimExpr:
    """Plane p of a word's codes (or of a vector of `lanes` words) as unsigned bytes: the word
    itself for 8 bits; for 4 bits its low (p = 0) or high nibbles."""
    if planes == 1:
        return word

    def constant(value: int) -> tirx.PrimExpr:
        scalar = tirx.const(value, "uint32")
        return scalar if lanes == 1 else tirx.Broadcast(scalar, lanes)

    return (word >> constant(4 * p)) & constant(_NIBBLES)


def _dot(dots: tirx.PrimExpr, codes: tirx.PrimExpr, activations: tirx.PrimExpr) -> tirx.PrimExpr:
    """dots + each lane's 4 code bytes times the same 4 activation bytes (int8x4, one per lane)."""
    shared = tirx.reinterpret("int8x64", tirx.Broadcast(tirx.reinterpret("int32", activations), LANES))
    return tirx.call_llvm_pure_intrin("int32x16", _DOT, dots, tirx.reinterpret("uint8x64", codes), shared)


def _spread(scales: tirx.PrimExpr, words_per_group: int) -> tirx.PrimExpr:
    """The scales of LANES // words_per_group groups, as float32, each repeated for its words."""
    wide = tirx.Cast(f"float32x{LANES // words_per_group}", scales)
    # A shuffle yields at most the lanes it is given: words_per_group copies are LANES lanes.
    return _pick([wide] * words_per_group, [lane // words_per_group for lane in range(LANES)])


def _word_sums(halves: list[tirx.PrimExpr], word_lanes: list[list[int]]) -> tirx.PrimExpr:
    """Each word's sum of its quantized activations, for a group given as its two halves."""
    total = _pick(halves, word_lanes[0])
    for lanes in word_lanes[1:]:
        total = total + _pick(halves, lanes)
    return total


def _dots(offsets: tirx.PrimExpr, packed: tirx.PrimExpr, activations: list[tirx.PrimExpr]) -> tirx.PrimExpr:
    """offsets + each 4-byte lane's dot of the codes in `packed` (16 words) with the activation
    bytes: one vpdpbusd per plane (for 4 bits the low nibbles, then the high ones)."""
    planes = [_plane(packed, len(activations), p, LANES) for p in range(len(activations))]
    dots = offsets
    for codes, x in zip(planes, activations):
        dots = tirx.call_llvm_pure_intrin("int32x16", _DOT, dots, tirx.reinterpret("uint8x64", codes), x)
    return dots
