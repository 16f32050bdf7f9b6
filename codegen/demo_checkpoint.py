"""Make a small, real GPTBigCode checkpoint in Hugging Face format for `make demo`.

There is no model hub on the machines this runs on, so the demo trains its own: a byte-level BPE
tokenizer and a 4-layer GPTBigCode, both on Python source files of the local standard library, for a
few minutes on the CPU. The result is a folder like one downloaded from the hub (config.json,
model.safetensors, generation_config.json, tokenizer.json, tokenizer_config.json), plus
heldout.txt: standard-library files that follow the training corpus in its order, so neither the
model nor the tokenizer saw them (`make eval` measures perplexity on it).

    python -m codegen.demo_checkpoint --output build/demo-model

It needs torch and transformers, which only the test extras install; they are imported where they
are used, so the rest of the package never loads them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import math
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

EOS_TOKEN = "<|endoftext|>"
SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
# Larger files in the standard library are mostly data tables (pydoc topics, Unicode names).
MAX_FILE_BYTES = 100_000
SAMPLE_PROMPT = "def fibonacci(n):"
# Source files the model never saw (tokenizer included), for `codegen eval` / `make eval`.
HELDOUT_NAME = "heldout.txt"
TRAINING_PACKAGES = ("torch", "transformers")


def python_sources(limit_bytes: int, root: Path | None = None) -> list[str]:
    """Source files of the standard library, in a fixed pseudo-random order, up to limit_bytes in all."""
    return consecutive_parts(_ordered_sources(root), [limit_bytes])[0]


def consecutive_parts(texts: Iterable[str], limits: list[int]) -> list[list[str]]:
    """Cut a stream of texts into consecutive parts of at most limits[i] characters each: a part
    takes texts while they fit, and the first one that does not starts the next part."""
    parts: list[list[str]] = [[] for _ in limits]
    index, total = 0, 0
    for text in texts:
        while index < len(limits) and total + len(text) > limits[index]:
            index, total = index + 1, 0
        if index == len(limits):
            break
        parts[index].append(text)
        total += len(text)
    return parts


def _ordered_sources(root: Path | None) -> Iterator[str]:
    """Every readable source file of the standard library, ordered by a hash of its relative path.

    Ordering by hash mixes packages (a sorted walk would fill the budget with the first few) and is
    the same on every machine with the same Python.
    """
    root = Path(root or sysconfig.get_paths()["stdlib"])
    paths = [
        path
        for path in root.rglob("*.py")
        if not SKIPPED_DIRS.intersection(path.relative_to(root).parts)
        and path.stat().st_size <= MAX_FILE_BYTES
    ]
    if not paths:
        raise RuntimeError(f"no Python source files found under {root}")
    paths.sort(
        key=lambda path: hashlib.sha256(path.relative_to(root).as_posix().encode()).hexdigest()
    )
    for path in paths:
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (as GPT-2 and StarCoder use) with one special token, EOS_TOKEN."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def token_stream(tokenizer, texts: list[str]) -> np.ndarray:
    """All files encoded and joined, each followed by the end-of-text token."""
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts):
        ids.extend(encoding.ids)
        ids.append(eos_id)
    return np.asarray(ids, dtype=np.int64)


def make_model(vocab_size: int, eos_id: int, args: argparse.Namespace):
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    config = GPTBigCodeConfig(
        vocab_size=vocab_size,
        n_positions=args.context,
        n_embd=args.width,
        n_layer=args.layers,
        n_head=args.heads,
        multi_query=True,
        # A few minutes of training is far from overfitting; dropout would only slow it down.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    return GPTBigCodeForCausalLM(config)


def random_batches(tokens: np.ndarray, batch_size: int, block: int, rng: np.random.Generator):
    import torch

    while True:
        starts = rng.integers(0, len(tokens) - block - 1, size=batch_size)
        window = np.stack([tokens[s : s + block + 1] for s in starts])
        yield torch.from_numpy(window[:, :-1]), torch.from_numpy(window[:, 1:])


def learning_rate(step: int, elapsed: float, args: argparse.Namespace) -> float:
    """Linear warm-up by steps, then cosine decay to a tenth by wall time (the loop is time-boxed)."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = min(elapsed / args.train_seconds, 1.0)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, tokens: np.ndarray, args: argparse.Namespace) -> tuple[int, float]:
    """Train until args.train_seconds have passed; returns (steps, mean loss of the last 20 steps)."""
    import torch

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95)
    )
    batches = random_batches(tokens, args.batch_size, args.block, np.random.default_rng(args.seed))
    model.train()
    recent: list[float] = []
    started = last_report = time.perf_counter()
    step = 0
    while (elapsed := time.perf_counter() - started) < args.train_seconds:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, elapsed, args)
        inputs, targets = next(batches)
        logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        recent = (recent + [loss.item()])[-20:]
        if time.perf_counter() - last_report >= args.report_seconds:
            last_report = time.perf_counter()
            seen = step * args.batch_size * args.block
            print(
                f"step {step:5d}  loss {np.mean(recent):.3f}  elapsed {last_report - started:4.0f} s  "
                f"({seen / (last_report - started):.0f} tokens/s)",
                flush=True,
            )
    model.eval()
    return step, float(np.mean(recent))


def held_out_loss(model, tokens: np.ndarray, block: int, windows: int = 64) -> float:
    """Mean next-token loss on consecutive windows of text the model never trained on."""
    import torch

    count = min(windows, (len(tokens) - 1) // block)
    rows = np.stack([tokens[i * block : i * block + block + 1] for i in range(count)])
    inputs, targets = torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:])
    with torch.no_grad():
        logits = model(inputs).logits
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        ).item()


def greedy_sample(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    import torch

    ids = torch.tensor([tokenizer.encode(prompt).ids])
    with torch.no_grad():
        output = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens)
    return tokenizer.decode(output[0].tolist())


def save_checkpoint(model, tokenizer, directory: Path) -> None:
    """config.json + model.safetensors + generation_config.json + tokenizer files, as the hub has them."""
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    model.save_pretrained(directory, safe_serialization=True)
    eos_id = model.config.eos_token_id
    GenerationConfig(bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id).save_pretrained(
        directory
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=model.config.n_positions,
    )
    wrapped.save_pretrained(directory)


def move_into_place(staging: Path, output: Path) -> None:
    """Rename the finished folder to output, replacing an older one only after the new one is whole."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
    os.replace(staging, output)
    if old is not None:
        shutil.rmtree(old)


def build(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    texts, heldout = consecutive_parts(
        _ordered_sources(None), [int(args.corpus_mb * 1_000_000), int(args.heldout_kb * 1_000)]
    )
    if not texts or not heldout:
        raise RuntimeError("the standard library has too few source files for the corpus and held-out text")
    print(
        f"corpus: {len(texts)} standard-library files, {sum(map(len, texts)) / 1e6:.1f} MB;"
        f" held out: {len(heldout)} more files, {sum(map(len, heldout)) / 1e3:.0f} kB",
        flush=True,
    )
    tokenizer = train_tokenizer(texts, args.vocab_size)
    train_tokens = token_stream(tokenizer, texts)
    test_tokens = token_stream(tokenizer, heldout)
    print(
        f"tokenizer: {tokenizer.get_vocab_size()} tokens; corpus is {len(train_tokens)} tokens",
        flush=True,
    )

    model = make_model(tokenizer.get_vocab_size(), tokenizer.token_to_id(EOS_TOKEN), args)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: GPTBigCode {args.layers} layers x {args.width}, {params / 1e6:.1f} M parameters; "
        f"training for {args.train_seconds:.0f} s on {args.threads} threads",
        flush=True,
    )
    steps, train_loss = train(model, train_tokens, args)
    test_loss = held_out_loss(model, test_tokens, args.block)
    print(
        f"trained {steps} steps: train loss {train_loss:.3f}, held-out loss {test_loss:.3f} "
        f"(perplexity {math.exp(test_loss):.1f})",
        flush=True,
    )
    print(f"greedy sample:\n{greedy_sample(model, tokenizer, SAMPLE_PROMPT, 48)}\n", flush=True)

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        save_checkpoint(model, tokenizer, staging)
        # Plain text, files separated by a blank line: no special tokens, so any tokenizer of this
        # vocabulary (llama.cpp's included) reads the same ids from it.
        (staging / HELDOUT_NAME).write_text("\n\n".join(heldout), encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; the checkpoint is not
        move_into_place(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {output} in {time.perf_counter() - started:.0f} s", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m codegen.demo_checkpoint", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--output", type=Path, required=True, help="folder to write the HF checkpoint into"
    )
    parser.add_argument(
        "--train-seconds", type=float, default=150.0, help="wall-clock budget of the training loop"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus-mb", type=float, default=4.0, help="cap on the training text")
    parser.add_argument(
        "--heldout-kb", type=float, default=150.0, help="size of the held-out text written beside the model"
    )
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=512, help="n_positions of the model")
    parser.add_argument("--block", type=int, default=128, help="training sequence length")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument(
        "--report-seconds", type=float, default=10.0, help="how often to print progress"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    # Before torch loads OpenMP: idle workers that spin instead of sleeping halve the speed on a
    # machine whose cores are busy with other work (measured 4.5 s vs 2.3 s a step), and cost
    # little on an idle one.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = _parser().parse_args(argv)
    missing = [name for name in TRAINING_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"error: training the demo model needs {', '.join(missing)}: install the test extras"
            " (`pip install -e '.[test]'`, which `make setup` does) or pass MODEL_DIR=a Hugging Face folder",
            file=sys.stderr,
        )
        return 1
    build(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
