"""`codegen eval` and codegen.runtime.evaluate.perplexity against transformers' full-sequence logits.

The reference computes llama-perplexity's protocol independently: each chunk of `context` tokens
goes through transformers in one forward pass, and the log-softmax of positions context//2 …
context-2 is scored against the next tokens.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from codegen import demo_checkpoint
from codegen.cli import main
from tests.support import random_hf_model, save_hf_model

WINDOW = 64
HELD_OUT_CODE = """\
def merge(left, right):
    out = []
    while left and right:
        out.append((left if left[0] <= right[0] else right).pop(0))
    return out + left + right  # café ✓
"""
RESULT_LINE = re.compile(r"^perplexity: ([\d.]+) over (\d+) tokens \((\d+) chunks of (\d+)\)$", re.M)


def test_held_out_text_follows_the_training_corpus_without_overlap():
    train, heldout = demo_checkpoint.consecutive_parts(demo_checkpoint._ordered_sources(None), [200_000, 150_000])
    assert train == demo_checkpoint.python_sources(200_000)
    assert heldout and sum(map(len, heldout)) <= 150_000
    assert not set(train) & set(heldout)


@pytest.fixture(scope="module")
def tiny(artifacts, tmp_path_factory):
    """(transformers model, HF folder with tokenizer.json, artifact, a text file it was not trained on)."""
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    train = demo_checkpoint.python_sources(60_000)
    tokenizer = demo_checkpoint.train_tokenizer(train, vocab_size=300)
    hf_model = random_hf_model(
        GPTBigCodeConfig,
        GPTBigCodeForCausalLM,
        seed=3,
        vocab_size=tokenizer.get_vocab_size(),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=WINDOW,
    )
    model_dir = save_hf_model(hf_model, tmp_path_factory.mktemp("eval-hf"))
    tokenizer.save(str(model_dir / "tokenizer.json"))
    text = model_dir / "heldout.txt"
    text.write_text(HELD_OUT_CODE * 4, encoding="utf-8")
    return hf_model, model_dir, artifacts.build("gpt_bigcode", model_dir), text


def reference_perplexity(hf_model, tokens: list[int], context: int) -> float:
    import torch

    first = context // 2
    nll = []
    for start in range(0, len(tokens) - context + 1, context):
        chunk = tokens[start : start + context]
        with torch.no_grad():
            logits = hf_model(torch.tensor([chunk])).logits[0].double()
        log_probs = torch.log_softmax(logits[first : context - 1], dim=-1)
        targets = torch.tensor(chunk[first + 1 :])
        nll.append(-log_probs[torch.arange(len(targets)), targets])
    return math.exp(torch.cat(nll).mean().item())


@pytest.mark.slow
@pytest.mark.parametrize("context, chunks", [(WINDOW, 5), (21, 3)])
def test_perplexity_matches_transformers_full_sequence_logits(tiny, context, chunks):
    from codegen.runtime import Model
    from codegen.runtime.evaluate import perplexity

    hf_model, _, artifact, _ = tiny
    vocab = hf_model.config.vocab_size
    # A remainder of 7 tokens that must be dropped; 5 chunks run as a batch of 4 and one of 1.
    tokens = [int(t) for t in np.random.default_rng(context).integers(0, vocab, context * chunks + 7)]
    expected = reference_perplexity(hf_model, tokens, context)
    got = perplexity(Model(artifact, max_batch_size=4), tokens, context)
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_eval_prints_the_perplexity_of_the_text(tiny, capsys):
    from codegen.runtime.generation import load_tokenizer

    hf_model, model_dir, artifact, text = tiny
    tokens = load_tokenizer(model_dir).encode(text.read_text(), add_special_tokens=False).ids
    argv = ["eval", "--artifact", str(artifact), "--tokenizer", str(model_dir), "--text", str(text), "--context", "32"]
    assert main(argv) == 0
    value, scored, chunks, context = RESULT_LINE.search(capsys.readouterr().out).groups()
    assert (int(chunks), int(context)) == (len(tokens) // 32, 32)
    assert int(scored) == int(chunks) * 15
    assert float(value) == pytest.approx(reference_perplexity(hf_model, tokens, 32), rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    "context, text, message",
    [
        (str(WINDOW + 1), None, f"context {WINDOW + 1} exceeds the model's context window of {WINDOW}"),
        ("2", None, "context must be an integer of at least 3"),
        (str(WINDOW), "def f():\n    pass\n", "shorter than one chunk of 64"),
        (str(WINDOW), "missing", "no such text file"),
    ],
)
def test_eval_refuses_what_it_cannot_score(tiny, tmp_path, capsys, context, text, message):
    _, model_dir, artifact, heldout = tiny
    path = heldout
    if text is not None:
        path = tmp_path / "text.txt"
        if text != "missing":
            path.write_text(text)
    argv = ["eval", "--artifact", str(artifact), "--tokenizer", str(model_dir), "--text", str(path), "--context", context]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
