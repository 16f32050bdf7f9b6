"""Export a generated model and build its library with TVM. All compile options live here."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import tvm
from tvm import relax
from tvm.target import Target

from codegen.artifact.contract import LIBRARY_NAME, MAX_BATCH_SIZE, METADATA_NAME, MODEL_FUNCTIONS, engine_limits
from codegen.build import pipeline
from codegen.errors import CodegenError
from codegen.files import staging_dir
from codegen.models import GeneratedModel
from codegen.spec import quantization

TARGETS = ("llvm", "cuda")
CUDA_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")


class CompileError(CodegenError):
    """The build cannot start or did not finish; the message says why and how to fix it."""


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """How to build. ``quantization`` names a scheme of specs/quantization/schemes.yaml; ``dtype``
    alone stands for its unquantized scheme (float16 = q0f16). Either way both end up set."""

    target: str = "llvm"
    dtype: str | None = None
    cuda_arch: str = "sm_80"
    num_threads: int | None = None  # llvm only; None = all cores of this machine
    quantization: str | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise CompileError(f"unknown target {self.target!r}; choose one of: {', '.join(TARGETS)}")
        scheme = quantization.resolve(self.quantization, self.dtype)
        object.__setattr__(self, "quantization", scheme.name)
        object.__setattr__(self, "dtype", scheme.model_dtype)
        if self.cuda_arch not in CUDA_ARCHS:
            raise CompileError(f"unknown CUDA arch {self.cuda_arch!r}; choose one of: {', '.join(CUDA_ARCHS)}")
        if self.num_threads is not None and (isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise CompileError(f"num_threads must be a positive integer or None, got {self.num_threads!r}")
        if self.target == "cuda" and shutil.which("nvcc") is None:
            raise CompileError("target cuda needs nvcc on PATH (the CUDA toolkit); install it or use --target llvm")

    @property
    def scheme(self) -> quantization.Scheme:
        return quantization.scheme(self.quantization)

    def tvm_target(self) -> Target:
        if self.target == "cuda":
            return Target({"kind": "cuda", "arch": self.cuda_arch}, host=_host_target())
        return _host_target(self.num_threads)


def _host_target(num_threads: int | None = None) -> Target:
    """The CPU of this machine, with its vector ISA, so LLVM can vectorise for it."""
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    config: dict[str, Any] = {"kind": "llvm", "mcpu": cpu}
    config["num-cores"] = num_threads or os.cpu_count() or 1
    return Target(config)


def export(model: GeneratedModel, config: Any, options: BuildOptions) -> tuple[tvm.IRModule, list[tuple[str, Any]]]:
    """Export the generated nn.Module to a Relax IRModule plus its named parameter specs."""
    module = model.causal_lm(config, options.scheme)
    with options.tvm_target():
        ir_module, named_params, _ = module.export_tvm(spec=module.get_default_spec(), allow_extern=True)
    return ir_module, named_params


def metadata(model: GeneratedModel, config: Any, options: BuildOptions, named_params) -> dict[str, Any]:
    """The MLC LLM `_metadata` fields, plus what our runtime needs to check an artifact."""
    return {
        "model_type": model.name,
        "quantization": options.quantization,
        **engine_limits(config),
        "disaggregation": False,
        "kv_state_kind": "kv_cache",
        "max_batch_size": MAX_BATCH_SIZE,
        "params": [
            {"name": name, "shape": [int(d) for d in param.shape], "dtype": param.dtype, "preprocs": []}
            for name, param in named_params
        ],
        "kv_cache": {
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
            "head_dim": config.head_dim,
        },
        "memory_usage": {},
        # Not read by MLC; our runtime uses these to refuse mismatched artifacts.
        "codegen": {
            "architecture": model.name,
            "config": config.to_dict(),
            "dtype": options.dtype,
            "quantization": options.quantization,
            "target": options.target,
            "cuda_arch": options.cuda_arch if options.target == "cuda" else None,
            "vocab_size": config.vocab_size,
            "attention_window": config.attention_window,
            "functions": list(MODEL_FUNCTIONS),
        },
    }


def _attach_metadata(ir_module: tvm.IRModule, fields: dict[str, Any]) -> tvm.IRModule:
    builder = relax.BlockBuilder(ir_module)
    with builder.function("_metadata", params=[]):
        builder.emit_func_output(relax.expr.String(json.dumps(fields, sort_keys=True)))
    return builder.finalize()


def build(model: GeneratedModel, config: Any, options: BuildOptions) -> tuple[relax.VMExecutable, dict[str, Any]]:
    """Export and compile; returns the executable and its metadata."""
    window = config.attention_window
    if window is not None and options.target == "cuda":
        raise CompileError(
            f"{model.name}: sliding-window attention ({window} of {config.context_window_size} positions) runs in"
            f" the CPU attention kernels only; for cuda compile with --context-window {window}, within which"
            " attention over the window and over the whole context agree"
        )
    ir_module, named_params = export(model, config, options)
    fields = metadata(model, config, options, named_params)
    ir_module = _attach_metadata(ir_module, fields)
    target = options.tvm_target()
    int8_activations = options.scheme.cpu_activations == "int8"
    with target, tvm.transform.PassContext(opt_level=3, config=pass_config(options)):
        executable = tvm.compile(ir_module, target=target, relax_pipeline=pipeline.relax_pipeline(target, window, int8_activations))
    missing = sorted(set(MODEL_FUNCTIONS + ("_metadata",)) - set(vm_functions(executable)))
    if missing:
        raise CompileError(f"the built library lacks the functions {', '.join(missing)}")
    return executable, fields


def vm_functions(executable: relax.VMExecutable) -> list[str]:
    """Names of the Relax functions a built executable exposes."""
    return re.findall(r"^@([\w.]+):$", executable.as_text(), flags=re.MULTILINE)


def pass_config(options: BuildOptions) -> dict[str, Any]:
    """PassContext settings for this build."""
    if options.target == "cuda":
        # TVM 0.27's TIR common-subexpression pass breaks the paged KV cache's CUDA prefill
        # kernels ("cse_vN has been used before definition", seen in float32 builds). CPU builds
        # keep CSE; tests/test_cuda.py fails once TVM no longer needs this.
        return {"tirx.disable_cse_tir": True}
    return {}


def compile_to_dir(model: GeneratedModel, config: Any, options: BuildOptions, output: Path) -> dict[str, Any]:
    """Build into a temporary sibling folder, then move it into place, so a failed build leaves nothing."""
    output = Path(output)
    with staging_dir(output.parent, prefix=f".{output.name}.build-") as staging:
        started = time.perf_counter()
        executable, fields = build(model, config, options)
        executable.export_library(str(staging / LIBRARY_NAME))
        fields["codegen"]["compile_seconds"] = round(time.perf_counter() - started, 1)
        (staging / METADATA_NAME).write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
        _replace_library_files(staging, output)
    return fields


def _replace_library_files(staging: Path, output: Path) -> None:
    """Move the library and metadata into output; weights converted there earlier stay."""
    output.mkdir(parents=True, exist_ok=True)
    for name in (LIBRARY_NAME, METADATA_NAME):
        os.replace(staging / name, output / name)
