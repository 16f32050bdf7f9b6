"""CUDA builds are cross-compiled here with nvcc; running them needs a GPU (bench/gpu_check.sh)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import tvm

from codegen.build import compile as compile_module
from codegen.build.compile import MODEL_FUNCTIONS, BuildOptions, CompileError, build, compile_to_dir, vm_functions
from codegen.models import load_model
from codegen.runtime import ArtifactError, Model
from codegen.spec import load_spec
from tests.support import REPO_ROOT, tiny_preset

pytestmark = [
    pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH: CUDA cross-compilation needs the CUDA toolkit"),
    pytest.mark.slow,
]

SPECS = sorted((REPO_ROOT / "specs").glob("*.yaml"))


def tiny_config(spec_path):
    spec = load_spec(spec_path)
    model = load_model(spec.name)
    first_preset = next(iter(spec.presets))
    return model, model.package.Config.from_dict(tiny_preset(spec, dict(spec.presets[first_preset])))


# Every spec once; the weight dtype and GPU arch rotate so each dtype and each arch is built somewhere.
DTYPE_ARCHS = [("float16", "sm_80"), ("float32", "sm_90"), ("bfloat16", "sm_89"), ("float16", "sm_86")]
CUDA_BUILDS = {spec.stem: (spec, *DTYPE_ARCHS[i % len(DTYPE_ARCHS)]) for i, spec in enumerate(SPECS)}


@pytest.fixture(scope="module")
def cuda_artifact(tmp_path_factory):
    """Compiles a spec's tiny preset for CUDA once per module: {spec name: artifact folder}."""
    built = {}

    def get(name: str):
        if name not in built:
            spec_path, dtype, arch = CUDA_BUILDS[name]
            model, config = tiny_config(spec_path)
            output = tmp_path_factory.mktemp(f"cuda-{name}")
            compile_to_dir(model, config, BuildOptions(target="cuda", dtype=dtype, cuda_arch=arch), output)
            built[name] = output
        return built[name]

    return get


@pytest.mark.parametrize("name", sorted(CUDA_BUILDS))
def test_every_spec_cross_compiles_for_cuda(name, cuda_artifact):
    """`build` itself refuses a library that lacks one of the model functions."""
    _, dtype, arch = CUDA_BUILDS[name]
    artifact = cuda_artifact(name)
    assert (artifact / "model.so").stat().st_size > 0
    metadata = json.loads((artifact / "metadata.json").read_text())
    assert metadata["codegen"]["target"] == "cuda" and metadata["codegen"]["cuda_arch"] == arch
    # The generated norms keep their parameters in float32 whatever the model's dtype.
    norms = {p["name"] for p in metadata["params"] if "norm" in p["name"] or "ln_" in p["name"]}
    assert {p["dtype"] for p in metadata["params"] if p["name"] not in norms} == {dtype}
    assert {p["dtype"] for p in metadata["params"] if p["name"] in norms} == {"float32"}


def test_a_sliding_window_shorter_than_the_context_is_refused_with_the_fix():
    """TVM's CUDA attention kernels know no window; within a context of the window's length they agree."""
    model = load_model("mistral")
    with pytest.raises(CompileError, match=r"sliding-window attention \(4096 of 32768 positions\).*--context-window 4096"):
        build(model, model.config(preset="mistral_7b_v0_1"), BuildOptions(target="cuda", cuda_arch="sm_90"))
    assert model.config(preset="mistral_7b_v0_1", context_window_size=4096).attention_window is None


def test_yarn_rotation_cross_compiles_for_cuda():
    """Under yarn the model rotates q and k in its own kernel, which needs a GPU schedule."""
    model = load_model("qwen3")
    config = model.package.Config.from_dict({
        "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 64,
        "vocab_size": 128, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    })
    executable, _ = build(model, config, BuildOptions(target="cuda", dtype="float16", cuda_arch="sm_90"))
    assert set(MODEL_FUNCTIONS) <= set(vm_functions(executable))


def test_wide_float16_model_compiles(tmp_path):
    """dlight's tensor-core path crashes the process on float16 matmuls wider than 64 unless
    codegen.build.pipeline turns it off; a subprocess turns a crash into a failure, not a dead run."""
    script = (
        "from codegen.build.compile import BuildOptions, build\n"
        "from codegen.models import load_model\n"
        "model = load_model('gpt_bigcode')\n"
        "config = model.package.Config.from_dict("
        "{'n_embd': 256, 'n_head': 4, 'n_layer': 1, 'n_inner': 704, 'n_positions': 64, 'vocab_size': 96})\n"
        "build(model, config, BuildOptions(target='cuda', dtype='float16', cuda_arch='sm_90'))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


def _quantizable_config(model):
    """Widths that groups of 32 divide (the tiny presets are 8 wide per head)."""
    return model.config(hf_config={"model_type": "gpt_bigcode", "n_embd": 64, "n_head": 4, "n_layer": 2, "vocab_size": 128, "n_positions": 64})


@pytest.mark.parametrize(
    "quantization,arch",
    # every scheme once, every arch once
    [("q4f16_1", "sm_80"), ("q4f32_1", "sm_86"), ("q4f16_2", "sm_89"), ("q8f16_1", "sm_90"), ("q8f32_1", "sm_90")],
)
def test_quantized_schemes_cross_compile_for_cuda(quantization, arch):
    """The fused dequantize-matmul kernels get GPU schedules (an unscheduled one fails to build)."""
    model = load_model("gpt_bigcode")
    executable, fields = build(model, _quantizable_config(model), BuildOptions(target="cuda", quantization=quantization, cuda_arch=arch))
    assert set(MODEL_FUNCTIONS) | {"_metadata"} <= set(vm_functions(executable))
    assert fields["quantization"] == quantization
    assert any(p["dtype"] == "uint32" and p["name"].endswith(".q_weight") for p in fields["params"])


def test_cse_workaround_is_still_needed(monkeypatch):
    """Fails once TVM compiles the CUDA KV cache with CSE on: then drop pass_config's workaround."""
    model, config = tiny_config(REPO_ROOT / "specs" / "gpt_bigcode.yaml")
    monkeypatch.setattr(compile_module, "pass_config", lambda options: {})
    with pytest.raises(tvm.error.InternalError, match="has been used before definition"):
        build(model, config, BuildOptions(target="cuda", dtype="float32", cuda_arch="sm_90"))


@pytest.mark.skipif(tvm.cuda(0).exist, reason="a GPU is present: bench/gpu_check.sh runs CUDA artifacts")
def test_running_a_cuda_artifact_without_a_gpu_is_a_clear_error(cuda_artifact):
    artifact = cuda_artifact("gpt_bigcode")
    with pytest.raises(ArtifactError, match="no cuda device is present"):
        Model(artifact)
    with pytest.raises(ArtifactError, match="compiled for cuda; it cannot run on device cpu"):
        Model(artifact, device="cpu")
