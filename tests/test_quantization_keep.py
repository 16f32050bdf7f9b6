"""A spec's quantization.keep holds parameters float under every group scheme (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import REPO_ROOT, random_hf_model, save_hf_model

LLAMA = (REPO_ROOT / "specs" / "llama.yaml").read_text()


def _package(folder, keep: str):
    from codegen import render
    from codegen.models import GeneratedModel, import_package

    spec_path = folder / "specs" / "llama.yaml"
    spec_path.parent.mkdir(parents=True)
    spec_path.write_text(LLAMA + f"\nquantization:\n  keep: {keep}\n")
    render.generate(output_dir=folder / "generated", spec_files=[spec_path])
    package_dir = folder / "generated" / "llama"
    package = import_package(package_dir, f"_test_keep_{folder.name}")
    return GeneratedModel(name="llama", package=package), (package_dir / "model.py").read_text()


def _stored(artifact) -> dict[str, tuple[dict, str]]:
    """Tensor name -> (its record, the shard file holding it) from the tensor-cache index."""
    from codegen.artifact import tensor_cache

    index = tensor_cache.read_index(artifact)
    return {record["name"]: (record, shard["dataPath"]) for shard in index["records"] for record in shard["records"]}


def test_kept_embedding_stays_float_in_code_and_artifact(tmp_path):
    import transformers
    from safetensors.numpy import load_file

    from codegen.convert.weights import convert

    model, code = _package(tmp_path, "[embedding]")
    assert "self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)" in code
    assert "self.lm_head = _linear(" in code  # not kept: the scheme decides
    hf_model = random_hf_model(
        transformers.LlamaConfig, transformers.LlamaForCausalLM, hidden_size=64, num_attention_heads=4,
        num_key_value_heads=2, num_hidden_layers=1, intermediate_size=96, vocab_size=100, tie_word_embeddings=False,
    )
    model_dir = save_hf_model(hf_model, tmp_path / "hf")
    artifact = tmp_path / "artifact"
    convert(model, model_dir, artifact, quantization="q4f32_1", progress=False)
    stored = _stored(artifact)
    embedding, shard = stored["model.embed_tokens.weight"]
    assert (embedding["dtype"], embedding["shape"]) == ("float32", [100, 64])
    assert "model.embed_tokens.q_weight" not in stored
    assert {"lm_head.q_weight", "lm_head.q_scale", "model.layers.0.mlp.down_proj.q_weight"} <= set(stored)
    assert "lm_head.weight" not in stored
    # The stored table is the checkpoint's, bit for bit.
    table = np.frombuffer((artifact / shard).read_bytes(), np.float32, count=100 * 64, offset=embedding["byteOffset"])
    expected = load_file(str(model_dir / "model.safetensors"))["model.embed_tokens.weight"]
    np.testing.assert_array_equal(table.reshape(100, 64), expected)


def test_kept_lm_head_renders_a_float_linear(tmp_path):
    _, code = _package(tmp_path, "[lm_head]")
    assert "self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)" in code
    assert "self.embed_tokens = _embedding(" in code


def test_unknown_keep_role_is_a_located_error(tmp_path):
    from codegen.spec import SpecError, load_spec

    path = tmp_path / "llama.yaml"
    path.write_text(LLAMA + "\nquantization:\n  keep: [norms]\n")
    with pytest.raises(SpecError, match=r"llama.yaml:\d+: quantization.keep\[0\]: 'norms' is not allowed; allowed values: embedding, lm_head"):
        load_spec(path)
