# Generated from specs/qwen2.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 999bdf85a7e5ae72adbb643f8f15676018c78483ae56fe380389e151faf4c568
"""Where each Qwen2 model parameter comes from in a Hugging Face checkpoint.

A parameter is read from one HF tensor, or from several concatenated along axis 0, after its rule's
transforms are applied to each source (this family's rules list none).
"""

import dataclasses

from .model import Qwen2Config

# A checkpoint of the bare backbone (HF's base model class) names its tensors without this prefix.
BACKBONE_PREFIX = "model."


@dataclasses.dataclass(frozen=True)
class WeightSource:
    hf_names: tuple[str, ...]
    transforms: tuple[str, ...] = ()


def weight_map(config: Qwen2Config) -> dict[str, WeightSource]:
    """Model parameter name -> its source in the HF checkpoint."""
    sources = {
        "model.embed_tokens.weight": WeightSource(("model.embed_tokens.weight",)),
        "model.norm.weight": WeightSource(("model.norm.weight",)),
    }
    for i in range(config.num_hidden_layers):
        sources[f"model.layers.{i}.input_layernorm.weight"] = WeightSource(
            (f"model.layers.{i}.input_layernorm.weight",)
        )
        sources[f"model.layers.{i}.self_attn.q_proj.weight"] = WeightSource(
            (f"model.layers.{i}.self_attn.q_proj.weight",)
        )
        sources[f"model.layers.{i}.self_attn.q_proj.bias"] = WeightSource(
            (f"model.layers.{i}.self_attn.q_proj.bias",)
        )
        sources[f"model.layers.{i}.self_attn.k_proj.weight"] = WeightSource(
            (f"model.layers.{i}.self_attn.k_proj.weight",)
        )
        sources[f"model.layers.{i}.self_attn.k_proj.bias"] = WeightSource(
            (f"model.layers.{i}.self_attn.k_proj.bias",)
        )
        sources[f"model.layers.{i}.self_attn.v_proj.weight"] = WeightSource(
            (f"model.layers.{i}.self_attn.v_proj.weight",)
        )
        sources[f"model.layers.{i}.self_attn.v_proj.bias"] = WeightSource(
            (f"model.layers.{i}.self_attn.v_proj.bias",)
        )
        sources[f"model.layers.{i}.self_attn.o_proj.weight"] = WeightSource(
            (f"model.layers.{i}.self_attn.o_proj.weight",)
        )
        sources[f"model.layers.{i}.post_attention_layernorm.weight"] = WeightSource(
            (f"model.layers.{i}.post_attention_layernorm.weight",)
        )
        sources[f"model.layers.{i}.mlp.gate_proj.weight"] = WeightSource(
            (f"model.layers.{i}.mlp.gate_proj.weight",)
        )
        sources[f"model.layers.{i}.mlp.up_proj.weight"] = WeightSource(
            (f"model.layers.{i}.mlp.up_proj.weight",)
        )
        sources[f"model.layers.{i}.mlp.down_proj.weight"] = WeightSource(
            (f"model.layers.{i}.mlp.down_proj.weight",)
        )
    if not config.tie_word_embeddings:
        sources["lm_head.weight"] = WeightSource(("lm_head.weight",))
    return sources


def ignored_tensors(config: Qwen2Config) -> set[str]:
    """HF tensors that are not parameters: buffers, and the LM head when it is tied to the embedding."""
    ignored = set()
    for i in range(config.num_hidden_layers):
        ignored.add(f"model.layers.{i}.self_attn.rotary_emb.inv_freq")
    if config.tie_word_embeddings:
        ignored.add("lm_head.weight")
    return ignored
