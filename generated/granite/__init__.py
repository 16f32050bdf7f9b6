# Generated from specs/granite.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 5c3454b94c4a514cb845e289b34b543c68f1d502ade2ba7531eb06211a077af2
"""Granite: Llama layout with embedding, residual, attention and logits multipliers."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    GraniteConfig as Config,
    GraniteForCausalLM as ForCausalLM,
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
