"""Golden and determinism tests for generated/: current, byte-identical, self-contained, reviewable."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys

import pytest

from codegen import paths, render
from codegen.spec import load_spec
from tests.support import REPO_ROOT

GENERATED = REPO_ROOT / "generated"


def test_committed_generated_tree_is_current():
    assert render.stale_files() == [], "generated/ is stale: run `make generate` and commit"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One fresh render of every spec (black makes each take seconds); tests copy it to edit it."""
    output = tmp_path_factory.mktemp("rendered") / "generated"
    render.generate(output)
    return output


def _python_files(tree):
    return {p.relative_to(tree): p.read_bytes() for p in tree.rglob("*.py")}


def _copy(rendered, tmp_path):
    return shutil.copytree(rendered, tmp_path / "out")


def test_generate_is_deterministic(rendered, tmp_path):
    render.generate(tmp_path / "second")
    first = _python_files(rendered)
    assert first == _python_files(tmp_path / "second")
    assert first == _python_files(GENERATED)


def test_stale_files_reports_edits_and_orphans(rendered, tmp_path):
    _copy(rendered, tmp_path)
    model = tmp_path / "out" / "gpt_bigcode" / "model.py"
    model.write_text(model.read_text() + "# hand edit\n")
    (tmp_path / "out" / "gpt_bigcode" / "extra.py").write_text("")
    assert render.stale_files(tmp_path / "out") == ["gpt_bigcode/extra.py", "gpt_bigcode/model.py"]


@pytest.mark.parametrize("path", sorted(GENERATED.rglob("*.py")), ids=lambda p: str(p.relative_to(GENERATED)))
def test_generated_files_import_only_tvm_and_the_standard_library(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            roots = [] if node.level else [node.module.split(".")[0]]
        else:
            continue
        for root in roots:
            assert root == "tvm" or root in sys.stdlib_module_names, f"{path.name} imports {root}"


@pytest.mark.parametrize("spec_path", sorted((REPO_ROOT / "specs").glob("*.yaml")), ids=lambda p: p.stem)
def test_header_names_spec_and_hash(spec_path):
    spec = load_spec(spec_path)
    for path in (GENERATED / spec.name).glob("*.py"):
        head = path.read_text().splitlines()[:2]
        assert head[0].startswith(f"# Generated from specs/{spec_path.name} by `codegen generate`. DO NOT EDIT")
        assert head[1] == f"# spec-sha256: {spec.content_hash}"


def test_diff_shows_only_real_differences():
    specs = REPO_ROOT / "specs"
    result = subprocess.run(
        [sys.executable, "-m", "codegen.cli", "diff", str(specs / "gpt_bigcode.yaml"), str(specs / "gpt_bigcode_mha.yaml")],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT,
    )
    changed = [line for line in result.stdout.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert "-        return 1" in changed and "+        return self.num_attention_heads" in changed
    assert any("deinterleave_qkv" in line for line in changed)
    assert not any("class " in line or "ARCHITECTURE" in line for line in changed), "identity is aligned"


def test_check_command_fails_on_a_stale_tree(rendered, tmp_path, monkeypatch):
    _copy(rendered, tmp_path)
    (tmp_path / "out" / "gpt_bigcode" / "weights.py").write_text("# stale\n")
    monkeypatch.setattr(paths, "generated_dir", lambda: tmp_path / "out")
    from codegen.cli import main

    assert main(["check"]) == 1
