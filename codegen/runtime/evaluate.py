"""Perplexity of a compiled artifact on a token stream, by llama.cpp's `llama-perplexity` protocol.

Matched against llama.cpp's tools/perplexity/perplexity.cpp (function `perplexity()`), so that the
figures compare with its output on the same text:

- the stream is cut into ``len(tokens) // context`` consecutive, non-overlapping chunks of
  ``context`` tokens; the remainder is dropped;
- each chunk is a fresh sequence (llama.cpp clears its KV cache per chunk);
- with ``first = context // 2``, the logits at positions first … context-2 are scored against the
  tokens at first+1 … context-1: ``context - 1 - first`` predictions per chunk, each from every
  earlier token of its chunk;
- perplexity = exp(mean negative log-likelihood over all scored predictions), log-softmax in float64
  (llama.cpp accumulates in double too).

Not matched: llama.cpp replaces the first token of each chunk by BOS when the GGUF vocabulary asks
for one (``add_bos``). GPT-2-style byte-level BPE vocabularies (GPT-2, StarCoder, the demo model)
do not, and nothing is replaced here; compare with llama.cpp only for such vocabularies, or pass
tokens that already start each chunk with BOS.

The compiled ``prefill`` returns the last position's logits only. Exact and cheap: prefill the
first ``first + 1`` tokens of a chunk (their last logits predict token first+1), then decode the
rest one token at a time, each step's logits predicting the next token. Several chunks run side by
side as a batch of sequences.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from codegen.errors import CodegenError
from codegen.runtime.model import Model

MIN_CONTEXT = 3  # the smallest chunk with one scored prediction (first = 1 predicts token 2)
DEFAULT_CONTEXT = 512  # llama-perplexity's default -c
EVAL_BATCH = 4  # chunks run side by side as sequences of one batch


class EvaluateError(CodegenError):
    """Text or options `codegen eval` cannot evaluate; says which and how to fix."""


def perplexity(
    model: Model,
    tokens: Sequence[int],
    context: int,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """Perplexity of the model on tokens, llama-perplexity's protocol with chunks of ``context``.

    Up to ``model.max_batch_size`` chunks run side by side; the model's KV cache is emptied before
    and after each batch (sequences already in it are removed). ``progress(done, total)`` is
    called after each batch of chunks.
    """
    chunks = split_chunks(tokens, context, model)
    batch = min(model.max_batch_size, len(chunks))
    nll, count = 0.0, 0
    for start in range(0, len(chunks), batch):
        for chunk_nll in _batch_nll(model, chunks[start : start + batch]):
            nll += chunk_nll.sum()
            count += chunk_nll.size
        if progress is not None:
            progress(min(start + batch, len(chunks)), len(chunks))
    return math.exp(nll / count)


def split_chunks(tokens: Sequence[int], context: int, model: Model | None = None) -> list[list[int]]:
    """The consecutive chunks of ``context`` tokens the protocol scores; checks context against the model."""
    if isinstance(context, bool) or not isinstance(context, int) or context < MIN_CONTEXT:
        raise EvaluateError(f"context must be an integer of at least {MIN_CONTEXT}, got {context!r}")
    if model is not None and context > model.context_window_size:
        raise EvaluateError(
            f"context {context} exceeds the model's context window of {model.context_window_size}:"
            f" pass --context {model.context_window_size} or less"
        )
    if model is not None and context > model.max_total_seq_len:
        raise EvaluateError(
            f"context {context} exceeds the KV cache capacity of {model.max_total_seq_len} tokens:"
            f" pass a smaller --context"
        )
    tokens = [int(t) for t in tokens]
    if len(tokens) < context:
        raise EvaluateError(
            f"the text is {len(tokens)} tokens, shorter than one chunk of {context}:"
            " give a longer text or a smaller --context"
        )
    return [tokens[i : i + context] for i in range(0, len(tokens) - context + 1, context)]


def scored_count(chunks: int, context: int) -> int:
    """Predictions the protocol scores: context - 1 - context // 2 per chunk."""
    return chunks * (context - 1 - context // 2)


def _batch_nll(model: Model, chunks: list[list[int]]) -> list[np.ndarray]:
    """Negative log-likelihoods of the scored predictions of each chunk, run as one batch of sequences."""
    context = len(chunks[0])
    first = context // 2
    model.reset()
    seq_ids = [model.add_sequence() for _ in chunks]
    try:
        logits = model.batch_prefill({s: chunk[: first + 1] for s, chunk in zip(seq_ids, chunks)})
        rows = [[logits[s]] for s in seq_ids]
        for position in range(first + 1, context - 1):
            logits = model.batch_decode({s: chunk[position] for s, chunk in zip(seq_ids, chunks)})
            for row, s in zip(rows, seq_ids):
                row.append(logits[s])
    finally:
        model.reset()
    return [_nll(np.stack(row), chunk[first + 1 :]) for row, chunk in zip(rows, chunks)]


def _nll(logits: np.ndarray, targets: list[int]) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64."""
    logits = logits.astype(np.float64)
    peak = logits.max(axis=-1, keepdims=True)
    log_norm = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=-1))
    return log_norm - logits[np.arange(len(targets)), targets]


# ---------------------------------------------------------------------------- `codegen eval`


def run_eval(args) -> int:
    """`codegen eval`: print ``perplexity: P over N tokens (C chunks of X)``, N the scored predictions."""
    text = read_text_file(args.text)
    tokens = tokenize_text(args.tokenizer, text)
    model = Model(args.artifact, max_batch_size=EVAL_BATCH)
    context = args.context or min(DEFAULT_CONTEXT, model.context_window_size)
    chunks = len(split_chunks(tokens, context, model))
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        rate = done / (time.perf_counter() - started)
        print(f"\reval: {done}/{total} chunks ({rate:.1f} chunks/s)", end="", file=sys.stderr, flush=True)

    value = perplexity(model, tokens, context, progress=progress)
    print(file=sys.stderr)
    print(f"perplexity: {value:.4f} over {scored_count(chunks, context)} tokens ({chunks} chunks of {context})")
    return 0


def read_text_file(path: Path) -> str:
    if not path.is_file():
        raise EvaluateError(f"{path}: no such text file; pass --text a UTF-8 text file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EvaluateError(f"{path}: not UTF-8 text (byte {exc.start}); pass a UTF-8 text file") from None


def tokenize_text(folder: Path, text: str) -> list[int]:
    """Token ids of the text by the folder's tokenizer.json, without added special tokens (see the
    module docstring on BOS)."""
    from codegen.runtime.generation import load_tokenizer

    return load_tokenizer(folder).encode(text, add_special_tokens=False).ids
