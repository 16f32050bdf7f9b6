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


def test_float16_keeps_tvm_legalisation():
    """The approximations are float32 only; float16 still builds and computes GELU."""
    executable = _build(lambda x: nn.op.gelu(x, approximate="tanh"), "float16")
    x = np.linspace(-4, 4, INPUTS.size).astype(np.float16)
    out = relax.VirtualMachine(executable, tvm.cpu())["forward"](tvm.runtime.tensor(x)).numpy().astype(np.float64)
    x64 = x.astype(np.float64)
    expected = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    assert np.abs(out - expected).max() <= 4e-3
