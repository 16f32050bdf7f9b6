# Generated from specs/santacoder_legacy.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: d00c7529296fcf8659a657e9544c362680c2e5f7814cf38e6eda5f177e82ab8d
"""Published config.json values of real SantaCoderLegacy checkpoints, by preset name."""

PRESETS = {
    "tiny_starcoder": {
        "n_embd": 768,
        "n_head": 12,
        "n_layer": 20,
        "n_inner": 3072,
        "n_positions": 8192,
        "vocab_size": 49152,
        "attention_head_type": "multiquery",
    },
    "santacoder": {
        "n_embd": 2048,
        "n_head": 16,
        "n_layer": 24,
        "n_inner": 8192,
        "n_positions": 2048,
        "vocab_size": 49280,
        "attention_head_type": "multiquery",
    },
    "starcoderbase_1b": {
        "n_embd": 2048,
        "n_head": 16,
        "n_layer": 24,
        "n_inner": 8192,
        "n_positions": 8192,
        "vocab_size": 49152,
        "attention_head_type": "multiquery",
    },
    "starcoderbase_3b": {
        "n_embd": 2816,
        "n_head": 22,
        "n_layer": 36,
        "n_inner": 11264,
        "n_positions": 8192,
        "vocab_size": 49152,
        "attention_head_type": "multiquery",
    },
    "starcoderbase_7b": {
        "n_embd": 4096,
        "n_head": 32,
        "n_layer": 42,
        "n_inner": 16384,
        "n_positions": 8192,
        "vocab_size": 49152,
        "attention_head_type": "multiquery",
    },
    "starcoder": {
        "n_embd": 6144,
        "n_head": 48,
        "n_layer": 40,
        "n_inner": 24576,
        "n_positions": 8192,
        "vocab_size": 49152,
        "attention_head_type": "multiquery",
    },
}
