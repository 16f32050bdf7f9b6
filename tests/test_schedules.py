"""The CPU pipeline schedules the kernels that dominate, and the scheduled model still matches transformers."""

from __future__ import annotations

import pytest
import tvm
from tvm import s_tir, tirx
from tvm.target import Target

from codegen.build import pipeline
from codegen.build.compile import BuildOptions, export
from codegen.models import load_model
from codegen.build.cpu.rules import CPUShape
from tests.support import FLOAT32_TOLERANCE, hf_logits, max_abs_diff, random_hf_model, save_hf_model

TINY = dict(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=64)
# K of 128 and 256 split into whole row dot products (decode's kernel); a vocabulary
# of 100 leaves a partial task of weight rows.
WIDE = dict(vocab_size=100, n_embd=128, n_inner=256, n_layer=2, n_head=4, n_positions=64)


def _loop_kinds(func: tirx.PrimFunc) -> set[str]:
    """The kinds of loop a PrimFunc's TVMScript shows (T.parallel, T.vectorized, ...)."""
    script = func.script()
    return {kind for kind in ("parallel", "vectorized", "unroll") if f"T.{kind}(" in script}


@pytest.fixture(scope="module")
def lowered_tiny():
    """The tiny GPTBigCode's IRModule after the CPU pipeline (Relax lowered, TIR scheduled)."""
    model = load_model("gpt_bigcode")
    options = BuildOptions(target="llvm", num_threads=2)
    ir_module, _ = export(model, model.config(hf_config=TINY), options)
    target = options.tvm_target()
    with target:
        return pipeline.relax_pipeline(target)(ir_module)


def _prim_funcs(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def test_every_weight_matmul_is_parallel_and_vectorised(lowered_tiny):
    matmuls = {name: f for name, f in _prim_funcs(lowered_tiny).items() if "NT_matmul" in name}
    # prefill, decode, and the batch variants each have their projections and LM head.
    assert len(matmuls) >= 10
    for name, func in matmuls.items():
        kinds = _loop_kinds(func)
        assert {"parallel", "vectorized"} <= kinds, (name, kinds)


def test_linear_weights_are_not_transposed_at_run_time(lowered_tiny):
    names = _prim_funcs(lowered_tiny)
    assert not [name for name in names if "transpose" in name and "kv" not in name]


def test_layer_norm_is_scheduled(lowered_tiny):
    norms = {name: f for name, f in _prim_funcs(lowered_tiny).items() if "layer_norm" in name}
    assert norms
    for name, func in norms.items():
        assert func.attrs.get("tirx.is_scheduled"), name


def test_single_row_norms_run_on_one_thread(lowered_tiny):
    """decode's [1, 1, hidden] norms: parallelising them would split the row's outputs, each thread
    recomputing (and racing on) the shared mean and variance."""
    single_row = []
    norms = {name: f for name, f in _prim_funcs(lowered_tiny).items() if "layer_norm" in name}
    for name, func in norms.items():
        shape = list(func.params[0].shape)  # empty for a handle bound to a dynamic-shape buffer
        if len(shape) > 1 and all(isinstance(d, tirx.IntImm) and int(d) == 1 for d in shape[:-1]):
            single_row.append(name)
            assert "T.parallel(" not in func.script() and "T.vectorized(" in func.script(), name
    assert single_row


def test_norms_sum_rows_in_vector_partial_sums(lowered_tiny):
    """Prefill's norms (rows in parallel) and decode's single-row ones sum each row in vectors of
    partial sums (rfactor blocks), not one serial chain of scalar adds."""
    norms = {name: f for name, f in _prim_funcs(lowered_tiny).items() if "layer_norm" in name}
    prefill = [name for name, f in norms.items() if "seq_len" in f.script()]
    assert prefill
    for name, func in norms.items():
        script = func.script()
        if "batch_size" in script:
            continue  # batched decode rows: dlight's reduction
        assert "_rf" in script and "T.vectorized(" in script, name
        assert ("T.parallel(" in script) == (name in prefill), name


def test_cpu_shape_comes_from_the_target():
    shape = CPUShape.of(Target({"kind": "llvm", "mcpu": "znver4", "num-cores": 3}))
    assert shape == CPUShape(threads=3, lanes=16)
    assert CPUShape.of(Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 1})).lanes == 8


def test_cuda_kernels_skip_tensorization():
    """dlight's tensor-core path segfaults in TVM 0.27 (see pipeline._do_not_tensorize)."""
    cuda = Target({"kind": "cuda", "arch": "sm_80"}, host="llvm")
    mark = pipeline.schedule_passes(cuda)[0]
    marked = mark(tvm.IRModule({"f": tvm.tirx.PrimFunc([], tvm.tirx.Evaluate(0))}))
    assert all(func.attrs["dlight.do_not_tensorize"] for func in marked.functions.values())
    assert pipeline.schedule_passes(Target({"kind": "llvm"}))[0] is not mark


@pytest.mark.slow
def test_scheduled_model_matches_transformers(artifacts, tmp_path):
    """Prefill, then decode steps, then two sequences decoded together (a multi-row matmul)."""
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    from codegen.runtime import Model

    hf_model = random_hf_model(GPTBigCodeConfig, GPTBigCodeForCausalLM, seed=3, **WIDE)
    artifact = artifacts.build("gpt_bigcode", save_hf_model(hf_model, tmp_path / "hf"))
    model = Model(artifact, max_batch_size=2, max_total_seq_len=128)
    prompt, continuation, extra = [5, 17, 2, 88, 41, 9, 60], [12, 77, 3, 50], 33
    expected = hf_logits(hf_model, prompt + continuation + [extra])

    first = model.add_sequence()
    logits = model.batch_prefill({first: prompt})[first]
    assert max_abs_diff(logits, expected[len(prompt) - 1]) <= FLOAT32_TOLERANCE
    for step, token in enumerate(continuation):
        logits = model.batch_decode({first: token})[first]
        assert max_abs_diff(logits, expected[len(prompt) + step]) <= FLOAT32_TOLERANCE

    second = model.add_sequence()
    model.batch_prefill({second: prompt})
    together = model.batch_decode({first: extra, second: continuation[0]})
    assert max_abs_diff(together[first], expected[-1]) <= FLOAT32_TOLERANCE
    assert max_abs_diff(together[second], expected[len(prompt)]) <= FLOAT32_TOLERANCE


def _prefill_linear(epilogue: bool, in_features: int = 64) -> tuple[tvm.IRModule, Target]:
    """One nn.Linear to 96 outputs over a sequence-length dimension: the prefill GEMM kernel, with
    or without bias."""
    from tvm.relax.frontend import nn

    class Linear(nn.Module):
        def __init__(self):
            self.proj = nn.Linear(in_features, 96, bias=epilogue)

        def forward(self, x):
            return self.proj(x)

    x_spec = nn.spec.Tensor([1, "seq_len", in_features], "float32")
    mod, _ = Linear().export_tvm({"forward": {"x": x_spec}})
    return mod, BuildOptions(target="llvm", num_threads=2).tvm_target()


@pytest.mark.parametrize("out_features", [96, 100])
def test_decode_row_dot_kernel_matches_numpy(out_features):
    """One row against weight rows shorter than a page: one dot product per weight row."""
    import numpy as np
    from tvm import relax
    from tvm.relax.frontend import nn

    from codegen.build.cpu.rules import ROW_DOT_VECTORS

    class Linear(nn.Module):
        def __init__(self):
            self.proj = nn.Linear(256, out_features)

        def forward(self, x):
            return self.proj(x)

    mod, _ = Linear().export_tvm({"forward": {"x": nn.spec.Tensor([1, 1, 256], "float32")}})
    target = BuildOptions(target="llvm", num_threads=2).tvm_target()
    with target:
        lowered = pipeline.relax_pipeline(target)(mod)
    [matmul] = [f for name, f in _prim_funcs(lowered).items() if "matmul" in name]
    width = ROW_DOT_VECTORS * CPUShape.of(target).lanes
    assert f"T.vectorized(T.int64({width}))" in matmul.script()
    vm = relax.VirtualMachine(tvm.compile(mod, target=target, relax_pipeline=pipeline.relax_pipeline(target)), tvm.cpu())
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((out_features, 256), dtype=np.float32), rng.standard_normal(out_features, dtype=np.float32)
    x = rng.standard_normal((1, 1, 256), dtype=np.float32)
    out = vm["forward"](tvm.runtime.tensor(x), tvm.runtime.tensor(weight), tvm.runtime.tensor(bias)).numpy()
    assert np.abs(out - (x @ weight.T + bias)).max() <= 1e-4
    # One serial scalar sum of all `width` partials per output slowed the kernel below memory speed:
    # they are added as vectors first, leaving `lanes` scalar adds.
    assert _serial_partial_sums(matmul) == {ROW_DOT_VECTORS, CPUShape.of(target).lanes}


def _serial_partial_sums(func: tirx.PrimFunc) -> set[int]:
    """Trip counts of the serial loops over which a block adds up partial sums (a block that reads one
    buffer besides the one it accumulates into)."""
    counts = set()

    def visit(stmt, loops):
        if isinstance(stmt, tirx.For):
            visit(stmt.body, loops + [stmt])
        elif isinstance(stmt, tirx.SeqStmt):
            for child in stmt.seq:
                visit(child, loops)
        elif isinstance(stmt, s_tir.SBlockRealize):
            block = stmt.block
            written = [region.source for region in block.writes]
            read = [region.source for region in block.reads if not any(region.source.same_as(w) for w in written)]
            if len(read) == 1:
                reduce_values = [
                    value for iv, value in zip(block.iter_vars, stmt.iter_values) if int(iv.iter_type) == tirx.IterVar.CommReduce
                ]
                reduce_vars = [var for value in reduce_values for var in tirx.analysis.undefined_vars(value)]
                counts.update(
                    int(loop.extent)
                    for loop in loops
                    if loop.kind == tirx.ForKind.SERIAL and any(loop.loop_var.same_as(var) for var in reduce_vars)
                )
            visit(block.body, loops)
        elif hasattr(stmt, "body"):
            visit(stmt.body, loops)

    visit(func.body, [])
    return counts


@pytest.mark.parametrize("epilogue", [False, True])
def test_prefill_gemm_accumulators_are_stack_allocated(epilogue):
    """Heap (workspace) accumulators may alias the operands, so LLVM would store them on every k step."""
    import re

    mod, target = _prefill_linear(epilogue)
    executable = tvm.compile(mod, target=target, relax_pipeline=pipeline.relax_pipeline(target))
    ir = "\n".join(module.inspect_source("ll") for module in executable.mod.imports)
    # TVMBackendAllocWorkspace(device_type, device_id, nbytes, ...): only the packed weight panel.
    workspace_bytes = [int(size) for size in re.findall(r"\(i32 1, i32 %dev_id, i64 (\d+),", ir)]
    assert workspace_bytes, "expected the packed weight panel in a workspace"
    assert min(workspace_bytes) > 1024, workspace_bytes


@pytest.mark.parametrize("epilogue", [False, True])
def test_prefill_gemm_matches_numpy_for_every_row_remainder(epilogue):
    """The sequence-length matmul runs MR-row tiles plus a bounds-checked remainder: check each remainder."""
    import numpy as np
    from tvm import relax

    from codegen.build.cpu.rules import GEMM_MR

    mod, target = _prefill_linear(epilogue)
    with target:
        lowered = pipeline.relax_pipeline(target)(mod)
    gemm = [f for name, f in _prim_funcs(lowered).items() if "matmul" in name]
    assert gemm and "pragma_loop_partition_hint" in gemm[0].script()
    vm = relax.VirtualMachine(tvm.compile(mod, target=target, relax_pipeline=pipeline.relax_pipeline(target)), tvm.cpu())
    rng = np.random.default_rng(0)
    params = [rng.standard_normal((96, 64), dtype=np.float32)] + ([rng.standard_normal(96, dtype=np.float32)] if epilogue else [])
    for rows in range(1, 3 * GEMM_MR + 2):
        x = rng.standard_normal((1, rows, 64), dtype=np.float32)
        out = vm["forward"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(p) for p in params]).numpy()
        expected = x @ params[0].T + (params[1] if epilogue else 0)
        assert np.abs(out - expected).max() <= 1e-4, rows


@pytest.mark.parametrize("in_features, gathered", [(64, True), (4096, False)])
def test_prefill_gemm_packs_short_panels_by_gathering(in_features, gathered):
    """A panel of 32 weight rows of 64 floats is packed one vector of 32 rows per k; one of 4096
    floats per row (512 KiB, over GATHERED_PANEL_BYTES) a block of PACK_BLOCK values per row at a
    time. Both match numpy."""
    import numpy as np
    from tvm import relax

    from codegen.build.cpu.rules import GATHERED_PANEL_BYTES, PACK_BLOCK

    assert (32 * in_features * 4 <= GATHERED_PANEL_BYTES) == gathered
    mod, target = _prefill_linear(False, in_features)
    with target:
        lowered = pipeline.relax_pipeline(target)(mod)
    [gemm] = [f for name, f in _prim_funcs(lowered).items() if "matmul" in name]
    sch = s_tir.Schedule(gemm)
    pack_loop = sch.get(sch.get_loops(sch.get_sblock("proj.weight_global"))[-1])
    if gathered:
        assert pack_loop.kind == tirx.ForKind.VECTORIZED and int(pack_loop.extent) == 32
    else:
        assert pack_loop.kind == tirx.ForKind.SERIAL and int(pack_loop.extent) == PACK_BLOCK
    vm = relax.VirtualMachine(tvm.compile(mod, target=target, relax_pipeline=pipeline.relax_pipeline(target)), tvm.cpu())
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((96, in_features), dtype=np.float32)
    x = rng.standard_normal((1, 13, in_features), dtype=np.float32)
    out = vm["forward"](tvm.runtime.tensor(x), tvm.runtime.tensor(weight)).numpy()
    expected = x.astype(np.float64) @ weight.T.astype(np.float64)
    assert np.abs(out - expected).max() <= 1e-5 * np.abs(expected).max()


def _linear_768_to_64(dtype: str, rows) -> tuple[tvm.IRModule, Target]:
    """One bias-free nn.Linear in `dtype` over `rows` activation rows (an int or a symbolic name)."""
    from tvm.relax.frontend import nn

    class Linear(nn.Module):
        def __init__(self):
            self.proj = nn.Linear(768, 64, bias=False)

        def forward(self, x):
            return self.proj(x)

    module = Linear()
    module.to(dtype)
    mod, _ = module.export_tvm({"forward": {"x": nn.spec.Tensor([1, rows, 768], dtype)}})
    return mod, BuildOptions(target="llvm", num_threads=2).tvm_target()


@pytest.mark.parametrize("dtype, rounding", [("float16", 2.0**-11), ("bfloat16", 2.0**-8)])
@pytest.mark.parametrize("rows", [1, "seq_len"])
def test_16_bit_linear_accumulates_in_float32(rows, dtype, rounding):
    """16-bit storage, float32 sums (build/cpu/half_precision.py): over 768 terms a float16
    accumulator is off by ~1e-3 of the largest output (measured), a float32 one only by the final
    rounding to 16 bits (2^-11 relative in float16, 2^-8 in bfloat16)."""
    import ml_dtypes
    import numpy as np
    from tvm import relax

    mod, target = _linear_768_to_64(dtype, rows)
    vm = relax.VirtualMachine(tvm.compile(mod, target=target, relax_pipeline=pipeline.relax_pipeline(target)), tvm.cpu())
    rng = np.random.default_rng(0)
    # Positive terms: the sum grows to ~190, where float16's spacing is 0.125.
    storage = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
    weight = rng.uniform(0, 1, (64, 768)).astype(storage)
    x = rng.uniform(0, 1, (1, 1 if rows == 1 else 9, 768)).astype(storage)
    out = vm["forward"](tvm.runtime.tensor(x), tvm.runtime.tensor(weight)).numpy().astype(np.float64)
    expected = x.astype(np.float64) @ weight.astype(np.float64).T
    assert np.abs(out - expected).max() <= rounding * np.abs(expected).max()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_prefill_gemm_converts_each_operand_once(dtype):
    """The GEMM's inner loop multiplies float32 copies: the weight panel and the activations are
    converted when copied, not on every multiply-add (which ran float16 prefill at ~60% of float32's
    GFLOP/s)."""
    import tvm_ffi

    mod, target = _linear_768_to_64(dtype, "seq_len")
    with target:
        lowered = pipeline.relax_pipeline(target)(mod)
    [gemm] = [f for name, f in _prim_funcs(lowered).items() if "matmul" in name]
    updates = []
    tvm_ffi.structural_walk(gemm.body, [(s_tir.stmt.SBlockRealize, lambda r: updates.append(r.block) if r.block.name_hint.endswith("_update") else None)])
    [update] = updates
    casts = []
    tvm_ffi.structural_walk(update.body, [(tirx.Cast, casts.append)])
    assert casts == []
    assert {str(region.source.dtype) for region in update.reads} == {"float32"}


@pytest.mark.parametrize("quantization", ["q0f16", "q0bf16"])
def test_16_bit_models_build_for_the_cpu(quantization):
    """Every kernel of a 16-bit model compiles, the KV cache's own included (its rotary kernel,
    whose conditional Let bindings do not vectorise, was once taken for an elementwise kernel)."""
    from codegen.build.compile import build

    model = load_model("gpt_bigcode")
    config = model.config(hf_config=dict(TINY, n_embd=128, n_head=2))  # head_dim 64
    executable, _ = build(model, config, BuildOptions(target="llvm", num_threads=2, quantization=quantization))
    assert "decode" in executable.as_text()
