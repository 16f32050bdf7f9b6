"""Vectorisable float32 activations for CPU builds.

LLVM has no vector exp/tanh/erf of its own: TVM's default legalisation of gelu, silu, sigmoid, tanh
and exp ends in a libm call per element, which turned the vectorised GELU epilogue of a prefill
matmul into a third of the matmul's time. TVM's `topi.fast_exp` / `fast_tanh` / `fast_erf` are
polynomial approximations (about 1e-7 relative error) built from vector arithmetic only. Legalising
the activations through them keeps fused epilogues vectorised. float16 and bfloat16 inputs are
computed in float32 and rounded once (this CPU has no 16-bit arithmetic: TVM's float16 GELU was a
libm tanhf per element). Other dtypes keep TVM's legalisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tvm
from tvm import relax, te, tirx, topi

_Legalize = Callable[[relax.BlockBuilder, relax.Call], relax.Expr]
_WIDENED = ("float16", "bfloat16")


def _gelu_tanh(x: te.Tensor) -> te.Tensor:
    inner = math.sqrt(2.0 / math.pi) * x * (1.0 + 0.044715 * x * x)
    return 0.5 * x * (1.0 + topi.fast_tanh(inner))


def _gelu(x: te.Tensor) -> te.Tensor:
    return x * (0.5 + 0.5 * topi.fast_erf(x * tirx.const(0.5**0.5, x.dtype)))


def _sigmoid(x: te.Tensor) -> te.Tensor:
    return 1.0 / (1.0 + topi.fast_exp(-x))


def _silu(x: te.Tensor) -> te.Tensor:
    return x * _sigmoid(x)


# Relax op -> float32 computation; the name hint keeps the fused kernels' names readable.
_FAST = {
    "relax.nn.gelu_tanh": (_gelu_tanh, "gelu_tanh"),
    "relax.nn.gelu": (_gelu, "gelu"),
    "relax.nn.silu": (_silu, "silu"),
    "relax.sigmoid": (_sigmoid, "sigmoid"),
    "relax.tanh": (topi.fast_tanh, "tanh"),
    "relax.exp": (topi.fast_exp, "exp"),
}


def legalize_map() -> dict[str, _Legalize]:
    """customize_legalize_map for relax.transform.LegalizeOps on CPU targets."""
    return {name: _fast_or_default(name, compute, hint) for name, (compute, hint) in _FAST.items()}


def _fast_or_default(op_name: str, compute, name_hint: str) -> _Legalize:
    default = tvm.ir.Op.get(op_name).get_attr("FLegalize")

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        dtype = call.args[0].ty.dtype
        if dtype == "float32":
            return bb.call_te(compute, call.args[0], primfunc_name_hint=name_hint)
        if dtype in _WIDENED:
            return bb.call_te(lambda x: topi.cast(compute(topi.cast(x, "float32")), dtype), call.args[0], primfunc_name_hint=name_hint)
        return default(bb, call)

    return legalize
