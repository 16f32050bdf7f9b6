"""`codegen run` end to end, the incremental decoder, mlc-chat-config.json, and every subcommand's --help.

The tokenizer is a byte-level BPE trained here on a few lines of Python with non-ASCII comments, so
some characters span several tokens. The model is a tiny GPTBigCode trained for a few seconds to
recite those lines: a random one would repeat one token, which tests little.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codegen import demo_checkpoint
from codegen.convert import chat_config
from codegen.cli import main
from codegen.demo_checkpoint import EOS_TOKEN, train_tokenizer
from codegen.runtime.generation import IncrementalDecoder, RunError, stop_token_ids
from codegen.models import load_model
from tests.support import REPO_ROOT, random_hf_model, save_hf_model

CORPUS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x  # abscisse, café\n        self.y = y\n",
    "for i in range(10):\n    print(f'{i} → {i * i}')  # naïve 日本語 ✓\n",
    "import os\nwith open(os.path.join('a', 'b')) as handle:\n    data = handle.read()\n",
]
PROMPT = "for i in range(10):\n    print(f'{i}"
MAX_NEW_TOKENS = 40
TIMINGS_LINE = re.compile(
    r"^prefill: (\d+) tokens in [\d.]+ s \([\d.]+ tok/s\); decode: (\d+) tokens in [\d.]+ s \([\d.]+ tok/s\)$",
    re.M,
)
SUBCOMMANDS = ("generate", "check", "diff", "compile", "convert", "run")


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS * 4, vocab_size=320)


@pytest.fixture(scope="module")
def tiny(tokenizer, artifacts, tmp_path_factory):
    """(transformers model, HF folder with tokenizer.json, artifact converted from that folder)."""
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    eos = tokenizer.token_to_id(EOS_TOKEN)
    hf_model = random_hf_model(
        GPTBigCodeConfig,
        GPTBigCodeForCausalLM,
        seed=7,
        vocab_size=tokenizer.get_vocab_size(),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=128,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    _memorise(hf_model, tokenizer, eos)
    model_dir = save_hf_model(hf_model, tmp_path_factory.mktemp("tiny-hf"))
    tokenizer.save(str(model_dir / "tokenizer.json"))
    return hf_model, model_dir, artifacts.build("gpt_bigcode", model_dir)


def _memorise(hf_model, tokenizer, eos: int, steps: int = 100) -> None:
    """Fit the corpus, each snippet a sequence from position 0 ending in eos, as generation sees it."""
    import torch

    torch.manual_seed(0)
    sequences = [
        torch.tensor([encoding.ids + [eos]]) for encoding in tokenizer.encode_batch(CORPUS)
    ]
    optimizer = torch.optim.AdamW(hf_model.parameters(), lr=1e-2)
    hf_model.train()
    for _ in range(steps):
        loss = sum(hf_model(sequence, labels=sequence).loss for sequence in sequences)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    hf_model.eval()


def _hf_greedy(hf_model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    import torch

    with torch.no_grad():
        output = hf_model.generate(
            torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=max_new_tokens
        )
    return output[0, len(prompt_ids) :].tolist()


def _codegen_run(artifact: Path, tokenizer_dir: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "codegen.cli",
        "run",
        "--artifact",
        str(artifact),
        "--tokenizer",
        str(tokenizer_dir),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
    ]
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, encoding="utf-8", timeout=300, env=environment
    )


def _timings(stderr: str) -> tuple[int, int]:
    match = TIMINGS_LINE.search(stderr)
    assert match, f"no timings line in stderr:\n{stderr}"
    return int(match[1]), int(match[2])


# ---------------------------------------------------------------------------- codegen run


@pytest.mark.slow
def test_run_streams_the_text_of_transformers_greedy_output(tiny, tokenizer):
    hf_model, model_dir, artifact = tiny
    prompt_ids = tokenizer.encode(PROMPT).ids
    expected_ids = _hf_greedy(hf_model, prompt_ids, MAX_NEW_TOKENS)
    # The memorised line ends the snippet, so both stop at eos with multi-byte characters on the way.
    assert (
        expected_ids[-1] == tokenizer.token_to_id(EOS_TOKEN) and len(expected_ids) < MAX_NEW_TOKENS
    )
    assert "日本語" in tokenizer.decode(expected_ids)

    result = _codegen_run(artifact, model_dir)

    assert result.returncode == 0, result.stderr
    assert result.stdout == PROMPT + tokenizer.decode(expected_ids) + "\n"
    assert _timings(result.stderr) == (len(prompt_ids), len(expected_ids) - 1)


@pytest.mark.slow
def test_run_stops_at_the_eos_of_the_tokenizer_folder(tiny, tokenizer, tmp_path):
    """Name a token greedy decoding reaches (first seen at step 5 or later) as eos in generation_config.json."""
    hf_model, model_dir, artifact = tiny
    prompt_ids = tokenizer.encode(PROMPT).ids
    greedy = _hf_greedy(hf_model, prompt_ids, MAX_NEW_TOKENS)
    stop_at = next(i for i in range(4, len(greedy)) if greedy[i] not in greedy[:i])
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((model_dir / "tokenizer.json").read_bytes())
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": greedy[stop_at]}))

    result = _codegen_run(artifact, folder)

    assert result.returncode == 0, result.stderr
    assert result.stdout == PROMPT + tokenizer.decode(greedy[:stop_at]) + "\n"
    assert _timings(result.stderr) == (len(prompt_ids), stop_at)


def test_run_without_tokenizer_json_names_the_path(tmp_path, capsys):
    code = main(["run", "--artifact", str(tmp_path), "--tokenizer", str(tmp_path), "--prompt", "x"])
    error = capsys.readouterr().err
    assert code == 1
    assert str(tmp_path / "tokenizer.json") in error and "--tokenizer" in error


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_of_each_subcommand_exits_0(command: str, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"codegen {command}" in capsys.readouterr().out


def test_stop_tokens_come_from_the_most_specific_file(tmp_path):
    tokenizer_dir, artifact = tmp_path / "hf", tmp_path / "artifact"
    tokenizer_dir.mkdir()
    artifact.mkdir()
    (artifact / "mlc-chat-config.json").write_text(json.dumps({"eos_token_id": 9}))
    assert stop_token_ids(tokenizer_dir, artifact) == {9}
    (tokenizer_dir / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    assert stop_token_ids(tokenizer_dir, artifact) == {2}
    (tokenizer_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    assert stop_token_ids(tokenizer_dir, artifact) == {2, 5}
    (tokenizer_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": "</s>"}))
    with pytest.raises(RunError, match="generation_config.json: eos_token_id must be an integer"):
        stop_token_ids(tokenizer_dir, artifact)


# ---------------------------------------------------------------------------- incremental decoding


def test_incremental_decoder_reassembles_any_token_sequence(tokenizer):
    """Random ids include lone bytes of multi-byte characters, the hard case for streaming."""
    rng = np.random.default_rng(0)
    context = tokenizer.encode("x = 1\n").ids
    for _ in range(200):
        ids = [int(t) for t in rng.integers(1, tokenizer.get_vocab_size(), rng.integers(1, 12))]
        decoder = IncrementalDecoder(tokenizer, context)
        streamed = "".join(decoder.step(token) for token in ids) + decoder.flush()
        assert streamed == tokenizer.decode(ids)


def test_incremental_decoder_holds_back_a_split_character(tokenizer):
    ids = tokenizer.encode("日本語").ids
    decoder = IncrementalDecoder(tokenizer, [])
    pieces = [decoder.step(token) for token in ids]
    assert len(ids) > 3, "the tiny vocabulary should split these characters into byte tokens"
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == "日本語"


# ---------------------------------------------------------------------------- mlc-chat-config.json


@pytest.mark.slow
def test_convert_writes_chat_config_and_tokenizer_into_the_artifact(tiny, tokenizer):
    hf_model, model_dir, artifact = tiny
    fields = json.loads((artifact / chat_config.CHAT_CONFIG_NAME).read_text())
    eos = tokenizer.token_to_id(EOS_TOKEN)
    assert (fields["model_type"], fields["quantization"]) == ("gpt_bigcode", "q0f32")
    assert fields["model_config"] == json.loads((model_dir / "config.json").read_text())
    assert (fields["vocab_size"], fields["context_window_size"]) == (
        tokenizer.get_vocab_size(),
        128,
    )
    assert (fields["bos_token_id"], fields["eos_token_id"]) == (eos, eos)
    assert fields["conv_template"]["name"] == "LM"
    assert fields["conv_template"]["stop_token_ids"] == [eos]
    assert fields["tokenizer_files"] == ["tokenizer.json"]
    assert (artifact / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()


def test_chat_config_prefers_generation_config_and_copies_present_tokenizer_files(tmp_path):
    model_dir, output = tmp_path / "hf", tmp_path / "artifact"
    model_dir.mkdir()
    output.mkdir()
    hf_config = {
        "model_type": "gpt_bigcode",
        "vocab_size": 100,
        "n_embd": 32,
        "n_layer": 1,
        "n_head": 4,
        "n_positions": 64,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (model_dir / "config.json").write_text(json.dumps(hf_config))
    (model_dir / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [2, 5], "temperature": 0.2})
    )
    for name in ("vocab.json", "merges.txt"):
        (model_dir / name).write_text(name)
    config = load_model("gpt_bigcode").package.Config.from_dict(hf_config)

    fields = chat_config.write(model_dir, output, config, "q0f16")

    assert fields["tokenizer_files"] == ["vocab.json", "merges.txt"]
    assert (output / "merges.txt").read_text() == "merges.txt"
    assert (fields["eos_token_id"], fields["bos_token_id"], fields["quantization"]) == (
        [2, 5],
        1,
        "q0f16",
    )
    assert fields["conv_template"]["stop_token_ids"] == [2, 5]
    assert (fields["temperature"], fields["top_p"]) == (0.2, 1.0)
    assert json.loads((output / chat_config.CHAT_CONFIG_NAME).read_text()) == fields


def test_chat_config_refuses_a_tokenizer_file_linked_from_outside(tmp_path):
    model_dir, output = tmp_path / "hf", tmp_path / "artifact"
    model_dir.mkdir()
    output.mkdir()
    hf_config = {"vocab_size": 100, "n_embd": 32, "n_layer": 1, "n_head": 4, "n_positions": 64}
    (model_dir / "config.json").write_text(json.dumps(hf_config))
    (tmp_path / "secret").write_text("not a tokenizer")
    (model_dir / "tokenizer.json").symlink_to(tmp_path / "secret")
    config = load_model("gpt_bigcode").package.Config.from_dict(hf_config)

    with pytest.raises(chat_config.ChatConfigError, match="outside"):
        chat_config.write(model_dir, output, config, "q0f32")
    assert not (output / "tokenizer.json").exists()


# ---------------------------------------------------------------------------- demo checkpoint


def test_demo_corpus_is_deterministic_and_capped():
    first, second = demo_checkpoint.python_sources(300_000), demo_checkpoint.python_sources(300_000)
    assert first == second
    assert 200_000 < sum(map(len, first)) <= 300_000


@pytest.mark.slow
def test_demo_checkpoint_is_a_loadable_hf_folder(tmp_path, monkeypatch):
    from transformers import AutoTokenizer, GPTBigCodeForCausalLM

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # main() sets it for its own process

    output = tmp_path / "demo"
    output.mkdir()
    (output / "stale").write_text("from an earlier run")
    small = ["--layers", "1", "--width", "32", "--heads", "2", "--context", "64", "--block", "32"]
    budget = ["--train-seconds", "2", "--corpus-mb", "0.2", "--vocab-size", "300"]
    assert demo_checkpoint.main(["--output", str(output), *small, *budget]) == 0

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "demo"
    ], "the staging folder is left behind"
    assert not (output / "stale").exists()
    model = GPTBigCodeForCausalLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert (
        model.config.eos_token_id
        == tokenizer.eos_token_id
        == tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    )
    assert (
        tokenizer.decode(tokenizer("def f(x):\n    return x")["input_ids"])
        == "def f(x):\n    return x"
    )
    load_model("gpt_bigcode").package.Config.from_file(output / "config.json")


# ---------------------------------------------------------------------------- codegen run: bad input


@pytest.mark.parametrize(
    "option, message",
    [
        (["--temperature", "nan"], "--temperature must be a finite number >= 0"),
        (["--temperature", "-0.5"], "--temperature must be a finite number >= 0"),
        (["--top-p", "0"], "--top-p must be a number in (0, 1]"),
        (["--seed", "-1"], "--seed must be an integer in [0, 2**63)"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    ],
)
def test_run_refuses_bad_options_before_any_output(capsys, tmp_path, option, message):
    code = main(["run", "--artifact", str(tmp_path), "--tokenizer", str(tmp_path), "--prompt", "x", *option])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.startswith(f"error: {message}") and captured.err.count("\n") == 1


@pytest.mark.parametrize("content", ["{}", "not json at all", '{"model": {"type": "NoSuchModel"}}'])
def test_run_with_a_malformed_tokenizer_is_one_line(capsys, tmp_path, content):
    (tmp_path / "tokenizer.json").write_text(content)
    code = main(["run", "--artifact", str(tmp_path), "--tokenizer", str(tmp_path), "--prompt", "x"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.startswith(f"error: {tmp_path / 'tokenizer.json'} is not a usable tokenizer (")
    assert captured.err.count("\n") == 1


def test_run_with_a_prompt_that_is_not_utf8(tmp_path, tokenizer):
    """Bytes that are not UTF-8 reach Python's argv as lone surrogates; the tokenizer would raise."""
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    prompt = b"def \xff(".decode("utf-8", "surrogateescape")
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "codegen.cli", "run", "--artifact", str(tmp_path), "--tokenizer", str(tmp_path),
         "--prompt", prompt.encode("utf-8", "surrogateescape")],
        cwd=REPO_ROOT, capture_output=True, timeout=120, env=environment,
    )
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode() == "error: the prompt is not valid UTF-8 text (bad byte at character 4)\n"


@pytest.mark.slow
def test_run_with_a_prompt_that_fills_the_window(capsys, tiny, tokenizer):
    _, model_dir, artifact = tiny
    window = json.loads((artifact / "metadata.json").read_text())["context_window_size"]
    text = ""
    while len(tokenizer.encode(text).ids) < window:
        text += "for i in range(10): "
    code = main(["run", "--artifact", str(artifact), "--tokenizer", str(model_dir), "--prompt", text])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert "no room for a new token; shorten the prompt" in captured.err
