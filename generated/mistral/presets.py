# Generated from specs/mistral.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: fc67766e8184aaf14d92a8ffe736fea5900653c9abb3b073a96be30d6175ec74
"""Published config.json values of real Mistral checkpoints, by preset name."""

PRESETS = {
    "mistral_7b_v0_1": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "sliding_window": 4096,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
    "codestral_22b_v0_1": {
        "hidden_size": 6144,
        "intermediate_size": 16384,
        "num_hidden_layers": 56,
        "num_attention_heads": 48,
        "num_key_value_heads": 8,
        "max_position_embeddings": 32768,
        "sliding_window": None,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "vocab_size": 32768,
        "tie_word_embeddings": False,
    },
}
