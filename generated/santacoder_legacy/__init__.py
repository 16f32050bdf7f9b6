# Generated from specs/santacoder_legacy.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 068ce11aa9882075ba44b9a0a10c48c3dfeef599f1e4068c3e451481849f86e3
"""GPTBigCode (multi-query) read from the original SantaCoder checkpoint layout: Conv1D q_attn + kv_attn."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    SantaCoderLegacyConfig as Config,
    SantaCoderLegacyForCausalLM as ForCausalLM,
)
from .presets import PRESETS
from .weights import WeightSource, ignored_tensors, weight_map

__all__ = [
    "ARCHITECTURE",
    "Config",
    "ConfigError",
    "ForCausalLM",
    "PRESETS",
    "WeightSource",
    "ignored_tensors",
    "weight_map",
]
