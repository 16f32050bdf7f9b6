# Generated from specs/starcoder2.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: d2229f8d4f48137b29f8c5c765423b9f455ec414698599df1f7dddba2813a94a
"""Published config.json values of real Starcoder2 checkpoints, by preset name."""

PRESETS = {
    "starcoder2_3b": {
        "hidden_size": 3072,
        "intermediate_size": 12288,
        "num_hidden_layers": 30,
        "num_attention_heads": 24,
        "num_key_value_heads": 2,
        "max_position_embeddings": 16384,
        "sliding_window": 4096,
        "rope_theta": 999999.4420358813,
        "norm_epsilon": 1e-05,
        "vocab_size": 49152,
    },
    "starcoder2_7b": {
        "hidden_size": 4608,
        "intermediate_size": 18432,
        "num_hidden_layers": 32,
        "num_attention_heads": 36,
        "num_key_value_heads": 4,
        "max_position_embeddings": 16384,
        "sliding_window": 4096,
        "rope_theta": 1000000,
        "norm_epsilon": 1e-05,
        "vocab_size": 49152,
    },
    "starcoder2_15b": {
        "hidden_size": 6144,
        "intermediate_size": 24576,
        "num_hidden_layers": 40,
        "num_attention_heads": 48,
        "num_key_value_heads": 4,
        "max_position_embeddings": 16384,
        "sliding_window": 4096,
        "rope_theta": 100000,
        "norm_epsilon": 1e-05,
        "vocab_size": 49152,
    },
}
