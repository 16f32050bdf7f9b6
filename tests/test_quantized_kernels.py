"""CPU kernels of the group-quantized linear layer (the generated dequantize_matmul; in decode
factored by codegen/build/cpu/quantized_matmul.py, scheduled by FactoredQuantizedDecode, in prefill
by QuantizedWeightMatmul, both in codegen/build/cpu/rules.py): they match numpy, and they are the
schedules meant: decode reads the codes in place from word vectors, prefill unpacks one panel of
weight rows for all activation rows."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax, te, tirx
from tvm.ir.instrument import pass_instrument
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op
from tvm.target import Target

from codegen.build import pipeline
from codegen.build.compile import BuildOptions
from codegen.build.cpu import int8_dot, prefetch, quantized_matmul
from codegen.build.cpu.rules import GEMM_MR, GEMM_VECTORS, MIN_LANES, TASK_ROWS, CPUShape
from generated.gpt_bigcode.model import GroupQuantization, QuantizedLinear, _dequantize_matmul

TARGET = BuildOptions(target="llvm", num_threads=2).tvm_target()
SEQ_LEN = tirx.Var("seq_len", "int64")
TOLERANCE = 1e-5  # relative to the largest output, float32 against a float64 reference


def _scheme(bits: int, dtype: str = "float32") -> GroupQuantization:
    return GroupQuantization(f"q{bits}f{dtype[-2:]}_1", bits, 32, dtype, False, False)


def _kernel(bits: int, n: int, k: int, rows, dtype: str = "float32") -> tirx.PrimFunc:
    """The model's kernel for x [1, rows, k] times a quantized [n, k] weight (int64 indices, as
    exported); `dtype`: of the activations and the scales (the scheme's compute dtype)."""

    def i64(value):
        return tirx.IntImm("int64", value) if isinstance(value, int) else value

    scheme = _scheme(bits, dtype)
    word_shape, scale_shape = scheme.packed_shapes(n, k)
    x = te.placeholder((i64(1), i64(rows), i64(k)), dtype, name="x")
    words = te.placeholder([i64(d) for d in word_shape], "uint32", name="q_weight")
    scales = te.placeholder([i64(d) for d in scale_shape], dtype, name="q_scale")
    out = _dequantize_matmul(x, words, scales, scheme)
    return te.create_prim_func([x, words, scales, out], index_dtype_override="int64")


def _build(func: tirx.PrimFunc, int8_activations: bool = False):
    """(scheduled PrimFunc, its TIR just after loop vectorisation, runtime module)."""
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with TARGET:
        scheduled = pipeline.build_cpu_kernels(TARGET, int8_activations)(mod)
    vectorised = []

    @pass_instrument
    class AfterVectorize:
        def run_after_pass(self, mod, info):
            if info.name == "tirx.VectorizeLoop":
                vectorised.append(mod["main"])

    with tvm.transform.PassContext(instruments=[AfterVectorize()]):
        library = tvm.compile(scheduled, target=TARGET)
    return scheduled["main"], vectorised[0], library


def _random_quantized(bits: int, n: int, k: int, rng, scale_dtype=np.float32):
    """(packed words, scales, the float64 weight they stand for)."""
    per_word = 32 // bits
    codes = rng.integers(0, 2**bits - 1, size=(n, k), dtype=np.uint32)
    words = np.zeros((n, k // per_word), np.uint32)
    for j in range(per_word):
        words |= codes[:, j::per_word] << np.uint32(j * bits)
    scales = (rng.random((n, k // 32)) * 0.1 + 0.01).astype(scale_dtype)
    weight = (codes.astype(np.float64) - (2 ** (bits - 1) - 1)) * np.repeat(
        scales.astype(np.float64), 32, axis=1
    )
    return words, scales, weight


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def _run(library, x, words, scales, n: int) -> np.ndarray:
    out = tvm.runtime.tensor(np.zeros((*x.shape[:-1], n), x.dtype))
    library["main"](*(tvm.runtime.tensor(a) for a in (x, words, scales)), out)
    return out.numpy()


# ------------------------------------------------------------------------------------ numerics


@pytest.mark.parametrize(
    "bits, n, k",
    [
        (4, TASK_ROWS + 36, 768),  # a full parallel task of weight rows and a partial one
        (8, TASK_ROWS + 36, 768),
        (4, 64, 96),  # 12 words per row: 4-word vectors, K not a multiple of a full vector of words
        (8, 72, 96),  # 24 words per row: 8-word vectors
    ],
)
def test_decode_kernel_matches_numpy(bits, n, k):
    _, _, library = _build(_kernel(bits, n, k, 1))
    rng = np.random.default_rng(bits + n + k)
    words, scales, weight = _random_quantized(bits, n, k, rng)
    x = rng.standard_normal((1, 1, k), dtype=np.float32)
    assert _relative_error(_run(library, x, words, scales, n), x @ weight.T) <= TOLERANCE


@pytest.mark.parametrize("bits", [4, 8])
def test_float16_decode_kernel_matches_numpy(bits):
    """q4f16_1 / q8f16_1: float16 activations and scales, summed in float32, rounded once at the end
    (float16's 2^-11 relative rounding of the largest output bounds the error)."""
    n, k = 96, 768
    scheduled, _, library = _build(_kernel(bits, n, k, 1, "float16"))
    assert f'T.sblock("{quantized_matmul.WORD_DOTS}_update")' in scheduled.script()
    rng = np.random.default_rng(bits)
    words, scales, weight = _random_quantized(bits, n, k, rng, np.float16)
    x = rng.standard_normal((1, 1, k)).astype(np.float16)
    expected = x.astype(np.float64) @ weight.T
    assert _relative_error(_run(library, x, words, scales, n).astype(np.float64), expected) <= 2**-10


@pytest.mark.parametrize(
    "bits, n, k",
    [
        (4, 96, 64),  # the GEMM on unpacked panels
        (8, 96, 96),
        (
            4,
            100,
            64,
        ),  # weight rows not a multiple of the panel width: row dots for every activation row
    ],
)
def test_prefill_kernel_matches_numpy_for_every_row_remainder(bits, n, k):
    _, _, library = _build(_kernel(bits, n, k, SEQ_LEN))
    rng = np.random.default_rng(bits + n + k)
    words, scales, weight = _random_quantized(bits, n, k, rng)
    for rows in range(1, 3 * GEMM_MR + 2):
        x = rng.standard_normal((1, rows, k), dtype=np.float32)
        assert _relative_error(_run(library, x, words, scales, n), x @ weight.T) <= TOLERANCE, rows


@pytest.mark.parametrize("bits", [4, 8])
def test_float16_prefill_kernel_sums_in_float32(bits):
    """q4f16_1 / q8f16_1 prefill: the GEMM multiplies float32 operands (an unpacked panel and the
    activations widened once; the generated kernel summed in float16, 6-8x slower on this CPU) and
    rounds to float16 once, so float16's 2^-11 rounding of the largest output bounds the error."""
    n, k = 96, 768
    scheduled, _, library = _build(_kernel(bits, n, k, SEQ_LEN, "float16"))
    updates = []
    tvm_ffi.structural_walk(
        scheduled.body,
        [(tvm.s_tir.SBlock, lambda b: updates.append(b) if b.name_hint == "matmul_update" else None)],
    )
    [update] = updates
    assert {str(region.source.dtype) for region in update.reads} == {"float32"}
    rng = np.random.default_rng(bits)
    words, scales, weight = _random_quantized(bits, n, k, rng, np.float16)
    for rows in (1, 2 * GEMM_MR + 1):
        x = rng.standard_normal((1, rows, k)).astype(np.float16)
        expected = x.astype(np.float64) @ weight.T
        actual = _run(library, x, words, scales, n).astype(np.float64)
        assert _relative_error(actual, expected) <= 2**-10, rows


# ------------------------------------------------------------------------ what the schedule is


# Fields through which _walk reaches a TIR node's children (TVM 0.27 has no Python TIR visitor).
_CHILD_FIELDS = (
    "seq",
    "body",
    "block",
    "init",
    "then_case",
    "else_case",
    "value",
    "a",
    "b",
    "args",
    "indices",
    "condition",
    "true_value",
    "false_value",
)


def _walk(node):
    """node and every statement and expression under it."""
    yield node
    for field in _CHILD_FIELDS:
        child = getattr(node, field, None)
        for grandchild in child if isinstance(child, tvm_ffi.Array) else [child]:
            if isinstance(grandchild, tvm_ffi.Object):
                yield from _walk(grandchild)


def _allocations(func: tirx.PrimFunc) -> list[tirx.Buffer]:
    """Buffers a kernel allocates: its blocks' (scheduled TIR) or, once lowered, the compacted ones."""
    nodes = list(_walk(func.body))
    blocks = [
        buffer
        for node in nodes
        if isinstance(node, tvm.s_tir.SBlock)
        for buffer in node.alloc_buffers
    ]
    return blocks + [node.buffer for node in nodes if isinstance(node, tirx.AllocBuffer)]


def _elements(buffer: tirx.Buffer) -> int:
    return int(np.prod([int(d) for d in buffer.shape]))


def _loads(func: tirx.PrimFunc, name: str) -> list[tirx.PrimExpr]:
    """Index of every load from the (flattened) buffer named `name`, prefetched addresses aside."""
    prefetched = _prefetched(func, name)
    loads = [node for node in _walk(func.body) if isinstance(node, tvm.ir.TensorLoad)]
    return [
        node.indices[-1]
        for node in loads
        if node.source.name.startswith(name) and not any(node.same_as(p) for p in prefetched)
    ]


def _prefetched(func: tirx.PrimFunc, name: str) -> list[tvm.ir.TensorLoad]:
    """The element of buffer `name` whose address each prefetch instruction names."""
    addresses = [call.args[0].args[0] for call in _prefetch_calls(func)]
    return [load for load in addresses if load.source.name.startswith(name)]


def _prefetch_calls(func: tirx.PrimFunc) -> list[tvm.ir.Call]:
    return [n for n in _walk(func.body) if isinstance(n, tvm.ir.Call) and n.op.name == "tirx.prefetch"]


def _stores(func: tirx.PrimFunc, name: str) -> list[tirx.PrimExpr]:
    stores = [node for node in _walk(func.body) if isinstance(node, tirx.BufferStore)]
    return [node.indices[-1] for node in stores if node.buffer.name.startswith(name)]


def _loop_kinds(func: tirx.PrimFunc) -> set[tirx.ForKind]:
    return {node.kind for node in _walk(func.body) if isinstance(node, tirx.For)}


def _is_contiguous_vector(index: tirx.PrimExpr) -> bool:
    return isinstance(index, tirx.Ramp) and int(index.stride) == 1 and int(index.lanes) >= MIN_LANES


@pytest.mark.parametrize("bits", [4, 8])
def test_decode_sums_codes_per_word_from_contiguous_word_vectors(bits):
    """Decode is the factored kernel: no [N, K] weight is written, each vector of codes comes from one
    load of consecutive words, and the codes of a vector of words sum into one vector of word dots
    (a register, not a buffer)."""
    n, k = 100, 768
    scheduled, vectorised, _ = _build(_kernel(bits, n, k, 1))
    assert "dequantize" not in scheduled.script()
    assert all(_elements(b) < n * k for b in _allocations(vectorised))
    word_loads = _loads(vectorised, "q_weight")
    assert word_loads and all(_is_contiguous_vector(index) for index in word_loads), word_loads
    [word_dots] = [b for b in _allocations(vectorised) if b.name == quantized_matmul.WORD_DOTS]
    assert _elements(word_dots) == CPUShape.of(TARGET).lanes
    dot_stores = _stores(vectorised, quantized_matmul.WORD_DOTS)
    assert dot_stores and all(_is_contiguous_vector(index) for index in dot_stores), dot_stores
    assert {tirx.ForKind.PARALLEL, tirx.ForKind.UNROLLED} <= _loop_kinds(vectorised)


@pytest.mark.parametrize("bits", [4, 8])
def test_decode_prefetches_the_words_it_reads_rows_ahead(bits):
    """Each step along a row prefetches the 64-byte line of codes it reads, ROWS_AHEAD rows on
    (clamped to the last row), and nothing else: one line per step of `lanes` words."""
    n, k = 100, 768
    scheduled, _, _ = _build(_kernel(bits, n, k, 1))
    [address] = _prefetched(scheduled, "q_weight")
    row, _word = address.indices
    assert isinstance(row, tirx.Min) and int(row.b) == n - 1
    assert f"+ T.int64({prefetch.ROWS_AHEAD})" in str(row.a)
    assert len(_prefetched(scheduled, "")) == 1


@pytest.mark.parametrize("int8_activations", [False, True])
@pytest.mark.parametrize(("cpu", "locality"), [("znver4", 0), ("icelake-server", 3), (None, 3)])
def test_decode_prefetch_hint_follows_the_cpu(cpu, locality, int8_activations):
    """Non-temporal prefetches on AMD Zen only, in both decode kernels: on an Intel Xeon they made
    decode 1.6-2.5x slower (build/cpu/prefetch.py)."""
    target = Target({"kind": "llvm", **({"mcpu": cpu} if cpu else {}), "num-cores": 2})
    mod = tvm.IRModule({"main": _kernel(4, 100, 768, 1).with_attr("global_symbol", "main")})
    with target:
        scheduled = pipeline.build_cpu_kernels(target, int8_activations)(mod)["main"]
    calls = _prefetch_calls(scheduled)
    assert calls and {int(call.args[2]) for call in calls} == {locality}


def test_prefill_unpacks_one_panel_at_a_time():
    """Prefill unpacks a panel of weight rows (k-major, vector stores) inside the parallel loop over
    panels, and the GEMM reads it for every activation row."""
    n, k = 96, 64
    scheduled, vectorised, _ = _build(_kernel(4, n, k, SEQ_LEN))
    [panel] = [b for b in _allocations(vectorised) if b.name == "dequantize"]
    assert _elements(panel) == k * GEMM_VECTORS * CPUShape.of(TARGET).lanes < n * k
    assert tirx.ForKind.PARALLEL in _loop_kinds(vectorised)
    stores = _stores(vectorised, "dequantize")
    assert stores and all(_is_contiguous_vector(index) for index in stores)


# ------------------------------------------------------------ int8 activations (build/cpu/int8_dot.py)

needs_vnni = pytest.mark.skipif(
    not int8_dot.target_supports(TARGET), reason="the int8 decode kernel needs AVX512-VNNI, which this CPU lacks"
)


def _int8_activation_reference(x: np.ndarray, words: np.ndarray, scales: np.ndarray, bits: int) -> np.ndarray:
    """numpy model of the int8 kernel's arithmetic, in float64 after the rounding it defines: the row
    quantized per 32 like llama.cpp's q8_0 (d = max|x| / 127, round half to even), integer dots."""
    groups = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(groups).max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        inverse = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    codes_x = np.round(groups * inverse).astype(np.int64).reshape(-1)
    step = (amax[:, 0] / np.float32(127)).astype(np.float64)
    per_word = 32 // bits
    shifts = np.arange(per_word, dtype=np.uint32) * np.uint32(bits)
    codes = ((words[:, :, None] >> shifts) & np.uint32(2**bits - 1)).reshape(len(words), -1).astype(np.int64)
    dots = ((codes - (2 ** (bits - 1) - 1)) * codes_x).reshape(len(words), -1, 32).sum(axis=-1)
    return (dots * scales.astype(np.float64) * step).sum(axis=-1)


@needs_vnni
@pytest.mark.parametrize("rows", [1, 2 * int8_dot.GEMM_MR + 3], ids=["decode", "prefill"])
@pytest.mark.parametrize("bits, dtype", [(4, "float32"), (8, "float32"), (4, "float16"), (8, "float16")])
def test_int8_kernel_matches_its_numpy_model(bits, dtype, rows):
    """Activation rows in whole tiles and a remainder, a group of zeros (d = 0), float16 operands
    and output: equal to the numpy model up to float32 sums (float16's rounding of the output),
    and within the activations' rounding of the exact float product."""
    n, k = 7 * int8_dot.LANES, 512
    scheduled, _, library = _build(_kernel(bits, n, k, 1 if rows == 1 else SEQ_LEN, dtype), int8_activations=True)
    assert "llvm.x86.avx512.vpdpbusd.512" in scheduled.script()
    rng = np.random.default_rng(bits + rows)
    words, scales, weight = _random_quantized(bits, n, k, rng, np.dtype(dtype).type)
    x = rng.standard_normal((1, rows, k)).astype(dtype)
    x[..., 64:96] = 0
    out = _run(library, x, words, scales, n).astype(np.float64)[0]
    expected = np.stack([_int8_activation_reference(x[0, i], words, scales, bits) for i in range(rows)])
    tolerance = TOLERANCE if dtype == "float32" else 2**-10
    assert _relative_error(out, expected) <= tolerance
    assert _relative_error(out, (x.astype(np.float64) @ weight.T)[0]) <= 0.02


@needs_vnni
@pytest.mark.parametrize("rows", [1, SEQ_LEN], ids=["decode", "prefill"])
def test_int8_activations_leave_other_shapes_to_the_float_kernels(rows):
    """int8 activations replace only kernels of whole vectors: weight rows of 16-word vectors and
    16-row tasks. 4-bit K = 96 (12 words per row) and 72 weight rows keep the float kernels."""
    for n, k in ((64, 96), (72, 256)):
        scheduled, _, _ = _build(_kernel(4, n, k, rows), int8_activations=True)
        assert "vpdpbusd" not in scheduled.script() and f'T.sblock("{quantized_matmul.MATMUL}' in scheduled.script()


# ---------------------------------------------------------------------- inside a Relax module


class _LinearGelu(nn.Module):
    def __init__(self, quantized: bool, k: int, n: int):
        self.proj = (
            QuantizedLinear(k, n, True, _scheme(4)) if quantized else nn.Linear(k, n, bias=True)
        )

    def forward(self, x):
        return op.gelu(self.proj(x), approximate="tanh")


def _lowered_kernels(module: nn.Module, rows) -> dict[str, tirx.PrimFunc]:
    mod, _ = module.export_tvm({"forward": {"x": nn.spec.Tensor([1, rows, 64], "float32")}})
    with TARGET:
        lowered = pipeline.relax_pipeline(TARGET)(mod)
    return {
        gv.name_hint: f
        for gv, f in lowered.functions_items()
        if isinstance(f, tirx.PrimFunc) and "matmul" in gv.name_hint
    }


@pytest.mark.parametrize("rows", [1, "seq_len"])
def test_bias_and_activation_fuse_as_in_the_float_kernel(rows):
    float_kernels = _lowered_kernels(_LinearGelu(False, 64, 96), rows)
    quantized = _lowered_kernels(_LinearGelu(True, 64, 96), rows)
    assert sorted(quantized) == sorted(
        name.replace("NT_matmul", "dequantize_matmul") for name in float_kernels
    )
    [func] = quantized.values()
    assert func.attrs.get("tirx.is_scheduled") and "T.parallel(" in func.script()
    # Decode inlines the unpacking; prefill unpacks a panel of weight rows at a time.
    panels = [_elements(b) for b in _allocations(func) if b.name == "dequantize"]
    assert panels == ([] if rows == 1 else [64 * GEMM_VECTORS * CPUShape.of(TARGET).lanes])


@pytest.mark.parametrize("rows", [1, 7])
def test_fused_kernel_in_a_module_matches_numpy(rows):
    module = _LinearGelu(True, 64, 96)
    mod, _ = module.export_tvm(
        {"forward": {"x": nn.spec.Tensor([1, "seq_len" if rows > 1 else 1, 64], "float32")}}
    )
    executable = tvm.compile(mod, target=TARGET, relax_pipeline=pipeline.relax_pipeline(TARGET))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    rng = np.random.default_rng(rows)
    words, scales, weight = _random_quantized(4, 96, 64, rng)
    bias = rng.standard_normal(96, dtype=np.float32)
    x = rng.standard_normal((1, rows, 64), dtype=np.float32)
    out = vm["forward"](*(tvm.runtime.tensor(a) for a in (x, words, scales, bias))).numpy()
    y = x @ weight.T + bias
    expected = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y**3)))
    assert _relative_error(out, expected) <= TOLERANCE


@needs_vnni
@pytest.mark.parametrize("rows", [1, 7])
def test_int8_kernel_in_a_module_matches_numpy(rows):
    """Through the whole pipeline of a scheme with cpu_activations: int8, bias and activation fused."""
    module = _LinearGelu(True, 128, 96)
    mod, _ = module.export_tvm({"forward": {"x": nn.spec.Tensor([1, 1 if rows == 1 else "seq_len", 128], "float32")}})
    relax_pipeline = pipeline.relax_pipeline(TARGET, int8_activations=True)
    executable = tvm.compile(mod, target=TARGET, relax_pipeline=relax_pipeline)
    assert "vpdpbusd" in executable.mod.imports[0].inspect_source("asm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    rng = np.random.default_rng(5)
    words, scales, _ = _random_quantized(4, 96, 128, rng)
    bias = rng.standard_normal(96, dtype=np.float32)
    x = rng.standard_normal((1, rows, 128), dtype=np.float32)
    out = vm["forward"](*(tvm.runtime.tensor(a) for a in (x, words, scales, bias))).numpy()
    y = np.stack([_int8_activation_reference(x[0, i], words, scales, 4) for i in range(rows)]) + bias
    expected = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y**3)))
    assert _relative_error(out[0], expected) <= TOLERANCE


@needs_vnni
@pytest.mark.parametrize("rows", [1, "seq_len"])
def test_int8_kernel_epilogue_is_one_vector_loop(rows):
    """Decode appends the bias and activation to the int8 kernel; prefill leaves them a kernel of
    their own (TVM cannot inline blocks after one whose written rows are dynamic), and
    rules.Elementwise makes that one parallel, vectorised loop with no buffer per op."""
    module = _LinearGelu(True, 128, 96)
    mod, _ = module.export_tvm({"forward": {"x": nn.spec.Tensor([1, rows, 128], "float32")}})
    with TARGET:
        lowered = pipeline.relax_pipeline(TARGET, int8_activations=True)(mod)
    kernels = {gv.name_hint: f for gv, f in lowered.functions_items() if isinstance(f, tirx.PrimFunc)}
    [epilogue_name] = [name for name in kernels if "gelu" in name]
    epilogue = kernels[epilogue_name]
    assert epilogue.attrs.get("tirx.is_scheduled"), epilogue_name
    script = epilogue.script()
    assert "T.vectorized(" in script
    if rows == 1:
        assert int8_dot.BLOCK in script  # fused into the decode kernel
    else:
        assert "matmul" not in epilogue_name and "T.parallel(" in script
        assert _allocations(epilogue) == []  # every op inlined into the one loop nest


def test_int8_activations_need_vnni_in_the_target():
    """A target CPU without VNNI (Skylake-X has AVX-512 but not VNNI) keeps the float kernels."""
    skylake = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    assert not int8_dot.target_supports(skylake)
    mod = tvm.IRModule({"main": _kernel(4, 64, 256, 1).with_attr("global_symbol", "main")})
    with skylake:
        scheduled = pipeline.build_cpu_kernels(skylake, int8_activations=True)(mod)
    assert "vpdpbusd" not in scheduled["main"].script()
