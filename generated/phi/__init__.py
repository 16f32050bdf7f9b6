# Generated from specs/phi.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: b9a9e15aa213e5b712293d2e556f505eb50c2a4ff57b23bebacc7616757d022c
"""Phi: parallel attention and MLP over one shared LayerNorm, partial rotary positions, biased projections and LM head."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    PhiConfig as Config,
    PhiForCausalLM as ForCausalLM,
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
