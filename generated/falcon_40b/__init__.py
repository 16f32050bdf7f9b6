# Generated from specs/falcon_40b.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: f5a0c758a1f57f968acedd83f5ce51276445013a02532482489e30434a1dbe5e
"""Falcon new_decoder_architecture (40B): grouped-query attention, rotary positions, parallel attention and MLP with one LayerNorm each, no biases."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    Falcon40BConfig as Config,
    Falcon40BForCausalLM as ForCausalLM,
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
