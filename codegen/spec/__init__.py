"""Specs: YAML files → a typed, validated Spec. Nothing here imports TVM.

document (read YAML, extends) → schema (JSON Schema) → semantics (typed Spec, semantic checks);
expr parses size expressions; docs writes docs/spec.md from the schema.
"""

from codegen.spec.document import SpecError, format_key_path
from codegen.spec.semantics import ConfigField, Parameter, Spec, WeightRule, load_spec

__all__ = ["ConfigField", "Parameter", "Spec", "SpecError", "WeightRule", "format_key_path", "load_spec"]
