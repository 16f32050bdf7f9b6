"""Artifact weight bytes are parameters × bits / 8 plus scales (issue 13: within 3%).

A tiny checkpoint is converted (no compile) under every shipped scheme, and the shards' bytes on
disk are set against a count made here from the transformers model's parameter shapes and the
scheme's definition alone: the weight of every nn.Linear, and the token embedding, is quantized
unless the scheme keeps its role (a head tied to the embedding is stored once); every other
parameter stays unquantized: norms in float32 (the generated norm's choice), biases and learned
positions in the model's dtype.
"""

from __future__ import annotations

import pytest

from codegen.spec.quantization import load_schemes
from tests.support import random_hf_model, save_hf_model

TOLERANCE = 0.03
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
MODELS = {
    # tied head, multi-query attention, biases, learned positions
    "gpt_bigcode": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM", dict(n_embd=64, n_head=4, n_layer=2, n_positions=64, vocab_size=160)),
    # untied head, no biases
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=96,
             max_position_embeddings=64, vocab_size=160, tie_word_embeddings=False),
    ),
}


def expected_bytes(hf_model, scheme) -> int:
    import torch

    embedding, head = hf_model.get_input_embeddings(), hf_model.get_output_embeddings()
    roles = {id(embedding.weight): "embedding", id(head.weight): "lm_head"}  # a tied head is the embedding
    linear = {id(m.weight) for m in hf_model.modules() if isinstance(m, torch.nn.Linear)}
    norms = _norm_parameters(hf_model)
    total = 0
    for parameter in hf_model.parameters():  # each tensor once, tied ones included
        role = roles.get(id(parameter), "linear" if id(parameter) in linear else None)
        if scheme.quantized and role is not None and role not in scheme.keep:
            total += parameter.numel() * scheme.bits // 8 + parameter.numel() // scheme.group_size * BYTES[scheme.scale_dtype]
        else:
            total += parameter.numel() * BYTES["float32" if id(parameter) in norms else scheme.model_dtype]
    return total


def _norm_parameters(hf_model) -> set[int]:
    import torch

    norms = [m for m in hf_model.modules() if isinstance(m, torch.nn.LayerNorm) or type(m).__name__.endswith("RMSNorm")]
    return {id(p) for m in norms for p in m.parameters(recurse=False)}


@pytest.fixture(scope="module", params=sorted(MODELS))
def checkpoint(request, tmp_path_factory):
    import transformers

    config_class, model_class, config = MODELS[request.param]
    hf_model = random_hf_model(getattr(transformers, config_class), getattr(transformers, model_class), **config)
    return request.param, hf_model, save_hf_model(hf_model, tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("scheme", sorted(load_schemes().values(), key=lambda s: s.name), ids=lambda s: s.name)
def test_weight_bytes_are_parameters_times_bits_plus_scales(checkpoint, scheme, tmp_path):
    from codegen.artifact.tensor_cache import SHARD_PREFIX
    from codegen.convert.weights import convert
    from codegen.models import load_model

    spec, hf_model, model_dir = checkpoint
    convert(load_model(spec), model_dir, tmp_path, quantization=scheme.name, progress=False)
    stored = sum(path.stat().st_size for path in tmp_path.glob(f"{SHARD_PREFIX}*.bin"))
    expected = expected_bytes(hf_model, scheme)
    assert abs(stored - expected) <= TOLERANCE * expected, f"{spec} {scheme.name}: {stored} bytes stored, {expected} expected"


def test_norms_are_stored_in_float32_and_the_rest_in_the_model_dtype(checkpoint, tmp_path):
    from codegen.artifact.tensor_cache import read_index
    from codegen.convert.weights import convert
    from codegen.models import load_model

    spec, hf_model, model_dir = checkpoint
    convert(load_model(spec), model_dir, tmp_path, quantization="q0f16", progress=False)
    dtypes = [record["dtype"] for shard in read_index(tmp_path)["records"] for record in shard["records"]]
    assert dtypes.count("float32") == len(_norm_parameters(hf_model)) > 0, f"{spec}: {dtypes}"
    assert set(dtypes) == {"float32", "float16"}, f"{spec}: {dtypes}"
