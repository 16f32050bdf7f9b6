# Generated from specs/falcon.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 5878b490b6c0d0b6c0bbd852522136a3a10b7ee32bdceedaf68c2f4d4dd8869d
"""Where each Falcon model parameter comes from in a Hugging Face checkpoint.

A parameter is read from one HF tensor, or from several concatenated along axis 0, after its rule's
transforms are applied to each source (this family's rules list none).
"""

import dataclasses

from .model import FalconConfig

# A checkpoint of the bare backbone (HF's base model class) names its tensors without this prefix.
BACKBONE_PREFIX = "transformer."


@dataclasses.dataclass(frozen=True)
class WeightSource:
    hf_names: tuple[str, ...]
    transforms: tuple[str, ...] = ()


def weight_map(config: FalconConfig) -> dict[str, WeightSource]:
    """Model parameter name -> its source in the HF checkpoint."""
    sources = {
        "transformer.word_embeddings.weight": WeightSource(("transformer.word_embeddings.weight",)),
        "transformer.ln_f.weight": WeightSource(("transformer.ln_f.weight",)),
        "transformer.ln_f.bias": WeightSource(("transformer.ln_f.bias",)),
    }
    for i in range(config.num_hidden_layers):
        sources[f"transformer.h.{i}.input_layernorm.weight"] = WeightSource(
            (f"transformer.h.{i}.input_layernorm.weight",)
        )
        sources[f"transformer.h.{i}.input_layernorm.bias"] = WeightSource(
            (f"transformer.h.{i}.input_layernorm.bias",)
        )
        sources[f"transformer.h.{i}.self_attention.query_key_value.weight"] = WeightSource(
            (f"transformer.h.{i}.self_attention.query_key_value.weight",)
        )
        sources[f"transformer.h.{i}.self_attention.dense.weight"] = WeightSource(
            (f"transformer.h.{i}.self_attention.dense.weight",)
        )
        sources[f"transformer.h.{i}.mlp.dense_h_to_4h.weight"] = WeightSource(
            (f"transformer.h.{i}.mlp.dense_h_to_4h.weight",)
        )
        sources[f"transformer.h.{i}.mlp.dense_4h_to_h.weight"] = WeightSource(
            (f"transformer.h.{i}.mlp.dense_4h_to_h.weight",)
        )
    if not config.tie_word_embeddings:
        sources["lm_head.weight"] = WeightSource(("lm_head.weight",))
    return sources


def ignored_tensors(config: FalconConfig) -> set[str]:
    """HF tensors that are not parameters: buffers, and the LM head when it is tied to the embedding."""
    ignored = set()
    if config.tie_word_embeddings:
        ignored.add("lm_head.weight")
    return ignored
