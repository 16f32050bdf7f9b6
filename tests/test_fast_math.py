"""CPU float32 activations legalise to vector code and stay accurate, including far out in the tails."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.frontend import nn

from codegen.build import pipeline
from codegen.build.compile import BuildOptions

# Inputs across the range where each function changes, plus the tails where exp over/underflows.
INPUTS = np.concatenate([np.linspace(-12, 12, 4001), [-200.0, -88.0, -30.0, 0.0, 30.0, 88.0, 200.0]]).astype(np.float32)

_erf = np.vectorize(math.erf)


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


REFERENCES = {
    "gelu_tanh": (lambda x: nn.op.gelu(x, approximate="tanh"), lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))),
    "gelu": (lambda x: nn.op.gelu(x), lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2)))),
    "silu": (nn.op.silu, lambda x: x * _sigmoid(x)),
    "sigmoid": (nn.op.sigmoid, _sigmoid),
    "tanh": (nn.op.tanh, np.tanh),
    "exp": (nn.op.exp, np.exp),
}


def _build(activation, dtype: str = "float32"):
    class Activation(nn.Module):
        def forward(self, x):
            return activation(x)

    mod, _ = Activation().export_tvm({"forward": {"x": nn.spec.Tensor([INPUTS.size], dtype)}})
    target = BuildOptions(target="llvm", num_threads=2).tvm_target()
    return tvm.compile(mod, target=target, relax_pipeline=pipeline.relax_pipeline(target))


def _assembly(executable) -> str:
    return "\n".join(module.inspect_source("asm") for module in executable.mod.imports)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_activation_matches_numpy_without_libm_calls(name):
    relax_op, reference = REFERENCES[name]
    executable = _build(relax_op)
    assert not re.search(r"\b(expf|tanhf|erff|exp2f)\b", _assembly(executable)), "an activation calls libm per element"
    out = relax.VirtualMachine(executable, tvm.cpu())["forward"](tvm.runtime.tensor(INPUTS)).numpy()
    expected = reference(INPUTS.astype(np.float64))
    finite = np.isfinite(expected) & (np.abs(expected) < 1e30)
    assert np.all(np.abs(out[finite] - expected[finite]) <= 2e-6 * np.maximum(1.0, np.abs(expected[finite]))), name


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_activation_is_computed_in_float32_without_libm_calls(dtype):
    """16-bit GELU widens to the float32 approximation and rounds once (TVM's own was tanhf per element)."""
    import ml_dtypes

    executable = _build(lambda x: nn.op.gelu(x, approximate="tanh"), dtype)
    assert not re.search(r"\b(expf|tanhf|erff|exp2f)\b", _assembly(executable)), "a 16-bit activation calls libm per element"
    x = np.linspace(-4, 4, INPUTS.size).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16)
    out = relax.VirtualMachine(executable, tvm.cpu())["forward"](tvm.runtime.tensor(x)).numpy().astype(np.float64)
    x64 = x.astype(np.float64)
    expected = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    # One rounding of the result: half a unit in the last place of its format.
    unit = 2.0**-11 if dtype == "float16" else 2.0**-8
    assert np.all(np.abs(out - expected) <= unit * np.maximum(np.abs(expected), 2.0**-6))
