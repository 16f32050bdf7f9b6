# Generated from specs/gemma.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: f53103bda32754d6aaac1546be497805ea1cacf2d89ccd263a19537fb5e5d6a3
"""Published config.json values of real Gemma checkpoints, by preset name."""

PRESETS = {
    "gemma_2b": {
        "hidden_size": 2048,
        "intermediate_size": 16384,
        "num_hidden_layers": 18,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "hidden_act": "gelu",
        "vocab_size": 256000,
    },
    "codegemma_7b": {
        "hidden_size": 3072,
        "intermediate_size": 24576,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "head_dim": 256,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "hidden_act": "gelu",
        "vocab_size": 256000,
    },
}
