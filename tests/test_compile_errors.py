"""Bad compile options fail with a CompileError before any work: nothing is exported, compiled or
written. Through the CLI, `codegen compile ...` exits non-zero with the message on stderr."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from codegen.build import compile as compile_module
from codegen.cli import main
from codegen.build.compile import CUDA_ARCHS, TARGETS, BuildOptions, CompileError
from codegen.errors import CodegenError
from codegen.spec.quantization import DTYPES, UnknownScheme
from tests.support import REPO_ROOT

SPEC = "specs/gpt_bigcode.yaml"


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if anything past option checking runs (export, build, or model loading)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started although the options were invalid")

    monkeypatch.setattr(compile_module, "build", forbidden)
    monkeypatch.setattr(compile_module, "export", forbidden)
    import codegen.models

    monkeypatch.setattr(codegen.models, "load_model", forbidden)


@pytest.fixture
def no_nvcc(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "nvcc" else real_which(name, *a, **k))


CASES = [
    (dict(target="rocm"), "unknown target 'rocm'; choose one of: llvm, cuda"),
    (dict(target="llvm -mcpu=znver4"), "unknown target 'llvm -mcpu=znver4'; choose one of: llvm, cuda"),
    (dict(target=""), "unknown target ''; choose one of"),
    (dict(dtype="int8"), "unknown dtype 'int8'; choose one of: float32, float16, bfloat16"),
    (dict(dtype="fp16"), "unknown dtype 'fp16'; choose one of"),
    (dict(target="cuda", cuda_arch="sm_75"), "unknown CUDA arch 'sm_75'; choose one of: sm_80, sm_86, sm_89, sm_90"),
    (dict(target="cuda", cuda_arch="90"), "unknown CUDA arch '90'"),
    (dict(num_threads=0), "num_threads must be a positive integer or None, got 0"),
    (dict(num_threads=-2), "num_threads must be a positive integer or None, got -2"),
]


@pytest.mark.parametrize("options, message", CASES)
def test_bad_options_raise_before_any_work(options, message, no_work):
    with pytest.raises(CodegenError) as info:
        BuildOptions(**options)
    assert str(info.value).startswith(message)


def test_the_error_lists_every_allowed_value():
    with pytest.raises(CompileError) as info:
        BuildOptions(target="metal")
    assert all(t in str(info.value) for t in TARGETS)
    with pytest.raises(UnknownScheme) as info:
        BuildOptions(dtype="float8")
    assert all(d in str(info.value) for d in DTYPES)
    with pytest.raises(CompileError) as info:
        BuildOptions(target="cuda", cuda_arch="sm_100")
    assert all(a in str(info.value) for a in CUDA_ARCHS)


def test_cuda_without_nvcc(no_nvcc, no_work):
    with pytest.raises(CompileError, match=r"target cuda needs nvcc on PATH \(the CUDA toolkit\); install it or use --target llvm"):
        BuildOptions(target="cuda", cuda_arch="sm_90")
    BuildOptions(target="llvm")  # the CPU build does not need nvcc


def test_cuda_without_nvcc_on_path(monkeypatch, tmp_path, no_work):
    """The real lookup, with a PATH that has no nvcc."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CompileError, match="target cuda needs nvcc on PATH"):
        BuildOptions(target="cuda")


@pytest.mark.parametrize("options, message", CASES[:7])
def test_compile_to_dir_creates_nothing(options, message, tmp_path, no_work):
    output = tmp_path / "out" / "artifact"
    with pytest.raises(CodegenError, match=message.split(";")[0].replace("(", r"\(").replace(")", r"\)")):
        compile_module.compile_to_dir(None, None, BuildOptions(**options), output)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the command line


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["compile", "--spec", SPEC, "--preset", "tiny_starcoder", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "vulkan"], "error: unknown target 'vulkan'; choose one of: llvm, cuda"),
        (["--dtype", "float64"], "error: unknown dtype 'float64'; choose one of: float32, float16, bfloat16"),
        (["--target", "cuda", "--arch", "sm_70"], "error: unknown CUDA arch 'sm_70'; choose one of: sm_80, sm_86, sm_89, sm_90"),
    ],
)
def test_cli_bad_options(capsys, tmp_path, no_work, args, message):
    output = tmp_path / "artifact"
    code, out, err = _cli(capsys, *args, "--output", str(output))
    assert code == 1
    assert err.strip() == message
    assert "Traceback" not in err and "compiling" not in out
    assert list(tmp_path.iterdir()) == []


def test_cli_cuda_without_nvcc(capsys, tmp_path, no_nvcc, no_work):
    code, out, err = _cli(capsys, "--target", "cuda", "--arch", "sm_90", "--output", str(tmp_path / "artifact"))
    assert code == 1
    assert err.strip() == "error: target cuda needs nvcc on PATH (the CUDA toolkit); install it or use --target llvm"
    assert list(tmp_path.iterdir()) == []


def test_cli_subprocess_exits_non_zero_with_the_message_on_stderr(tmp_path):
    """The installed entry point, in a fresh process, with no nvcc on PATH."""
    output = tmp_path / "artifact"
    env = dict(os.environ, PATH=str(tmp_path))
    runs = [
        (["--target", "opencl"], "unknown target 'opencl'"),
        (["--target", "cuda"], "target cuda needs nvcc on PATH"),
    ]
    for args, message in runs:
        completed = subprocess.run(
            [sys.executable, "-m", "codegen.cli", "compile", "--spec", SPEC, "--preset", "tiny_starcoder", *args, "--output", str(output)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert completed.returncode == 1, completed.stderr
        assert completed.stderr.startswith("error: ") and message in completed.stderr
        assert "Traceback" not in completed.stderr
        assert completed.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_cli_unknown_preset_and_spec(capsys, tmp_path):
    code = main(["compile", "--spec", SPEC, "--preset", "no_such_size", "--output", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 1 and "has no preset 'no_such_size'" in err and "tiny_starcoder" in err
    code = main(["compile", "--spec", "specs/no_such.yaml", "--preset", "x", "--output", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 1 and "no_such.yaml" in err and "cannot read spec" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_an_edited_spec_that_was_not_regenerated_is_refused(capsys, tmp_path):
    """compile and convert used to read only the spec's name and build the committed package."""
    edited = tmp_path / "gpt_bigcode.yaml"
    text = (REPO_ROOT / SPEC).read_text()
    assert text.count("  norm: layernorm") == 1
    edited.write_text(text.replace("  norm: layernorm", "  norm: rmsnorm"))
    for command in (
        ["compile", "--spec", str(edited), "--preset", "tiny_starcoder", "--output", str(tmp_path / "a")],
        ["convert", "--spec", str(edited), "--model-dir", str(tmp_path), "--output", str(tmp_path / "a")],
    ):
        code = main(command)
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1
        assert "generated/gpt_bigcode/ was not rendered from" in err and "run `make generate`" in err
    assert not (tmp_path / "a").exists()


def test_an_unedited_copy_of_a_spec_loads_its_package(tmp_path):
    from codegen.models import load_model

    copy = tmp_path / "gpt_bigcode.yaml"
    copy.write_text((REPO_ROOT / SPEC).read_text())
    assert load_model(copy).name == "gpt_bigcode"


def test_a_huge_model_name_gives_a_short_error(capsys, tmp_path):
    """A 100,000-character name made a 100 kB OSError."""
    code = main(["compile", "--spec", "a" * 100_000, "--preset", "x", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and len(err) < 500 and "is neither a spec file (.yaml) nor a generated model name" in err


@pytest.mark.parametrize("field, value", [("layer_norm_epsilon", -1), ("layer_norm_epsilon", 0.0)])
def test_non_positive_float_config_fields_are_refused(field, value):
    from codegen.models import ModelConfigError, load_model

    model = load_model("gpt_bigcode")
    values = {**model.package.PRESETS["tiny_starcoder"], field: value}
    with pytest.raises(ModelConfigError, match=f"config.json field '{field}' must be a positive finite number"):
        model.config(hf_config=values)
