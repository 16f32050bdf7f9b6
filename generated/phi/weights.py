# Generated from specs/phi.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: b9a9e15aa213e5b712293d2e556f505eb50c2a4ff57b23bebacc7616757d022c
"""Where each Phi model parameter comes from in a Hugging Face checkpoint.

A parameter is read from one HF tensor, or from several concatenated along axis 0, after its rule's
transforms are applied to each source (this family's rules list none).
"""

import dataclasses

from .model import PhiConfig

# A checkpoint of the bare backbone (HF's base model class) names its tensors without this prefix.
BACKBONE_PREFIX = "model."


@dataclasses.dataclass(frozen=True)
class WeightSource:
    hf_names: tuple[str, ...]
    transforms: tuple[str, ...] = ()


def weight_map(config: PhiConfig) -> dict[str, WeightSource]:
    """Model parameter name -> its source in the HF checkpoint."""
    sources = {
        "model.embed_tokens.weight": WeightSource(("model.embed_tokens.weight",)),
        "model.final_layernorm.weight": WeightSource(("model.final_layernorm.weight",)),
        "model.final_layernorm.bias": WeightSource(("model.final_layernorm.bias",)),
    }
    for i in range(config.num_hidden_layers):
        sources[f"model.layers.{i}.input_layernorm.weight"] = WeightSource(
            (f"model.layers.{i}.input_layernorm.weight",)
        )
        sources[f"model.layers.{i}.input_layernorm.bias"] = WeightSource(
            (f"model.layers.{i}.input_layernorm.bias",)
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
        sources[f"model.layers.{i}.self_attn.dense.weight"] = WeightSource(
            (f"model.layers.{i}.self_attn.dense.weight",)
        )
        sources[f"model.layers.{i}.self_attn.dense.bias"] = WeightSource(
            (f"model.layers.{i}.self_attn.dense.bias",)
        )
        sources[f"model.layers.{i}.mlp.fc1.weight"] = WeightSource(
            (f"model.layers.{i}.mlp.fc1.weight",)
        )
        sources[f"model.layers.{i}.mlp.fc1.bias"] = WeightSource(
            (f"model.layers.{i}.mlp.fc1.bias",)
        )
        sources[f"model.layers.{i}.mlp.fc2.weight"] = WeightSource(
            (f"model.layers.{i}.mlp.fc2.weight",)
        )
        sources[f"model.layers.{i}.mlp.fc2.bias"] = WeightSource(
            (f"model.layers.{i}.mlp.fc2.bias",)
        )
    if not config.tie_word_embeddings:
        sources["lm_head.weight"] = WeightSource(("lm_head.weight",))
        sources["lm_head.bias"] = WeightSource(("lm_head.bias",))
    return sources


def ignored_tensors(config: PhiConfig) -> set[str]:
    """HF tensors that are not parameters: buffers, and the LM head when it is tied to the embedding."""
    ignored = set()
    if config.tie_word_embeddings:
        ignored.add("lm_head.weight")
        ignored.add("lm_head.bias")
    return ignored
