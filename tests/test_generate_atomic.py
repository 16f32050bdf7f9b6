"""`generate` is atomic and idempotent: it renders into a temporary sibling folder and swaps it in.

Every test works on copies in tmp_path (output_dir/paths parameters), never on the real generated/.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from codegen import render
from codegen.spec import SpecError
from tests.support import REPO_ROOT

SPECS = ["gpt_bigcode.yaml", "gpt_bigcode_mha.yaml"]  # the child exercises extends


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (with __pycache__) -> its bytes; the exact state of a tree."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(parent: Path, name: str) -> list[str]:
    """Hidden staging or retired folders generate may leave next to the output."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("specs")
    for name in SPECS + ["schema.json"]:
        shutil.copy(REPO_ROOT / "specs" / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def good_tree(spec_dir, tmp_path_factory) -> dict[str, bytes]:
    """What a successful generate of the spec copies writes (rendered once per module)."""
    out = tmp_path_factory.mktemp("reference") / "generated"
    render.generate(out, [spec_dir / n for n in SPECS])
    return snapshot(out)


@pytest.fixture
def out(tmp_path, good_tree) -> Path:
    """An output folder holding a previous good generate, plus files a person might have there."""
    folder = tmp_path / "work" / "generated"
    for relative, content in good_tree.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    (folder / "gpt_bigcode" / "__pycache__").mkdir()
    (folder / "gpt_bigcode" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\x00pyc")
    return folder


def paths(spec_dir: Path, *names: str) -> list[Path]:
    return [spec_dir / n for n in (names or SPECS)]


def test_generate_twice_is_byte_identical(spec_dir, tmp_path, good_tree, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as in CI: no __pycache__ may slip in
    target = tmp_path / "generated"
    first = render.generate(target, paths(spec_dir))
    once = snapshot(target)
    second = render.generate(target, paths(spec_dir))
    assert first == second
    assert snapshot(target) == once == good_tree
    assert sorted(once) == sorted(["__init__.py"] + [f"{pkg}/{f}" for pkg in ("gpt_bigcode", "gpt_bigcode_mha") for f in render.PACKAGE_FILES.values()])
    assert leftovers(tmp_path, "generated") == []


def test_failure_just_before_the_swap_leaves_the_old_tree_byte_identical(spec_dir, out):
    before = snapshot(out)
    seen = {}

    def explode(staging: Path) -> None:
        seen.update(snapshot(staging))  # the new tree was complete in staging
        raise RuntimeError("injected failure before swap")

    with pytest.raises(RuntimeError, match="injected failure before swap"):
        render.generate(out, paths(spec_dir), before_swap=explode)
    assert snapshot(out) == before
    assert "__init__.py" in seen and "gpt_bigcode/model.py" in seen
    assert leftovers(out.parent, out.name) == []


def test_keyboard_interrupt_mid_write_leaves_the_old_tree(spec_dir, out, monkeypatch):
    before = snapshot(out)
    real_write_text = Path.write_text
    calls = []

    def write_then_interrupt(self, *args, **kwargs):
        calls.append(self)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        render.generate(out, paths(spec_dir))
    monkeypatch.undo()
    assert len(calls) == 3 and all(out not in c.parents for c in calls), "generate wrote into the live tree"
    assert snapshot(out) == before
    assert leftovers(out.parent, out.name) == []


def test_disk_full_mid_write_leaves_the_old_tree(spec_dir, out, monkeypatch):
    before = snapshot(out)
    real_write_text = Path.write_text

    def full_disk(self, data, *args, **kwargs):
        if self.name == "weights.py":
            raise OSError(28, "No space left on device")
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        render.generate(out, paths(spec_dir))
    monkeypatch.undo()
    assert snapshot(out) == before
    assert leftovers(out.parent, out.name) == []


def test_failure_in_the_swap_itself_restores_the_old_tree(spec_dir, out, monkeypatch):
    """The swap is two renames; if the second fails the first is undone (output never missing)."""
    before = snapshot(out)
    real_replace = os.replace
    moves = []

    def second_rename_fails(src, dst):
        moves.append((Path(src).name, Path(dst).name))
        if len(moves) == 2:
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(render.os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="Input/output error"):
        render.generate(out, paths(spec_dir))
    monkeypatch.undo()
    assert moves[0][0] == "generated" and moves[1][1] == "generated"
    assert out.is_dir()
    assert snapshot(out) == before
    assert leftovers(out.parent, out.name) == []


def test_a_broken_spec_among_good_ones_leaves_the_old_tree(spec_dir, out, tmp_path):
    before = snapshot(out)
    broken = tmp_path / "zz_broken.yaml"
    broken.write_text((spec_dir / "gpt_bigcode.yaml").read_text().replace("name: gpt_bigcode", "name: zz_broken").replace("mode: mqa", "mode: sparse"))
    with pytest.raises(SpecError, match=r"zz_broken.yaml:\d+: architecture.attention.mode: 'sparse' is not allowed"):
        render.generate(out, paths(spec_dir) + [broken])
    assert snapshot(out) == before
    assert leftovers(out.parent, out.name) == []


def test_a_spec_whose_preset_fails_leaves_the_old_tree(spec_dir, out, tmp_path):
    """The preset check runs on the staged tree, after rendering: still nothing changes."""
    before = snapshot(out)
    bad = tmp_path / "bad_preset.yaml"
    text = (spec_dir / "gpt_bigcode.yaml").read_text().replace("name: gpt_bigcode", "name: bad_preset")
    bad.write_text(text.replace("    n_head: 16\n    n_layer: 24\n    n_inner: 8192\n    n_positions: 2048", "    n_head: 15\n    n_layer: 24\n    n_inner: 8192\n    n_positions: 2048", 1))
    with pytest.raises(SpecError, match=r"bad_preset.yaml:\d+: presets.santacoder: num_attention_heads \(15\) must divide hidden_size \(2048\)"):
        render.generate(out, paths(spec_dir) + [bad])
    assert snapshot(out) == before
    assert leftovers(out.parent, out.name) == []


def test_two_specs_with_one_name_leave_the_old_tree(spec_dir, out, tmp_path):
    before = snapshot(out)
    twin = tmp_path / "twin.yaml"
    shutil.copy(spec_dir / "gpt_bigcode.yaml", twin)
    with pytest.raises(SpecError, match=r"twin.yaml:\d+: name: 'gpt_bigcode' is already the name of gpt_bigcode.yaml"):
        render.generate(out, paths(spec_dir) + [twin])
    assert snapshot(out) == before


def test_files_no_spec_produces_are_removed(spec_dir, out, good_tree):
    (out / "old_arch").mkdir()
    (out / "old_arch" / "model.py").write_text("# from a spec that was deleted\n")
    (out / "notes.txt").write_text("hand-written\n")
    (out / "gpt_bigcode" / "extra.py").write_text("x = 1\n")
    render.generate(out, paths(spec_dir))
    assert snapshot(out) == good_tree
    assert leftovers(out.parent, out.name) == []


def test_dropping_a_spec_removes_its_package(spec_dir, out, good_tree):
    render.generate(out, paths(spec_dir, "gpt_bigcode.yaml"))
    assert snapshot(out) == {k: v for k, v in good_tree.items() if not k.startswith("gpt_bigcode_mha/")}
    assert not (out / "gpt_bigcode_mha").exists()


def test_generate_into_a_missing_folder(spec_dir, tmp_path, good_tree):
    target = tmp_path / "a" / "b" / "generated"
    render.generate(target, paths(spec_dir))
    assert snapshot(target) == good_tree
    assert leftovers(target.parent, target.name) == []


def test_a_stale_retired_folder_from_a_crashed_run_does_not_block(spec_dir, out, good_tree):
    """A crash between the two renames of an earlier run leaves .generated.old-*; the next run works."""
    crashed = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.copytree(out, crashed)
    render.generate(out, paths(spec_dir))
    assert snapshot(out) == good_tree


def test_check_reports_nothing_stale_after_generate(spec_dir, tmp_path):
    target = tmp_path / "generated"
    render.generate(target, paths(spec_dir))
    assert render.stale_files(target, paths(spec_dir)) == []
    (target / "gpt_bigcode" / "model.py").write_text("edited by hand\n")
    (target / "orphan.py").write_text("")
    assert render.stale_files(target, paths(spec_dir)) == ["gpt_bigcode/model.py", "orphan.py"]
