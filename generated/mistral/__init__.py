# Generated from specs/mistral.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: fc67766e8184aaf14d92a8ffe736fea5900653c9abb3b073a96be30d6175ec74
"""Mistral: grouped-query sliding-window attention, rotary positions, RMSNorm, gated SiLU MLP, no biases."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    MistralConfig as Config,
    MistralForCausalLM as ForCausalLM,
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
