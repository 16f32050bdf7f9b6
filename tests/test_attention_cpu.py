"""The CPU attention kernels that replace TVM's paged KV cache ones match NumPy and TVM's kernels."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tvm
from tvm.relax.frontend.nn.llm._decode_kernels import _attention_decode_cpu
from tvm.relax.frontend.nn.llm._prefill_kernels import _attention_prefill_cpu, _attention_prefill_ragged_cpu

from codegen.build import pipeline
from codegen.build.cpu import attention as attention_cpu
from codegen.build.compile import BuildOptions, export
from codegen.models import load_model

PAGE_SIZE = 16
NUM_PAGES = 48
# (h_kv, h_q, head_dim): MHA, MQA (two head tiles of 6), GQA in groups of 2, and GQA in groups of 3
# with a head_dim that is no multiple of 16.
LAYOUTS = {"mha": (4, 4, 64), "mqa": (1, 12, 64), "gqa2": (2, 4, 64), "gqa3_d40": (2, 6, 40)}
# (query rows per sequence, causal): one long sequence, and several ragged ones.
RAGGED_BATCHES = [([128], 1), ([5, 37, 16], 1), ([7, 20], 0)]
# (cached tokens per sequence, new query rows per sequence, causal); one sequence has no cache yet.
PAGED_BATCHES = [([150], [128], 1), ([40, 0, 33], [5, 3, 1], 0), ([47, 16], [7, 16], 1)]
# Cached tokens per sequence, the new one included: up to ten pages, and a batch of four.
DECODE_CONTEXTS = [[150], [1, 17, 64, 33]]
# rotary_mode (no RoPE in the kernel), rope_scale, rope_theta
NO_ROPE = (0, 1.0, 10000.0)


def _ours_ragged(h_kv, h_q, d, dtype, window=None):
    return attention_cpu.ragged_prefill(h_kv, h_q, d, d, dtype, window)


def _tvms_ragged(h_kv, h_q, d, dtype):
    return _attention_prefill_ragged_cpu(h_kv, h_q, d, d, dtype, {})


def _ours_paged_prefill(h_kv, h_q, d, dtype, window=None):
    return attention_cpu.paged_prefill(h_kv, h_q, d, dtype, PAGE_SIZE, window)


def _tvms_paged_prefill(h_kv, h_q, d, dtype):
    return _attention_prefill_cpu(h_kv, h_q, d, dtype, False, {}, PAGE_SIZE)


def _ours_decode(h_kv, h_q, d, dtype, window=None):
    return attention_cpu.paged_decode(h_kv, h_q, d, dtype, PAGE_SIZE, window)


def _tvms_decode(h_kv, h_q, d, dtype):
    return _attention_decode_cpu(h_kv, h_q, d, dtype, False, {}, PAGE_SIZE)


@pytest.fixture(scope="module")
def build():
    """Compile factory(h_kv, h_q, d, dtype) for this CPU once per module; returns its function."""
    target = BuildOptions(target="llvm").tvm_target()

    @functools.cache
    def _build(factory, h_kv, h_q, d, dtype="float32"):
        func = factory(h_kv, h_q, d, dtype)
        with target:
            return tvm.compile(func, target=target)[func.attrs["global_symbol"]]

    return _build


def _tensors(*arrays):
    return [tvm.runtime.tensor(np.asarray(array)) for array in arrays]


def _indptr(lengths) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype("int32")


def _outputs(q):
    """Zeroed output [rows, h_q, d] in q's dtype and lse [rows, h_q] in float32."""
    return _tensors(np.zeros(q.shape, q.dtype), np.zeros(q.shape[:2], "float32"))


def _results(output, lse):
    return output.numpy().astype(np.float64), lse.numpy()


def _run_ragged(fn, q, k, v, lengths, causal):
    indptr = _indptr(lengths)
    output, lse = _outputs(q)
    positions = (np.zeros(len(q), "int32"), np.zeros(len(lengths), "int32"))
    fn(*_tensors(q, indptr, k, v, indptr, *positions), output, lse, causal, *NO_ROPE, q.shape[2] ** -0.5)
    return _results(output, lse)


def _run_paged_prefill(fn, q, cache, q_lengths, causal):
    output, lse = _outputs(q)
    positions = (np.zeros(len(q_lengths), "int32"), np.zeros(len(q), "int32"))
    fn(*_tensors(q, _indptr(q_lengths)), *cache.args(), *_tensors(*positions), output, lse, causal, *NO_ROPE, q.shape[2] ** -0.5)
    return _results(output, lse)


def _run_decode(fn, q, cache):
    output, lse = _outputs(q)
    positions = (np.zeros(len(q), "int32"), np.zeros(len(q), "int32"))
    fn(*_tensors(q), *cache.args(), *_tensors(*positions), output, lse, *NO_ROPE, q.shape[2] ** -0.5)
    return _results(output, lse)


class PagedCache:
    """Random pages, and sequences scattered over them in shuffled order."""

    def __init__(self, rng, h_kv: int, d: int, lengths: list[int], dtype="float32"):
        self.pages = rng.standard_normal((NUM_PAGES, 2, h_kv, PAGE_SIZE, d)).astype(dtype)
        counts = [-(-length // PAGE_SIZE) for length in lengths]
        self.page_indptr = _indptr(counts)
        self.page_values = rng.permutation(NUM_PAGES)[: sum(counts)].astype("int32")
        self.last_page_len = np.array([length - PAGE_SIZE * (count - 1) if count else 0 for length, count in zip(lengths, counts)], "int32")
        self.lengths = lengths

    def args(self):
        return _tensors(self.pages, self.page_indptr, self.page_values, self.last_page_len)

    def tokens(self, kv: int) -> list[np.ndarray]:
        """Per sequence, its [length, h_kv, d] keys (kv=0) or values (kv=1)."""
        _, _, h_kv, _, d = self.pages.shape
        sequences = []
        for b, length in enumerate(self.lengths):
            pages = self.page_values[self.page_indptr[b] : self.page_indptr[b + 1]]
            slots = [self.pages[page, kv].transpose(1, 0, 2) for page in pages]
            sequences.append(np.concatenate(slots)[:length] if slots else np.zeros((0, h_kv, d)))
        return sequences


def _reference(q, q_indptr, keys, values, causal: int, window: int | None = None, keys_precede_queries: bool = False):
    """float64 attention of each sequence's query rows: output, and lse as TVM defines it (log2 of the
    softmax denominator of the log2(e)-scaled scores). With a window, a query at position p sees keys
    p - window < k <= p, where p is its index among the keys, or past them when `keys_precede_queries`
    (the cache before a prefill chunk)."""
    h_q, h_kv, sm_scale = q.shape[1], keys[0].shape[1], q.shape[2] ** -0.5
    out = np.zeros(q.shape, np.float64)
    lse = np.full(q.shape[:2], attention_cpu.EMPTY_ROW_LSE)
    for b, (k, v) in enumerate(zip(keys, values)):
        rows = q_indptr[b + 1] - q_indptr[b]
        for r, row in enumerate(range(q_indptr[b], q_indptr[b + 1])):
            visible = min(len(k), max(0, len(k) - rows + r + 1)) if causal else len(k)
            position = len(k) + r if keys_precede_queries else len(k) - rows + r
            first = 0 if window is None else max(0, position + 1 - window)
            for h in range(h_q if visible > first else 0):
                kv_head = h // (h_q // h_kv)
                scores = k[first:visible, kv_head].astype(np.float64) @ q[row, h] * sm_scale * np.log2(np.e)
                weights = np.exp2(scores - scores.max())
                out[row, h] = weights @ v[first:visible, kv_head] / weights.sum()
                lse[row, h] = scores.max() + np.log2(weights.sum())
    return out, lse


def _assert_close(actual, expected, **tolerance):
    for got, want in zip(actual, expected):
        np.testing.assert_allclose(got, want, **(tolerance or dict(rtol=1e-5, atol=1e-5)))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("lengths, causal", RAGGED_BATCHES)
def test_ragged_prefill(build, layout, lengths, causal):
    h_kv, h_q, d = LAYOUTS[layout]
    rng = np.random.default_rng(0)
    q = rng.standard_normal((sum(lengths), h_q, d), dtype="float32")
    k, v = (rng.standard_normal((sum(lengths), h_kv, d), dtype="float32") for _ in range(2))
    ours = _run_ragged(build(_ours_ragged, *LAYOUTS[layout]), q, k, v, lengths, causal)
    indptr = _indptr(lengths)
    split = [slice(begin, end) for begin, end in zip(indptr, indptr[1:])]
    _assert_close(ours, _reference(q, indptr, [k[s] for s in split], [v[s] for s in split], causal))
    _assert_close(ours, _run_ragged(build(_tvms_ragged, *LAYOUTS[layout]), q, k, v, lengths, causal))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kv_lengths, q_lengths, causal", PAGED_BATCHES)
def test_paged_prefill(build, layout, kv_lengths, q_lengths, causal):
    h_kv, h_q, d = LAYOUTS[layout]
    rng = np.random.default_rng(1)
    cache = PagedCache(rng, h_kv, d, kv_lengths)
    q = rng.standard_normal((sum(q_lengths), h_q, d), dtype="float32")
    ours = _run_paged_prefill(build(_ours_paged_prefill, *LAYOUTS[layout]), q, cache, q_lengths, causal)
    _assert_close(ours, _reference(q, _indptr(q_lengths), cache.tokens(0), cache.tokens(1), causal))
    _assert_close(ours, _run_paged_prefill(build(_tvms_paged_prefill, *LAYOUTS[layout]), q, cache, q_lengths, causal))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("lengths", DECODE_CONTEXTS)
def test_paged_decode(build, layout, lengths):
    h_kv, h_q, d = LAYOUTS[layout]
    rng = np.random.default_rng(2)
    cache = PagedCache(rng, h_kv, d, lengths)
    q = rng.standard_normal((len(lengths), h_q, d), dtype="float32")
    ours = _run_decode(build(_ours_decode, *LAYOUTS[layout]), q, cache)
    _assert_close(ours, _reference(q, np.arange(len(lengths) + 1), cache.tokens(0), cache.tokens(1), 0))
    _assert_close(ours, _run_decode(build(_tvms_decode, *LAYOUTS[layout]), q, cache))


@pytest.mark.parametrize("window", [11, 16])
def test_a_sliding_window_limits_each_query_to_its_last_keys(build, window):
    """Window starts inside a 16-key block and on its edge; queries among the keys (ragged, causal
    paged prefill, decode) and queries after them (the cache before a prefill chunk)."""
    h_kv, h_q, d = LAYOUTS["gqa3_d40"]
    rng = np.random.default_rng(4)
    lengths = [40, 7]
    q = rng.standard_normal((sum(lengths), h_q, d), dtype="float32")
    k, v = (rng.standard_normal((sum(lengths), h_kv, d), dtype="float32") for _ in range(2))
    ragged = build(functools.partial(_ours_ragged, window=window), h_kv, h_q, d)
    indptr = _indptr(lengths)
    split = [slice(begin, end) for begin, end in zip(indptr, indptr[1:])]
    expected = _reference(q, indptr, [k[s] for s in split], [v[s] for s in split], 1, window)
    _assert_close(_run_ragged(ragged, q, k, v, lengths, 1), expected)

    paged = build(functools.partial(_ours_paged_prefill, window=window), h_kv, h_q, d)
    cache = PagedCache(rng, h_kv, d, [70, 0, 33])
    q_lengths = [9, 3, 5]
    q = rng.standard_normal((sum(q_lengths), h_q, d), dtype="float32")
    for causal, keys_precede_queries in ((0, True), (1, False)):
        expected = _reference(q, _indptr(q_lengths), cache.tokens(0), cache.tokens(1), causal, window, keys_precede_queries)
        _assert_close(_run_paged_prefill(paged, q, cache, q_lengths, causal), expected)

    decode = build(functools.partial(_ours_decode, window=window), h_kv, h_q, d)
    q = rng.standard_normal((3, h_q, d), dtype="float32")
    expected = _reference(q, np.arange(4), cache.tokens(0), cache.tokens(1), 0, window)
    _assert_close(_run_decode(decode, q, cache), expected)


def test_float16_is_computed_in_float32_like_tvms(build):
    h_kv, h_q, d = LAYOUTS["mqa"]
    rng = np.random.default_rng(3)
    lengths = [37, 16]
    q, k, v = (rng.standard_normal((sum(lengths), heads, d)).astype("float16") for heads in (h_q, h_kv, h_kv))
    ours = _run_ragged(build(_ours_ragged, h_kv, h_q, d, "float16"), q, k, v, lengths, 1)
    # One float16 rounding of the output apart.
    _assert_close(ours, _run_ragged(build(_tvms_ragged, h_kv, h_q, d, "float16"), q, k, v, lengths, 1), atol=2e-3)
    cache = PagedCache(rng, h_kv, d, [40, 5], "float16")
    q = rng.standard_normal((2, h_q, d)).astype("float16")
    ours = _run_decode(build(_ours_decode, h_kv, h_q, d, "float16"), q, cache)
    _assert_close(ours, _run_decode(build(_tvms_decode, h_kv, h_q, d, "float16"), q, cache), atol=2e-3)


def test_inline_rope_is_refused(build):
    """rotary_mode=1 (RoPE inside attention) is not implemented: the kernel says so rather than
    attend to unrotated keys."""
    h_kv, h_q, d = LAYOUTS["mqa"]
    q, kv = np.zeros((4, h_q, d), "float32"), np.zeros((4, h_kv, d), "float32")
    output, lse = _outputs(q)
    indptr, positions = _indptr([4]), (np.zeros(4, "int32"), np.zeros(1, "int32"))
    with pytest.raises(RuntimeError, match="RoPE inline"):
        build(_ours_ragged, h_kv, h_q, d)(*_tensors(q, indptr, kv, kv, indptr, *positions), output, lse, 1, 1, 1.0, 1e4, 0.125)


def _kv_cache_kernels(mod: tvm.IRModule) -> dict[str, tuple[tvm.ir.GlobalVar, tvm.tirx.PrimFunc]]:
    return {
        func.attrs["global_symbol"]: (global_var, func)
        for global_var, func in mod.functions_items()
        if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and func.attrs.get("global_symbol") in attention_cpu.REPLACEMENTS
    }


def test_pass_swaps_the_kernels_of_an_exported_model():
    """Same GlobalVars and symbols, our scheduled kernels behind them, and dlight leaves them be."""
    model = load_model("gpt_bigcode")
    options = BuildOptions(target="llvm", num_threads=2)
    config = model.config(hf_config=dict(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=64))
    exported, _ = export(model, config, options)
    before = _kv_cache_kernels(exported)
    assert set(before) == set(attention_cpu.REPLACEMENTS)
    with options.tvm_target():
        replaced = attention_cpu.replace_kv_cache_kernels()(exported)
        scheduled = pipeline.schedule_cpu_kernels()(replaced)
    for symbol, (global_var, func) in _kv_cache_kernels(replaced).items():
        original_var, original = before[symbol]
        assert global_var.same_as(original_var), symbol
        assert func.attrs["tirx.is_scheduled"], symbol
        assert "T.parallel(" in func.script() and "T.parallel(" not in original.script(), symbol
        tvm.ir.assert_structural_equal(scheduled[global_var], func)


def test_pages_that_are_not_whole_key_blocks_keep_tvms_kernel():
    original = _attention_decode_cpu(1, 4, 64, "float32", False, {}, page_size=8)
    mod = attention_cpu.replace_kv_cache_kernels()(tvm.IRModule({"batch_decode_paged_kv_cpu": original}))
    tvm.ir.assert_structural_equal(mod["batch_decode_paged_kv_cpu"], original)
    # TVM's kernel knows no window: keeping it would attend to every key.
    with pytest.raises(RuntimeError, match="sliding-window attention needs the CPU attention kernels"):
        attention_cpu.replace_kv_cache_kernels(window=11)(tvm.IRModule({"batch_decode_paged_kv_cpu": original}))
