"""A new family that only combines existing options needs one YAML file and nothing else.

The spec below describes GPT-NeoX (Pythia): parallel residual block, fused multi-head qkv stored
per head as [q k v], partial rotary embedding (rotary_pct), LayerNorm, erf GELU, untied head. It is
written to a temporary folder, generated into a temporary package, imported, compiled and checked
against transformers.GPTNeoXForCausalLM. Nothing in the repository changes.
"""

from __future__ import annotations

import pytest

from tests.support import random_hf_model, save_hf_model
from tests.parity import VOCAB, WINDOW, check_parity

GPT_NEOX_SPEC = """\
# GPT-NeoX / Pythia, from existing options only.
name: gpt_neox
class_prefix: GPTNeoX
description: "GPT-NeoX: parallel residual, partial rotary embedding, LayerNorm, GELU MLP."
hf_model_type: gpt_neox
architecture:
  block: parallel            # x + attn(input_layernorm(x)) + mlp(post_attention_layernorm(x))
  norm: layernorm
  position: rope
  attention:
    mode: mha
    qkv: fused
    bias: {qkv: true, out: true}
  mlp:
    gated: false
    bias: {up: true, down: true}
  lm_head: {bias: false}
modules:
  backbone: gpt_neox
  embed_tokens: embed_in
  layers: layers
  attn_norm: input_layernorm
  attention: attention
  qkv_proj: query_key_value
  out_proj: dense
  mlp_norm: post_attention_layernorm
  mlp: mlp
  up_proj: dense_h_to_4h
  down_proj: dense_4h_to_h
  final_norm: final_layer_norm
  lm_head: embed_out
config:
  vocab_size: {hf: vocab_size}
  hidden_size: {hf: hidden_size}
  intermediate_size: {hf: intermediate_size}
  num_hidden_layers: {hf: num_hidden_layers}
  num_attention_heads: {hf: num_attention_heads}
  head_dim: {default_from: hidden_size // num_attention_heads}
  context_window_size: {hf: max_position_embeddings}
  norm_eps: {hf: layer_norm_eps, default: 1.0e-5}
  rope_theta: {hf: [rotary_emb_base, rope_parameters.rope_theta], default: 10000.0}
  rotary_fraction: {hf: [rotary_pct, rope_parameters.partial_rotary_factor], default: 0.25}
  tie_word_embeddings: {hf: tie_word_embeddings, default: false}
  scale_attention: {default: true}
  activation:
    hf: hidden_act
    default: gelu
    values: {gelu: gelu, gelu_new: gelu_tanh, gelu_pytorch_tanh: gelu_tanh, relu: relu}
config_checks:
  - {hf: use_parallel_residual, equals: true, default: true}
  - {hf: attention_bias, equals: true, default: true}
weights:
  rules:                     # rows stored per head as [q k v]; the KV cache wants all q, all k, all v
    - {param: "gpt_neox.layers.{i}.attention.query_key_value.weight", from: "gpt_neox.layers.{i}.attention.query_key_value.weight", transforms: [deinterleave_qkv]}
    - {param: "gpt_neox.layers.{i}.attention.query_key_value.bias", from: "gpt_neox.layers.{i}.attention.query_key_value.bias", transforms: [deinterleave_qkv]}
  ignore:
    - gpt_neox.layers.{i}.attention.bias
    - gpt_neox.layers.{i}.attention.masked_bias
    - gpt_neox.layers.{i}.attention.rotary_emb.inv_freq
presets:
  pythia_160m: {hidden_size: 768, intermediate_size: 3072, num_hidden_layers: 12, num_attention_heads: 12,
                max_position_embeddings: 2048, rotary_pct: 0.25, rotary_emb_base: 10000, vocab_size: 50304}
"""


@pytest.fixture(scope="module")
def neox_package(tmp_path_factory):
    from codegen import render
    from codegen.models import import_package

    root = tmp_path_factory.mktemp("new_family")
    spec_path = root / "specs" / "gpt_neox.yaml"
    spec_path.parent.mkdir()
    spec_path.write_text(GPT_NEOX_SPEC)
    written = render.generate(output_dir=root / "generated", spec_files=[spec_path])
    assert "gpt_neox/model.py" in written
    return import_package(root / "generated" / "gpt_neox", "_test_new_family_gpt_neox")


def test_new_family_generates_from_yaml_alone(neox_package):
    source = (neox_package.__path__[0] + "/model.py")
    text = open(source).read()
    assert "class GPTNeoXForCausalLM" in text and "hidden_states + attention + mlp" in text
    config = neox_package.Config.from_dict(neox_package.PRESETS["pythia_160m"])
    assert config.rotary_dim == 16 and not config.tie_word_embeddings


@pytest.mark.slow
def test_new_family_parity(neox_package, tmp_path):
    import transformers

    from codegen.build.compile import BuildOptions, compile_to_dir
    from codegen.models import GeneratedModel
    from codegen.runtime import Model
    from codegen.convert.weights import convert

    hf_model = random_hf_model(
        transformers.GPTNeoXConfig, transformers.GPTNeoXForCausalLM,
        hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96,
        max_position_embeddings=WINDOW, vocab_size=VOCAB, rotary_pct=0.5, rotary_emb_base=500,
    )
    model_dir = save_hf_model(hf_model, tmp_path / "hf")
    model = GeneratedModel(name="gpt_neox", package=neox_package)
    config = neox_package.Config.from_file(model_dir / "config.json")
    assert (config.rotary_dim, config.rope_theta) == (8, 500.0)  # read from transformers 5's rope_parameters
    artifact = tmp_path / "artifact"
    compile_to_dir(model, config, BuildOptions(), artifact)
    convert(model, model_dir, artifact, progress=False)
    check_parity(Model(artifact, max_batch_size=4), hf_model, "gpt_neox (new family)")


def test_spec_without_presets_builds_from_a_config_json(tmp_path):
    """A user who compiles only from a config.json writes no presets (issue 14)."""
    from codegen import render
    from codegen.models import GeneratedModel, ModelNotFound, import_package

    spec_path = tmp_path / "specs" / "gpt_neox.yaml"
    spec_path.parent.mkdir()
    spec_path.write_text(GPT_NEOX_SPEC[: GPT_NEOX_SPEC.index("presets:")])
    render.generate(output_dir=tmp_path / "generated", spec_files=[spec_path])
    package = import_package(tmp_path / "generated" / "gpt_neox", "_test_new_family_no_presets")
    assert package.PRESETS == {}
    model = GeneratedModel(name="gpt_neox", package=package)
    config = model.config(hf_config={"model_type": "gpt_neox", "hidden_size": 64, "intermediate_size": 96,
                                     "num_hidden_layers": 2, "num_attention_heads": 4,
                                     "max_position_embeddings": 128, "vocab_size": 100})
    assert config.rotary_dim == 4
    with pytest.raises(ModelNotFound, match="presets: none"):
        model.config(preset="pythia_160m")
