"""Load, merge and validate architecture specs.

specs/*.yaml ──safe load, keep line numbers──▶ raw dict ──extends merge──▶ JSON Schema ──▶ semantic
checks ──▶ Spec (frozen). Every failure is one SpecError naming the file, the line and the key path.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import keyword
import math
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping

import jsonschema
import yaml

from codegen import expr

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "specs" / "schema.json"

_MAX_SPEC_BYTES = 256 * 1024
_MAX_NODES = 20_000  # guards against alias bombs ("billion laughs")
_MAX_DEPTH = 32

KeyPath = tuple[Any, ...]
_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class SpecError(Exception):
    """A spec is invalid. ``file``, ``line`` and ``key_path`` say where; the message says what is allowed."""

    def __init__(self, file: Path | str, line: int | None, key_path: KeyPath, problem: str):
        self.file = Path(file)
        self.line = line
        self.key_path = key_path
        self.problem = problem
        where = f"{_display(self.file)}:{line}" if line else _display(self.file)
        super().__init__(f"{where}: {format_key_path(key_path) or '<top level>'}: {problem}")


def format_key_path(key_path: KeyPath) -> str:
    out = ""
    for key in key_path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def _brief(value: Any, limit: int = 80) -> str:
    """repr of a value, shortened in the middle: error messages stay readable for hostile input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 4:]} ({len(text)} characters)"


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- reading YAML


@dataclasses.dataclass
class _Located:
    """A merged spec document plus, for every key path, the file and line it came from."""

    data: dict[str, Any]
    where: dict[KeyPath, tuple[Path, int]]

    def locate(self, key_path: KeyPath) -> tuple[Path, int | None]:
        for end in range(len(key_path), -1, -1):
            if key_path[:end] in self.where:
                return self.where[key_path[:end]]
        return next(iter(self.where.values()))[0], None

    def error(self, key_path: KeyPath, problem: str) -> SpecError:
        file, line = self.locate(key_path)
        return SpecError(file, line, key_path, problem)


def _read_yaml(path: Path) -> _Located:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(path, None, (), f"cannot read spec: {exc.strerror}") from None
    if len(raw) > _MAX_SPEC_BYTES:
        raise SpecError(path, None, (), f"spec is larger than {_MAX_SPEC_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            where: dict[KeyPath, tuple[Path, int]] = {}
            counter = [0]
            data = _construct(loader, node, (), where, path, counter) if node is not None else None
        finally:
            loader.dispose()
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(path, line, (), f"spec is not UTF-8 text ({exc.reason})") from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise SpecError(path, line, (), f"invalid YAML: {exc.problem}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow; position counts characters
        line = text[: exc.position].count("\n") + 1
        raise SpecError(path, line, (), f"invalid YAML: character {exc.character!r} is not allowed ({exc.reason})") from None
    except yaml.YAMLError as exc:
        raise SpecError(path, None, (), f"invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(path, 1, (), "a spec must be a mapping of keys (name, architecture, ...)")
    where.setdefault((), (path, 1))
    located = _Located(data, where)
    _check_values(located, data, ())
    return located


def _check_values(document: _Located, value: Any, key_path: KeyPath) -> None:
    """Numbers must be finite (`.inf`/`.nan` have no Python literal) and text must be encodable."""
    if isinstance(value, dict):
        for key, child in value.items():
            _check_values(document, key, key_path + (key,))
            _check_values(document, child, key_path + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _check_values(document, child, key_path + (index,))
    elif isinstance(value, float) and not math.isfinite(value):
        raise document.error(key_path, f"{value!r} is not allowed: numbers must be finite")
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise document.error(key_path, f"{value!r} contains a lone surrogate, which is not text") from None


def _construct(loader, node, key_path, where, path, counter, depth=0):
    counter[0] += 1
    line = node.start_mark.line + 1
    if counter[0] > _MAX_NODES or depth > _MAX_DEPTH:
        raise SpecError(path, line, key_path, "spec is too large or too deeply nested (alias expansion?)")
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_COLLECTION_TAGS:
        raise SpecError(path, line, key_path, f"invalid YAML: tag {node.tag!r} is not allowed in a spec")
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node)
            if not isinstance(key, str):
                raise SpecError(path, key_node.start_mark.line + 1, key_path, f"key {key!r} must be a string")
            child = key_path + (key,)
            if key in out:
                raise SpecError(path, key_node.start_mark.line + 1, child, "duplicate key")
            where[child] = (path, key_node.start_mark.line + 1)
            out[key] = _construct(loader, value_node, child, where, path, counter, depth + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            child = key_path + (index,)
            where[child] = (path, item.start_mark.line + 1)
            items.append(_construct(loader, item, child, where, path, counter, depth + 1))
        return items
    return loader.construct_object(node)


def _load_with_extends(path: Path, root_dir: Path, chain: tuple[Path, ...]) -> _Located:
    document = _read_yaml(path)
    parent_name = document.data.pop("extends", None)
    if parent_name is None:
        return document
    if not isinstance(parent_name, str):
        raise document.error(("extends",), "must be a path to a parent spec (a string)")
    try:
        parent = (path.parent / parent_name).resolve()
        parent_is_file = parent.is_file()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise document.error(("extends",), f"parent {_brief(parent_name)} is not a usable path ({reason})") from None
    if not parent.is_relative_to(root_dir):
        raise document.error(("extends",), f"parent {parent_name!r} lies outside {_display(root_dir)}")
    if parent in chain or parent == path:
        cycle = " -> ".join(_display(p) for p in (*chain, path, parent))
        raise document.error(("extends",), f"cyclic extends: {cycle}")
    if not parent_is_file:
        raise document.error(("extends",), f"parent spec {parent_name!r} does not exist")
    base = _load_with_extends(parent, root_dir, (*chain, path))
    _merge(base.data, document.data)
    base.where.update(document.where)
    return base


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


# ----------------------------------------------------------------------------- the typed spec


@dataclasses.dataclass(frozen=True)
class ConfigField:
    """One model config field and where its value comes from."""

    name: str
    kind: str  # "int" | "float" | "bool" | "activation"
    hf: str | tuple[str, ...] | None  # a field or dotted path; a tuple is tried in order
    default: Any
    default_from: expr.Expression | None
    values: Mapping[str, str]  # activation fields: HF name -> computed activation


@dataclasses.dataclass(frozen=True)
class WeightRule:
    param: str
    sources: tuple[str, ...]
    transforms: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Parameter:
    """A model parameter name pattern ({i} = layer index); ``untied_only`` for the separate LM head."""

    name: str
    untied_only: bool = False

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.name


@dataclasses.dataclass(frozen=True)
class Spec:
    source: Path
    name: str
    class_prefix: str
    description: str
    hf_model_type: str
    architecture: Mapping[str, Any]
    modules: Mapping[str, str]
    config_fields: tuple[ConfigField, ...]  # in dependency order
    config_checks: tuple[Mapping[str, Any], ...]
    parameters: tuple[Parameter, ...]
    weight_rules: Mapping[str, WeightRule]
    weight_ignore: tuple[str, ...]
    presets: Mapping[str, Mapping[str, Any]]
    document: Mapping[str, Any]  # the merged document, for hashing and diffing
    locations: Mapping[KeyPath, tuple[Path, int]] = dataclasses.field(repr=False, compare=False)

    def error(self, key_path: KeyPath, problem: str) -> SpecError:
        """A SpecError located at key_path (or its nearest located parent)."""
        return _Located(dict(self.document), dict(self.locations)).error(key_path, problem)

    @property
    def content_hash(self) -> str:
        canonical = json.dumps(self.document, sort_keys=True, separators=(",", ":"), default=dict)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def field(self, name: str) -> ConfigField | None:
        return next((f for f in self.config_fields if f.name == name), None)

    def option(self, *key_path: str) -> Any:
        value: Any = self.architecture
        for key in key_path:
            value = value[key]
        return value


_FIELD_KINDS = {
    "vocab_size": "int",
    "hidden_size": "int",
    "intermediate_size": "int",
    "num_hidden_layers": "int",
    "num_attention_heads": "int",
    "num_key_value_heads": "int",
    "head_dim": "int",
    "context_window_size": "int",
    "norm_eps": "float",
    "rope_theta": "float",
    "rotary_fraction": "float",
    "tie_word_embeddings": "bool",
    "scale_attention": "bool",
    "activation": "activation",
}


def load_spec(path: str | Path) -> Spec:
    """Read a spec file (following ``extends``), validate it and return the typed Spec."""
    path = Path(path).resolve()
    document = _load_with_extends(path, path.parent, ())
    _check_schema(document)
    return _build(path, document)


def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def _check_schema(document: _Located) -> None:
    validator = _Validator(_schema())
    errors = sorted(validator.iter_errors(document.data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return
    error = _most_specific(errors[0])
    key_path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        if unknown and allowed:
            raise document.error(key_path + (unknown[0],), f"unknown key {unknown[0]!r}; allowed keys: {', '.join(allowed)}")
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        raise document.error(key_path, f"{_brief(error.instance)} is not allowed; allowed values: {allowed}")
    if error.validator == "required":
        missing = next(k for k in error.validator_value if k not in error.instance)
        raise document.error(key_path, f"missing required key {missing!r}")
    if error.validator == "pattern":
        raise document.error(key_path, f"{_brief(error.instance)} does not match the pattern {error.validator_value}")
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, str) else " or ".join(error.validator_value)
        raise document.error(key_path, f"{_brief(error.instance)} is not of type {expected}")
    raise document.error(key_path, error.message)


def _full_match_pattern(validator, pattern: str, instance: Any, schema: Any):
    """JSON Schema (ECMA 262) `$` ends the string; Python's `$` also matches before a final newline,
    so "wte\\n" would pass "^[a-z]+$" and carry a newline into generated code. Match with `\\Z`."""
    if isinstance(instance, str):
        anchored = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern
        if not re.search(anchored, instance):
            yield jsonschema.ValidationError(f"{_brief(instance)} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _full_match_pattern})


def _most_specific(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For oneOf/anyOf failures, report the deepest sub-error: it names the real key."""
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    return error


def _build(path: Path, document: _Located) -> Spec:
    data = document.data
    architecture = data["architecture"]
    modules = data["modules"]
    _check_modules(document, architecture, modules)
    config_fields = _config_fields(document, architecture)
    parameters = tuple(_parameters(architecture, modules))
    rules = _weight_rules(document, architecture, parameters)
    return Spec(
        source=path,
        name=data["name"],
        class_prefix=data["class_prefix"],
        description=data["description"],
        hf_model_type=data["hf_model_type"],
        architecture=_frozen(architecture),
        modules=MappingProxyType(dict(modules)),
        config_fields=config_fields,
        config_checks=tuple(_frozen(check) for check in data.get("config_checks", [])),
        parameters=parameters,
        weight_rules=MappingProxyType(rules),
        weight_ignore=tuple(data["weights"]["ignore"]),
        presets=_frozen(data["presets"]),
        document=_frozen(data),
        locations=MappingProxyType(dict(document.where)),
    )


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _required_modules(architecture: Mapping[str, Any]) -> dict[str, str]:
    """Optional module names and why each is needed; the schema lists the always-needed ones."""
    attention, position = architecture["attention"], architecture["position"]
    needed = {}
    if attention["qkv"] == "fused":
        needed["qkv_proj"] = "architecture.attention.qkv is fused"
    else:
        for name in ("q_proj", "k_proj", "v_proj"):
            needed[name] = "architecture.attention.qkv is separate"
    if architecture["mlp"]["gated"]:
        needed["gate_proj"] = "architecture.mlp.gated is true"
    if position == "learned":
        needed["embed_positions"] = "architecture.position is learned"
    return needed


_OPTIONAL_MODULES = ("qkv_proj", "q_proj", "k_proj", "v_proj", "gate_proj", "embed_positions")


def _check_modules(document: _Located, architecture, modules) -> None:
    needed = _required_modules(architecture)
    for name, reason in needed.items():
        if name not in modules:
            raise document.error(("modules",), f"missing required key {name!r} (needed because {reason})")
    for name in _OPTIONAL_MODULES:
        if name in modules and name not in needed:
            raise document.error(("modules", name), f"{name!r} is not used by this architecture; remove it")
    for name, value in modules.items():
        if keyword.iskeyword(value):
            raise document.error(("modules", name), f"{value!r} is a Python keyword, not a usable attribute name")
    siblings = [
        ("backbone", "lm_head"),
        ("embed_tokens", "embed_positions", "layers", "final_norm"),
        ("attn_norm", "attention", "mlp_norm", "mlp"),
        ("qkv_proj", "q_proj", "k_proj", "v_proj", "out_proj"),
        ("gate_proj", "up_proj", "down_proj"),
    ]
    for group in siblings:
        seen: dict[str, str] = {}
        for role in group:
            value = modules.get(role)
            if value is None:
                continue
            if value in seen:
                raise document.error(("modules", role), f"{value!r} is already the name of {seen[value]!r} in the same module")
            seen[value] = role


def _config_fields(document: _Located, architecture) -> tuple[ConfigField, ...]:
    config = document.data["config"]
    needed = {
        "num_key_value_heads": architecture["attention"]["mode"] == "gqa",
        "rope_theta": architecture["position"] == "rope",
        "rotary_fraction": architecture["position"] == "rope",
    }
    for name, is_needed in needed.items():
        if is_needed and name not in config:
            reason = "attention.mode is gqa" if name == "num_key_value_heads" else "position is rope"
            raise document.error(("config",), f"missing required key {name!r} (needed because architecture.{reason})")
        if not is_needed and name in config:
            if name == "num_key_value_heads":
                reason = f"attention mode {architecture['attention']['mode']} fixes the KV head count"
            else:
                reason = f"position {architecture['position']} has no rotary embedding"
            raise document.error(("config", name), f"not used: {reason}; remove it")

    fields = {}
    for name, entry in config.items():
        key_path = ("config", name)
        if "default" in entry and "default_from" in entry:
            raise document.error(key_path, "give either default or default_from, not both")
        if not any(k in entry for k in ("hf", "default", "default_from")):
            raise document.error(key_path, "needs hf (a config.json field), default, or default_from")
        parsed = None
        if "default_from" in entry:
            try:
                parsed = expr.parse(entry["default_from"])
            except expr.ExpressionError as exc:
                raise document.error(key_path + ("default_from",), str(exc)) from None
            unknown = sorted(parsed.names - set(config))
            if unknown:
                raise document.error(key_path + ("default_from",), f"unknown config field {unknown[0]!r}; known: {', '.join(sorted(config))}")
        fields[name] = ConfigField(
            name=name,
            kind=_FIELD_KINDS[name],
            hf=_hf_source(entry.get("hf")),
            default=entry.get("default"),
            default_from=parsed,
            values=MappingProxyType(dict(entry.get("values", {}))),
        )
    activation = fields["activation"]
    if activation.default is not None and activation.default not in activation.values:
        raise document.error(("config", "activation", "default"), f"{activation.default!r} is not one of values: {', '.join(activation.values)}")
    return tuple(_dependency_order(document, fields))


def _hf_source(value: str | list[str] | None) -> str | tuple[str, ...] | None:
    """One HF field name stays a string; a list of fallbacks becomes a tuple (one item: its string)."""
    if isinstance(value, list):
        return value[0] if len(value) == 1 else tuple(value)
    return value


def _dependency_order(document: _Located, fields: dict[str, ConfigField]) -> Iterator[ConfigField]:
    done: set[str] = set()
    visiting: list[str] = []

    def visit(name: str) -> Iterator[ConfigField]:
        if name in done:
            return
        if name in visiting:
            cycle = " -> ".join(visiting[visiting.index(name):] + [name])
            raise document.error(("config", name, "default_from"), f"cyclic default_from: {cycle}")
        visiting.append(name)
        field = fields[name]
        if field.default_from is not None:
            for dependency in sorted(field.default_from.names):
                yield from visit(dependency)
        visiting.pop()
        done.add(name)
        yield field

    for name in fields:  # document order, stable
        yield from visit(name)


def _parameters(architecture, modules) -> Iterator[Parameter]:
    """Model parameter names, built from the module names exactly as the generated classes nest."""
    m = modules
    backbone, layer = m["backbone"], f"{m['backbone']}.{m['layers']}.{{i}}"
    attention, mlp = f"{layer}.{m['attention']}", f"{layer}.{m['mlp']}"
    norm_parts = ("weight", "bias") if architecture["norm"] == "layernorm" else ("weight",)

    def linear(prefix: str, bias: bool) -> Iterator[Parameter]:
        yield Parameter(f"{prefix}.weight")
        if bias:
            yield Parameter(f"{prefix}.bias")

    yield Parameter(f"{backbone}.{m['embed_tokens']}.weight")
    if architecture["position"] == "learned":
        yield Parameter(f"{backbone}.{m['embed_positions']}.weight")
    for part in norm_parts:
        yield Parameter(f"{layer}.{m['attn_norm']}.{part}")
    qkv_bias = architecture["attention"]["bias"]["qkv"]
    projections = ["qkv_proj"] if architecture["attention"]["qkv"] == "fused" else ["q_proj", "k_proj", "v_proj"]
    for projection in projections:
        yield from linear(f"{attention}.{m[projection]}", qkv_bias)
    yield from linear(f"{attention}.{m['out_proj']}", architecture["attention"]["bias"]["out"])
    for part in norm_parts:
        yield Parameter(f"{layer}.{m['mlp_norm']}.{part}")
    up_bias = architecture["mlp"]["bias"]["up"]
    if architecture["mlp"]["gated"]:
        yield from linear(f"{mlp}.{m['gate_proj']}", up_bias)
    yield from linear(f"{mlp}.{m['up_proj']}", up_bias)
    yield from linear(f"{mlp}.{m['down_proj']}", architecture["mlp"]["bias"]["down"])
    for part in norm_parts:
        yield Parameter(f"{backbone}.{m['final_norm']}.{part}")
    yield Parameter(f"{m['lm_head']}.weight", untied_only=True)
    if architecture["lm_head"]["bias"]:
        yield Parameter(f"{m['lm_head']}.bias", untied_only=True)


def _weight_rules(document: _Located, architecture, parameters) -> dict[str, WeightRule]:
    names = {p.name for p in parameters}
    rules: dict[str, WeightRule] = {}
    for index, rule in enumerate(document.data["weights"]["rules"]):
        key_path = ("weights", "rules", index)
        param = rule["param"]
        if param not in names:
            raise document.error(key_path + ("param",), f"{param!r} is not a model parameter; parameters: {', '.join(sorted(names))}")
        if param in rules:
            raise document.error(key_path + ("param",), f"a rule for {param!r} already exists")
        sources = (rule["from"],) if isinstance(rule["from"], str) else tuple(rule["from"])
        for position, source in enumerate(sources):
            if ("{i}" in source) != ("{i}" in param):
                where = key_path + ("from",) + ((position,) if isinstance(rule["from"], list) else ())
                raise document.error(where, "{i} must appear in both param and from, or in neither")
        transforms = tuple(rule.get("transforms", ()))
        if "deinterleave_qkv" in transforms and (architecture["attention"]["mode"] != "mha" or architecture["attention"]["qkv"] != "fused"):
            raise document.error(key_path + ("transforms",), "deinterleave_qkv needs architecture.attention mode mha with fused qkv")
        rules[param] = WeightRule(param=param, sources=sources, transforms=transforms)
    return rules
