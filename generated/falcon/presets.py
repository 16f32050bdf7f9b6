# Generated from specs/falcon.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: 5878b490b6c0d0b6c0bbd852522136a3a10b7ee32bdceedaf68c2f4d4dd8869d
"""Published config.json values of real Falcon checkpoints, by preset name."""

PRESETS = {
    "falcon_7b": {
        "hidden_size": 4544,
        "num_hidden_layers": 32,
        "num_attention_heads": 71,
        "multi_query": True,
        "parallel_attn": True,
        "new_decoder_architecture": False,
        "alibi": False,
        "bias": False,
        "layer_norm_epsilon": 1e-05,
        "vocab_size": 65024,
    },
}
