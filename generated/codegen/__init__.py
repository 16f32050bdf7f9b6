# Generated from specs/codegen.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: f88767412356cbaac2bbe3c8cf1720558aa3ad51146deb17507d053d57a3ce90
"""CodeGen: GPT-J's parallel block over one shared LayerNorm, interleaved partial rotary positions, a fused qkv projection stored in 4 shards."""

from .model import (
    ARCHITECTURE,
    ConfigError,
    GroupQuantization,
    CodeGenConfig as Config,
    CodeGenForCausalLM as ForCausalLM,
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
