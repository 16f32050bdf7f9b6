# Generated from specs/gpt_bigcode_mha.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: d936a64fd2987a9f00fb10c8306a7f31db67d9977c911618d27bbce51076b15d
"""Where each GPTBigCodeMHA model parameter comes from in a Hugging Face checkpoint.

A parameter is read from one HF tensor, or from several concatenated along axis 0, after its rule's
transforms are applied to each source:
- deinterleave_qkv: rows stored per KV head as [q heads, k, v] -> all q, all k, all v rows.
"""

import dataclasses

from .model import GPTBigCodeMHAConfig

# A checkpoint of the bare backbone (HF's base model class) names its tensors without this prefix.
BACKBONE_PREFIX = "transformer."


@dataclasses.dataclass(frozen=True)
class WeightSource:
    hf_names: tuple[str, ...]
    transforms: tuple[str, ...] = ()


def weight_map(config: GPTBigCodeMHAConfig) -> dict[str, WeightSource]:
    """Model parameter name -> its source in the HF checkpoint."""
    sources = {
        "transformer.wte.weight": WeightSource(("transformer.wte.weight",)),
        "transformer.wpe.weight": WeightSource(("transformer.wpe.weight",)),
        "transformer.ln_f.weight": WeightSource(("transformer.ln_f.weight",)),
        "transformer.ln_f.bias": WeightSource(("transformer.ln_f.bias",)),
    }
    for i in range(config.num_hidden_layers):
        sources[f"transformer.h.{i}.ln_1.weight"] = WeightSource(
            (f"transformer.h.{i}.ln_1.weight",)
        )
        sources[f"transformer.h.{i}.ln_1.bias"] = WeightSource((f"transformer.h.{i}.ln_1.bias",))
        sources[f"transformer.h.{i}.attn.c_attn.weight"] = WeightSource(
            (f"transformer.h.{i}.attn.c_attn.weight",), transforms=("deinterleave_qkv",)
        )
        sources[f"transformer.h.{i}.attn.c_attn.bias"] = WeightSource(
            (f"transformer.h.{i}.attn.c_attn.bias",), transforms=("deinterleave_qkv",)
        )
        sources[f"transformer.h.{i}.attn.c_proj.weight"] = WeightSource(
            (f"transformer.h.{i}.attn.c_proj.weight",)
        )
        sources[f"transformer.h.{i}.attn.c_proj.bias"] = WeightSource(
            (f"transformer.h.{i}.attn.c_proj.bias",)
        )
        sources[f"transformer.h.{i}.ln_2.weight"] = WeightSource(
            (f"transformer.h.{i}.ln_2.weight",)
        )
        sources[f"transformer.h.{i}.ln_2.bias"] = WeightSource((f"transformer.h.{i}.ln_2.bias",))
        sources[f"transformer.h.{i}.mlp.c_fc.weight"] = WeightSource(
            (f"transformer.h.{i}.mlp.c_fc.weight",)
        )
        sources[f"transformer.h.{i}.mlp.c_fc.bias"] = WeightSource(
            (f"transformer.h.{i}.mlp.c_fc.bias",)
        )
        sources[f"transformer.h.{i}.mlp.c_proj.weight"] = WeightSource(
            (f"transformer.h.{i}.mlp.c_proj.weight",)
        )
        sources[f"transformer.h.{i}.mlp.c_proj.bias"] = WeightSource(
            (f"transformer.h.{i}.mlp.c_proj.bias",)
        )
    if not config.tie_word_embeddings:
        sources["lm_head.weight"] = WeightSource(("lm_head.weight",))
    return sources


def ignored_tensors(config: GPTBigCodeMHAConfig) -> set[str]:
    """HF tensors that are not parameters: buffers, and the LM head when it is tied to the embedding."""
    ignored = set()
    for i in range(config.num_hidden_layers):
        ignored.add(f"transformer.h.{i}.attn.bias")
        ignored.add(f"transformer.h.{i}.attn.masked_bias")
    if config.tie_word_embeddings:
        ignored.add("lm_head.weight")
    return ignored
