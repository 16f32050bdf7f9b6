# Generated from specs/llama.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 4212445c41040f62ed6416e7c9bfc3e8f6499b8f4089aae873348b01bf30b1f7
"""Published config.json values of real Llama checkpoints, by preset name."""

PRESETS = {
    "tinyllama_1_1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 22,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
    "llama2_7b": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
}
