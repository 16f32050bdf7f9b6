# Generated from specs/gptj.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 9b0be1e5a9621b6f7ed8fc62ab20534d3b92e0777d79ee2da03c53188772378b
"""Published config.json values of real GPTJ checkpoints, by preset name."""

PRESETS = {
    "gpt_j_6b": {
        "n_embd": 4096,
        "n_head": 16,
        "n_layer": 28,
        "n_positions": 2048,
        "rotary_dim": 64,
        "vocab_size": 50400,
        "tie_word_embeddings": False,
    },
}
