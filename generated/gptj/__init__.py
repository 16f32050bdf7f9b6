# Generated from specs/gptj.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 9b0be1e5a9621b6f7ed8fc62ab20534d3b92e0777d79ee2da03c53188772378b
"""GPT-J: parallel attention and MLP over one shared LayerNorm, interleaved partial rotary positions, biased MLP and LM head."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    GPTJConfig as Config,
    GPTJForCausalLM as ForCausalLM,
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
