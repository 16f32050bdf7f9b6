"""The Relax compile pipeline for each target: the one place that decides how kernels are scheduled."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.s_tir import dlight
from tvm.target import Target

from codegen.schedules_cpu import WeightMatmul


def pipeline(target: Target) -> tvm.transform.Pass:
    """The pipeline tvm.compile runs for this target."""
    if target.kind.name == "llvm":
        return cpu_pipeline(target)
    # The default GPU pipeline already applies dlight's GPU rules.
    return relax.get_default_pipeline(target)


def cpu_rules() -> list[dlight.ScheduleRule]:
    """Rules tried in order on each kernel; the first that matches schedules it."""
    return [WeightMatmul(), dlight.cpu.Reduction()]


def cpu_pipeline(target: Target) -> tvm.transform.Pass:
    """TVM's CPU pipeline with nn.Linear kept as one transposed-weight matmul and kernels scheduled."""

    @tvm.transform.module_pass(opt_level=0, name="CodegenCPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            passes = (
                cpu_generic.library_dispatch_passes(target)
                # Before legalisation: matmul(x, permute_dims(W)) would copy W transposed on every call.
                + [relax.transform.FuseTransposeMatmul()]
                + cpu_generic.legalize_passes(target)
                + [dlight.ApplyDefaultSchedule(*cpu_rules())]
                + cpu_generic.dataflow_lower_passes(target)
                + cpu_generic.finalize_passes(target)
            )
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
