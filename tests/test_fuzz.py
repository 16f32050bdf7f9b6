"""Spec fuzzing: a random or mutated spec either loads and renders code that imports, or raises a
SpecError that names the file, the line and the key. Never another exception type.

Profiles (tests/conftest.py): HYPOTHESIS_PROFILE=ci (default, 60 examples per property) and
long (3000; `make fuzz`). Strings from a spec never reach generated code as code: a payload placed
in any string field is either refused or only ever appears inside a string literal or comment.
"""

from __future__ import annotations

import ast
import copy
import itertools
import math
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import note as _hypothesis_note
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

from codegen import render
from codegen.models import forget_modules, import_package
from codegen.spec import SpecError, format_key_path, load_spec
from codegen.spec.document import shorten
from tests.support import REPO_ROOT

BASE_PATH = REPO_ROOT / "specs" / "gpt_bigcode.yaml"
CHILD_PATH = REPO_ROOT / "specs" / "gpt_bigcode_mha.yaml"
BASE_TEXT = BASE_PATH.read_text()
BASE = yaml.safe_load(BASE_TEXT)
CHILD = yaml.safe_load(CHILD_PATH.read_text())

FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
# Properties whose every example runs black on a whole package (~0.3 s of CPU) take half the
# profile's examples (ci: 30, long: 1500), so the ci run of this file stays under a minute.
RENDERING = settings(FUZZ, max_examples=max(10, settings.default.max_examples // 2))
_module_ids = itertools.count()


def note(text: str) -> None:
    if currently_in_test_context():
        _hypothesis_note(text)

# ----------------------------------------------------------------------------- the property


def write_spec(directory: Path, document: Any, name: str = "spec.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=False, width=1000), encoding="utf-8")
    return path


def assert_located(error: SpecError, path: Path) -> None:
    """The message names the file, the line and the key path (or <top level>)."""
    message = str(error)
    assert isinstance(error, SpecError)
    assert error.file.name in message, message
    assert isinstance(error.line, int) and error.line >= 1, f"no line in {message!r}"
    assert f"{error.file.name}:{error.line}: " in message, message
    assert (shorten(format_key_path(error.key_path), 160) or "<top level>") in message, message
    assert error.problem and error.problem in message


def exercise(path: Path, export: bool = False, run: bool = True) -> dict[str, str] | None:
    """load -> render -> write -> import + build every preset's config (check_presets, as generate
    does). Returns the files, or None when the spec was refused with a located SpecError. Any other
    exception fails the property. ``run=False`` stops after rendering and parsing."""
    spec_path = Path(path)
    try:
        spec = load_spec(spec_path)
    except SpecError as error:
        note(f"SpecError: {error}")
        assert_located(error, spec_path)
        return None
    files = render.render_package(spec)
    for name, source in files.items():
        assert_plain_generated_code(ast.parse(source, filename=name), name)
    if not run:
        return files
    with tempfile.TemporaryDirectory() as folder:
        package_dir = Path(folder) / spec.name
        package_dir.mkdir()
        for name, source in files.items():
            (package_dir / name).write_text(source, encoding="utf-8")
        try:
            render.check_presets(spec, package_dir)  # imports the package, then from_dict per preset
        except SpecError as error:
            note(f"SpecError from presets: {error}")
            assert_located(error, spec_path)
            assert error.key_path[:1] == ("presets",)
            return files
        if export:
            module_name = f"_fuzz_{spec.name}_{next(_module_ids)}"
            module = import_package(package_dir, module_name)
            try:
                assert module.ARCHITECTURE == spec.name
                assert set(module.PRESETS) == set(spec.presets)
                _export_tiny(module, spec)
            finally:
                forget_modules(module_name)
    return files


_ALLOWED_IMPORTS = {"dataclasses", "json", "math", "pathlib", "typing", "tvm", "__future__"}
_FORBIDDEN_NAMES = {"eval", "exec", "compile", "__import__", "open", "globals", "locals", "vars", "breakpoint", "input", "os", "sys", "subprocess", "importlib", "builtins"}


def assert_plain_generated_code(tree: ast.Module, name: str) -> None:
    """Imports only tvm, the standard modules the templates use, and its own siblings; never calls
    or names anything that runs or loads code."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
            assert roots <= _ALLOWED_IMPORTS, f"{name}: import {roots}"
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 1 or (node.module or "").split(".")[0] in _ALLOWED_IMPORTS, f"{name}: from {node.module} import"
        elif isinstance(node, ast.Name):
            assert node.id not in _FORBIDDEN_NAMES, f"{name}: uses {node.id}"
        elif isinstance(node, ast.Attribute):
            assert node.attr not in {"system", "popen", "__globals__", "__subclasses__", "__builtins__"}, f"{name}: .{node.attr}"


def _export_tiny(module, spec) -> None:
    """Export a tiny config of this architecture to a Relax IRModule (no compile)."""
    from tvm.target import Target

    preset = dict(next(iter(module.PRESETS.values())))
    sizes = {"n_embd": 32, "n_head": 4, "n_layer": 1, "n_inner": 64, "n_positions": 32, "vocab_size": 64}
    preset.update({k: v for k, v in sizes.items() if k in preset})
    config = module.Config.from_dict(preset)
    model = module.ForCausalLM(config)
    with Target({"kind": "llvm"}):
        ir_module, params, _ = model.export_tvm(spec=model.get_default_spec(), allow_extern=True)
    names = {gv.name_hint for gv in ir_module.get_global_vars()}
    assert {"embed", "prefill", "decode", "batch_prefill", "batch_decode", "create_paged_kv_cache"} <= names
    assert params


# ----------------------------------------------------------------------------- document helpers


def node_paths(document: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every key path below the root (mapping keys and list indexes)."""
    if isinstance(document, dict):
        for key, value in document.items():
            yield prefix + (key,)
            yield from node_paths(value, prefix + (key,))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield prefix + (index,)
            yield from node_paths(value, prefix + (index,))


def container_paths(document: Any, prefix: tuple = ()) -> Iterator[tuple]:
    if isinstance(document, (dict, list)):
        yield prefix
        items = document.items() if isinstance(document, dict) else enumerate(document)
        for key, value in items:
            yield from container_paths(value, prefix + (key,))


def get_at(document: Any, path: tuple) -> Any:
    for key in path:
        document = document[key]
    return document


def set_at(document: Any, path: tuple, value: Any) -> None:
    get_at(document, path[:-1])[path[-1]] = value


def delete_at(document: Any, path: tuple) -> None:
    del get_at(document, path[:-1])[path[-1]]


# ----------------------------------------------------------------------------- strategies

HOSTILE_STRINGS = [
    "",
    " ",
    "'",
    '"',
    '"""',
    "'''",
    "\\",
    "\n",
    "\r\n",
    "\x00",
    "\x1b[31m",
    "\u2028",
    "\ud800",
    "{{ 7*7 }}",
    "{% raise %}",
    "{# x #}",
    "{i}",
    "${HOME}",
    "__import__('os').system('touch /tmp/pwned')",
    '"); import os; os.system("id"); ("',
    "'''\nimport os\n'''",
    "x\nimport os",
    "1e999",
    "0x10",
    "None",
    "True",
    "class",
    "import",
    "__class__",
    "transformer.h.{i}.attn.c_attn.weight",
    "4 * hidden_size",
    "hidden_size // 0",
    "((((((((((1))))))))))",
    "gpt_bigcode",
    "GPTBigCode",
    "a" * 300,
    "é→",
]
KNOWN_KEYS = sorted({str(p[-1]) for p in node_paths(BASE) if isinstance(p[-1], str)} | {"extends", "num_key_value_heads", "rope_theta", "rotary_fraction", "q_proj", "gate_proj", "values", "default", "default_from", "hf", "transforms", "from", "param"})

texts = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    st.sampled_from(KNOWN_KEYS),
    st.text(max_size=12),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_{}.0123456789 ", min_size=1, max_size=16),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=6,
)

ENUM_SITES = {
    ("architecture", "block"): ["sequential", "parallel", "serial"],
    ("architecture", "norm"): ["layernorm", "rmsnorm", "batchnorm"],
    ("architecture", "position"): ["learned", "rope", "none", "alibi"],
    ("architecture", "attention", "mode"): ["mha", "mqa", "gqa", "mla"],
    ("architecture", "attention", "qkv"): ["fused", "separate", "split"],
    ("architecture", "attention", "bias", "qkv"): [True, False, "yes"],
    ("architecture", "attention", "bias", "out"): [True, False, 1],
    ("architecture", "mlp", "gated"): [True, False, None],
    ("architecture", "mlp", "bias", "up"): [True, False],
    ("architecture", "mlp", "bias", "down"): [True, False],
    ("architecture", "lm_head", "bias"): [True, False],
    ("config", "activation", "default"): ["gelu", "relu", "gelu_new", "silu", "swish"],
    ("config", "activation", "values", "relu"): ["gelu", "gelu_tanh", "relu", "silu", "tanh"],
    ("config", "tie_word_embeddings", "default"): [True, False, "true"],
    ("config_checks", 0, "equals"): [True, False, 0, "true"],
    ("modules", "down_proj"): ["c_proj", "c_fc", "mlp", "class", "down"],
    ("modules", "lm_head"): ["lm_head", "transformer", "wte", "head"],
    ("modules", "layers"): ["h", "layers", "blocks", "0h"],
    ("config", "head_dim", "default_from"): ["hidden_size // num_attention_heads", "hidden_size / 0", "4 * vocab", "(", "head_dim"],
    ("config", "intermediate_size", "default_from"): ["4 * hidden_size", "4 * hidden_size * 1.5", "- hidden_size", "intermediate_size"],
}


def _mutate(draw, document: Any) -> str:
    """Apply one random mutation in place; returns a note of what was done."""
    kind = draw(st.sampled_from(["drop", "replace", "add", "enum", "retype", "rename", "copy"]))
    paths = list(node_paths(document))
    if kind == "enum":
        site = draw(st.sampled_from(sorted(ENUM_SITES, key=str)))
        value = draw(st.sampled_from(ENUM_SITES[site]))
        try:
            set_at(document, site, value)
        except (KeyError, IndexError, TypeError):
            return "enum site missing"
        return f"enum {site} = {value!r}"
    if kind == "add":
        target = draw(st.sampled_from(list(container_paths(document))))
        container = get_at(document, target)
        value = draw(values)
        if isinstance(container, dict):
            key = draw(texts)
            container[key] = value
            return f"add {target + (key,)} = {value!r}"
        container.insert(draw(st.integers(0, len(container))), value)
        return f"insert into {target}: {value!r}"
    if not paths:
        return "nothing to mutate"
    path = draw(st.sampled_from(paths))
    if kind == "drop":
        delete_at(document, path)
        return f"drop {path}"
    if kind == "replace":
        value = draw(values)
        set_at(document, path, value)
        return f"replace {path} = {value!r}"
    if kind == "retype":
        old = get_at(document, path)
        new = draw(st.sampled_from([str(old), [old], {"value": old}, None, old if not isinstance(old, (int, float)) or isinstance(old, bool) else float(old) + 0.5, not old if isinstance(old, bool) else old]))
        set_at(document, path, new)
        return f"retype {path} = {new!r}"
    if kind == "rename":
        parent = get_at(document, path[:-1])
        if not isinstance(parent, dict):
            return "rename in a list"
        key = draw(texts)
        parent[key] = parent.pop(path[-1])
        return f"rename {path} -> {key!r}"
    source = get_at(document, draw(st.sampled_from(paths)))
    set_at(document, path, copy.deepcopy(source))
    return f"copy into {path}"


@st.composite
def mutated_documents(draw):
    """(which file is loaded, parent document, child document or None) with 1-4 mutations."""
    layout = draw(st.sampled_from(["base", "base", "child", "parent"]))
    parent, child = copy.deepcopy(BASE), (copy.deepcopy(CHILD) if layout != "base" else None)
    target = child if layout == "child" else parent
    for _ in range(draw(st.integers(1, 4))):
        note(_mutate(draw, target))
    return layout, parent, child


@given(mutated_documents())
@FUZZ
def test_mutated_specs_load_and_import_or_give_a_located_spec_error(case):
    layout, parent, child = case
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        parent_path = write_spec(folder, parent, "gpt_bigcode.yaml")
        path = write_spec(folder, child, "child.yaml") if child is not None else parent_path
        exercise(path)


# ----------------------------------------------------------------------------- valid variants of every axis


@st.composite
def valid_variants(draw):
    """A spec that should load: a random point on every architecture axis, kept consistent."""
    doc = copy.deepcopy(BASE)
    arch, modules, config = doc["architecture"], doc["modules"], doc["config"]
    arch["block"] = draw(st.sampled_from(["sequential", "parallel"]))
    arch["norm"] = draw(st.sampled_from(["layernorm", "rmsnorm"]))
    arch["position"] = position = draw(st.sampled_from(["learned", "rope", "none"]))
    arch["attention"]["mode"] = mode = draw(st.sampled_from(["mha", "mqa", "gqa"]))
    arch["attention"]["qkv"] = qkv = draw(st.sampled_from(["fused", "separate"]))
    arch["attention"]["bias"] = {"qkv": draw(st.booleans()), "out": draw(st.booleans())}
    arch["mlp"] = {"gated": (gated := draw(st.booleans())), "bias": {"up": draw(st.booleans()), "down": draw(st.booleans())}}
    arch["lm_head"] = {"bias": draw(st.booleans())}
    if position != "learned":
        del modules["embed_positions"]
    if qkv == "separate":
        del modules["qkv_proj"]
        modules.update(q_proj="q_proj", k_proj="k_proj", v_proj="v_proj")
    if gated:
        modules["gate_proj"] = draw(st.sampled_from(["gate_proj", "w1", "c_gate"]))
    if mode == "gqa":
        config["num_key_value_heads"] = {"hf": "num_key_value_heads", "default": draw(st.sampled_from([1, 2, 4]))}
    if position == "rope":
        config["rope_theta"] = {"hf": "rope_theta", "default": draw(st.sampled_from([10000.0, 1e6, 500000]))}
        config["rotary_fraction"] = {"default": draw(st.sampled_from([1.0, 0.5, 0.25]))}
    activations = draw(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), st.sampled_from(["gelu", "gelu_tanh", "relu", "silu"]), min_size=1, max_size=4))
    config["activation"] = {"hf": "activation_function", "default": draw(st.sampled_from(sorted(activations))), "values": activations}
    config["tie_word_embeddings"] = {"hf": "tie_word_embeddings", "default": draw(st.booleans())}
    if draw(st.booleans()):
        doc.pop("config_checks")
    doc["weights"]["ignore"] = draw(st.lists(st.sampled_from(["transformer.h.{i}.attn.bias", "transformer.h.{i}.attn.masked_bias", "rotary.inv_freq"]), unique=True))
    doc["description"] = draw(st.text(max_size=150))
    doc["name"] = draw(st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True))
    doc["class_prefix"] = draw(st.from_regex(r"[A-Z][A-Za-z0-9]{0,20}", fullmatch=True))
    presets = {}
    for preset in draw(st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True), min_size=1, max_size=3, unique=True)):
        heads = draw(st.sampled_from([4, 8, 16]))
        presets[preset] = {
            "n_embd": heads * draw(st.sampled_from([8, 16, 64])),
            "n_head": heads,
            "n_layer": draw(st.integers(1, 48)),
            "n_positions": draw(st.sampled_from([32, 2048, 8192])),
            "vocab_size": draw(st.integers(1, 100000)),
        }
        if draw(st.booleans()):
            presets[preset]["n_inner"] = draw(st.one_of(st.none(), st.integers(1, 10000)))
    doc["presets"] = presets
    return doc


@given(valid_variants())
@RENDERING
def test_every_axis_combination_renders_and_imports(document):
    with tempfile.TemporaryDirectory() as folder:
        files = exercise(write_spec(Path(folder), document))
    assert files is not None, "a consistent variant was refused"


EXPORTED_VARIANTS = [
    pytest.param({"mode": "gqa", "qkv": "separate", "position": "rope", "norm": "rmsnorm", "gated": True, "block": "sequential"}, id="llama-like"),
    pytest.param({"mode": "mha", "qkv": "fused", "position": "none", "norm": "layernorm", "gated": False, "block": "parallel"}, id="neox-like-no-pos"),
    pytest.param({"mode": "mqa", "qkv": "separate", "position": "learned", "norm": "layernorm", "gated": True, "block": "sequential"}, id="mqa-separate-gated"),
]


@pytest.mark.parametrize("axes", EXPORTED_VARIANTS)
def test_a_handful_of_variants_export_to_relax(axes, tmp_path):
    doc = copy.deepcopy(BASE)
    arch, modules, config = doc["architecture"], doc["modules"], doc["config"]
    arch.update(block=axes["block"], norm=axes["norm"], position=axes["position"])
    arch["attention"]["mode"], arch["attention"]["qkv"] = axes["mode"], axes["qkv"]
    arch["mlp"]["gated"] = axes["gated"]
    arch["lm_head"]["bias"] = True
    if axes["position"] != "learned":
        del modules["embed_positions"]
    if axes["qkv"] == "separate":
        del modules["qkv_proj"]
        modules.update(q_proj="q_proj", k_proj="k_proj", v_proj="v_proj")
    if axes["gated"]:
        modules["gate_proj"] = "gate_proj"
    if axes["mode"] == "gqa":
        config["num_key_value_heads"] = {"default": 2}
    if axes["position"] == "rope":
        config.update(rope_theta={"default": 10000.0}, rotary_fraction={"default": 0.5})
    config["activation"]["values"]["silu"] = "silu"
    config["tie_word_embeddings"]["default"] = False
    doc.pop("config_checks")
    doc["presets"] = {"tiny": {"n_embd": 32, "n_head": 4, "n_layer": 1, "n_positions": 32, "vocab_size": 64}}
    assert exercise(write_spec(tmp_path, doc), export=True) is not None


# ----------------------------------------------------------------------------- raw YAML text mutations

_TEXT_PIECES = [":", ": ", "- ", "\n", "\n  ", "\t", "  ", "{", "}", "[", "]", "&a ", "*a", "!!python/object:os.system ", "!!binary ",
                "<<: *a", "%YAML 1.1\n", "---\n", "...\n", "|", ">", "'", '"', "#", "?", ",", "\x00", "\ufeff", "\x85", "~", "!!set ",
                "extends: ", "extends: /etc/passwd\n", "extends: ../gpt_bigcode.yaml\n", "name: x\n", "1e309", ".nan", "0o17", "2001-12-14"]


@st.composite
def mutated_texts(draw):
    data = BASE_TEXT.encode()
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "swap_lines", "bytes", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if op == "insert":
            data = data[:at] + draw(st.sampled_from(_TEXT_PIECES) | st.text(max_size=8)).encode("utf-8", "surrogatepass") + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 40)):]
        elif op == "replace":
            data = data[:at] + draw(st.sampled_from(_TEXT_PIECES)).encode() + data[at + 1:]
        elif op == "bytes":
            data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
        elif op == "truncate":
            data = data[:at]
        else:
            lines = data.split(b"\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            data = b"\n".join(lines)
    return data


@given(mutated_texts())
@FUZZ
def test_mutated_yaml_text_loads_or_gives_a_located_spec_error(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_bytes(data)
        exercise(path)


def test_alias_bomb_and_deep_nesting_are_refused(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    (tmp_path / "bomb.yaml").write_text(bomb)
    with pytest.raises(SpecError, match="too large or too deeply nested") as info:
        load_spec(tmp_path / "bomb.yaml")
    assert_located(info.value, tmp_path / "bomb.yaml")
    (tmp_path / "deep.yaml").write_text("name: " + "[" * 100 + "]" * 100 + "\n")
    with pytest.raises(SpecError, match="too deeply nested") as info:
        load_spec(tmp_path / "deep.yaml")
    assert_located(info.value, tmp_path / "deep.yaml")
    (tmp_path / "rec.yaml").write_text("name: &a [*a]\n")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "rec.yaml")
    assert_located(info.value, tmp_path / "rec.yaml")


@pytest.mark.parametrize(
    "text, problem",
    [
        ("!!python/object/apply:os.system ['touch /tmp/pwned']\n", "is not allowed in a spec"),
        ("name: !!python/name:os.system ''\n", "could not determine a constructor"),
        ("name: x\nname: y\n", "duplicate key"),
        ("? [a, b]\n: c\n", "must be a string"),
        ("- a\n- b\n", "must be a mapping"),
        ("name: .inf\n", "numbers must be finite"),
    ],
)
def test_unsafe_or_odd_yaml_is_refused_without_running_anything(tmp_path, text, problem):
    marker = Path("/tmp/pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=re.escape(problem)) as info:
        load_spec(path)
    assert_located(info.value, path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- injection through string fields


def string_sites(document: Any) -> list[tuple[str, tuple]]:
    """("value", path) for every string value, ("key", path) for every key of a free-form mapping,
    and optional string fields the base spec leaves out."""
    sites = [("value", p) for p in node_paths(document) if isinstance(get_at(document, p), str)]
    for p in node_paths(document):
        if p[:1] == ("presets",) or p[:3] == ("config", "activation", "values"):
            sites.append(("key", p))
    sites += [("value", ("config_checks", 0, "equals")), ("value", ("config_checks", 0, "default")),
              ("value", ("presets", "santacoder", "n_embd")), ("value", ("extends",)),
              ("value", ("config", "norm_eps", "default")), ("value", ("weights", "rules"))]
    return sites


def inject(document: Any, site: tuple[str, tuple], payload: str, how: str) -> Any:
    doc = copy.deepcopy(document)
    kind, path = site
    if kind == "key":
        parent = get_at(doc, path[:-1])
        parent[payload if how == "replace" else f"{path[-1]}{payload}"] = parent.pop(path[-1])
        return doc
    try:
        old = get_at(doc, path)
    except (KeyError, IndexError):
        old = ""
    old = old if isinstance(old, str) else ""
    value = {"replace": payload, "prefix": payload + old, "suffix": old + payload}[how]
    if path == ("weights", "rules"):
        value = [{"param": value, "from": value}]
    set_at(doc, path, value)
    return doc


class _BlankConstants(ast.NodeTransformer):
    def visit_Constant(self, node):
        return ast.copy_location(ast.Constant(value="<constant>"), node)


def code_shape(source: str) -> str:
    """The module with every literal blanked: what runs, never what it says."""
    return ast.dump(_BlankConstants().visit(ast.parse(source)))


with tempfile.TemporaryDirectory() as _folder:
    _BASELINE = render.render_package(load_spec(write_spec(Path(_folder), BASE)))
BASELINE_SHAPE = {name: code_shape(source) for name, source in _BASELINE.items()}

# At least one character that no identifier, tensor name or size expression may contain.
_HOSTILE_CHARS = "'\"\\\n;#=%!<>,[]:@$&|`~\x00\r"
PAYLOADS = [
    "'; import os; os.system('touch /tmp/pwned'); '",
    '"""\nimport os\nos.system("touch /tmp/pwned")\n"""',
    "{{ cycler.__init__.__globals__.os.system('touch /tmp/pwned') }}",
    "{% for x in range(3) %}X{% endfor %}",
    "\\\n__import__('os').system('touch /tmp/pwned')  # ",
    "x\" + __import__('os').getcwd() + \"",
    "}}{{",
    "\x00\r\n\u2028#",
]
payloads = st.one_of(
    st.sampled_from(PAYLOADS),
    st.text(alphabet=st.sampled_from(list(_HOSTILE_CHARS + "{}%() abcxyz_.*/+-0123456789\t\u2028\ud800")), min_size=1, max_size=40),
    st.builds(lambda a, b: a + b, st.sampled_from(PAYLOADS), st.text(max_size=10)),
).filter(lambda p: any(c in _HOSTILE_CHARS for c in p))


def check_injection(payload: str, how: str, sites: list[tuple[str, tuple]], run: bool = True) -> int:
    """Each site alone: refused with a located SpecError, or accepted. Then every accepted site at
    once: the rendered code has exactly the baseline's shape. Returns how many sites accepted."""
    marker = Path("/tmp/pwned")
    accepted = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for site in sites:
            path = write_spec(folder, inject(BASE, site, payload, how))
            try:
                load_spec(path)
            except SpecError as error:
                assert_located(error, path)
                continue
            accepted.append(site)
        doc = BASE
        for site in accepted:
            doc = inject(doc, site, payload, how)
        files = exercise(write_spec(folder, doc), run=run)
    if files is not None:
        for name, source in files.items():
            assert code_shape(source) == BASELINE_SHAPE[name], f"{name}: payload {payload!r} changed the code of {accepted}"
    assert not marker.exists(), "a payload ran code"
    return len(accepted)


ALL_SITES = string_sites(BASE)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_fixed_payloads_in_every_string_field_never_become_code(payload):
    accepted = check_injection(payload, "suffix", ALL_SITES)
    assert accepted >= 1  # the description at least takes free text


@given(payloads, st.sampled_from(["replace", "prefix", "suffix"]), st.lists(st.sampled_from(ALL_SITES), min_size=1, max_size=6, unique=True))
@RENDERING
def test_random_payloads_in_string_fields_never_become_code(payload, how, sites):
    # render + parse only: the code shape equals the baseline's, so importing adds nothing here
    # (the fixed payloads above import and build every preset)
    check_injection(payload, how, sites + [("value", ("description",))], run=False)


def test_identifier_patterns_end_at_the_end_of_the_string(tmp_path):
    """Python's `$` also matches before a final newline; a spec value may not smuggle one in."""
    for path, value in [(("name",), "gpt\n"), (("class_prefix",), "GPT\n"), (("modules", "lm_head"), "head\n"),
                        (("weights", "ignore", 0), "a.{i}.b\n"), (("config", "vocab_size", "hf"), "vocab_size\n")]:
        doc = copy.deepcopy(BASE)
        set_at(doc, path, value)
        spec_path = write_spec(tmp_path, doc)
        with pytest.raises(SpecError, match="does not match") as info:
            load_spec(spec_path)
        assert_located(info.value, spec_path)
        assert info.value.key_path == path


def test_non_finite_numbers_are_refused(tmp_path):
    for path, value in [(("config", "norm_eps", "default"), math.inf), (("presets", "santacoder", "n_embd"), math.nan),
                        (("presets", "starcoder", "vocab_size"), -math.inf)]:
        doc = copy.deepcopy(BASE)
        set_at(doc, path, value)
        spec_path = write_spec(tmp_path, doc)
        with pytest.raises(SpecError, match="numbers must be finite") as info:
            load_spec(spec_path)
        assert info.value.key_path == path
        assert_located(info.value, spec_path)


def test_a_preset_whose_size_expression_divides_by_zero_is_a_spec_error(tmp_path):
    doc = copy.deepcopy(BASE)
    doc["config"]["head_dim"]["default_from"] = "hidden_size // (num_attention_heads - 12)"
    spec_path = write_spec(tmp_path, doc)
    with pytest.raises(SpecError, match="cannot build a config: ZeroDivisionError") as info:
        exercise_strict(spec_path)
    assert info.value.key_path == ("presets", "tiny_starcoder")  # the first preset with 12 heads
    assert_located(info.value, spec_path)


def exercise_strict(path: Path) -> None:
    spec = load_spec(path)
    with tempfile.TemporaryDirectory() as folder:
        package_dir = Path(folder) / spec.name
        package_dir.mkdir()
        for name, source in render.render_package(spec).items():
            (package_dir / name).write_text(source)
        render.check_presets(spec, package_dir)


def test_control_characters_in_the_description_are_escaped(tmp_path):
    doc = copy.deepcopy(BASE)
    doc["description"] = "bell\x07 nul\x00 esc\x1b end\\"
    files = exercise(write_spec(tmp_path, doc))
    assert files is not None
    text = files["model.py"]
    assert "\x00" not in text and "\x07" not in text and "\x1b" not in text
    assert ast.get_docstring(ast.parse(text)).startswith("bell\x07 nul\x00 esc\x1b end\\")


# ----------------------------------------------------------------------------- the escaping filters alone (cheap)


@given(st.text())
@FUZZ
def test_docstring_filter_output_stays_inside_its_docstring(text):
    source = f'"""{render.docstring_text(text)}"""\nx = 1\n'
    tree = ast.parse(source)
    assert len(tree.body) == 2 and isinstance(tree.body[0].value, ast.Constant)
    assert ast.get_docstring(tree, clean=False) == " ".join(text.split())  # escapes decode back to the text


@given(st.text())
@FUZZ
def test_comment_filter_output_stays_inside_its_comment(text):
    source = f"# {render.comment_text(text)}\nx = 1\n"
    tree = ast.parse(source)
    assert len(tree.body) == 1 and ast.unparse(tree) == "x = 1"
    assert "\n" not in render.comment_text(text) and "\r" not in render.comment_text(text)


@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text()))
@FUZZ
def test_literal_filter_round_trips(value):
    literal = render.py_literal(value)
    assert ast.literal_eval(literal) == value or (isinstance(value, float) and value != value)
    assert len(ast.parse(f"x = {literal}").body) == 1


@given(st.one_of(st.sampled_from([math.inf, -math.inf, math.nan]), st.lists(st.integers()), st.dictionaries(st.text(), st.integers()), st.tuples(st.integers())))
@FUZZ
def test_literal_filter_refuses_what_has_no_literal(value):
    with pytest.raises(render.RenderError):
        render.py_literal(value)


@given(st.text())
@FUZZ
def test_identifier_and_tensor_name_filters_accept_only_names(text):
    try:
        name = render.identifier(text)
    except render.RenderError:
        pass
    else:
        assert name.isidentifier() and name == text
    try:
        literal = render.tensor_name(text)
    except render.RenderError:
        pass
    else:
        node = ast.parse(literal, mode="eval").body
        assert isinstance(node, (ast.Constant, ast.JoinedStr))
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        assert names <= {"i"}, names
