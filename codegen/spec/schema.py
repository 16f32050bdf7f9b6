"""Check a spec document against specs/schema.json, reporting the most specific failure."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema

from codegen import paths
from codegen.spec.document import Located, brief

def check_schema(document: Located, schema_file: Path | None = None) -> None:
    """Validate against schema_file (specs/schema.json by default); the first, most specific failure
    becomes one located SpecError."""
    validator = _Validator(json.loads(Path(schema_file or paths.schema_path()).read_text()))
    errors = sorted(validator.iter_errors(document.data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return
    error = _most_specific(errors[0])
    key_path = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        if unknown and allowed:
            raise document.error(key_path + (unknown[0],), f"unknown key {brief(unknown[0])}; allowed keys: {', '.join(allowed)}")
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        raise document.error(key_path, f"{brief(error.instance)} is not allowed; allowed values: {allowed}")
    if error.validator == "required":
        missing = next(k for k in error.validator_value if k not in error.instance)
        kind = error.instance.get("kind")
        raise document.error(key_path, f"missing required key {missing!r}" + (f" (kind {kind} needs it)" if kind else ""))
    if error.validator == "not" and error.validator_value == {}:  # the schemas forbid a key with {"not": {}}
        kind = _value_at(document.data, key_path[:-1]).get("kind")
        reason = f"with kind {kind!r}" if kind else "here"
        raise document.error(key_path, f"{key_path[-1]} is not allowed {reason}")
    if error.validator == "pattern":
        if "propertyNames" in error.absolute_schema_path:  # the key itself is wrong
            key_path += (error.instance,)
        raise document.error(key_path, f"{brief(error.instance)} does not match the pattern {error.validator_value}")
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, str) else " or ".join(error.validator_value)
        raise document.error(key_path, f"{brief(error.instance)} is not of type {expected}")
    raise document.error(key_path, error.message)


def _value_at(data: Any, key_path: tuple) -> Any:
    for key in key_path:
        data = data[key]
    return data


def _full_match_pattern(validator, pattern: str, instance: Any, schema: Any):
    """JSON Schema (ECMA 262) `$` ends the string; Python's `$` also matches before a final newline,
    so "wte\\n" would pass "^[a-z]+$" and carry a newline into generated code. Match with `\\Z`."""
    if isinstance(instance, str):
        anchored = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern
        if not re.search(anchored, instance):
            yield jsonschema.ValidationError(f"{brief(instance)} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _full_match_pattern})


def _most_specific(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For oneOf/anyOf failures, report the deepest sub-error: it names the real key."""
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    return error

