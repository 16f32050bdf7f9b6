"""The typed, frozen Spec and the semantic checks that JSON Schema cannot express.

load_spec: document (codegen.spec.document) ──JSON Schema──▶ semantic checks ──▶ Spec. Every
failure is one SpecError naming the file, the line and the key path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import keyword
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator, Mapping

from codegen.spec import expr
from codegen.spec.document import KeyPath, Located, SpecError, load_document
from codegen.spec.schema import check_schema


@dataclasses.dataclass(frozen=True)
class ConfigField:
    """One model config field and where its value comes from."""

    name: str
    kind: str  # "int" | "float" | "bool" | "activation" | "rope_scaling"
    hf: str | tuple[str, ...] | None  # a field or dotted path; a tuple is tried in order
    default: Any
    default_from: expr.Expression | None
    values: Mapping[str, str]  # activation fields: HF name -> computed activation
    types: tuple[str, ...] = ()  # rope_scaling fields: the scaling types the model computes


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
    keep_unquantized: frozenset[str]  # roles (embedding, lm_head) no group scheme quantizes in this model
    document: Mapping[str, Any]  # the merged document, for hashing and diffing
    locations: Mapping[KeyPath, tuple[Path, int]] = dataclasses.field(repr=False, compare=False)

    def error(self, key_path: KeyPath, problem: str) -> SpecError:
        """A SpecError located at key_path (or its nearest located parent)."""
        return Located(dict(self.document), dict(self.locations)).error(key_path, problem)

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
    "sliding_window_size": "int",
    "norm_eps": "float",
    "rope_theta": "float",
    "rotary_fraction": "float",
    "rotary_dim": "int",
    "rope_scaling": "rope_scaling",
    "tie_word_embeddings": "bool",
    "scale_attention": "bool",
    "embedding_multiplier": "float",
    "residual_multiplier": "float",
    "attention_multiplier": "float",
    "logits_scaling": "float",
    "activation": "activation",
}


def load_spec(path: str | Path) -> Spec:
    """Read a spec file (following ``extends``), validate it and return the typed Spec."""
    path = Path(path).resolve()
    document = load_document(path)
    check_schema(document)
    return _build(path, document)


def _build(path: Path, document: Located) -> Spec:
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
        presets=_frozen(data.get("presets", {})),
        keep_unquantized=frozenset(data.get("quantization", {}).get("keep", ())),
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
    if attention.get("qk_norm", "none") == "per_head":
        for name in ("q_norm", "k_norm"):
            needed[name] = "architecture.attention.qk_norm is per_head"
    if architecture["block"] != "parallel_shared_norm":
        needed["mlp_norm"] = f"architecture.block {architecture['block']} has a norm before the MLP"
    return needed


_OPTIONAL_MODULES = ("qkv_proj", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "gate_proj", "embed_positions", "mlp_norm")


def _check_modules(document: Located, architecture, modules) -> None:
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
        ("qkv_proj", "q_proj", "k_proj", "v_proj", "out_proj", "q_norm", "k_norm"),
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


def _config_fields(document: Located, architecture) -> tuple[ConfigField, ...]:
    config = document.data["config"]
    needed = {
        "num_key_value_heads": architecture["attention"]["mode"] == "gqa",
        "rope_theta": architecture["position"] == "rope",
        "rotary_fraction": architecture["position"] == "rope" and "rotary_dim" not in config,
    }
    rope = architecture["position"] == "rope"
    for name in ("rope_scaling", "rotary_dim"):
        if name in config and not rope:
            raise document.error(("config", name), f"not used: position {architecture['position']} has no rotary embedding; remove it")
    if "rotary_pairing" in architecture and not rope:
        raise document.error(("architecture", "rotary_pairing"), f"not used: position {architecture['position']} has no rotary embedding; remove it")
    if "rotary_dim" in config and "rotary_fraction" in config:
        raise document.error(("config", "rotary_dim"), "give either rotary_dim or rotary_fraction, not both")
    if architecture.get("rotary_pairing") == "interleaved" and "rope_scaling" in config:
        raise document.error(("config", "rope_scaling"), "interleaved rotary pairing computes no frequency scaling (the KV cache's gptj mode); remove rope_scaling")
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
            types=tuple(entry.get("types", ())),
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


def _dependency_order(document: Located, fields: dict[str, ConfigField]) -> Iterator[ConfigField]:
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
    if architecture["attention"].get("qk_norm", "none") == "per_head":
        for norm in ("q_norm", "k_norm"):
            for part in norm_parts:
                yield Parameter(f"{attention}.{m[norm]}.{part}")
    if architecture["block"] != "parallel_shared_norm":
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


def _weight_rules(document: Located, architecture, parameters) -> dict[str, WeightRule]:
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
        if "deinterleave_qkv" in transforms and (architecture["attention"]["mode"] == "mqa" or architecture["attention"]["qkv"] != "fused"):
            raise document.error(key_path + ("transforms",), "deinterleave_qkv needs architecture.attention mode mha or gqa with fused qkv")
        if "unshard_qvk" in transforms and (architecture["attention"]["mode"] != "mha" or architecture["attention"]["qkv"] != "fused"):
            raise document.error(key_path + ("transforms",), "unshard_qvk needs architecture.attention mode mha with fused qkv")
        rules[param] = WeightRule(param=param, sources=sources, transforms=transforms)
    return rules
