"""Read a spec file into a document that remembers where every key came from.

specs/*.yaml ──safe load, keep line numbers──▶ raw dict ──extends merge──▶ Located document. Every
failure is one SpecError naming the file, the line and the key path.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping

import yaml

from codegen.errors import CodegenError

_MAX_SPEC_BYTES = 256 * 1024
_MAX_NODES = 20_000  # guards against alias bombs ("billion laughs")
_MAX_DEPTH = 32

KeyPath = tuple[Any, ...]
_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


class SpecError(CodegenError):
    """A spec is invalid. ``file``, ``line`` and ``key_path`` say where; the message says what is allowed."""

    def __init__(self, file: Path | str, line: int | None, key_path: KeyPath, problem: str):
        self.file = Path(file)
        self.line = line
        self.key_path = key_path
        self.problem = problem
        where = f"{_display(self.file)}:{line}" if line else _display(self.file)
        super().__init__(f"{where}: {shorten(format_key_path(key_path), 160) or '<top level>'}: {problem}")


def format_key_path(key_path: KeyPath) -> str:
    out = ""
    for key in key_path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def shorten(text: str, limit: int = 80) -> str:
    """text cut in the middle past limit: error messages stay readable for hostile input."""
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 4:]} ({len(text)} characters)"


def brief(value: Any, limit: int = 80) -> str:
    """repr of a value, shortened in the middle."""
    return shorten(repr(value), limit)


def _display(path: Path) -> str:
    try:
        text = str(path.resolve().relative_to(Path.cwd()))
    except (ValueError, OSError):
        text = str(path)
    return shorten(text, 160)


# ----------------------------------------------------------------------------- reading YAML


@dataclasses.dataclass
class Located:
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


def _read_yaml(path: Path) -> Located:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(path, None, (), f"cannot read spec: {exc.strerror}") from None
    if len(raw) > _MAX_SPEC_BYTES:
        raise SpecError(path, None, (), f"spec is larger than {_MAX_SPEC_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        _check_nesting(text, path)
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
    located = Located(data, where)
    _check_values(located, data, ())
    return located


def _check_nesting(text: str, path: Path) -> None:
    """PyYAML builds nodes recursively, so a deep document ends in RecursionError there; its parser
    is iterative, so the depth is measured on the parse events first."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > _MAX_DEPTH:
                raise SpecError(path, event.start_mark.line + 1, (), f"spec is too deeply nested (more than {_MAX_DEPTH} levels)")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _scalar(loader, node, key_path: KeyPath, path: Path) -> Any:
    try:
        return loader.construct_object(node)
    except ValueError as exc:  # e.g. an integer past Python's 4300-digit conversion limit
        reason = str(exc).split(";")[0]
        raise SpecError(path, node.start_mark.line + 1, key_path, f"{brief(node.value)} is not a usable value ({reason})") from None


def _check_values(document: Located, value: Any, key_path: KeyPath) -> None:
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
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError(path, key_node.start_mark.line + 1, key_path, "a key must be a string, not a list or mapping")
            key = _scalar(loader, key_node, key_path, path)
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
    return _scalar(loader, node, key_path, path)


def _load_with_extends(path: Path, root_dir: Path, chain: tuple[Path, ...]) -> Located:
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
        raise document.error(("extends",), f"parent {brief(parent_name)} is not a usable path ({reason})") from None
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



def load_document(path: Path) -> Located:
    """The merged document of the spec at path, its parents (``extends``) resolved within its folder."""
    return _load_with_extends(path, path.parent, ())
