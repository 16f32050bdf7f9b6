"""The parity checks every family runs against transformers: prefill + decode across KV pages, a
batch of sequences of different lengths, and greedy generation token for token."""

from __future__ import annotations

import numpy as np

from tests.support import FLOAT32_TOLERANCE, hf_logits, max_abs_diff

VOCAB = 128
WINDOW = 128
PROMPT_LEN = 13  # prefill, then decode to PROMPT_LEN + DECODE_STEPS: crosses pages at 16 and 32
DECODE_STEPS = 24
BATCH_LENGTHS = (5, 17, 33)
BATCH_DECODE_STEPS = 4
GENERATE_TOKENS = 32


def tokens(seed: int, count: int, vocab: int = VOCAB) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, vocab, size=count)]


def prefill_then_decode(model, sequence: list[int], prompt_length: int) -> np.ndarray:
    """Runtime logits for positions prompt_length-1 .. len(sequence)-1, one row each."""
    rows = [model.prefill(sequence[:prompt_length])]
    rows += [model.decode(token) for token in sequence[prompt_length:]]
    return np.stack(rows)


def prefill_decode_diff(model, hf_model, seed: int = 0) -> float:
    """Prefill PROMPT_LEN tokens, then decode DECODE_STEPS more; worst |Δlogit| over all of them."""
    sequence = tokens(seed, PROMPT_LEN + DECODE_STEPS)
    expected = hf_logits(hf_model, sequence)[PROMPT_LEN - 1 :]
    return max_abs_diff(prefill_then_decode(model, sequence, PROMPT_LEN), expected)


def batch_diff(model, hf_model, seed: int = 0) -> float:
    """Sequences of different lengths prefilled and decoded together must match each one alone."""
    prompts = [tokens(seed + index, length + BATCH_DECODE_STEPS) for index, length in enumerate(BATCH_LENGTHS)]
    expected = [hf_logits(hf_model, prompt) for prompt in prompts]
    model.reset()
    seq_ids = [model.add_sequence() for _ in prompts]
    out = model.batch_prefill({s: p[:n] for s, p, n in zip(seq_ids, prompts, BATCH_LENGTHS)})
    worst = max(max_abs_diff(out[s], e[n - 1]) for s, e, n in zip(seq_ids, expected, BATCH_LENGTHS))
    for step in range(BATCH_DECODE_STEPS):
        out = model.batch_decode({s: p[n + step] for s, p, n in zip(seq_ids, prompts, BATCH_LENGTHS)})
        worst = max(worst, max(max_abs_diff(out[s], e[n + step]) for s, e, n in zip(seq_ids, expected, BATCH_LENGTHS)))
    model.reset()
    return worst


def hf_greedy(hf_model, prompt: list[int], count: int) -> list[int]:
    import torch

    hf_model.generation_config.eos_token_id = None  # never stop early: compare all `count` tokens
    hf_model.generation_config.pad_token_id = 0
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=count, do_sample=False)
    return [int(t) for t in out[0, len(prompt):]]


def check_parity(model, hf_model, label: str) -> dict[str, float]:
    """All three checks; returns the figures and asserts the tolerance and the identical tokens."""
    figures = {"prefill+decode": prefill_decode_diff(model, hf_model), "batch": batch_diff(model, hf_model)}
    prompt = tokens(99, 8)
    ours = list(model.generate(prompt, GENERATE_TOKENS))
    theirs = hf_greedy(hf_model, prompt, GENERATE_TOKENS)
    print(f"\n{label}: max |Δlogit| " + ", ".join(f"{k} {v:.2e}" for k, v in figures.items()) + f"; greedy {len(ours)} tokens identical: {ours == theirs}")
    for name, value in figures.items():
        assert value <= FLOAT32_TOLERANCE, f"{label} {name}: max |Δlogit| {value} > {FLOAT32_TOLERANCE}"
    assert ours == theirs, f"{label}: greedy tokens differ\n ours   {ours}\n theirs {theirs}"
    return figures
