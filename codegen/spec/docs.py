"""Write docs/spec.md, the reference of every spec key, from specs/schema.json.

The schema is the single source: each key's type, allowed values, default and description come from
it, and each example is the value the first spec under specs/ (sorted by file name) gives that key.
`python -m codegen.spec.docs --write` rewrites the file (atomically); `--check` exits 1 when it is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

from codegen import paths
from codegen.files import write_atomic

DOCS_FILE = "docs/spec.md"
ANY_KEY = "<name>"  # stands for a free-form key (a preset name, an HF field name)
ITEM = "[]"  # stands for every item of a list


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """A node with a local $ref -> (definition name, the definition merged under the node's own keys)."""
    ref = node.get("$ref")
    if ref is None:
        return None, node
    name = ref.rsplit("/", 1)[-1]
    merged = dict(schema["$defs"][name])
    merged.update({k: v for k, v in node.items() if k != "$ref"})
    return name, merged


def _type_text(schema: dict[str, Any], node: dict[str, Any]) -> str:
    ref_name, node = _resolve(schema, node)
    if ref_name is not None:
        return f"[{ref_name}](#{_anchor(ref_name)})"
    if "enum" in node:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" if not isinstance(v, str) else f"`{v}`" for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(_type_text(schema, option) for option in node["oneOf"])
    kind = node.get("type")
    if kind == "array":
        return f"list of ({_type_text(schema, node.get('items', {}))})"
    if isinstance(kind, list):
        text = " or ".join(kind)
    elif kind == "object" or ("properties" in node and kind is None):
        text = "mapping"
    else:
        text = kind or "any"
    if "pattern" in node:
        text += f" matching `{node['pattern']}`"
    return text


def _anchor(text: str) -> str:
    return "".join(c for c in text.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def _walk(schema: dict[str, Any], node: dict[str, Any], path: tuple[str, ...], required: bool) -> Iterator[tuple[tuple[str, ...], dict[str, Any], bool]]:
    """Every documented key: (path, schema node, required), parents before children."""
    ref_name, resolved = _resolve(schema, node)
    if path:
        yield path, node, required
    if ref_name is not None and path:
        return  # shared definitions are documented once, in their own section
    for key, child in resolved.get("properties", {}).items():
        yield from _walk(schema, child, path + (key,), key in resolved.get("required", ()))
    extra = resolved.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _walk(schema, extra, path + (ANY_KEY,), False)
    items = resolved.get("items")
    if isinstance(items, dict) and (items.get("properties") or items.get("$ref", "").endswith("_field")):
        yield from _walk(schema, items, path + (ITEM,), False)


def _spec_documents(specs_dir: Path) -> list[tuple[str, Any]]:
    return [(path.name, yaml.safe_load(path.read_text())) for path in sorted(specs_dir.glob("*.yaml"))]


def _lookup(value: Any, path: tuple[str, ...]) -> Iterator[Any]:
    if not path:
        yield value
        return
    key, rest = path[0], path[1:]
    if key == ITEM:
        for item in value if isinstance(value, list) else ():
            yield from _lookup(item, rest)
    elif isinstance(value, dict):
        if key == ANY_KEY:
            for child in value.values():
                yield from _lookup(child, rest)
        elif key in value:
            yield from _lookup(value[key], rest)


def _example(documents: list[tuple[str, Any]], path: tuple[str, ...]) -> tuple[str, str] | None:
    for file_name, document in documents:
        for value in _lookup(document, path):
            text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
            if text.endswith("\n..."):
                text = text[: -len("\n...")]
            if len(text) <= 160:
                return file_name, text
    return None


def _entry(schema, documents, path, node, required) -> list[str]:
    ref_name, resolved = _resolve(schema, node)
    name = ".".join(path)
    lines = [f"### `{name}`", ""]
    if resolved.get("description"):
        lines += [" ".join(resolved["description"].split()), ""]
    lines.append(f"- Type: {_type_text(schema, node)}")
    lines.append(f"- Required: {'yes' if required else 'no'}")
    if "default" in resolved:
        lines.append(f"- Default: `{json.dumps(resolved['default'])}`")
    example = None if resolved.get("properties") and ref_name is None else _example(documents, path)
    if example:
        file_name, text = example
        lines.append(f"- Example ({file_name}): `{path[-1]}: {text}`")
    return lines + [""]


def docs_path() -> Path:
    return paths.repo_root() / DOCS_FILE


def render(schema_path: Path | None = None, specs_dir: Path | None = None) -> str:
    """The whole docs/spec.md text."""
    schema = json.loads(Path(schema_path or paths.schema_path()).read_text())
    documents = _spec_documents(specs_dir or paths.specs_dir())
    out = [
        "<!-- Generated from specs/schema.json by `python -m codegen.spec.docs --write` (make docs). DO NOT EDIT. -->",
        "",
        f"# {schema['title']}",
        "",
        " ".join(schema["description"].split()),
        "",
        f"`{ANY_KEY}` stands for a key you choose (a preset name, an HF field name); `{ITEM}` for every item of a list.",
        "Examples are taken from the first file under specs/ that sets the key.",
        "",
        "## Keys",
        "",
    ]
    for path, node, required in _walk(schema, schema, (), False):
        out += _entry(schema, documents, path, node, path[0] in schema.get("required", ()) and required if len(path) == 1 else required)
    out += ["## Shared definitions", ""]
    for def_name, definition in schema["$defs"].items():
        out += [f"### {def_name}", ""]
        if definition.get("description"):
            out += [" ".join(definition["description"].split()), ""]
        out.append(f"- Type: {_type_text(schema, {k: v for k, v in definition.items() if k != 'properties'}) if not definition.get('properties') else 'mapping'}")
        for key, child in definition.get("properties", {}).items():
            description = " ".join(child.get("description", "").split())  # a $ref's own text is in its section
            required = " (required)" if key in definition.get("required", ()) else ""
            out.append(f"- `{key}`{required}: {_type_text(schema, child)}" + (f". {description}" if description else ""))
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def write(path: Path | None = None) -> bool:
    """Rewrite docs/spec.md if it differs; True when it changed."""
    text = render()
    path = Path(path or docs_path())
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codegen.spec.docs", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"rewrite {DOCS_FILE}")
    action.add_argument("--check", action="store_true", help="exit 1 when it is stale")
    args = parser.parse_args(argv)
    if args.write:
        print(f"{'wrote' if write() else 'unchanged:'} {DOCS_FILE}")
        return 0
    path = docs_path()
    if not path.is_file() or path.read_text() != render():
        print(f"{DOCS_FILE} is stale; run `make docs` and commit the result", file=sys.stderr)
        return 1
    print(f"{DOCS_FILE} is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
