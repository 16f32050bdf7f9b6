"""Every spec, and a tiny version of every preset: imports, exports, compiles, matches transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import numpy as np
import pytest

from codegen.models import load_model
from codegen.runtime import Model
from codegen.spec import load_spec
from tests.test_families import MORE_FAMILIES
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
# Specs whose checkpoint layout no transformers class writes: the spec whose transformers class is the
# reference, and how to rewrite its checkpoint into the layout.
REWRITTEN_LAYOUTS = {"santacoder_legacy": ("gpt_bigcode", write_santacoder_legacy)}
# Families whose compiled parity runs once in tests/test_families.py (MORE_FAMILIES).
PARITY_IN_FAMILIES = {Path(family.spec).stem for family in MORE_FAMILIES.values()}


def _compiles_a_tiny_copy(spec_path: Path, index: int, values: Mapping) -> bool:
    """A tiny copy of a preset is compiled and run against transformers when it is its spec's first or
    computes something the first does not (RoPE scaling); the others differ in sizes only, and their
    sizes are checked against transformers' own reading of the same config.json, tensor by tensor,
    without compiling (the suite's time budget). A family of MORE_FAMILIES has its first-preset
    parity in tests/test_families.py."""
    first = index == 0 and spec_path.stem not in PARITY_IN_FAMILIES
    return first or "rope_scaling" in values


def _cases(compiled: bool) -> list[tuple[Path, str]]:
    cases = []
    for path in SPECS:
        for index, (preset, values) in enumerate(load_spec(path).presets.items()):
            if _compiles_a_tiny_copy(path, index, values) == compiled:
                cases.append((path, preset))
    return cases


CASES = _cases(compiled=True)
# transformers has no class that reads a rewritten layout's tensor names.
SHAPE_CASES = [(path, preset) for path, preset in _cases(compiled=False) if path.stem not in REWRITTEN_LAYOUTS]
DECODE_STEPS = 5


def _plain(values) -> dict:
    """A preset as config.json holds it: the spec's frozen mappings (rope_scaling) as dicts."""
    return {key: dict(value) if isinstance(value, Mapping) else value for key, value in values.items()}


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
    hf_model = hf_model_from_config_dict(tiny_preset(reference, _plain(reference.presets[preset])))
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


def _converted_shape(hf_shapes: dict[str, tuple[int, ...]], source) -> tuple[int, ...]:
    """The shape the converter makes of a weight source: transposes, then rows concatenated."""
    shapes = [hf_shapes[name][::-1] if "transpose" in source.transforms else hf_shapes[name] for name in source.hf_names]
    return (sum(shape[0] for shape in shapes), *shapes[0][1:])


@pytest.mark.parametrize("spec_path,preset", SHAPE_CASES, ids=[f"{p.stem}-{preset}" for p, preset in SHAPE_CASES])
def test_preset_reads_like_transformers(spec_path, preset):
    """transformers builds the preset's model (on the meta device: shapes, no memory); every tensor
    the weight map reads has the shape our model declares, and both rotate the same dimensions."""
    import torch
    import transformers

    from codegen.spec.quantization import resolve

    model = load_model(spec_path)
    values = dict(model.package.PRESETS[preset])
    config = model.config(preset=preset)
    hf_config = transformers.AutoConfig.for_model(load_spec(spec_path).hf_model_type, **values)
    with torch.device("meta"):
        hf_model = transformers.AutoModelForCausalLM.from_config(hf_config)
    hf_shapes = {name: tuple(t.shape) for name, t in hf_model.state_dict().items()}
    ours = {name: tuple(int(d) for d in p.shape) for name, p in model.causal_lm(config, resolve(None)).named_parameters()}
    sources = model.package.weight_map(config)
    assert set(sources) == set(ours)
    for name, source in sources.items():
        assert _converted_shape(hf_shapes, source) == ours[name], name
    unread = set(hf_shapes) - {n for s in sources.values() for n in s.hf_names} - model.package.ignored_tensors(config)
    assert not unread, f"tensors of transformers' model that the weight map ignores: {sorted(unread)[:5]}"
    if hasattr(config, "rotary_dim"):
        # transformers keeps rotary_dim / 2 frequencies (inv_freq), or GPT-J's [positions, rotary_dim] table.
        buffers = dict(hf_model.named_buffers())
        widths = [2 * b.shape[0] for n, b in buffers.items() if n.endswith("inv_freq")]
        widths += [b.shape[-1] for n, b in buffers.items() if n.endswith("rotary_emb.embed_positions")]
        assert widths and set(widths) == {config.rotary_dim}
