# Generated from specs/qwen3.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: f1b392c33ad610885eb731d6838a8cdfee8da98bd9605c02c37c3319255a0be1
"""Qwen3: grouped-query attention with per-head RMSNorm on q and k, rotary positions, RMSNorm, gated SiLU MLP."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    Qwen3Config as Config,
    Qwen3ForCausalLM as ForCausalLM,
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
