# Generated from specs/starcoder2.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 743e123744800fc684fa60d0901f480b4262996256524eb9ed3c3e1d26984ef1
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
