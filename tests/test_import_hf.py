"""`codegen import-hf`: a preset from a config.json, added without disturbing the spec file's text."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from codegen.cli import main
from codegen.import_hf import PresetImportError, import_preset, preset_values
from codegen.spec import load_spec
from tests.support import REPO_ROOT

SPECS = REPO_ROOT / "specs"


@pytest.fixture()
def specs(tmp_path) -> Path:
    """Copies of the real specs (never edited in place)."""
    folder = tmp_path / "specs"
    folder.mkdir()
    for name in ("starcoder2.yaml", "gpt_bigcode.yaml", "gpt_bigcode_mha.yaml", "llama.yaml"):
        shutil.copy(SPECS / name, folder / name)
    return folder


def _transformers_config(tmp_path: Path, class_name: str, **kwargs) -> Path:
    import transformers

    folder = tmp_path / class_name
    getattr(transformers, class_name)(**kwargs).save_pretrained(folder)
    return folder / "config.json"


def _generated_config(spec_path: Path, hf_config: dict):
    from codegen import render
    from codegen.models import import_package

    spec = load_spec(spec_path)
    out = spec_path.parent.parent / f"gen-{spec.name}"
    render.generate(output_dir=out, spec_files=[spec_path])
    package = import_package(out / spec.name, f"_test_import_hf_{spec.name}_{abs(hash(str(out)))}")
    return package.Config.from_dict(hf_config), package


def test_comments_and_layout_survive_and_preset_loads(specs, tmp_path):
    spec_path = specs / "starcoder2.yaml"
    before = spec_path.read_text()
    config_json = _transformers_config(
        tmp_path, "Starcoder2Config", hidden_size=256, intermediate_size=1024, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048, vocab_size=1000,
        rope_theta=123456.0, norm_epsilon=1e-6,
    )
    values = import_preset(config_json, spec_path, "tiny_import")
    after = spec_path.read_text()
    # Every original line is still there, in order, and only the new preset's lines were added at the end.
    assert after.startswith(before)
    tail = after[len(before):]
    assert tail.startswith("  tiny_import:\n")
    assert "# Published config.json files keep rope_theta at the top" in after
    assert all(line.startswith("    ") for line in tail.splitlines()[1:])
    # The nested rope_parameters.rope_theta of a transformers 5 config.json lands under the flat name.
    assert values["rope_theta"] == 123456.0 and "rope_parameters" not in values
    assert "sliding_window" not in values  # null in the config.json: not a field the spec would read
    spec = load_spec(spec_path)
    assert dict(spec.presets["tiny_import"]) == values
    # The preset builds the same config as the config.json itself.
    from_json, package = _generated_config(spec_path, json.loads(config_json.read_text()))
    assert package.Config.from_dict(package.PRESETS["tiny_import"]) == from_json
    assert from_json.rope_theta == 123456.0 and from_json.norm_eps == 1e-6


def test_existing_name_refused_unless_force(specs, tmp_path):
    spec_path = specs / "starcoder2.yaml"
    config_json = _transformers_config(
        tmp_path, "Starcoder2Config", hidden_size=3072, intermediate_size=12288, num_hidden_layers=30,
        num_attention_heads=24, num_key_value_heads=2, max_position_embeddings=16384, vocab_size=49152,
    )
    before = spec_path.read_text()
    with pytest.raises(PresetImportError, match="already has a preset 'starcoder2_3b'"):
        import_preset(config_json, spec_path, "starcoder2_3b")
    assert spec_path.read_text() == before
    import_preset(config_json, spec_path, "starcoder2_3b", force=True)
    after = spec_path.read_text()
    assert after.count("starcoder2_3b:") == 1
    assert "sliding_window: 4096\n    rope_theta: 999999.4420358813" not in after  # the old entry is gone
    assert load_spec(spec_path).presets["starcoder2_3b"]["max_position_embeddings"] == 16384
    assert after.split("starcoder2_3b:")[0] == before.split("starcoder2_3b:")[0]  # text before it untouched
    assert after.split("starcoder2_7b:")[1] == before.split("starcoder2_7b:")[1]  # and after it


def test_flow_style_child_spec_and_parent_preset(specs, tmp_path):
    spec_path = specs / "gpt_bigcode_mha.yaml"
    before = spec_path.read_text()
    config_json = _transformers_config(
        tmp_path, "GPTBigCodeConfig", n_embd=512, n_head=8, n_layer=4, n_positions=1024, vocab_size=5000, multi_query=False,
    )
    values = import_preset(config_json, spec_path, "custom")
    assert values["multi_query"] is False
    after = spec_path.read_text()
    assert after.startswith(before)
    assert after[len(before):].startswith("  custom: {")  # same flow style as the file's other presets
    assert load_spec(spec_path).presets["custom"]["n_embd"] == 512
    # A name the parent defines would merge key by key with the parent's preset: refused.
    with pytest.raises(PresetImportError, match="already has a preset 'santacoder'"):
        import_preset(config_json, spec_path, "santacoder")


def test_bad_inputs_leave_the_file_alone(specs, tmp_path):
    spec_path = specs / "llama.yaml"
    before = spec_path.read_text()
    gpt2 = _transformers_config(tmp_path, "GPT2Config", n_embd=64, n_head=4, n_layer=2)
    with pytest.raises(PresetImportError, match="model_type 'gpt2' is not 'llama'"):
        import_preset(gpt2, spec_path, "x")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "vocab_size": 10}))
    with pytest.raises(PresetImportError, match="would be invalid"):
        import_preset(broken, spec_path, "incomplete")  # lacks num_hidden_layers, ...: from_dict refuses
    with pytest.raises(PresetImportError, match="must match"):
        import_preset(broken, spec_path, "Bad-Name")
    assert spec_path.read_text() == before
    assert sorted(p.name for p in specs.iterdir()) == ["gpt_bigcode.yaml", "gpt_bigcode_mha.yaml", "llama.yaml", "starcoder2.yaml"]


def test_only_fields_the_spec_reads(tmp_path):
    spec = load_spec(SPECS / "llama.yaml")
    config = {
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "vocab_size": 10,
        "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}, "initializer_range": 0.02,
        "bos_token_id": 1, "architectures": ["LlamaForCausalLM"], "attention_bias": False,
    }
    values = preset_values(spec, config)
    assert values["rope_theta"] == 5e5 and values["attention_bias"] is False
    assert "initializer_range" not in values and "architectures" not in values and "bos_token_id" not in values
    with pytest.raises(PresetImportError, match="not a number"):
        preset_values(spec, {**config, "rope_theta": [1, 2]})


def test_cli(specs, tmp_path, capsys):
    config_json = _transformers_config(
        tmp_path, "LlamaConfig", hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, vocab_size=100,
    )
    spec_path = specs / "llama.yaml"
    assert main(["import-hf", str(config_json), "--into", str(spec_path), "--preset", "tiny"]) == 0
    assert "added preset tiny" in capsys.readouterr().out
    assert main(["import-hf", str(config_json), "--into", str(spec_path), "--preset", "tiny"]) == 1
    assert "already has a preset 'tiny'" in capsys.readouterr().err
    assert main(["import-hf", str(config_json), "--into", str(spec_path), "--preset", "tiny", "--force"]) == 0


def test_rope_scaling_is_imported_as_one_nested_object(specs, tmp_path):
    """Llama 3.1's rope_scaling (transformers 5 writes it into rope_parameters) becomes a nested preset entry."""
    spec_path = specs / "llama.yaml"
    scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)
    config_json = _transformers_config(
        tmp_path, "LlamaConfig", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, vocab_size=100, rope_parameters=dict(scaling, rope_theta=5e5),
    )
    values = import_preset(config_json, spec_path, "llama3_import")
    assert values["rope_scaling"] == scaling and values["rope_theta"] == 5e5
    config, _ = _generated_config(spec_path, dict(load_spec(spec_path).presets["llama3_import"], model_type="llama"))
    assert config.rope_scaling == scaling
