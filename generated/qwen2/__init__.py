# Generated from specs/qwen2.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 999bdf85a7e5ae72adbb643f8f15676018c78483ae56fe380389e151faf4c568
"""Qwen2: grouped-query attention with biased q/k/v projections, rotary positions, RMSNorm, gated SiLU MLP."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    Qwen2Config as Config,
    Qwen2ForCausalLM as ForCausalLM,
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
