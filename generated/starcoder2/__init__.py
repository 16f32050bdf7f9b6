# Generated from specs/starcoder2.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: d2229f8d4f48137b29f8c5c765423b9f455ec414698599df1f7dddba2813a94a
"""StarCoder2: grouped-query attention, rotary positions, LayerNorm, tanh-GELU MLP, biases everywhere."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    Starcoder2Config as Config,
    Starcoder2ForCausalLM as ForCausalLM,
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
