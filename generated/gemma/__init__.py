# Generated from specs/gemma.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: f53103bda32754d6aaac1546be497805ea1cacf2d89ccd263a19537fb5e5d6a3
"""Gemma / CodeGemma: (1 + weight) RMSNorm, embeddings scaled by sqrt(hidden_size), gated tanh-GELU MLP, tied LM head."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    GemmaConfig as Config,
    GemmaForCausalLM as ForCausalLM,
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
