# Generated from specs/starcoder2.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: d2229f8d4f48137b29f8c5c765423b9f455ec414698599df1f7dddba2813a94a
"""Where each Starcoder2 model parameter comes from in a Hugging Face checkpoint.

A parameter is read from one HF tensor, or from several concatenated along axis 0, after its rule's
transforms are applied to each source (this family's rules list none).
"""

import dataclasses

from .model import Starcoder2Config

# A checkpoint of the bare backbone (HF's base model class) names its tensors without this prefix.
BACKBONE_PREFIX = "model."


@dataclasses.dataclass(frozen=True)
class WeightSource:
    hf_names: tuple[str, ...]
    transforms: tuple[str, ...] = ()


def weight_map(config: Starcoder2Config) -> dict[str, WeightSource]:
    """Model parameter name -> its source in the HF checkpoint."""
    sources = {
        "model.embed_tokens.weight": WeightSource(("model.embed_tokens.weight",)),
        "model.norm.weight": WeightSource(("model.norm.weight",)),
        "model.norm.bias": WeightSource(("model.norm.bias",)),
    }
    for i in range(config.num_hidden_layers):
        sources[f"model.layers.{i}.input_layernorm.weight"] = WeightSource(
            (f"model.layers.{i}.input_layernorm.weight",)
        )
        sources[f"model.layers.{i}.input_layernorm.bias"] = WeightSource(
            (f"model.layers.{i}.input_layernorm.bias",)
        )
        sources[f"model.layers.{i}.self_attn.qkv_proj.weight"] = WeightSource(
            (
                f"model.layers.{i}.self_attn.q_proj.weight",
                f"model.layers.{i}.self_attn.k_proj.weight",
                f"model.layers.{i}.self_attn.v_proj.weight",
            )
        )
        sources[f"model.layers.{i}.self_attn.qkv_proj.bias"] = WeightSource(
            (
                f"model.layers.{i}.self_attn.q_proj.bias",
                f"model.layers.{i}.self_attn.k_proj.bias",
                f"model.layers.{i}.self_attn.v_proj.bias",
            )
        )
        sources[f"model.layers.{i}.self_attn.o_proj.weight"] = WeightSource(
            (f"model.layers.{i}.self_attn.o_proj.weight",)
        )
        sources[f"model.layers.{i}.self_attn.o_proj.bias"] = WeightSource(
            (f"model.layers.{i}.self_attn.o_proj.bias",)
        )
        sources[f"model.layers.{i}.post_attention_layernorm.weight"] = WeightSource(
            (f"model.layers.{i}.post_attention_layernorm.weight",)
        )
        sources[f"model.layers.{i}.post_attention_layernorm.bias"] = WeightSource(
            (f"model.layers.{i}.post_attention_layernorm.bias",)
        )
        sources[f"model.layers.{i}.mlp.c_fc.weight"] = WeightSource(
            (f"model.layers.{i}.mlp.c_fc.weight",)
        )
        sources[f"model.layers.{i}.mlp.c_fc.bias"] = WeightSource(
            (f"model.layers.{i}.mlp.c_fc.bias",)
        )
        sources[f"model.layers.{i}.mlp.c_proj.weight"] = WeightSource(
            (f"model.layers.{i}.mlp.c_proj.weight",)
        )
        sources[f"model.layers.{i}.mlp.c_proj.bias"] = WeightSource(
            (f"model.layers.{i}.mlp.c_proj.bias",)
        )
    if not config.tie_word_embeddings:
        sources["lm_head.weight"] = WeightSource(("lm_head.weight",))
    return sources


def ignored_tensors(config: Starcoder2Config) -> set[str]:
    """HF tensors that are not parameters: buffers, and the LM head when it is tied to the embedding."""
    ignored = set()
    if config.tie_word_embeddings:
        ignored.add("lm_head.weight")
    return ignored
