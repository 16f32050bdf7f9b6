"""Add a size preset to a spec file from a Hugging Face config.json (`codegen import-hf`).

Only the fields the spec reads are kept: its config section's HF sources and its config_checks.
The spec file is edited as text at the place ruamel.yaml's round-trip parser locates (the end of the
presets mapping), so every comment, blank line, quote and indentation elsewhere stays byte for byte.
The result is validated (load_spec, then every preset through the generated from_dict) before it
replaces the file, atomically.
"""

from __future__ import annotations

import math
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

import yaml
from ruamel.yaml import YAML

from codegen import render
from codegen.errors import CodegenError
from codegen.files import read_json_object, staging_dir, write_atomic
from codegen.spec import Spec, SpecError, load_spec

_PRESET_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class PresetImportError(CodegenError):
    """The config.json or the spec file cannot take this preset; the message says why."""


def preset_values(spec: Spec, hf_config: dict[str, Any]) -> dict[str, Any]:
    """The config.json fields this spec reads, as a flat preset (HF field name -> scalar)."""
    model_type = hf_config.get("model_type")
    if model_type is not None and model_type != spec.hf_model_type:
        raise PresetImportError(f"config.json model_type {model_type!r} is not {spec.hf_model_type!r} (spec {spec.name})")
    values: dict[str, Any] = {}
    # (HF source, the value the spec assumes when the config.json lacks it)
    sources = [(field.hf, field.default) for field in spec.config_fields if field.hf and field.kind != "rope_scaling"]
    sources += [(check["hf"], check.get("default")) for check in spec.config_checks]
    for source, default in sources:
        names = (source,) if isinstance(source, str) else tuple(source)
        found = _first_present(hf_config, names)
        if found is None:
            continue  # absent: the spec's default applies, as it would to this config.json
        name, value = found
        if "." in name:
            # Presets are flat; store a nested value under the first flat name the spec tries.
            flat = next((n for n in names if "." not in n), None)
            if flat is None and value == default:
                continue  # leaving it out means the same (e.g. rope_parameters.rope_type: default)
            if flat is None:
                raise PresetImportError(
                    f"config.json has {name}={value!r}: a preset holds flat fields only, and the spec names no"
                    f" flat alternative for it (without it the spec assumes {default!r})"
                )
            name = flat
        if isinstance(value, float) and not math.isfinite(value):
            raise PresetImportError(f"config.json field {name!r} is {value}, not a finite number")
        if not isinstance(value, (bool, int, float, str)):
            raise PresetImportError(f"config.json field {name!r} is {type(value).__name__}, not a number, boolean or string")
        values.setdefault(name, value)
        # Lower-priority flat alternatives the config.json also sets are kept too (e.g. the
        # max_position_embeddings behind sliding_window): the preset then reads like the original.
        for other in names[names.index(found[0]) + 1 :]:
            if "." not in other and isinstance(hf_config.get(other), (bool, int, float, str)):
                values.setdefault(other, hf_config[other])
    scaling = spec.field("rope_scaling")
    if scaling is not None:
        values.update(_rope_scaling(scaling.hf, hf_config))
    return values


# Entries of transformers 5's rope_parameters that other config fields read (rope_theta, rotary_fraction).
_NOT_SCALING = ("rope_theta", "partial_rotary_factor")


def _rope_scaling(source: str | tuple[str, ...], hf_config: dict[str, Any]) -> dict[str, Any]:
    """{name: the scaling object} as a preset holds it (one nested level), or {} for plain RoPE."""
    names = (source,) if isinstance(source, str) else tuple(source)
    found = _first_present(hf_config, names)
    if found is None:
        return {}
    name, value = found
    if not isinstance(value, dict):
        raise PresetImportError(f"config.json field {name!r} is {type(value).__name__}, not an object")
    if value.get("rope_type", value.get("type", "default")) == "default":
        return {}
    scaling = {key: item for key, item in value.items() if key not in _NOT_SCALING}
    bad = next((key for key, item in scaling.items() if not isinstance(item, (bool, int, float, str))), None)
    if bad is not None:
        raise PresetImportError(f"config.json field {name}.{bad} is {type(scaling[bad]).__name__}, not a number, boolean or string")
    return {names[0]: scaling}


def _first_present(hf_config: dict[str, Any], names: Iterable[str]) -> tuple[str, Any] | None:
    """Same rule as the generated from_dict: the first name (a.b = nested) whose value is not null."""
    for name in names:
        value: Any = hf_config
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return name, value
    return None


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return text[: -len("\n...")].strip() if text.endswith("...") else text


def _insert_preset(text: str, name: str, values: dict[str, Any], force: bool) -> str:
    """The spec text with preset `name` added (or, with force, replacing this file's own one)."""
    parser = YAML(typ="rt")
    document = parser.load(text)
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    presets = document.get("presets") if document else None
    if presets is not None and not hasattr(presets, "lc"):
        raise PresetImportError("the spec's presets key is not a mapping")
    if presets and presets.fa.flow_style():
        raise PresetImportError("the spec's presets mapping is written in flow style ({...}); write it as a block")
    if presets is not None and name in presets and not force:
        raise PresetImportError(f"preset {name!r} already exists in this file; pass --force to replace it")
    if presets is None or not presets:
        block = ["presets:\n", f"  {name}:\n"] + [f"    {k}: {_scalar(v)}\n" for k, v in values.items()]
        if document and "presets" in document:  # `presets: {}` or an empty `presets:` line
            start = document.lc.key("presets")[0]
            return "".join(lines[:start] + block + lines[start + 1 :])
        return "".join(lines + block)
    first = next(iter(presets))
    key_column = presets.lc.key(first)[1]
    flow = getattr(presets[first], "fa", None) is not None and presets[first].fa.flow_style()
    if flow or not hasattr(presets[first], "lc") or not presets[first]:
        items = ", ".join(f"{k}: {_scalar(v)}" for k, v in values.items())
        block = [" " * key_column + f"{name}: {{{items}}}\n"]
    else:
        value_column = presets[first].lc.key(next(iter(presets[first])))[1]
        block = [" " * key_column + f"{name}:\n"] + [" " * value_column + f"{k}: {_scalar(v)}\n" for k, v in values.items()]
    if name in presets:  # --force: the new entry takes the old one's place
        start, end = _entry_lines(lines, document, presets, name)
        return "".join(lines[:start] + block + lines[end:])
    end = _end_of_entry(lines, document, "presets")
    return "".join(lines[:end] + block + lines[end:])


def _end_of_entry(lines: list[str], mapping, key: str) -> int:
    """Index of the line after mapping[key]'s block, before any blank or comment lines that lead the next key."""
    keys = list(mapping)
    position = keys.index(key)
    end = mapping.lc.key(keys[position + 1])[0] if position + 1 < len(keys) else len(lines)
    start = mapping.lc.key(key)[0]
    while end - 1 > start and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1
    return end


def _entry_lines(lines: list[str], document, presets, name: str) -> tuple[int, int]:
    """[start, end) line indices of presets[name], without the comments that lead the next preset."""
    start = presets.lc.key(name)[0]
    keys = list(presets)
    position = keys.index(name)
    end = presets.lc.key(keys[position + 1])[0] if position + 1 < len(keys) else _end_of_entry(lines, document, "presets")
    while end - 1 > start and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1
    return start, end


def _validate(candidate: Path, name: str, values: dict[str, Any]) -> None:
    spec = load_spec(candidate)  # schema + semantic checks, with extends resolved
    merged = dict(spec.presets[name])
    if merged != values:
        extra = sorted(set(merged) - set(values))
        raise PresetImportError(
            f"preset {name!r} would merge with a parent spec's preset of that name (extra fields {', '.join(extra)});"
            " choose another name"
        )
    with staging_dir(Path(tempfile.gettempdir()), prefix=".import-hf-") as staging:
        package = render.render_package(spec)
        for file_name, source in package.items():
            (staging / file_name).write_text(source)
        render.check_presets(spec, staging)  # every preset through the generated from_dict


def import_preset(config_json: str | Path, spec_path: str | Path, preset: str, force: bool = False) -> dict[str, Any]:
    """Add preset `preset` read from config_json to spec_path; returns the values written."""
    config_json, spec_path = Path(config_json), Path(spec_path)
    if not _PRESET_NAME.match(preset):
        raise PresetImportError(f"preset name {preset!r} must match {_PRESET_NAME.pattern}")
    hf_config = read_json_object(config_json, PresetImportError)
    spec = load_spec(spec_path)
    if preset in spec.presets and not force:
        raise PresetImportError(f"{spec_path} already has a preset {preset!r}; pass --force to replace it")
    values = preset_values(spec, hf_config)
    text = spec_path.read_text()
    new_text = _insert_preset(text, preset, values, force)

    def check(candidate: Path) -> None:
        # The candidate lies beside the original, so its extends paths resolve the same.
        try:
            _validate(candidate, preset, values)
        except SpecError as exc:
            raise PresetImportError(f"the spec with preset {preset!r} would be invalid: {exc.problem}") from None

    write_atomic(spec_path, new_text, check=check)
    return values
