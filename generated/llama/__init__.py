# Generated from specs/llama.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: d3f6117e2991a060273cd8e7f3972472c45cdc2eb8eb0adcd648dd9eb663833c
"""Llama: grouped-query attention, rotary positions, RMSNorm, gated SiLU MLP, no biases."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    LlamaConfig as Config,
    LlamaForCausalLM as ForCausalLM,
)
from .presets import PRESETS
from .weights import BACKBONE_PREFIX, WeightSource, ignored_tensors, weight_map

__all__ = [
    "ARCHITECTURE",
    "BACKBONE_PREFIX",
    "Config",
    "ConfigError",
    "ForCausalLM",
    "GroupQuantization",
    "PRESETS",
    "WeightSource",
    "ignored_tensors",
    "weight_map",
]
