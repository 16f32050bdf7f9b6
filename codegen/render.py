"""Render specs into black-formatted Python packages under generated/.

Every value a template interpolates must pass one of the escaping filters below (they wrap their
result in ``Code``); the environment's ``finalize`` refuses anything else, so a string from a spec
can never reach generated code unescaped. Output is deterministic: no timestamps, stable ordering.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import keyword
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import black
import jinja2

from codegen import paths
from codegen.files import staging_dir
from codegen.models import forget_modules, import_package
from codegen.spec import Parameter, Spec, load_spec
from codegen.spec import expr

# Template -> generated file name, in a fixed order.
PACKAGE_FILES = {
    "__init__.py.j2": "__init__.py",
    "model.py.j2": "model.py",
    "weights.py.j2": "weights.py",
    "presets.py.j2": "presets.py",
}
ROOT_INIT = '"""Packages generated from specs/ by `codegen generate`. DO NOT EDIT."""\n'

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TENSOR_NAME = re.compile(r"^[A-Za-z0-9_]+(\.([A-Za-z0-9_]+|\{i\}))*$")
_BLACK_MODE = black.Mode(line_length=100)


class RenderError(Exception):
    """A template tried to emit an unescaped value, or rendered code that black cannot parse.

    Specs are validated before they are rendered, so this is a bug in a template or in validation,
    not a user error: it is not a CodegenError and keeps its traceback."""


class Code(str):
    """Text that an escaping filter produced and may be pasted into generated code."""


def py_literal(value: Any) -> Code:
    if isinstance(value, float) and not math.isfinite(value):
        raise RenderError(f"{value!r} has no Python literal")  # repr gives `inf`/`nan`: a NameError
    if value is None or isinstance(value, (bool, int, float, str)):
        return Code(repr(value))
    raise RenderError(f"cannot render {type(value).__name__} {value!r} as a Python literal")


def identifier(value: Any) -> Code:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value) or keyword.iskeyword(value):
        raise RenderError(f"{value!r} is not a Python identifier")
    return Code(value)


def tensor_name(value: Any) -> Code:
    """A tensor name literal; names with {i} become f-strings (the pattern allows no other braces)."""
    if not isinstance(value, str) or not _TENSOR_NAME.fullmatch(value):
        raise RenderError(f"{value!r} is not a tensor name")
    return Code(("f" if "{i}" in value else "") + repr(value))


def _printable(text: str) -> str:
    """Control characters, lone surrogates and the like become visible escapes (\\x00, \\ud800)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii") for c in text)


def docstring_text(value: Any) -> Code:
    text = " ".join(str(value).split())
    return Code(_printable(text.replace("\\", "\\\\").replace('"', '\\"')))


def comment_text(value: Any) -> Code:
    return Code(_printable(" ".join(str(value).split())))


def field_type(kind: str) -> Code:
    return Code({"int": "int", "float": "float", "bool": "bool", "activation": "str", "rope_scaling": "dict"}[kind])


def expression(value: expr.Expression) -> Code:
    if not isinstance(value, expr.Expression):
        raise RenderError(f"{value!r} is not a parsed expression")
    return Code(value.source)


def weight_source(spec: Spec, parameter: Parameter) -> Code:
    rule = spec.weight_rules.get(parameter.name)
    sources = rule.sources if rule else (parameter.name,)
    names = ", ".join(tensor_name(name) for name in sources)
    transforms = ""
    if rule and rule.transforms:
        transforms = ", transforms=(" + ", ".join(py_literal(t) for t in rule.transforms) + ",)"
    return Code(f"WeightSource(({names},){transforms})")


def _finalize(value: Any) -> str:
    if isinstance(value, Code):
        return value
    raise RenderError(f"template emitted {value!r} without an escaping filter")


@functools.lru_cache(maxsize=None)
def _environment() -> jinja2.Environment:
    """One environment per process: templates compile once (auto_reload still sees edits on disk)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(paths.templates_dir()),
        undefined=jinja2.StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # HTML escaping means nothing here; `finalize` enforces the code filters
    )
    env.filters.update(
        py=py_literal,
        ident=identifier,
        tensor_name=tensor_name,
        docstring=docstring_text,
        py_comment=comment_text,
        field_type=field_type,
        expression=expression,
        weight_source=weight_source,
    )
    return env


def render_package(spec: Spec) -> dict[str, str]:
    """File name -> formatted source of the generated package for one spec."""
    env = _environment()
    files = {}
    for template_name, file_name in PACKAGE_FILES.items():
        source = env.get_template(template_name).render(spec=spec, spec_path=paths.relative_to_root(spec.source))
        try:
            files[file_name] = black.format_str(source, mode=_BLACK_MODE)
        except black.InvalidInput as exc:  # a template bug, never spec content
            raise RenderError(f"{template_name} rendered invalid Python for {spec.name}: {exc}") from exc
    return files


def spec_paths(specs_dir: Path | None = None) -> list[Path]:
    return sorted((specs_dir or paths.specs_dir()).glob("*.yaml"))


def load_specs(paths: Iterable[Path]) -> list[Spec]:
    """Load every spec; two specs may not claim the same package name."""
    specs: list[Spec] = []
    owners: dict[str, Path] = {}
    for path in paths:
        spec = load_spec(path)
        if spec.name in owners:
            raise spec.error(("name",), f"{spec.name!r} is already the name of {owners[spec.name].name}")
        owners[spec.name] = path
        specs.append(spec)
    return specs


def render_tree(specs: Iterable[Spec]) -> dict[str, str]:
    """Relative path -> content of the whole generated/ tree for these specs."""
    tree = {"__init__.py": ROOT_INIT}
    for spec in specs:
        for file_name, source in render_package(spec).items():
            tree[f"{spec.name}/{file_name}"] = source
    return tree


def _write_tree(tree: dict[str, str], root: Path) -> None:
    for relative, content in tree.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")


def check_presets(spec: Spec, package_dir: Path) -> None:
    """Every preset must build a config with the generated from_dict (one implementation of the rules)."""
    module_name = f"_codegen_check_{spec.name}_{os.getpid()}"
    # No __pycache__ in the staged tree: it would be swapped into generated/ with the sources.
    dont_write_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        module = import_package(package_dir, module_name)
    finally:
        sys.dont_write_bytecode = dont_write_bytecode
    try:
        for preset, values in module.PRESETS.items():
            try:
                module.Config.from_dict(values)
            except module.ConfigError as exc:
                raise spec.error(("presets", preset), str(exc)) from None
            except (ArithmeticError, TypeError, ValueError) as exc:  # e.g. a size expression dividing by 0
                raise spec.error(("presets", preset), f"cannot build a config: {type(exc).__name__}: {exc}") from None
    finally:
        forget_modules(module_name)


def generate(
    output_dir: Path | None = None,
    spec_files: Iterable[Path] | None = None,
    before_swap: Callable[[Path], None] | None = None,
) -> list[str]:
    """Render every spec into a temporary sibling folder and swap it in only when all succeeded.

    Returns the relative paths written. ``before_swap`` lets tests inject a failure at the last step.
    """
    specs = load_specs(spec_paths() if spec_files is None else spec_files)
    tree = render_tree(specs)
    output_dir = Path(output_dir or paths.generated_dir())
    with staging_dir(output_dir.parent, prefix=f".{output_dir.name}.new-") as staging:
        _write_tree(tree, staging)
        for spec in specs:
            check_presets(spec, staging / spec.name)
        if before_swap is not None:
            before_swap(staging)
        _swap_into_place(staging, output_dir)
    return sorted(tree)


def _swap_into_place(staging: Path, output_dir: Path) -> None:
    """Two renames; if the second fails, the first is undone, so output_dir is never left missing."""
    if not output_dir.exists():
        os.replace(staging, output_dir)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
    os.replace(output_dir, retired)  # replaces the empty placeholder folder
    try:
        os.replace(staging, output_dir)
    except BaseException:
        os.replace(retired, output_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def stale_files(output_dir: Path | None = None, spec_files: Iterable[Path] | None = None) -> list[str]:
    """Relative paths in output_dir that differ from a fresh render (missing, changed or orphaned)."""
    tree = render_tree(load_specs(spec_paths() if spec_files is None else spec_files))
    output_dir = Path(output_dir or paths.generated_dir())
    present = {
        p.relative_to(output_dir).as_posix()
        for p in output_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    } if output_dir.exists() else set()
    stale = [name for name, content in tree.items() if name not in present or (output_dir / name).read_text() != content]
    return sorted(stale + sorted(present - set(tree)))


def diff_specs(first: Path, second: Path) -> str:
    """Unified diff of what two specs generate, file by file.

    The second spec is rendered under the first one's identity (name, class prefix, description,
    header), so the diff lists what the code does differently rather than every renamed class.
    """
    base, other = load_spec(first), load_spec(second)
    aligned = dataclasses.replace(
        other,
        source=base.source,
        name=base.name,
        class_prefix=base.class_prefix,
        description=base.description,
        document=base.document,
    )
    packages = [render_package(base), render_package(aligned)]
    chunks = []
    for file_name in PACKAGE_FILES.values():
        chunks.extend(
            difflib.unified_diff(
                packages[0][file_name].splitlines(keepends=True),
                packages[1][file_name].splitlines(keepends=True),
                fromfile=f"{Path(first).name}: {file_name}",
                tofile=f"{Path(second).name}: {file_name}",
            )
        )
    return "".join(chunks)
