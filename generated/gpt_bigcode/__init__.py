# Generated from specs/gpt_bigcode.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 60da9247eac89a4aa145c471f4914dfdf60f44ed2ff6153d94f65ceeaf927c0a
"""GPTBigCode (StarCoder, SantaCoder, TinyStarCoder): multi-query attention, learned positions, LayerNorm, tanh-GELU MLP."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    GPTBigCodeConfig as Config,
    GPTBigCodeForCausalLM as ForCausalLM,
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
