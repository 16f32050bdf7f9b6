# Generated from specs/gptj.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 9b0be1e5a9621b6f7ed8fc62ab20534d3b92e0777d79ee2da03c53188772378b
"""Where each GPTJ model parameter comes from in a Hugging Face checkpoint.

A parameter is read from one HF tensor, or from several concatenated along axis 0, after its rule's
transforms are applied to each source (this family's rules list none).
"""

import dataclasses

from .model import GPTJConfig

# A checkpoint of the bare backbone (HF's base model class) names its tensors without this prefix.
BACKBONE_PREFIX = "transformer."


@dataclasses.dataclass(frozen=True)
class WeightSource:
    hf_names: tuple[str, ...]
    transforms: tuple[str, ...] = ()


def weight_map(config: GPTJConfig) -> dict[str, WeightSource]:
    """Model parameter name -> its source in the HF checkpoint."""
    sources = {
        "transformer.wte.weight": WeightSource(("transformer.wte.weight",)),
        "transformer.ln_f.weight": WeightSource(("transformer.ln_f.weight",)),
        "transformer.ln_f.bias": WeightSource(("transformer.ln_f.bias",)),
    }
    for i in range(config.num_hidden_layers):
        sources[f"transformer.h.{i}.ln_1.weight"] = WeightSource(
            (f"transformer.h.{i}.ln_1.weight",)
        )
        sources[f"transformer.h.{i}.ln_1.bias"] = WeightSource((f"transformer.h.{i}.ln_1.bias",))
        sources[f"transformer.h.{i}.attn.q_proj.weight"] = WeightSource(
            (f"transformer.h.{i}.attn.q_proj.weight",)
        )
        sources[f"transformer.h.{i}.attn.k_proj.weight"] = WeightSource(
            (f"transformer.h.{i}.attn.k_proj.weight",)
        )
        sources[f"transformer.h.{i}.attn.v_proj.weight"] = WeightSource(
            (f"transformer.h.{i}.attn.v_proj.weight",)
        )
        sources[f"transformer.h.{i}.attn.out_proj.weight"] = WeightSource(
            (f"transformer.h.{i}.attn.out_proj.weight",)
        )
        sources[f"transformer.h.{i}.mlp.fc_in.weight"] = WeightSource(
            (f"transformer.h.{i}.mlp.fc_in.weight",)
        )
        sources[f"transformer.h.{i}.mlp.fc_in.bias"] = WeightSource(
            (f"transformer.h.{i}.mlp.fc_in.bias",)
        )
        sources[f"transformer.h.{i}.mlp.fc_out.weight"] = WeightSource(
            (f"transformer.h.{i}.mlp.fc_out.weight",)
        )
        sources[f"transformer.h.{i}.mlp.fc_out.bias"] = WeightSource(
            (f"transformer.h.{i}.mlp.fc_out.bias",)
        )
    if not config.tie_word_embeddings:
        sources["lm_head.weight"] = WeightSource(("lm_head.weight",))
        sources["lm_head.bias"] = WeightSource(("lm_head.bias",))
    return sources


def ignored_tensors(config: GPTJConfig) -> set[str]:
    """HF tensors that are not parameters: buffers, and the LM head when it is tied to the embedding."""
    ignored = set()
    for i in range(config.num_hidden_layers):
        ignored.add(f"transformer.h.{i}.attn.bias")
        ignored.add(f"transformer.h.{i}.attn.masked_bias")
    if config.tie_word_embeddings:
        ignored.add("lm_head.weight")
        ignored.add("lm_head.bias")
    return ignored
