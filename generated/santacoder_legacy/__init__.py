# Generated from specs/santacoder_legacy.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: d00c7529296fcf8659a657e9544c362680c2e5f7814cf38e6eda5f177e82ab8d
"""GPTBigCode (multi-query) read from the original SantaCoder checkpoint layout: Conv1D q_attn + kv_attn."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    SantaCoderLegacyConfig as Config,
    SantaCoderLegacyForCausalLM as ForCausalLM,
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
