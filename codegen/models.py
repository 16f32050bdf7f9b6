"""Find generated model packages by architecture name or spec path."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from types import ModuleType

from codegen.render import GENERATED_DIR, SPECS_DIR, import_package
from codegen.spec import load_spec


class ModelNotFound(LookupError):
    """No generated package for that name; the message lists what exists."""


@dataclasses.dataclass(frozen=True)
class GeneratedModel:
    name: str
    package: ModuleType

    def config(self, *, preset: str | None = None, hf_config: dict | None = None, **overrides):
        if (preset is None) == (hf_config is None):
            raise ValueError("give exactly one of preset or hf_config")
        if preset is not None:
            if preset not in self.package.PRESETS:
                known = ", ".join(self.package.PRESETS)
                raise ModelNotFound(f"{self.name} has no preset {preset!r}; presets: {known}")
            hf_config = self.package.PRESETS[preset]
        return self.package.Config.from_dict(hf_config, **overrides)


def available() -> list[str]:
    return sorted(p.parent.name for p in GENERATED_DIR.glob("*/model.py"))


def load_model(name_or_spec: str | Path) -> GeneratedModel:
    """`gpt_bigcode` or `specs/gpt_bigcode.yaml` -> the generated package under generated/."""
    text = str(name_or_spec)
    name = load_spec(text).name if text.endswith((".yaml", ".yml")) else text
    if name not in available():
        hint = f"; run `make generate` if {SPECS_DIR.name}/{name}.yaml is new" if (SPECS_DIR / f"{name}.yaml").exists() else ""
        raise ModelNotFound(f"no generated model {name!r}; available: {', '.join(available())}{hint}")
    module_name = f"generated.{name}"
    package = sys.modules.get(module_name) or import_package(GENERATED_DIR / name, module_name)
    return GeneratedModel(name=name, package=package)
