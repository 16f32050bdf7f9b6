"""Parity of every spec family against its transformers reference, through the real path.

save_pretrained -> convert + compile (ArtifactFactory) -> codegen.runtime.Model, float32 on CPU:
prefill then decode steps that cross 16-token KV pages, a batch of sequences of different lengths
that must match each sequence alone, and greedy generation token for token.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from tests.parity import VOCAB, WINDOW, check_parity, tokens
from tests.support import REPO_ROOT, hf_logits, max_abs_diff, random_hf_model, save_hf_model, write_santacoder_legacy

@dataclasses.dataclass(frozen=True)
class Family:
    spec: str
    config_class: str
    model_class: str
    config: dict[str, Any]
    # Rewrites a save_pretrained folder into another checkpoint layout (e.g. the legacy SantaCoder one).
    rewrite: Callable[[Path, Path, Any], None] | None = None
    # Config fields the compiled model overrides (e.g. prefill_chunk_size).
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)


FAMILIES = {
    "gpt2": Family(
        spec="specs/gpt2.yaml",
        config_class="GPT2Config",
        model_class="GPT2LMHeadModel",
        config=dict(n_embd=64, n_head=4, n_layer=2, n_positions=WINDOW, vocab_size=VOCAB),
    ),
    "starcoder2": Family(
        spec="specs/starcoder2.yaml",
        config_class="Starcoder2Config",
        model_class="Starcoder2ForCausalLM",
        # rope_theta away from the default so that reading it (from rope_parameters) is checked.
        config=dict(
            hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
            intermediate_size=96, max_position_embeddings=WINDOW, vocab_size=VOCAB, rope_theta=500.0,
        ),
    ),
    "llama": Family(
        spec="specs/llama.yaml",
        config_class="LlamaConfig",
        model_class="LlamaForCausalLM",
        # llama3 RoPE scaling (Llama 3.1+) with original_max_position_embeddings 32: of head_dim 16's eight
        # frequencies, wavelengths 6.3 .. 1164 positions, one is kept (< 32 / high_freq_factor), two are
        # blended and five divided by factor, so a wrong band moves the logits within 37 positions.
        # Linear scaling (DeepSeek-Coder) is checked by the deepseek_coder_1_3b preset (tests/test_presets.py).
        config=dict(
            hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
            intermediate_size=96, max_position_embeddings=WINDOW, vocab_size=VOCAB, rms_norm_eps=1e-5,
            rope_parameters=dict(
                rope_type="llama3", rope_theta=500.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=32,
            ),
        ),
    ),
    "santacoder_legacy": Family(
        spec="specs/santacoder_legacy.yaml",
        config_class="GPTBigCodeConfig",
        model_class="GPTBigCodeForCausalLM",
        config=dict(n_embd=64, n_head=4, n_layer=2, n_positions=WINDOW, vocab_size=VOCAB, multi_query=True),
        rewrite=write_santacoder_legacy,
    ),
}


# Families beyond the shipped code families: compiled once each here, and kept out of FAMILIES so
# that the quantized parity tests (which take FAMILIES) do not compile them twice more.
MORE_FAMILIES = {
    "phi": Family(
        spec="specs/phi.yaml",
        config_class="PhiConfig",
        model_class="PhiForCausalLM",
        # 0.4 of head_dim 16 rotates int(6.4) = 6 dimensions, as phi-2's 0.4 of 80 gives 32.
        config=dict(
            hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96,
            max_position_embeddings=WINDOW, vocab_size=VOCAB, partial_rotary_factor=0.4, rope_theta=500.0,
        ),
    ),
    "falcon": Family(
        spec="specs/falcon.yaml",
        config_class="FalconConfig",
        model_class="FalconForCausalLM",
        config=dict(
            hidden_size=64, num_attention_heads=4, num_hidden_layers=2, ffn_hidden_size=96,
            max_position_embeddings=WINDOW, vocab_size=VOCAB, multi_query=True, rope_theta=500.0,
        ),
    ),
    "falcon_40b": Family(
        spec="specs/falcon_40b.yaml",
        config_class="FalconConfig",
        model_class="FalconForCausalLM",
        config=dict(
            hidden_size=64, num_attention_heads=4, num_kv_heads=2, num_hidden_layers=2, ffn_hidden_size=96,
            max_position_embeddings=WINDOW, vocab_size=VOCAB, new_decoder_architecture=True, rope_theta=500.0,
        ),
    ),
    "qwen3": Family(
        spec="specs/qwen3.yaml",
        config_class="Qwen3Config",
        model_class="Qwen3ForCausalLM",
        # head_dim 24 with hidden 64 / 4 heads: the width of q/k/v and of the per-head norms is its own.
        # YaRN with original_max_position_embeddings 32: of the 12 frequency pairs, the truncated
        # correction range [0, 4] blends pairs 0-3 and interpolates 4-11 (÷ factor), and the attention
        # factor 0.1 ln 4 + 1 = 1.14 scales cos and sin.
        config=dict(
            hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=24, num_hidden_layers=2,
            intermediate_size=96, max_position_embeddings=WINDOW, vocab_size=VOCAB,
            rope_parameters=dict(rope_type="yarn", rope_theta=500.0, factor=4.0, original_max_position_embeddings=32),
        ),
    ),
    "qwen2": Family(
        spec="specs/qwen2.yaml",
        config_class="Qwen2Config",
        model_class="Qwen2ForCausalLM",
        # Biased q, k and v (random biases: save_pretrained keeps what random_hf_model drew).
        config=dict(
            hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
            intermediate_size=96, max_position_embeddings=WINDOW, vocab_size=VOCAB, rope_theta=500.0,
        ),
    ),
    "granite": Family(
        spec="specs/granite.yaml",
        config_class="GraniteConfig",
        model_class="GraniteForCausalLM",
        config=dict(
            hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
            intermediate_size=96, max_position_embeddings=WINDOW, vocab_size=VOCAB, rope_theta=500.0,
            embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.3, logits_scaling=2.5,
        ),
    ),
    "gemma": Family(
        spec="specs/gemma.yaml",
        config_class="GemmaConfig",
        model_class="GemmaForCausalLM",
        config=dict(
            hidden_size=64, num_attention_heads=4, num_key_value_heads=1, head_dim=24, num_hidden_layers=2,
            intermediate_size=96, max_position_embeddings=WINDOW, vocab_size=VOCAB, rope_theta=500.0,
        ),
    ),
    # Window 11 with prefill chunks of 16: the batch's prompt of 33 = 3 windows is prefilled in three
    # chunks across the other sequences', so queries see the window partly in the chunk and partly in
    # the cache, at window starts that are not multiples of the kernels' 16-key blocks.
    "mistral": Family(
        spec="specs/mistral.yaml",
        config_class="MistralConfig",
        model_class="MistralForCausalLM",
        config=dict(
            hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
            intermediate_size=96, max_position_embeddings=WINDOW, vocab_size=VOCAB, rope_theta=500.0,
            sliding_window=11,
        ),
        overrides=dict(prefill_chunk_size=16),
    ),
    "gptj": Family(
        spec="specs/gptj.yaml",
        config_class="GPTJConfig",
        model_class="GPTJForCausalLM",
        # Interleaved rotation of 10 of head_dim 16: a rotate_half pairing or all 16 would not match.
        config=dict(n_embd=64, n_head=4, n_layer=2, n_inner=96, n_positions=WINDOW, vocab_size=VOCAB, rotary_dim=10),
    ),
    # 8 heads in CodeGen's 4 shards of [q | v | k]: two heads per shard, so a wrong unsharding order
    # (shard-major vs head-major, or q/v/k taken as q/k/v) swaps heads or keys and values.
    "codegen": Family(
        spec="specs/codegen.yaml",
        config_class="CodeGenConfig",
        model_class="CodeGenForCausalLM",
        config=dict(n_embd=64, n_head=8, n_layer=2, n_inner=96, n_positions=WINDOW, vocab_size=VOCAB, rotary_dim=6),
    ),
}
ALL_FAMILIES = {**FAMILIES, **MORE_FAMILIES}


def make_hf_model(family: Family, seed: int = 0):
    import transformers

    return random_hf_model(
        getattr(transformers, family.config_class), getattr(transformers, family.model_class), seed=seed, **family.config
    )


def prepare(family: Family, hf_model, folder: Path) -> Path:
    """save_pretrained (and rewrite into another layout when the family needs it); the model folder."""
    saved = save_hf_model(hf_model, folder / "hf")
    if family.rewrite is None:
        return saved
    family.rewrite(saved, folder / "converted", hf_model)
    return folder / "converted"


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module", params=sorted(ALL_FAMILIES))
def family_run(request, artifacts, tmp_path_factory):
    from codegen.runtime import Model

    family = ALL_FAMILIES[request.param]
    hf_model = make_hf_model(family)
    model_dir = prepare(family, hf_model, tmp_path_factory.mktemp(request.param))
    artifact = artifacts.build(str(REPO_ROOT / family.spec), model_dir, **family.overrides)
    return request.param, hf_model, Model(artifact, max_batch_size=4)


@pytest.mark.slow
def test_family_parity(family_run):
    name, hf_model, model = family_run
    check_parity(model, hf_model, name)


def test_the_sliding_window_changes_what_transformers_computes():
    """So that mistral's parity (test_family_parity) checks the window: without it HF's logits move."""
    family = MORE_FAMILIES["mistral"]
    sequence = tokens(0, 3 * family.config["sliding_window"])
    windowed = hf_logits(make_hf_model(family), sequence)
    unwindowed = hf_logits(make_hf_model(dataclasses.replace(family, config={**family.config, "sliding_window": None})), sequence)
    assert max_abs_diff(windowed, unwindowed) > 1.0


def test_yarn_changes_what_transformers_computes():
    """So that qwen3's parity (test_family_parity) checks YaRN: with plain RoPE HF's logits move."""
    family = MORE_FAMILIES["qwen3"]
    plain = {**family.config, "rope_parameters": {"rope_type": "default", "rope_theta": 500.0}}
    sequence = tokens(0, 48)
    yarn_logits = hf_logits(make_hf_model(family), sequence)
    assert max_abs_diff(yarn_logits, hf_logits(make_hf_model(dataclasses.replace(family, config=plain)), sequence)) > 1.0


def test_family_configs_read_transformers_configs(tmp_path):
    """Each family's generated Config reads what transformers 5 writes (nested rope_parameters too)."""
    import transformers

    from codegen.models import load_model

    for name, family in ALL_FAMILIES.items():
        if family.rewrite is not None:
            continue  # its config.json is rewritten into another dialect (checked with its weights)
        config = getattr(transformers, family.config_class)(**family.config)
        config.save_pretrained(tmp_path / name)
        ours = load_model(family.spec).package.Config.from_file(tmp_path / name / "config.json")
        assert ours.vocab_size == VOCAB and ours.num_hidden_layers == 2 and ours.context_window_size == WINDOW
        if "rope_theta" in family.config:
            assert ours.rope_theta == family.config["rope_theta"]
        kv_heads = family.config.get("num_key_value_heads", family.config.get("num_kv_heads"))
        if kv_heads:
            assert ours.num_key_value_heads == kv_heads


def test_presets_build_configs():
    from codegen.models import load_model

    expected = {
        "gpt2": {"gpt2": (768, 12, 12), "gpt2_medium": (1024, 16, 24)},
        "starcoder2": {"starcoder2_3b": (3072, 24, 30), "starcoder2_7b": (4608, 36, 32), "starcoder2_15b": (6144, 48, 40)},
        "llama": {"tinyllama_1_1b": (2048, 32, 22), "llama2_7b": (4096, 32, 32)},
    }
    for spec, presets in expected.items():
        model = load_model(spec)
        for preset, (width, heads, layers) in presets.items():
            config = model.config(preset=preset)
            assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (width, heads, layers)
    starcoder2 = load_model("starcoder2").config(preset="starcoder2_3b")
    assert starcoder2.rope_theta == 999999.4420358813 and starcoder2.num_key_value_heads == 2
    assert (starcoder2.context_window_size, starcoder2.attention_window) == (16384, 4096)
    mistral = load_model("mistral")
    assert mistral.config(preset="mistral_7b_v0_1").attention_window == 4096
    assert mistral.config(preset="codestral_22b_v0_1").attention_window is None  # sliding_window: null
    assert load_model("gpt2").config(preset="gpt2").intermediate_size == 3072  # n_inner null -> 4 x width


def test_scaled_rope_and_unsupported_options_are_refused():
    from codegen.models import load_model

    llama = load_model("llama")
    base = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 128, "vocab_size": 128}
    assert llama.package.Config.from_dict(base).num_key_value_heads == 4  # absent -> num_attention_heads
    for bad, words in (({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "lacks the required field 'rope_scaling.low_freq_factor'"),
                       ({"rope_scaling": {"type": "linear", "factor": -2.0}}, "'rope_scaling.factor' must be a positive"),
                       ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope_type 'yarn', which this model does not compute"),
                       ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_type 'dynamic'"),
                       ({"attention_bias": True}, "attention_bias")):
        with pytest.raises(llama.package.ConfigError, match=words):
            llama.package.Config.from_dict({**base, **bad})
    linear = llama.package.Config.from_dict({**base, "rope_scaling": {"type": "linear", "factor": 4}})
    assert linear.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    phi = load_model("phi")
    with pytest.raises(phi.package.ConfigError, match="rope_parameters.rope_type='linear'"):
        phi.package.Config.from_dict({**base, "model_type": "phi", "rope_parameters": {"rope_type": "linear", "factor": 2.0}})
    gpt2 = load_model("gpt2")
    with pytest.raises(gpt2.package.ConfigError, match="scale_attn_by_inverse_layer_idx"):
        gpt2.package.Config.from_dict({"n_embd": 64, "n_head": 4, "n_layer": 2, "n_positions": 64,
                                       "vocab_size": 10, "scale_attn_by_inverse_layer_idx": True})
    starcoder2 = load_model("starcoder2")
    with pytest.raises(starcoder2.package.ConfigError, match="use_bias"):
        starcoder2.package.Config.from_dict({"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                                             "num_hidden_layers": 2, "intermediate_size": 96,
                                             "max_position_embeddings": 64, "vocab_size": 10, "use_bias": False})


def test_santacoder_legacy_weight_map_reads_split_conv1d(tmp_path):
    """Without compiling: the converted tensors of the legacy layout equal those of the fused layout."""
    from codegen.convert.checkpoint import open_checkpoint
    from codegen.models import load_model
    from codegen.convert.weights import apply_transforms

    family = FAMILIES["santacoder_legacy"]
    hf_model = make_hf_model(family)
    legacy_dir = prepare(family, hf_model, tmp_path)
    fused = open_checkpoint(tmp_path / "hf")
    legacy = open_checkpoint(legacy_dir)
    model = load_model(family.spec)
    config = model.package.Config.from_file(legacy_dir / "config.json")
    for name, source in model.package.weight_map(config).items():
        parts = [apply_transforms(legacy.get(n), source.transforms, config) for n in source.hf_names]
        array = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        np.testing.assert_array_equal(array, fused.get(name))
    assert json.loads((legacy_dir / "config.json").read_text())["model_type"] == "gpt2"
    bad = {**json.loads((legacy_dir / "config.json").read_text()), "attention_head_type": "multihead"}
    with pytest.raises(model.package.ConfigError, match="attention_head_type"):
        model.package.Config.from_dict(bad)


def test_bare_backbone_checkpoint_converts_like_the_full_one(tmp_path):
    """The original gpt2 release stores GPT2Model tensors (h.0..., wte...) without `transformer.`."""
    from safetensors.numpy import load_file, save_file

    from codegen.models import load_model
    from codegen.convert.weights import convert

    family = FAMILIES["gpt2"]
    full = save_hf_model(make_hf_model(family), tmp_path / "full")
    bare = tmp_path / "bare"
    bare.mkdir()
    tensors = load_file(str(full / "model.safetensors"))
    bare_tensors = {name.removeprefix("transformer."): array for name, array in tensors.items()}
    bare_tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, WINDOW, WINDOW), dtype=np.float32))  # old mask buffer
    save_file(bare_tensors, str(bare / "model.safetensors"))
    (bare / "config.json").write_text((full / "config.json").read_text())
    assert not any(name.startswith("transformer.") for name in bare_tensors)

    model = load_model(family.spec)
    indexes = [convert(model, folder, tmp_path / f"out-{folder.name}", progress=False)["index"] for folder in (full, bare)]
    assert indexes[0]["records"] == indexes[1]["records"]  # same names, shapes, offsets and sha256
