"""Multi-threaded, vectorised CPU kernels for TVM's paged KV cache attention.

TVM's TIRPagedKVCache builds scalar, single-threaded attention loops for the llvm target. The
kernels here keep their signatures and semantics (log2-domain softmax in float32, the `lse` output,
`causal`, ragged `q_indptr` / `kv_indptr`, the paged layout, MQA / GQA head groups) and
`replace_kv_cache_kernels()` swaps them into an IRModule in place of TVM's.

A work item takes a tile of queries that share a KV head (some of its query heads, and for prefill
some consecutive rows) and walks the keys they may see in blocks of KEY_LANES: it scores the block,
updates each query's running max and sum (an online softmax, in small local buffers) and
accumulates P @ V vectorised over the head dimension. Causal rows skip the keys past their
diagonal. The prefill kernels first copy the keys, transposed, into a float32 workspace, so that one
vector FMA scores a block of keys for one query; decode uses each key once per query head, too few
times to pay for that, and scores key rows with a transposing vector reduction instead.

With a sliding window W (Mistral, StarCoder2), the query at position p sees only keys p-W+1 .. p:
the cache keeps the whole context and the kernels skip the blocks before the window, so attention
matches HF's over any prompt length.

RoPE is applied before the cache (RopeMode NORMAL or NONE); the kernels refuse rotary_mode=1.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass

import tvm
from tvm import tirx
from tvm.script import tirx as T

KEY_LANES = 16  # float32 lanes of an AVX-512 vector: keys scored per FMA
LOG2E = math.log2(math.e)
# TVM's kernels start each row's running max at -5e4; a row that sees no key keeps it as its lse.
EMPTY_ROW_LSE = -5e4
MASKED_SCORE = -3.0e38
# 2**f for f in [-0.5, 0.5]: a least-squares fit of the relative error, below 1.1e-7 in float32.
EXP2_COEFFICIENTS = (1.0, 0.6931471992, 0.2402264736, 0.05550342284, 0.009618491006, 0.001339470116, 0.0001533250768)
# 2**-126 is float32's smallest normal number; exp2 below it is flushed to zero.
EXP2_MIN_EXPONENT = -126.0


def _exp2(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """2**x in float32 from arithmetic alone, so that LLVM vectorises it (llvm.exp2 on a vector
    becomes one libm call per lane)."""
    clamped = T.max(x, T.float32(EXP2_MIN_EXPONENT))
    whole = T.round(clamped)
    fraction = clamped - whole
    poly = T.float32(EXP2_COEFFICIENTS[-1])
    for coefficient in reversed(EXP2_COEFFICIENTS[:-1]):
        poly = poly * fraction + T.float32(coefficient)
    power_of_two = T.reinterpret("float32", T.shift_left(T.Cast("int32", whole) + 127, 23))
    return T.Select(x < T.float32(EXP2_MIN_EXPONENT), T.float32(0.0), poly * power_of_two)


# Score vectors in flight per prefill tile: enough independent FMA chains to hide their latency, few
# enough that they and a key vector stay in the 32 vector registers.
QUERY_VECTORS = 8


@dataclass(frozen=True)
class Tiling:
    """Which queries a work item scores against each block of KEY_LANES keys."""

    head_tile: int  # query heads of one KV head's group taken together
    row_tile: int  # consecutive query rows taken together
    qk_lanes: int  # vector width over the query/key dimension where keys are scored row by row
    v_lanes: int  # vector width over the value dimension for P @ V

    @property
    def queries(self) -> int:
        return self.head_tile * self.row_tile

    @staticmethod
    def choose(group_size: int, qk_dim: int, v_dim: int, rows: bool) -> Tiling:
        """`rows`: take several query rows per tile (prefill), or one (decode)."""
        heads = max(t for t in range(1, min(group_size, QUERY_VECTORS) + 1) if group_size % t == 0)
        return Tiling(heads, max(1, QUERY_VECTORS // heads) if rows else 1, _lanes(qk_dim), _lanes(v_dim))


def _lanes(dim: int) -> int:
    return next(lanes for lanes in (KEY_LANES, 8, 4, 2, 1) if dim % lanes == 0)


def _fold_max(vector: tirx.PrimExpr) -> tirx.PrimExpr:
    """The largest lane of a float32 vector, by halving it log2(lanes) times."""
    lanes = tvm.DataType(str(vector.ty)).lanes
    while lanes > 1:
        whole, half = tirx.Var("lanes", str(vector.ty)), lanes // 2
        folded = T.max(_pick([whole], range(half)), _pick([whole], range(half, lanes)))
        vector, lanes = tirx.Let(whole, vector, folded), half
    return vector


def _lane_sums(vectors: list[tirx.PrimExpr], lanes: int) -> tirx.PrimExpr:
    """One KEY_LANES vector whose lane k is the sum of the lanes of vectors[k] (each `lanes` wide).

    Each step adds, for a pair of neighbours, the lower and the upper halves of every group of lanes
    that still belongs to one input vector: the pair becomes one vector with half-size groups, in
    order. After log2(lanes) steps every lane is a whole sum.
    """
    group = lanes
    while group > 1:
        half = group // 2
        low = [start + i for start in range(0, 2 * lanes, group) for i in range(half)]
        high = [i + half for i in low]
        vectors = [_pick([x, y], low) + _pick([x, y], high) for x, y in zip(vectors[::2], vectors[1::2])]
        group = half
    return _pick(vectors, range(KEY_LANES))


def _pick(vectors: list[tirx.PrimExpr], lanes) -> tirx.PrimExpr:
    """The given lanes of the vectors laid end to end."""
    return tirx.Shuffle(vectors, [T.int32(lane) for lane in lanes])


def _span(start, lanes: int):
    """Index of `lanes` consecutive elements from `start`."""
    return T.ramp(start, 1, lanes) if lanes > 1 else start


def _float32(expr, lanes: int):
    return T.Cast("float32" if lanes == 1 else f"float32x{lanes}", expr)


def _transposed_key_scores(tiling: Tiling, qk_dim: int):
    """A macro: scores[i, 0:KEY_LANES] = q_scaled[i] . keys first..first+KEY_LANES-1, for keys stored
    transposed in float32: `key(kv_head, first, j, c)`, element c of key first+j, is contiguous in j."""
    queries = tiling.queries

    @T.macro
    def score(scores, q_scaled, key, kv_head, first):
        for i in T.unroll(queries):
            for j in T.vectorized(KEY_LANES):
                scores[i, j] = T.float32(0.0)
        # One key vector serves every query of the tile: `queries` FMA chains.
        for c in T.serial(qk_dim):
            for i in T.unroll(queries):
                for j in T.vectorized(KEY_LANES):
                    scores[i, j] = scores[i, j] + q_scaled[i, c] * key(kv_head, first, j, c)

    return score


def _row_key_scores(tiling: Tiling, qk_dim: int):
    """The same macro for keys stored as rows (`key(kv_head, first, j, c)` contiguous in c): products
    vectorised over the dimension, then one transposing reduction per block of KEY_LANES keys."""
    queries, lanes = tiling.queries, tiling.qk_lanes

    def block_scores(q_scaled, query, key, kv_head, first):
        products = [
            functools.reduce(
                operator.add,
                [
                    tirx.BufferLoad(q_scaled, [query, _span(c, lanes)])
                    * _float32(key(kv_head, first, j, _span(c, lanes)), lanes)
                    for c in range(0, qk_dim, lanes)
                ],
            )
            for j in range(KEY_LANES)
        ]
        return _lane_sums(products, lanes)

    @T.macro
    def score(scores, q_scaled, key, kv_head, first):
        for i in T.serial(queries):
            scores[i, T.ramp(0, 1, KEY_LANES)] = block_scores(q_scaled, i, key, kv_head, first)

    return score


def _tile_attention(tiling: Tiling, qk_dim: int, v_dim: int, dtype: str, score, window: int | None):
    """A macro: softmax(q k^T * sm_scale) @ v for a tile of query rows x query heads of one KV head.

    The tile is rows [first_row, first_row + row_tile) of a sequence of `rows` query rows (those past
    its end are skipped) and heads [head, head + head_tile). Row r sees the sequence's keys
    [start, _visible_keys(causal, r, keys, rows)), where start is 0 without a window and otherwise
    the window's first key before `position(r, keys, rows)`, the index the query's own token has
    among the keys. `score` (a macro above) reads the keys through `key`,
    P @ V reads `value(kv_head, first, j, c)`, element c of value first+j. Writes `output` and `lse`
    (log2 domain, as TVM's kernels).
    """
    heads, queries, lanes = tiling.head_tile, tiling.queries, tiling.v_lanes

    @T.macro
    def attend(q, output, lse, q_begin, first_row, rows, keys, causal, position, head, kv_head, key, value, sm_scale):
        with T.sblock("tile"):
            # The accessed regions depend on lets bound inside the block; nothing schedules it.
            T.reads()
            T.writes()
            start = T.sblock_alloc_buffer((queries,), "int32", scope="local")
            limit = T.sblock_alloc_buffer((queries,), "int32", scope="local")
            tile_start = T.sblock_alloc_buffer((1,), "int32", scope="local")
            tile_limit = T.sblock_alloc_buffer((1,), "int32", scope="local")
            q_scaled = T.sblock_alloc_buffer((queries, qk_dim), "float32", scope="local")
            acc = T.sblock_alloc_buffer((queries, v_dim), "float32", scope="local")
            scores = T.sblock_alloc_buffer((queries, KEY_LANES), "float32", scope="local")
            run_max = T.sblock_alloc_buffer((queries,), "float32", scope="local")
            # Per-lane partial sums of exp2(score - run_max): folded once, when the tile is done.
            run_sum = T.sblock_alloc_buffer((queries, KEY_LANES), "float32", scope="local")
            total = T.sblock_alloc_buffer((1,), "float32", scope="local")
            tile_start[0] = keys
            tile_limit[0] = 0
            for i in T.serial(queries):
                row: T.let[T.int32] = first_row + i // heads
                run_max[i] = T.float32(EMPTY_ROW_LSE)
                for j in T.vectorized(KEY_LANES):
                    run_sum[i, j] = T.float32(0.0)
                for c in T.vectorized(v_dim):
                    acc[i, c] = T.float32(0.0)
                if row < rows:
                    start[i] = _window_start(window, position(row, keys, rows))
                    limit[i] = _visible_keys(causal, row, keys, rows)
                    tile_start[0] = T.min(tile_start[0], start[i])
                    for c in T.vectorized(qk_dim):
                        q_scaled[i, c] = T.Cast("float32", q[q_begin + row, head + i % heads, c]) * (
                            sm_scale * T.float32(LOG2E)
                        )
                else:
                    start[i] = 0
                    limit[i] = 0
                    for c in T.vectorized(qk_dim):
                        q_scaled[i, c] = T.float32(0.0)
                tile_limit[0] = T.max(tile_limit[0], limit[i])
            for key_block in T.serial(tile_start[0] // KEY_LANES, T.ceildiv(tile_limit[0], KEY_LANES)):
                first: T.let[T.int32] = key_block * KEY_LANES
                score(scores, q_scaled, key, kv_head, first)
                for i in T.serial(queries):
                    # A select, not arithmetic: lanes past the limit may hold any bits, NaN included.
                    for j in T.vectorized(KEY_LANES):
                        scores[i, j] = T.Select(
                            _key_visible(window, first + j, start[i], limit[i]), scores[i, j], T.float32(MASKED_SCORE)
                        )
                    block_max: T.let[T.float32] = _fold_max(tirx.BufferLoad(scores, [i, T.ramp(0, 1, KEY_LANES)]))
                    new_max: T.let[T.float32] = T.max(run_max[i], block_max)
                    rescale: T.let[T.float32] = _exp2(run_max[i] - new_max)
                    run_max[i] = new_max
                    for j in T.vectorized(KEY_LANES):
                        scores[i, j] = _exp2(scores[i, j] - new_max)
                        run_sum[i, j] = run_sum[i, j] * rescale + scores[i, j]
                    for c in T.vectorized(v_dim):
                        acc[i, c] = acc[i, c] * rescale
                for i in T.serial(queries):
                    for j in T.serial(T.min(KEY_LANES, limit[i] - first)):
                        for cv in T.unroll(v_dim // lanes):
                            for c in T.vectorized(lanes):
                                acc[i, cv * lanes + c] = acc[i, cv * lanes + c] + scores[i, j] * T.Cast(
                                    "float32", value(kv_head, first, j, cv * lanes + c)
                                )
            for i in T.serial(queries):
                row: T.let[T.int32] = first_row + i // heads
                if row < rows:
                    total[0] = T.float32(0.0)
                    for j in T.serial(KEY_LANES):
                        total[0] = total[0] + run_sum[i, j]
                    seen: T.let[T.bool] = total[0] > T.float32(0.0)
                    inverse: T.let[T.float32] = T.if_then_else(seen, T.float32(1.0) / total[0], T.float32(0.0))
                    for c in T.vectorized(v_dim):
                        output[q_begin + row, head + i % heads, c] = T.Cast(dtype, acc[i, c] * inverse)
                    log_sum: T.let[T.float32] = run_max[i] + T.log2(total[0])
                    lse[q_begin + row, head + i % heads] = T.if_then_else(seen, log_sum, T.float32(EMPTY_ROW_LSE))

    return attend


def _sequence_rows(group_size: int, h_kv: int, qk_dim: int, v_dim: int, dtype: str, window: int | None):
    """A macro: every query row of one sequence against its keys stored transposed, in parallel over
    (KV head, head tile, pair of row tiles)."""
    tiling = Tiling.choose(group_size, qk_dim, v_dim, rows=True)
    heads, row_tile = tiling.head_tile, tiling.row_tile
    head_tiles = group_size // heads
    attend = _tile_attention(tiling, qk_dim, v_dim, dtype, _transposed_key_scores(tiling, qk_dim), window)

    @T.macro
    def sequence_rows(q, output, lse, q_begin, rows, keys, causal, position, key, value, sm_scale):
        # Under the causal mask row tiles t and n-1-t together see about as many keys as any other
        # such pair: an item takes both, so items cost the same and the pool's equal split balances.
        row_tiles: T.let[T.int32] = T.ceildiv(rows, row_tile)
        pairs: T.let[T.int32] = T.ceildiv(row_tiles, 2)
        for item in T.parallel(h_kv * head_tiles * pairs):
            pair: T.let[T.int32] = item % pairs
            tile: T.let[T.int32] = item // pairs
            kv_head: T.let[T.int32] = tile // head_tiles
            head: T.let[T.int32] = kv_head * group_size + tile % head_tiles * heads
            for side in T.serial(2):
                row_tile_index: T.let[T.int32] = T.if_then_else(side == 0, pair, row_tiles - 1 - pair)
                if side == 0 or row_tile_index != pair:
                    first_row: T.let[T.int32] = row_tile_index * row_tile
                    attend(
                        q, output, lse, q_begin, first_row, rows, keys, causal, position,
                        head, kv_head, key, value, sm_scale,
                    )

    return sequence_rows


def _visible_keys(causal, row, kv_len, qo_len):
    """Keys [0, n) that query `row` may attend to, as TVM's causal mask defines them."""
    return T.if_then_else(causal > 0, T.max(T.min(kv_len - qo_len + row + 1, kv_len), 0), kv_len)


def _among_keys(row, keys, rows):
    """The query rows are the last `rows` keys: ragged prefill, decode, a causal paged prefill."""
    return keys - rows + row


def _after_keys(row, keys):
    """The keys are the cache before the query rows: the paged half of a chunked prefill (causal=0)."""
    return keys + row


def _window_start(window: int | None, position):
    """First key a query at `position` sees: HF's sliding window keeps keys p - W < k <= p."""
    return 0 if window is None else T.max(position + 1 - window, 0)


def _key_visible(window: int | None, index, start, limit):
    return index < limit if window is None else tirx.And(index >= start, index < limit)


def _paged_keys(page_begin, page_end, last_page_len, page_size):
    """Tokens of a sequence in the paged cache: full pages plus the filled part of the last."""
    return T.if_then_else(page_begin < page_end, (page_end - page_begin - 1) * page_size + last_page_len, 0)


def _paged_rows(pages, page_values, page_begin, page_size, kv: int):
    """`(kv_head, first, j, c) -> element c of key (kv=0) or value (kv=1) first+j` of a sequence.

    A block of KEY_LANES keys starting at a multiple of KEY_LANES lies in one page, since page_size
    is a multiple of KEY_LANES: one page-table lookup per block. Slots past the sequence's last token
    are still inside that page.
    """
    return lambda kv_head, first, j, c: pages[
        page_values[page_begin + first // page_size], kv, kv_head, first % page_size + j, c
    ]


def _transpose_paged_keys(h_kv: int, head_dim: int, page_size: int):
    """A macro: k_t[kv_head, c, entry * page_size + slot] = key of `slot` in page table entry `entry`."""

    @T.macro
    def transpose(pages, page_values, first_entry, end_entry, k_t):
        for entry in T.parallel(end_entry - first_entry):
            page: T.let[T.int32] = page_values[first_entry + entry]
            for kv_head, c, slot in T.grid(h_kv, head_dim, page_size):
                k_t[kv_head, c, (first_entry + entry) * page_size + slot] = T.Cast(
                    "float32", pages[page, 0, kv_head, slot, c]
                )

    return transpose


ROTARY_MODE_MESSAGE = (
    "the codegen CPU attention kernels do not apply RoPE inline (rotary_mode=1): create the KV cache "
    "with RopeMode NONE or NORMAL and without sliding window support"
)


def ragged_prefill(h_kv: int, h_q: int, d_qk: int, d_v: int, dtype: str, window: int | None = None) -> tirx.PrimFunc:
    """Replaces TVM's `_attention_prefill_ragged_cpu`: attention among the newly appended tokens."""
    sequence_rows = _sequence_rows(h_q // h_kv, h_kv, d_qk, d_v, dtype, window)

    @T.prim_func(s_tir=True)
    def batch_prefill_ragged_kv(
        var_q: T.handle,  # [total_len, h_q, d_qk]
        var_q_indptr: T.handle,  # [batch_size + 1]
        var_k: T.handle,  # [total_len, h_kv, d_qk]
        var_v: T.handle,  # [total_len, h_kv, d_v]
        var_kv_indptr: T.handle,  # [batch_size + 1]
        var_q_rope_position: T.handle,  # [total_q_len]
        var_k_rope_pos_offset: T.handle,  # [b]
        var_output: T.handle,  # [total_len, h_q, d_v]
        var_lse: T.handle,  # [total_len, h_q]
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        batch_size = T.int32()
        qo_len = T.int32()
        kv_len = T.int32()
        q_indptr_elem_offset = T.int32()
        kv_indptr_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()

        q = T.match_buffer(var_q, (qo_len, h_q, d_qk), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_elem_offset)
        k = T.match_buffer(var_k, (kv_len, h_kv, d_qk), dtype)
        v = T.match_buffer(var_v, (kv_len, h_kv, d_v), dtype)
        kv_indptr = T.match_buffer(var_kv_indptr, (batch_size + 1,), "int32", elem_offset=kv_indptr_elem_offset)
        T.match_buffer(var_q_rope_position, (qo_len,), "int32", elem_offset=q_rope_position_elem_offset)
        T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=k_rope_pos_offset_elem_offset)
        output = T.match_buffer(var_output, (qo_len, h_q, d_v), dtype)
        lse = T.match_buffer(var_lse, (qo_len, h_q), "float32")

        assert rotary_mode == 0, ROTARY_MODE_MESSAGE
        # Scoring reads whole blocks of KEY_LANES keys; lanes past the last key are masked.
        k_t = T.alloc_buffer((h_kv, d_qk, kv_len + KEY_LANES), "float32")
        for token_block in T.parallel(T.ceildiv(kv_len, KEY_LANES)):
            for kv_head, c, j in T.grid(h_kv, d_qk, KEY_LANES):
                token: T.let[T.int32] = token_block * KEY_LANES + j
                if token < kv_len:
                    k_t[kv_head, c, token] = T.Cast("float32", k[token, kv_head, c])
        for b in T.serial(batch_size):
            kv_begin: T.let[T.int32] = kv_indptr[b]
            sequence_rows(
                q, output, lse, q_indptr[b], q_indptr[b + 1] - q_indptr[b], kv_indptr[b + 1] - kv_begin, causal,
                _among_keys,
                lambda kv_head, first, j, c: k_t[kv_head, c, kv_begin + first + j],
                lambda kv_head, first, j, c: v[kv_begin + first + j, kv_head, c],
                sm_scale,
            )

    return batch_prefill_ragged_kv


# The two paged kernels take TVM's arguments, in its order (decode has no q_indptr and no causal;
# its rows are the batch's sequences):
#   q [rows, h_q, d], q_indptr [batch + 1], pages [max_num_pages, 2, h_kv, page_size, d],
#   page_indptr [batch + 1], page_values [nnz_pages], length_info [batch] (tokens in the last page),
#   k_rope_pos_offset [batch], q_rope_position [rows], output [rows, h_q, d], lse [rows, h_q].
# These helpers bind them; they run while a kernel is parsed, so each T.match_buffer / T.int32
# lands in that kernel.
def _match_queries(q, q_rope_position, output, lse, rows, h_q: int, d: int, dtype: str):
    """(q, output, lse) of ``rows`` query tokens; the rope positions are bound but unused."""
    T.match_buffer(q_rope_position, (rows,), "int32", elem_offset=T.int32())
    return (
        T.match_buffer(q, (rows, h_q, d), dtype),
        T.match_buffer(output, (rows, h_q, d), dtype),
        T.match_buffer(lse, (rows, h_q), "float32"),
    )


def _match_pages(pages, page_indptr, page_values, length_info, k_rope_pos_offset, batch, h_kv: int, d: int, dtype: str, page_size: int):
    """(pages, page_indptr, page_values, length_info, nnz_pages) for ``batch`` sequences."""
    nnz_pages, max_num_pages = T.int32(), T.int32()
    T.match_buffer(k_rope_pos_offset, (batch,), "int32", elem_offset=T.int32())
    return (
        T.match_buffer(pages, (max_num_pages, 2, h_kv, page_size, d), dtype),
        T.match_buffer(page_indptr, (batch + 1,), "int32", elem_offset=T.int32()),
        T.match_buffer(page_values, (nnz_pages,), "int32", elem_offset=T.int32()),
        T.match_buffer(length_info, (batch,), "int32", elem_offset=T.int32()),
        nnz_pages,
    )


def paged_prefill(h_kv: int, h_q: int, d: int, dtype: str, page_size: int, window: int | None = None) -> tirx.PrimFunc:
    """Replaces TVM's `_attention_prefill_cpu` (its variant without a sliding window; `window` gives
    ours one): new queries against the cache."""
    sequence_rows = _sequence_rows(h_q // h_kv, h_kv, d, d, dtype, window)
    transpose_keys = _transpose_paged_keys(h_kv, d, page_size)

    @T.prim_func(s_tir=True)
    def batch_prefill_paged_kv_cpu(
        var_q: T.handle, var_q_indptr: T.handle, var_pages: T.handle, var_page_indptr: T.handle,
        var_page_values: T.handle, var_length_info: T.handle, var_k_rope_pos_offset: T.handle,
        var_q_rope_position: T.handle, var_output: T.handle, var_lse: T.handle, causal: T.int32,
        rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32,
    ):  # fmt: skip
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        batch_size = T.int32()
        total_len = T.int32()
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=T.int32())
        q, output, lse = _match_queries(var_q, var_q_rope_position, var_output, var_lse, total_len, h_q, d, dtype)
        pages, page_indptr, page_values, length_info, nnz_pages = _match_pages(
            var_pages, var_page_indptr, var_page_values, var_length_info, var_k_rope_pos_offset,
            batch_size, h_kv, d, dtype, page_size,
        )
        assert rotary_mode == 0, ROTARY_MODE_MESSAGE
        k_t = T.alloc_buffer((h_kv, d, nnz_pages * page_size + KEY_LANES), "float32")
        transpose_keys(pages, page_values, page_indptr[0], page_indptr[batch_size], k_t)
        for b in T.serial(batch_size):
            page_begin: T.let[T.int32] = page_indptr[b]
            sequence_rows(
                q, output, lse, q_indptr[b], q_indptr[b + 1] - q_indptr[b],
                _paged_keys(page_begin, page_indptr[b + 1], length_info[b], page_size), causal,
                lambda row, keys, rows: T.if_then_else(
                    causal > 0, _among_keys(row, keys, rows), _after_keys(row, keys)
                ),
                lambda kv_head, first, j, c: k_t[kv_head, c, page_begin * page_size + first + j],
                _paged_rows(pages, page_values, page_begin, page_size, kv=1),
                sm_scale,
            )

    return batch_prefill_paged_kv_cpu


def paged_decode(h_kv: int, h_q: int, d: int, dtype: str, page_size: int, window: int | None = None) -> tirx.PrimFunc:
    """Replaces TVM's `_attention_decode_cpu` (its variant without a sliding window): one new query
    per sequence against the cache, which already holds that token's key and value.

    Each key is used once per query head here, too few times to pay for transposing it: keys are
    scored as rows, in parallel over (sequence, KV head, head tile).
    """
    group_size = h_q // h_kv
    tiling = Tiling.choose(group_size, d, d, rows=False)
    heads = tiling.head_tile
    head_tiles = group_size // heads
    attend = _tile_attention(tiling, d, d, dtype, _row_key_scores(tiling, d), window)

    @T.prim_func(s_tir=True)
    def batch_decode_paged_kv_cpu(
        var_q: T.handle, var_pages: T.handle, var_page_indptr: T.handle, var_page_values: T.handle,
        var_length_info: T.handle, var_k_rope_pos_offset: T.handle, var_q_rope_position: T.handle,
        var_output: T.handle, var_lse: T.handle,
        rotary_mode: T.int32, rope_scale: T.float32, rope_theta: T.float32, sm_scale: T.float32,
    ):  # fmt: skip
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        B = T.int32()
        q, output, lse = _match_queries(var_q, var_q_rope_position, var_output, var_lse, B, h_q, d, dtype)
        pages, page_indptr, page_values, length_info, _ = _match_pages(
            var_pages, var_page_indptr, var_page_values, var_length_info, var_k_rope_pos_offset,
            B, h_kv, d, dtype, page_size,
        )
        assert rotary_mode == 0, ROTARY_MODE_MESSAGE
        for item in T.parallel(B * h_kv * head_tiles):
            b: T.let[T.int32] = item // (h_kv * head_tiles)
            tile: T.let[T.int32] = item % (h_kv * head_tiles)
            kv_head: T.let[T.int32] = tile // head_tiles
            page_begin: T.let[T.int32] = page_indptr[b]
            # The sequence's one query row is its last key and sees every key before it (causal=0).
            attend(
                q, output, lse, b, 0, 1, _paged_keys(page_begin, page_indptr[b + 1], length_info[b], page_size), 0,
                _among_keys,
                kv_head * group_size + tile % head_tiles * heads, kv_head,
                _paged_rows(pages, page_values, page_begin, page_size, kv=0),
                _paged_rows(pages, page_values, page_begin, page_size, kv=1),
                sm_scale,
            )

    return batch_decode_paged_kv_cpu


def _buffer(func: tirx.PrimFunc, index: int) -> tirx.Buffer:
    # TVMScript turns a handle parameter bound by T.match_buffer into a buffer parameter.
    return func.params[index]


def _heads_and_dim(buffer: tirx.Buffer) -> tuple[int, int]:
    """(heads, head_dim) of a [tokens, heads, head_dim] buffer."""
    return int(buffer.shape[1]), int(buffer.shape[2])


def _ragged_from(func: tirx.PrimFunc, window: int | None) -> tirx.PrimFunc:
    q, k, v = _buffer(func, 0), _buffer(func, 2), _buffer(func, 3)
    h_q, d_qk = _heads_and_dim(q)
    return ragged_prefill(int(k.shape[1]), h_q, d_qk, int(v.shape[2]), q.dtype, window)


def _paged_prefill_from(func: tirx.PrimFunc, window: int | None) -> tirx.PrimFunc | None:
    q, pages = _buffer(func, 0), _buffer(func, 2)
    h_q, d = _heads_and_dim(q)
    page_size = int(pages.shape[3])
    return paged_prefill(int(pages.shape[2]), h_q, d, q.dtype, page_size, window) if page_size % KEY_LANES == 0 else None


def _paged_decode_from(func: tirx.PrimFunc, window: int | None) -> tirx.PrimFunc | None:
    q, pages = _buffer(func, 0), _buffer(func, 1)
    h_q, d = _heads_and_dim(q)
    page_size = int(pages.shape[3])
    return paged_decode(int(pages.shape[2]), h_q, d, q.dtype, page_size, window) if page_size % KEY_LANES == 0 else None


# TVM's CPU kernels by global symbol (TIRPagedKVCache names their GlobalVars after it), each with
# the factory that rebuilds it, with the same parameters, from its buffer shapes (None: a layout
# these kernels do not handle, so TVM's stays).
REPLACEMENTS = {
    "batch_prefill_ragged_kv": _ragged_from,
    "batch_prefill_paged_kv_cpu": _paged_prefill_from,
    "batch_decode_paged_kv_cpu": _paged_decode_from,
}


def replace_kv_cache_kernels(window: int | None = None) -> tvm.transform.Pass:
    """Swap TVM's paged KV cache CPU attention kernels in an llvm IRModule for the ones above.

    The GlobalVars stay, so the cache's creation call now hands the VM our kernels. `window`: the
    sliding window of the model's attention, None for none. TVM's kernels know no such window, so
    with one every kernel must be replaced.
    """

    @tvm.transform.module_pass(opt_level=0, name="CodegenCPUAttention")
    def _replace(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for global_var, func in list(mod.functions_items()):
            if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
                continue
            symbol = func.attrs.get("global_symbol")
            if symbol not in REPLACEMENTS:
                continue
            replacement = REPLACEMENTS[symbol](func, window)
            if replacement is not None:
                mod[global_var] = replacement.with_attr("global_symbol", symbol)
            elif window is not None:  # the runtime's page size is fixed: this is a bug, not an input
                raise RuntimeError(
                    f"sliding-window attention needs the CPU attention kernels, which do not handle this"
                    f" KV cache layout ({symbol}: page size not a multiple of {KEY_LANES})"
                )
        return mod

    return _replace
