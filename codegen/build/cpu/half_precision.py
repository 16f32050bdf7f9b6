"""16-bit matmuls on CPUs without 16-bit arithmetic: 16 bits in memory, float32 in registers.

x86 before AVX512-FP16 has no float16 arithmetic: LLVM computes each float16 operation in float32
and rounds back, so a float16 dot product becomes multiply, round, add, round per step, with the
accumulator's rounding on the critical path (prefill 4x slower than float32, figures in
bench/README.md). Asking the matmul for a float32 result makes its TE load each 16-bit operand once,
convert it in a register and accumulate with FMAs; the cast to 16 bits moves to the epilogue. The
sums are also more accurate, as in torch, which accumulates 16-bit matmuls in float32. bfloat16
would be computed in float32 by TVM's BF16ComputeLegalize anyway; widened here too, its prefill
GEMM gets the float32 operand copies of `rules._schedule_gemm` (each value converted once).
"""

from __future__ import annotations

import tvm
from tvm import relax

_MATMUL = tvm.ir.Op.get("relax.matmul")
_HALF = ("float16", "bfloat16")
_WIDE = "float32"


@relax.expr_functor.mutator
class _WidenMatmuls(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not call.op.same_as(_MATMUL) or call.ty.dtype not in _HALF:
            return call
        wide = self.builder_.emit(relax.op.matmul(call.args[0], call.args[1], out_dtype=_WIDE))
        return relax.op.astype(wide, call.ty.dtype)


@tvm.transform.module_pass(opt_level=0, name="CodegenHalfMatmulsInFloat32")
def half_matmuls_in_float32(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Every float16 or bfloat16 relax.matmul computes in float32 and casts its result back."""
    mutator = _WidenMatmuls(mod)
    for global_var, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(global_var, mutator.visit_expr(func))
    return mutator.builder_.get()
