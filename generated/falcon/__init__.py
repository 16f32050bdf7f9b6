# Generated from specs/falcon.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 5878b490b6c0d0b6c0bbd852522136a3a10b7ee32bdceedaf68c2f4d4dd8869d
"""Falcon (7B layout): multi-query attention, rotary positions, parallel attention and MLP over one shared LayerNorm, no biases."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    FalconConfig as Config,
    FalconForCausalLM as ForCausalLM,
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
