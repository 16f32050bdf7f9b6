"""Every spec, and a tiny version of every preset: imports, exports, compiles, matches transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from codegen.models import load_model
from codegen.runtime import Model
from codegen.spec import load_spec
from tests.support import (
    FLOAT32_TOLERANCE,
    REPO_ROOT,
    hf_logits,
    hf_model_from_config_dict,
    max_abs_diff,
    save_hf_model,
    tiny_preset,
    write_santacoder_legacy,
)

SPECS = sorted((REPO_ROOT / "specs").glob("*.yaml"))
CASES = [(path, preset) for path in SPECS for preset in load_spec(path).presets]
DECODE_STEPS = 5
# Specs whose checkpoint layout no transformers class writes: the spec whose transformers class is the
# reference, and how to rewrite its checkpoint into the layout.
REWRITTEN_LAYOUTS = {"santacoder_legacy": ("gpt_bigcode", write_santacoder_legacy)}


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.stem)
def test_every_preset_builds_a_config(spec_path):
    model = load_model(spec_path)
    for preset in model.package.PRESETS:
        config = model.config(preset=preset)
        assert config.hidden_size % config.num_attention_heads == 0
        assert config.num_attention_heads % config.num_key_value_heads == 0


@pytest.mark.slow
@pytest.mark.parametrize("spec_path,preset", CASES, ids=[f"{p.stem}-{preset}" for p, preset in CASES])
def test_tiny_preset_matches_transformers(spec_path, preset, artifacts, tmp_path):
    spec = load_spec(spec_path)
    reference_name, rewrite = REWRITTEN_LAYOUTS.get(spec.name, (spec.name, None))
    reference = load_spec(REPO_ROOT / "specs" / f"{reference_name}.yaml")
    hf_model = hf_model_from_config_dict(tiny_preset(reference, dict(reference.presets[preset])))
    model_dir = save_hf_model(hf_model, tmp_path / "hf")
    if rewrite is not None:
        rewrite(model_dir, tmp_path / "rewritten", hf_model)
        model_dir = tmp_path / "rewritten"
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == spec.hf_model_type
    artifact = artifacts.build(spec.name, model_dir)
    runtime = Model(artifact)

    rng = np.random.default_rng(0)
    vocab = runtime.vocab_size
    prompt = [int(t) for t in rng.integers(0, vocab, 9)]
    continuation = [int(t) for t in rng.integers(0, vocab, DECODE_STEPS)]
    reference = hf_logits(hf_model, prompt + continuation)
    ours = [runtime.prefill(prompt)] + [runtime.decode(token) for token in continuation]
    errors = [max_abs_diff(logits, reference[len(prompt) - 1 + step]) for step, logits in enumerate(ours)]
    assert max(errors) <= FLOAT32_TOLERANCE, f"max |dlogit| per step: {errors}"
