"""Broken specs: each gives one SpecError naming the file, the line and the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from codegen.render import generate
from codegen.spec import SpecError, load_spec
from tests.support import REPO_ROOT

BASE = (REPO_ROOT / "specs" / "gpt_bigcode.yaml").read_text()
SCHEMA = (REPO_ROOT / "specs" / "schema.json").read_text()


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def edited(old: str, new: str) -> str:
    assert BASE.count(old) == 1, f"test edit {old!r} must match the base spec exactly once"
    return BASE.replace(old, new)


def line_of(text: str, marker: str) -> int:
    index = text.index(marker)
    return text.count("\n", 0, index) + 1


# (id, edit of the base spec: (old, new), expected key path, marker whose line is expected, words in message)
CASES = [
    ("unknown top-level key", ("hf_model_type: gpt_bigcode\n", "hf_model_type: gpt_bigcode\nlayers: 12\n"),
     ("layers",), "layers: 12", ["unknown key 'layers'", "allowed keys"]),
    ("misspelt nested key", ("    mode: mqa ", "    modee: mqa "),
     ("architecture", "attention", "modee"), "modee", ["unknown key 'modee'", "mode"]),
    ("wrong type", ("    gated: false", "    gated: \"no\""),
     ("architecture", "mlp", "gated"), "gated:", ["is not of type boolean"]),
    ("bad enum", ("    mode: mqa ", "    mode: mqq "),
     ("architecture", "attention", "mode"), "mode: mqq", ["'mqq' is not allowed", "mha, mqa, gqa"]),
    ("bad norm enum", ("  norm: layernorm", "  norm: batchnorm"),
     ("architecture", "norm"), "norm: batchnorm", ["allowed values: layernorm, rmsnorm"]),
    ("heads do not divide width", ("    n_embd: 768\n    n_head: 12", "    n_embd: 770\n    n_head: 12"),
     ("presets", "tiny_starcoder"), "tiny_starcoder:", ["num_attention_heads (12) must divide hidden_size (770)"]),
    ("non-identifier module name", ("  qkv_proj: c_attn", "  qkv_proj: c-attn"),
     ("modules", "qkv_proj"), "qkv_proj: c-attn", ["does not match the pattern"]),
    ("code injection in a module name", ("  qkv_proj: c_attn", "  qkv_proj: \"c_attn = __import__('os').system('x')\""),
     ("modules", "qkv_proj"), "qkv_proj:", ["does not match the pattern"]),
    ("code injection in class prefix", ("class_prefix: GPTBigCode", "class_prefix: \"X:\\n    import os\""),
     ("class_prefix",), "class_prefix:", ["does not match the pattern"]),
    ("python keyword as module name", ("  mlp: mlp\n", "  mlp: class\n"),
     ("modules", "mlp"), "mlp: class", ["Python keyword"]),
    ("duplicate key", ("  norm: layernorm\n", "  norm: layernorm\n  norm: rmsnorm\n"),
     ("architecture", "norm"), "norm: rmsnorm", ["duplicate key"]),
    ("missing required key", ("  vocab_size: {hf: vocab_size}\n", ""),
     ("config",), "config:", ["missing required key 'vocab_size'"]),
    ("unknown name in an expression", ("default_from: 4 * hidden_size", "default_from: 4 * hiden_size"),
     ("config", "intermediate_size", "default_from"), "intermediate_size:", ["unknown config field 'hiden_size'"]),
    ("python in an expression", ("default_from: 4 * hidden_size", "default_from: __import__('os')"),
     ("config", "intermediate_size", "default_from"), "intermediate_size:", ["does not match the pattern"]),
    ("malformed expression", ("default_from: 4 * hidden_size", "default_from: 4 * * hidden_size"),
     ("config", "intermediate_size", "default_from"), "intermediate_size:", ["unexpected '*'"]),
    ("cyclic default_from", ("  hidden_size: {hf: n_embd}", "  hidden_size: {default_from: head_dim * num_attention_heads}"),
     ("config", "hidden_size", "default_from"), "hidden_size: {default_from", ["cyclic default_from: hidden_size -> head_dim -> hidden_size"]),
    ("weight rule for a missing parameter", ("  rules: []", "  rules:\n    - {param: \"transformer.h.{i}.attn.q.weight\", from: \"x.{i}.y\"}"),
     ("weights", "rules", 0, "param"), "- {param", ["is not a model parameter"]),
    ("gqa without a KV head count", ("    mode: mqa ", "    mode: gqa "),
     ("config",), "config:", ["missing required key 'num_key_value_heads'", "gqa"]),
    ("KV head count under mqa", ("  num_attention_heads: {hf: n_head}\n", "  num_attention_heads: {hf: n_head}\n  num_key_value_heads: {hf: n_kv}\n"),
     ("config", "num_key_value_heads"), "num_key_value_heads:", ["not used", "mqa"]),
    ("deinterleave under mqa", ("  rules: []", "  rules:\n    - {param: \"transformer.h.{i}.attn.c_attn.weight\", from: \"transformer.h.{i}.attn.c_attn.weight\", transforms: [deinterleave_qkv]}"),
     ("weights", "rules", 0, "transforms"), "- {param", ["deinterleave_qkv needs"]),
    ("unshard under mqa", ("  rules: []", "  rules:\n    - {param: \"transformer.h.{i}.attn.c_attn.weight\", from: \"transformer.h.{i}.attn.c_attn.weight\", transforms: [unshard_qvk]}"),
     ("weights", "rules", 0, "transforms"), "- {param", ["unshard_qvk needs", "mha with fused qkv"]),
    ("unused module for this layout", ("  qkv_proj: c_attn\n", "  qkv_proj: c_attn\n  q_proj: q\n"),
     ("modules", "q_proj"), "q_proj: q", ["not used by this architecture"]),
    ("activation default outside its values", ("    default: gelu_pytorch_tanh", "    default: swish"),
     ("config", "activation", "default"), "default: swish", ["'swish' is not one of values"]),
    ("bad activation target", ("      relu: relu", "      relu: mish"),
     ("config", "activation", "values", "relu"), "relu: mish", ["'mish' is not allowed", "gelu, gelu_tanh, relu, silu"]),
    ("invalid YAML", ("  block: sequential", "  block: [sequential"),
     (), "  norm: layernorm", ["invalid YAML"]),
    ("unknown function in an expression", ("default_from: 4 * hidden_size", "default_from: exp(hidden_size)"),
     ("config", "intermediate_size", "default_from"), "intermediate_size:", ["unknown function 'exp'; functions: sqrt"]),
    ("per-head q/k norm without its modules", ("    bias: {qkv: true, out: true}\n  mlp:", "    bias: {qkv: true, out: true}\n    qk_norm: per_head\n  mlp:"),
     ("modules",), "modules:", ["missing required key 'q_norm'", "qk_norm is per_head"]),
    ("rotary pairing without rotary positions", ("  position: learned", "  position: learned\n  rotary_pairing: interleaved"),
     ("architecture", "rotary_pairing"), "rotary_pairing:", ["not used: position learned has no rotary embedding"]),
    ("MLP norm beside a shared norm", ("  block: sequential ", "  block: parallel_shared_norm "),
     ("modules", "mlp_norm"), "mlp_norm: ln_2", ["'mlp_norm' is not used by this architecture"]),
    ("sequential block without an MLP norm", ("  mlp_norm: ln_2\n", ""),
     ("modules",), "modules:", ["missing required key 'mlp_norm'", "block sequential"]),
    ("layer index on one side only", ("  rules: []", "  rules:\n    - {param: \"transformer.h.{i}.attn.c_attn.weight\", from: transformer.c_attn.weight}"),
     ("weights", "rules", 0, "from"), "- {param", ["{i} must appear in both"]),
]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_broken_spec_names_file_line_and_key(tmp_path, case):
    _, (old, new), key_path, marker, words = case
    text = edited(old, new)
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as error:
        load_spec(path) if key_path[:1] != ("presets",) else generate(tmp_path / "out", [path])
    assert error.value.key_path == key_path
    assert error.value.file.resolve() == path.resolve()
    assert error.value.line == line_of(text, marker)
    message = str(error.value)
    assert f"spec.yaml:{error.value.line}:" in message
    for word in words:
        assert word in message


def test_cyclic_extends(tmp_path):
    write_spec(tmp_path, "extends: b.yaml\nname: a\n", "a.yaml")
    write_spec(tmp_path, "# b\nextends: a.yaml\nname: b\n", "b.yaml")
    with pytest.raises(SpecError) as error:
        load_spec(tmp_path / "a.yaml")
    assert error.value.key_path == ("extends",)
    assert error.value.file.name == "b.yaml" and error.value.line == 2
    assert "cyclic extends" in str(error.value) and "a.yaml -> " in str(error.value)


def test_missing_parent(tmp_path):
    path = write_spec(tmp_path, "name: x\nextends: nowhere.yaml\n")
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert (error.value.key_path, error.value.line) == (("extends",), 2)
    assert "'nowhere.yaml' does not exist" in str(error.value)


def test_extends_outside_the_spec_folder(tmp_path):
    (tmp_path / "specs").mkdir()
    write_spec(tmp_path, BASE, "outside.yaml")
    path = write_spec(tmp_path / "specs", "extends: ../outside.yaml\n")
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert (error.value.key_path, error.value.line) == (("extends",), 1)
    assert "lies outside" in str(error.value)


def test_misspelt_key_in_a_child_points_at_the_child(tmp_path):
    write_spec(tmp_path, BASE, "gpt_bigcode.yaml")
    child = write_spec(tmp_path, "extends: gpt_bigcode.yaml\nname: child\narchitecture:\n  attention:\n    moed: mha\n", "child.yaml")
    with pytest.raises(SpecError) as error:
        load_spec(child)
    assert error.value.file.name == "child.yaml"
    assert (error.value.key_path, error.value.line) == (("architecture", "attention", "moed"), 5)


def test_error_in_the_parent_points_at_the_parent(tmp_path):
    write_spec(tmp_path, edited("    mode: mqa ", "    mode: mqx "), "gpt_bigcode.yaml")
    child = write_spec(tmp_path, "extends: gpt_bigcode.yaml\nname: child\n", "child.yaml")
    with pytest.raises(SpecError) as error:
        load_spec(child)
    assert error.value.file.name == "gpt_bigcode.yaml"
    assert error.value.line == line_of(BASE, "    mode: mqa ")


def test_alias_bomb_is_refused(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in range(1, 9):
        previous = chr(ord("a") + level - 1)
        name = chr(ord("a") + level)
        bomb += f"{name}: &{name} [*{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}]\n"
    path = write_spec(tmp_path, bomb)
    with pytest.raises(SpecError, match="too large or too deeply nested"):
        load_spec(path)


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("name: x\nlayers: " + "[" * 2000 + "]" * 2000 + "\n", 2, "too deeply nested (more than 32 levels)"),
        # line n opens levels 2n-4 and 2n-3 (a list and a mapping): the 33rd on line 18
        ("name: x\nlayers:\n" + "".join("  " * i + f"- k{i}:\n" for i in range(1, 200)), 18, "too deeply nested (more than 32 levels)"),
        ("name: x\n# a number\nlayers: " + "7" * 5000 + "\n", 3, "is not a usable value (Exceeds the limit"),
        ("name: x\n? [a, b]\n: 1\n", 2, "a key must be a string"),
    ],
    ids=["2000 flow levels", "deep block nesting", "5000-digit integer", "list as key"],
)
def test_limits_of_the_yaml_reader_are_located_spec_errors(tmp_path, text, line, words):
    """PyYAML would raise RecursionError or ValueError here; each is one located SpecError."""
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert error.value.line == line and words in str(error.value)
    assert len(str(error.value)) < 300


def test_yaml_tags_that_build_python_objects_are_refused(tmp_path):
    path = write_spec(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert "invalid YAML" in str(error.value) and error.value.line == 1


def test_top_level_must_be_a_mapping(tmp_path):
    path = write_spec(tmp_path, "- name: x\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(path)


def test_the_shipped_specs_load():
    for path in sorted((REPO_ROOT / "specs").glob("*.yaml")):
        spec = load_spec(path)
        assert spec.name == path.stem
