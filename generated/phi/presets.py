# Generated from specs/phi.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: b9a9e15aa213e5b712293d2e556f505eb50c2a4ff57b23bebacc7616757d022c
"""Published config.json values of real Phi checkpoints, by preset name."""

PRESETS = {
    "phi_1": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 2048,
        "partial_rotary_factor": 0.5,
        "rope_theta": 10000.0,
        "layer_norm_eps": 1e-05,
        "vocab_size": 51200,
        "tie_word_embeddings": False,
    },
    "phi_1_5": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 2048,
        "partial_rotary_factor": 0.5,
        "rope_theta": 10000.0,
        "layer_norm_eps": 1e-05,
        "vocab_size": 51200,
        "tie_word_embeddings": False,
    },
    "phi_2": {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 2048,
        "partial_rotary_factor": 0.4,
        "rope_theta": 10000.0,
        "layer_norm_eps": 1e-05,
        "vocab_size": 51200,
        "tie_word_embeddings": False,
    },
}
