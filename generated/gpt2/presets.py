# Generated from specs/gpt2.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 5447d71536ec605c7d3057202735d4b3f7076e831f7b518503910847bf1c7f79
"""Published config.json values of real GPT2 checkpoints, by preset name."""

PRESETS = {
    "gpt2": {
        "n_embd": 768,
        "n_head": 12,
        "n_layer": 12,
        "n_positions": 1024,
        "vocab_size": 50257,
    },
    "gpt2_medium": {
        "n_embd": 1024,
        "n_head": 16,
        "n_layer": 24,
        "n_positions": 1024,
        "vocab_size": 50257,
    },
}
