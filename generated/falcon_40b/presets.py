# Generated from specs/falcon_40b.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: f5a0c758a1f57f968acedd83f5ce51276445013a02532482489e30434a1dbe5e
"""Published config.json values of real Falcon40B checkpoints, by preset name."""

PRESETS = {
    "falcon_40b": {
        "hidden_size": 8192,
        "num_hidden_layers": 60,
        "num_attention_heads": 128,
        "num_kv_heads": 8,
        "new_decoder_architecture": True,
        "parallel_attn": True,
        "alibi": False,
        "bias": False,
        "layer_norm_epsilon": 1e-05,
        "vocab_size": 65024,
    },
}
