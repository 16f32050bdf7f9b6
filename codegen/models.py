"""Find, import and check the generated model packages under generated/.

A package is the output of `codegen generate` for one spec. It is looked up by architecture name or
by spec path; given a path, its header's spec hash must match the spec, so an edited spec that was
not regenerated is refused instead of silently building the old model.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from codegen import paths
from codegen.errors import CodegenError
from codegen.spec import load_spec
from codegen.spec.document import brief
from codegen.spec.quantization import Scheme

_PACKAGE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")  # the schema's pattern and length for spec names
_HASH_LINE = re.compile(r"^# spec-sha256: ([0-9a-f]{64})$", re.MULTILINE)


class ModelNotFound(CodegenError):
    """No generated package for that name; the message lists what exists."""


class StaleModel(CodegenError):
    """The generated package was rendered from another version of the spec."""


class ModelConfigError(CodegenError):
    """A config.json (or preset) does not describe a model the generated package can build."""


@dataclasses.dataclass(frozen=True)
class GeneratedModel:
    name: str
    package: ModuleType

    def config(self, *, preset: str | None = None, hf_config: dict | None = None, **overrides):
        if (preset is None) == (hf_config is None):
            raise TypeError("give exactly one of preset or hf_config")
        if preset is not None:
            if preset not in self.package.PRESETS:
                known = ", ".join(self.package.PRESETS) or "none (build it from a config.json: --config)"
                raise ModelNotFound(f"{self.name} has no preset {preset!r}; presets: {known}")
            hf_config = self.package.PRESETS[preset]
        try:
            return self.package.Config.from_dict(hf_config, **overrides)
        except self.package.ConfigError as exc:
            raise ModelConfigError(f"{self.name}: {exc}") from None

    def causal_lm(self, config, scheme: Scheme):
        """The generated ForCausalLM for config, with its weights stored as the scheme says."""
        if scheme.quantized:
            quantization = self.package.GroupQuantization(
                name=scheme.name,
                bits=scheme.bits,
                group_size=scheme.group_size,
                scale_dtype=scheme.scale_dtype,
                quantize_embedding="embedding" not in scheme.keep,
                quantize_lm_head="lm_head" not in scheme.keep,
            )
            config = dataclasses.replace(config, quantization=quantization)
        try:
            module = self.package.ForCausalLM(config)
        except self.package.ConfigError as exc:
            raise ModelConfigError(f"{self.name}: {exc}") from None
        module.to(scheme.model_dtype)
        return module


def available() -> list[str]:
    return sorted(p.parent.name for p in paths.generated_dir().glob("*/model.py"))


def load_model(name_or_spec: str | Path) -> GeneratedModel:
    """`gpt_bigcode` or `specs/gpt_bigcode.yaml` -> the generated package under generated/."""
    text = str(name_or_spec)
    spec = load_spec(text) if text.endswith((".yaml", ".yml")) else None
    name = spec.name if spec else text
    if not _PACKAGE_NAME.fullmatch(name):
        raise ModelNotFound(f"{brief(name)} is neither a spec file (.yaml) nor a generated model name; available: {', '.join(available())}")
    package_dir = paths.generated_dir() / name
    if name not in available():
        spec_file = paths.specs_dir() / f"{name}.yaml"
        hint = f"; run `make generate` if {spec_file.parent.name}/{spec_file.name} is new" if spec_file.exists() else ""
        raise ModelNotFound(f"no generated model {name!r}; available: {', '.join(available())}{hint}")
    if spec is not None:
        _check_current(spec, package_dir)
    module_name = f"generated.{name}"
    package = sys.modules.get(module_name) or import_package(package_dir, module_name)
    return GeneratedModel(name=name, package=package)


def _check_current(spec, package_dir: Path) -> None:
    header = (package_dir / "__init__.py").read_text(encoding="utf-8")
    found = _HASH_LINE.search(header)
    if found is None or found.group(1) != spec.content_hash:
        raise StaleModel(
            f"generated/{spec.name}/ was not rendered from {paths.relative_to_root(spec.source)} as it is now"
            " (its spec-sha256 differs): run `make generate` (codegen generate) and try again"
        )


def import_package(package_dir: Path, module_name: str) -> ModuleType:
    """Import a generated package from any folder (it uses relative imports between its files)."""
    init = package_dir / "__init__.py"
    module_spec = importlib.util.spec_from_file_location(module_name, init, submodule_search_locations=[str(package_dir)])
    module = importlib.util.module_from_spec(module_spec)
    forget_modules(module_name)  # else `.model` would resolve to a stale submodule of an earlier import
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        forget_modules(module_name)
        raise
    return module


def forget_modules(module_name: str) -> None:
    for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
        del sys.modules[name]
