"""The Relax compile pipeline for each target: the one place that decides how kernels are scheduled.

Both targets run TVM's own backend passes around the same core: keep nn.Linear as one
transposed-weight matmul, legalise and fuse, then schedule every fused kernel with dlight-style rules
(ours for CPU matmuls, norms and elementwise kernels, dlight's for the rest and for CUDA). CPU
builds also legalise activations to vectorisable approximations (build/cpu/fast_math.py), compute
16-bit matmuls in float32 (build/cpu/half_precision.py), rewrite the quantized matmuls (factored
for decode, or on int8 activations where the scheme allows; in float32 for 16 bits:
build/cpu/quantized_matmul.py, int8_dot.py) and swap the KV cache's scalar attention kernels for
threaded, vectorised ones (build/cpu/attention.py).
"""

from __future__ import annotations

import tvm
from tvm import relax, topi
from tvm.relax.backend.cpu_generic import pipeline as cpu_backend
from tvm.relax.backend.cuda import pipeline as cuda_backend
from tvm.s_tir import dlight
from tvm.target import Target

from codegen.build.cpu import fast_math, int8_dot, prefetch
from codegen.build.cpu.attention import replace_kv_cache_kernels
from codegen.build.cpu.half_precision import half_matmuls_in_float32
from codegen.build.cpu.quantized_matmul import rewrite_quantized_matmuls
from codegen.build.cpu.rules import (
    CPUShape,
    Elementwise,
    FactoredQuantizedDecode,
    Int8DotEpilogue,
    QuantizedWeightMatmul,
    RowReduction,
    SingleRowReduction,
    WeightMatmul,
)


def relax_pipeline(
    target: Target, attention_window: int | None = None, int8_activations: bool = False
) -> tvm.transform.Pass:
    """The pipeline tvm.compile runs for this target; `attention_window`: the model's sliding window;
    `int8_activations`: the scheme lets CPU matmuls quantize their activations."""
    backend = cuda_backend if target.kind.name == "cuda" else cpu_backend

    @tvm.transform.module_pass(opt_level=0, name="CodegenPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            passes = (
                backend.library_dispatch_passes(target)
                + _widen_half_matmuls(target)
                # Before legalisation: matmul(x, permute_dims(W)) would copy W transposed on every call.
                + [relax.transform.FuseTransposeMatmul()]
                + _legalize_and_fuse(target, int8_activations)
                + schedule_passes(target, attention_window)
                + backend.dataflow_lower_passes(target)
                + backend.finalize_passes(target)
            )
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def _widen_half_matmuls(target: Target) -> list[tvm.transform.Pass]:
    return [half_matmuls_in_float32] if target.kind.name == "llvm" else []


def _legalize_and_fuse(target: Target, int8_activations: bool) -> list[tvm.transform.Pass]:
    legalize_map = {"relax.take": _take_clipped}
    cpu_kernels = []
    if target.kind.name == "llvm":
        # LLVM has no vector exp/tanh/erf: on CPU, activations legalise to vectorisable approximations.
        legalize_map.update(fast_math.legalize_map())
        cpu_kernels = cpu_kernel_rewrites(target, int8_activations)
    return [
        relax.transform.LegalizeOps(customize_legalize_map=legalize_map),
        *cpu_kernels,
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def _take_clipped(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """Gathers (the token embedding) clamp their indices instead of trusting them.

    TVM's default "fast" mode warns at every compile that an out-of-range index segfaults. The
    runtime checks token ids first; the clamp costs one min/max per row and keeps a stray id from
    reading outside the table in any caller that does not."""
    mode = "clip" if call.attrs.mode == "fast" else call.attrs.mode
    return bb.call_te(topi.take, call.args[0], call.args[1], call.attrs.axis, mode=mode)


def schedule_passes(target: Target, attention_window: int | None = None) -> list[tvm.transform.Pass]:
    if target.kind.name == "cuda":  # a window never gets here: compile.build refuses it for cuda
        return [_do_not_tensorize(), dlight.ApplyDefaultSchedule(*gpu_rules())]
    # The KV cache's attention kernels come scheduled (tirx.is_scheduled): dlight leaves them be.
    return [replace_kv_cache_kernels(attention_window), schedule_cpu_kernels()]


def cpu_kernel_rewrites(target: Target, int8_activations: bool = False) -> list[tvm.transform.Pass]:
    """Kernels the CPU build replaces before fusion (the epilogue then fuses into the replacement)."""
    int8 = int8_activations and int8_dot.target_supports(target)
    return [rewrite_quantized_matmuls(CPUShape.of(target).threads if int8 else None)]


def schedule_cpu_kernels() -> tvm.transform.Pass:
    """The CPU rules on every unscheduled kernel, then the prefetches they asked for."""
    return tvm.transform.Sequential([dlight.ApplyDefaultSchedule(*cpu_rules()), prefetch.insert_prefetches])


def build_cpu_kernels(target: Target, int8_activations: bool = False) -> tvm.transform.Pass:
    """What the CPU pipeline does to kernels compiled on their own (tests, bench/): replace, schedule."""
    return tvm.transform.Sequential([*cpu_kernel_rewrites(target, int8_activations), schedule_cpu_kernels()])


def cpu_rules() -> list[dlight.ScheduleRule]:
    """Rules tried in order on each kernel; the first that matches schedules it."""
    return [
        Int8DotEpilogue(),
        FactoredQuantizedDecode(),
        QuantizedWeightMatmul(),
        WeightMatmul(),
        SingleRowReduction(),
        RowReduction(),
        dlight.cpu.Reduction(),
        Elementwise(),
    ]


def gpu_rules() -> list[dlight.ScheduleRule]:
    """TVM's default CUDA rules."""
    return [dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(), dlight.gpu.GeneralReduction(), dlight.gpu.Fallback()]


def _do_not_tensorize() -> tvm.transform.Pass:
    """Mark every PrimFunc so dlight's gpu.Matmul skips tensor-core tensorization.

    In TVM 0.27 its failed tensorize of a float16 matmul wider than 64 segfaults (while building the
    error message) instead of raising, so dlight's fallback never runs. tests/test_cuda.py compiles
    such a model in a subprocess.
    """

    @tvm.transform.module_pass(opt_level=0, name="CodegenDoNotTensorize")
    def _mark(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for global_var, func in list(mod.functions.items()):
            if isinstance(func, tvm.tirx.PrimFunc):
                mod[global_var] = func.with_attr("dlight.do_not_tensorize", True)
        return mod

    return _mark
