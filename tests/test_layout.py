"""The package's shape holds: imports go one way down the data flow, and the CLI hides no bug.

spec → render → build / convert → runtime. A module that imports against that direction drags the
compiler (or jinja2 and black) into places that only run models; these tests fail when it happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from codegen import cli, paths
from tests.support import REPO_ROOT, random_hf_model, save_hf_model


def _modules_after(statement: str, **env: str) -> set[str]:
    """sys.modules of a fresh interpreter after running statement."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.splitlines()[-1]))


def _compiler_side(modules: set[str]) -> list[str]:
    return sorted(
        m for m in modules if m.startswith(("codegen.build", "codegen.render", "jinja2", "black")) or m == "codegen.render"
    )


def test_runtime_imports_no_compiler_side():
    modules = _modules_after("import codegen.runtime, codegen.runtime.generation")
    assert _compiler_side(modules) == []
    assert "codegen.convert.weights" not in modules and "codegen.models" not in modules


def test_runtime_loads_no_dlight_on_a_runtime_only_tvm():
    """`import tvm` itself loads relax and dlight in the full build; with TVM's runtime library alone
    (TVM_USE_RUNTIME_LIB=1, as a deployment would ship it), codegen.runtime must still import."""
    modules = _modules_after("import codegen.runtime", TVM_USE_RUNTIME_LIB="1")
    assert [m for m in modules if m.startswith(("tvm.s_tir", "tvm.relax"))] == []
    assert _compiler_side(modules) == []


def test_spec_imports_no_tvm():
    modules = _modules_after("import codegen.spec, codegen.spec.docs")
    assert sorted(m for m in modules if m == "tvm" or m.startswith(("tvm.", "tvm_ffi"))) == []
    assert "jinja2" not in modules and "black" not in modules


def test_convert_imports_no_compiler():
    modules = _modules_after("import codegen.convert.weights, codegen.convert.chat_config")
    assert sorted(m for m in modules if m.startswith("codegen.build")) == []


@pytest.mark.slow
def test_a_runtime_only_tvm_runs_the_model(artifacts, tmp_path):
    """The compiled library needs nothing of TVM's compiler: the same logits without it."""
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    from codegen.runtime import Model

    hf = random_hf_model(GPTBigCodeConfig, GPTBigCodeForCausalLM, vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=48)
    artifact = artifacts.build("specs/gpt_bigcode.yaml", save_hf_model(hf, tmp_path / "hf"))
    expected = Model(artifact).prefill([1, 2, 3, 4, 5])
    out = tmp_path / "logits.npy"
    code = (
        "import sys, numpy\nfrom codegen.runtime import Model\n"
        f"numpy.save({str(out)!r}, Model({str(artifact)!r}).prefill([1, 2, 3, 4, 5]))\n"
        "assert not [m for m in sys.modules if m.startswith(('tvm.relax', 'tvm.s_tir', 'codegen.build'))]\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
        env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"}, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_array_equal(np.load(out), expected)


def test_a_bug_in_a_cli_handler_keeps_its_traceback(monkeypatch):
    def broken(args):
        return {}["no such key"]

    monkeypatch.setattr(cli, "_check", broken)
    with pytest.raises(KeyError):
        cli.main(["check"])


def test_a_bug_in_a_cli_handler_prints_a_traceback_from_the_entry_point():
    code = "import sys, codegen.cli as c\nc._check = lambda args: [][1]\nsys.exit(c.main(['check']))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback (most recent call last)" in done.stderr and "IndexError" in done.stderr


def test_a_spec_error_is_one_line(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    code = cli.main(["compile", "--spec", str(broken), "--preset", "x", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and "broken.yaml:" in err and "invalid YAML" in err


def test_an_unreadable_named_file_is_one_line(capsys, tmp_path):
    code = cli.main(["compile", "--spec", "specs/gpt_bigcode.yaml", "--config", str(tmp_path / "none.json"), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "none.json does not exist" in err


def test_outside_a_checkout_codegen_says_how_to_fix_it(monkeypatch, tmp_path):
    """A non-editable install has no specs/ or templates/ beside the package."""
    installed = tmp_path / "site-packages" / "codegen" / "paths.py"
    monkeypatch.setattr(paths, "__file__", str(installed))
    paths.repo_root.cache_clear()
    try:
        monkeypatch.chdir(tmp_path)
        with pytest.raises(paths.CheckoutNotFound, match=r"pip install -e \."):
            paths.repo_root()
        monkeypatch.chdir(REPO_ROOT)  # from the checkout's root it finds the folders there
        assert paths.repo_root() == REPO_ROOT
    finally:
        paths.repo_root.cache_clear()


@pytest.mark.parametrize("text, words", [('{"n_layer": ' + "9" * 5000 + "}", "is not valid JSON"), ("[" * 100_000, "nested too deeply")])
def test_hostile_json_files_are_one_project_error(tmp_path, text, words):
    from codegen.files import FileFormatError, read_json_object

    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(FileFormatError, match=words) as info:
        read_json_object(path)
    assert len(str(info.value)) < 400
