# Generated from specs/gpt2.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 5447d71536ec605c7d3057202735d4b3f7076e831f7b518503910847bf1c7f79
"""GPT-2: multi-head attention, learned positions, LayerNorm, tanh-GELU (gelu_new) MLP, tied LM head."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    GPT2Config as Config,
    GPT2ForCausalLM as ForCausalLM,
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
