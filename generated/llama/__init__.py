# Generated from specs/llama.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 4212445c41040f62ed6416e7c9bfc3e8f6499b8f4089aae873348b01bf30b1f7
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
