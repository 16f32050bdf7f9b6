# Generated from specs/qwen3.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: f1b392c33ad610885eb731d6838a8cdfee8da98bd9605c02c37c3319255a0be1
"""Published config.json values of real Qwen3 checkpoints, by preset name."""

PRESETS = {
    "qwen3_0_6b": {
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
    },
    "qwen3_8b": {
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000,
        "vocab_size": 151936,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
    },
}
