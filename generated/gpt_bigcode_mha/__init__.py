# Generated from specs/gpt_bigcode_mha.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: d936a64fd2987a9f00fb10c8306a7f31db67d9977c911618d27bbce51076b15d
"""GPTBigCode with multi-head attention (multi_query: false)."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    GPTBigCodeMHAConfig as Config,
    GPTBigCodeMHAForCausalLM as ForCausalLM,
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
