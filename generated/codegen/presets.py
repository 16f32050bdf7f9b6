# Generated from specs/codegen.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: f88767412356cbaac2bbe3c8cf1720558aa3ad51146deb17507d053d57a3ce90
"""Published config.json values of real CodeGen checkpoints, by preset name."""

PRESETS = {
    "codegen_350m_mono": {
        "n_embd": 1024,
        "n_head": 16,
        "n_layer": 20,
        "n_positions": 2048,
        "rotary_dim": 32,
        "vocab_size": 51200,
    },
    "codegen_2b_mono": {
        "n_embd": 2560,
        "n_head": 32,
        "n_layer": 32,
        "n_positions": 2048,
        "rotary_dim": 64,
        "vocab_size": 51200,
    },
    "codegen_6b_mono": {
        "n_embd": 4096,
        "n_head": 16,
        "n_layer": 33,
        "n_positions": 2048,
        "rotary_dim": 64,
        "vocab_size": 51200,
    },
    "codegen_16b_mono": {
        "n_embd": 6144,
        "n_head": 24,
        "n_layer": 34,
        "n_positions": 2048,
        "rotary_dim": 64,
        "vocab_size": 51200,
    },
}
