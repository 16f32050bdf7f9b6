"""Quantized models are exact against transformers running the same, fake-quantized weights.

Each family runs one group scheme with float32 compute, the schemes taking turns in name order (the
4- and 8-bit kernels differ only in the unpacking, which tests/test_quantized_kernels.py checks at
every width, so each family needs one of them and each scheme several families). Every weight matrix of the
transformers model (each nn.Linear / Conv1D, and the token embedding unless the scheme keeps it) is
replaced by dequantize(quantize(W)) row by row in its [out, in] orientation, before it is saved.
The groups run along one row, so that commutes with every transform the converter applies
(transposes, row concatenation, q/k/v row reordering). The compiled model, converted from that
checkpoint, stores the same codes and scales and must match it to float32 rounding: prefill, decode
across KV pages, a batch of unequal sequences and greedy tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.parity import VOCAB, WINDOW, check_parity
from tests.test_families import FAMILIES, Family, make_hf_model, prepare

pytestmark = pytest.mark.slow

QUANTIZED_FAMILIES = {
    **FAMILIES,
    "gpt_bigcode": Family(
        spec="specs/gpt_bigcode.yaml",
        config_class="GPTBigCodeConfig",
        model_class="GPTBigCodeForCausalLM",
        config=dict(n_embd=64, n_head=4, n_layer=2, n_positions=WINDOW, vocab_size=VOCAB, multi_query=True),
    ),
    "gpt_bigcode_mha": Family(
        spec="specs/gpt_bigcode_mha.yaml",
        config_class="GPTBigCodeConfig",
        model_class="GPTBigCodeForCausalLM",
        config=dict(n_embd=64, n_head=4, n_layer=2, n_positions=WINDOW, vocab_size=VOCAB, multi_query=False),
    ),
}
SCHEMES = ("q4f32_1", "q8f32_1")
RUNS = [(family, SCHEMES[i % len(SCHEMES)]) for i, family in enumerate(sorted(QUANTIZED_FAMILIES))]


def fake_quantize(hf_model, scheme) -> int:
    """Replace the weights the scheme quantizes by their dequantized values; returns how many."""
    import torch
    from transformers.pytorch_utils import Conv1D

    from codegen.convert.quantize import dequantize, quantize

    def round_trip(rows: torch.Tensor) -> torch.Tensor:  # rows: [out, in]
        q_weight, q_scale = quantize(rows.detach().numpy(), scheme)
        return torch.from_numpy(dequantize(q_weight, q_scale, scheme))

    embedding = hf_model.get_input_embeddings()
    count = 0
    with torch.no_grad():
        for module in hf_model.modules():
            if module is embedding:
                if "embedding" in scheme.keep:
                    continue
                module.weight.copy_(round_trip(module.weight))
            elif isinstance(module, torch.nn.Linear):
                is_head = module is hf_model.get_output_embeddings()
                tied = is_head and module.weight is embedding.weight
                if tied or (is_head and "lm_head" in scheme.keep):
                    continue
                module.weight.copy_(round_trip(module.weight))
            elif isinstance(module, Conv1D):  # GPT-2 stores [in, out]
                module.weight.copy_(round_trip(module.weight.T).T)
            else:
                continue
            count += 1
    return count


@pytest.fixture(scope="module", params=RUNS, ids=lambda p: f"{p[0]}-{p[1]}")
def quantized_run(request, artifacts, tmp_path_factory):
    from codegen.spec.quantization import scheme as find_scheme

    name, scheme_name = request.param
    family, scheme = QUANTIZED_FAMILIES[name], find_scheme(scheme_name)
    hf_model = make_hf_model(family)
    assert fake_quantize(hf_model, scheme) >= 2 * 4, "the blocks' weight matrices were not all found"
    model_dir = prepare(family, hf_model, tmp_path_factory.mktemp(f"{name}-{scheme_name}"))
    artifact = artifacts.build(family.spec, model_dir, quantization=scheme_name)
    return f"{name} {scheme_name}", hf_model, artifact, scheme, model_dir


def test_quantized_model_matches_fake_quantized_transformers(quantized_run):
    from codegen.runtime import Model

    label, hf_model, artifact, _, _ = quantized_run
    check_parity(Model(artifact, max_batch_size=4), hf_model, label)


def test_quantized_artifact_stores_codes_not_floats(quantized_run):
    """The weight matrices are packed codes: bytes ≈ parameters × bits / 8 plus the scales."""
    import json

    _, _, artifact, scheme, _ = quantized_run
    params = {p["name"]: p for p in json.loads((artifact / "metadata.json").read_text())["params"]}
    packed = [p for name, p in params.items() if name.endswith(".q_weight")]
    assert packed and all(p["dtype"] == "uint32" for p in packed)
    assert not any(name.endswith(("c_fc.weight", "mlp.c_proj.weight", "down_proj.weight")) for name in params)
    for name, p in params.items():
        if name.endswith(".q_weight"):
            scale = params[name[: -len("q_weight")] + "q_scale"]
            rows, words = p["shape"]
            assert scale["shape"] == [rows, words * scheme.codes_per_word // scheme.group_size]


@pytest.mark.parametrize("quantized_run", [run for run in RUNS if run[0] == "gpt_bigcode"], indirect=True, ids=lambda p: p[1])
def test_weights_of_another_scheme_are_refused_at_load(quantized_run, tmp_path):
    import shutil

    from codegen.convert.weights import convert
    from codegen.models import load_model
    from codegen.runtime import ArtifactError, Model

    _, _, artifact, scheme, model_dir = quantized_run
    other = "q8f32_1" if scheme.name == "q4f32_1" else "q4f32_1"
    copy = Path(shutil.copytree(artifact, tmp_path / "artifact"))
    convert(load_model("gpt_bigcode"), model_dir, copy, quantization=other, progress=False)
    with pytest.raises(ArtifactError, match=f"converted as {other}, but model.so was compiled for {scheme.name}"):
        Model(copy)


# n_embd 128: every matmul has whole vectors of 16 words and of 16 weight rows, so each one runs on
# int8 activations (codegen/build/cpu/int8_dot.py) where the CPU has VNNI.
INT8_FAMILY = Family(
    spec="specs/gpt_bigcode.yaml",
    config_class="GPTBigCodeConfig",
    model_class="GPTBigCodeForCausalLM",
    config=dict(n_embd=128, n_head=4, n_layer=2, n_positions=WINDOW, vocab_size=VOCAB, multi_query=True),
)
# Largest |Δlogit| relative to the largest reference logit. Each activation rounds to 1/254 of
# its group's largest: measured 0.027-0.030 over these steps (0.003 with float activations, the
# float16 compute alone); a wrong scale or code order is off by the logits' whole size.
INT8_TOLERANCE = 0.06


@pytest.mark.parametrize("scheme_name", ["q4f16_1", "q8f16_1"])
def test_int8_activation_schemes_stay_close_to_fake_quantized_transformers(scheme_name, artifacts, tmp_path):
    """q4f16_1 and q8f16_1 (cpu_activations: int8) against transformers in float32 on the same
    fake-quantized weights: the prefill's logits and 8 decode steps after it."""
    import numpy as np
    import torch

    from codegen.runtime import Model
    from codegen.spec.quantization import scheme

    hf_model = make_hf_model(INT8_FAMILY, seed=3)
    fake_quantize(hf_model, scheme(scheme_name))
    model_dir = prepare(INT8_FAMILY, hf_model, tmp_path / "hf")
    model = Model(artifacts.build(INT8_FAMILY.spec, model_dir, quantization=scheme_name))
    tokens = list(np.random.default_rng(3).integers(0, VOCAB, size=40))
    compiled = [model.prefill(tokens[:32])] + [model.decode(t) for t in tokens[32:]]
    with torch.no_grad():
        reference = hf_model(torch.tensor([tokens])).logits[0, 31:].numpy()
    for step, (actual, expected) in enumerate(zip(compiled, reference)):
        error = np.abs(np.asarray(actual, np.float64).reshape(-1) - expected).max() / np.abs(expected).max()
        assert error <= INT8_TOLERANCE, f"{scheme_name} step {step}: relative error {error:.3g}"
