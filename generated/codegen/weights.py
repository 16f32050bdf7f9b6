# Generated from specs/codegen.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: f88767412356cbaac2bbe3c8cf1720558aa3ad51146deb17507d053d57a3ce90
"""Where each CodeGen model parameter comes from in a Hugging Face checkpoint.

A parameter is read from one HF tensor, or from several concatenated along axis 0, after its rule's
transforms are applied to each source:
- unshard_qvk: rows stored in 4 model-parallel shards of [q, v, k] -> all q, all k, all v rows.
"""

import dataclasses

from .model import CodeGenConfig

# A checkpoint of the bare backbone (HF's base model class) names its tensors without this prefix.
BACKBONE_PREFIX = "transformer."


@dataclasses.dataclass(frozen=True)
class WeightSource:
    hf_names: tuple[str, ...]
    transforms: tuple[str, ...] = ()


def weight_map(config: CodeGenConfig) -> dict[str, WeightSource]:
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
        sources[f"transformer.h.{i}.attn.qkv_proj.weight"] = WeightSource(
            (f"transformer.h.{i}.attn.qkv_proj.weight",), transforms=("unshard_qvk",)
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


def ignored_tensors(config: CodeGenConfig) -> set[str]:
    """HF tensors that are not parameters: buffers, and the LM head when it is tied to the embedding."""
    ignored = set()
    for i in range(config.num_hidden_layers):
        ignored.add(f"transformer.h.{i}.attn.causal_mask")
        ignored.add(f"transformer.h.{i}.attn.masked_bias")
    if config.tie_word_embeddings:
        ignored.add("lm_head.weight")
        ignored.add("lm_head.bias")
    return ignored
