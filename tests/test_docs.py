"""docs/spec.md is generated from specs/schema.json and must be current, like generated/."""

from __future__ import annotations

import json

from codegen.spec import docs
from codegen import paths


def test_docs_are_current():
    assert docs.docs_path().is_file(), "docs/spec.md is missing; run `make docs`"
    assert docs.docs_path().read_text() == docs.render(), "docs/spec.md is stale; run `make docs` and commit it"


def _keys(schema, node, prefix=()):
    if "$ref" in node and prefix:
        return
    for key, child in node.get("properties", {}).items():
        yield prefix + (key,)
        yield from _keys(schema, child, prefix + (key,))
    items = node.get("items")
    if isinstance(items, dict):
        yield from _keys(schema, items, prefix + ("[]",))


def test_every_schema_key_is_documented_with_type_and_required():
    schema = json.loads(paths.schema_path().read_text())
    text = docs.render()
    for path in _keys(schema, schema):
        heading = f"### `{'.'.join(path)}`"
        assert heading in text, f"{heading} missing"
        section = text.split(heading, 1)[1].split("\n### ", 1)[0]
        assert "- Type: " in section and "- Required: " in section, heading
    for name in schema["$defs"]:
        assert f"### {name}\n" in text


def test_enums_defaults_and_examples_appear():
    text = docs.render()
    mode = text.split("### `architecture.attention.mode`", 1)[1].split("\n### ", 1)[0]
    assert "one of `mha`, `mqa`, `gqa`" in mode and "- Example (" in mode
    block = text.split("### `architecture.block`", 1)[1].split("\n### ", 1)[0]
    assert '- Default: `"sequential"`' in block
    assert "rope_parameters.rope_theta" in text  # the nested-field example comes from a real spec


def test_write_is_atomic_and_idempotent(tmp_path):
    target = tmp_path / "docs" / "spec.md"
    assert docs.write(target) is True
    assert docs.write(target) is False
    assert target.read_text() == docs.render()
    assert [p.name for p in target.parent.iterdir()] == ["spec.md"]  # no temporary file left


def test_check_exit_code(monkeypatch, tmp_path):
    stale = tmp_path / "spec.md"
    stale.write_text("old\n")
    monkeypatch.setattr(docs, "docs_path", lambda: stale)
    assert docs.main(["--check"]) == 1
    assert docs.main(["--write"]) == 0
    assert docs.main(["--check"]) == 0
