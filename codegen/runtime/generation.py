"""`codegen run`: encode a prompt, stream the model's continuation to stdout, report the speed.

The tokenizer (tokenizer.json) and the stop token come from a Hugging Face model folder; the model
itself is a compiled, converted artifact run by codegen.runtime.Model.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

from codegen.errors import CodegenError
from codegen.files import read_json_object
from codegen.runtime.sampling import check_sampling

TOKENIZER_FILE = "tokenizer.json"
# Where a model folder may name its end-of-sequence token, most specific first.
STOP_TOKEN_SOURCES = ("generation_config.json", "config.json", "mlc-chat-config.json")


@dataclasses.dataclass
class Timings:
    prefill_tokens: int
    prefill_seconds: float = 0.0
    decode_tokens: int = 0
    decode_seconds: float = 0.0

    def summary(self) -> str:
        return f"prefill: {_rate(self.prefill_tokens, self.prefill_seconds)}; decode: {_rate(self.decode_tokens, self.decode_seconds)}"


def _rate(tokens: int, seconds: float) -> str:
    speed = f" ({tokens / seconds:.1f} tok/s)" if tokens and seconds > 0 else ""
    return f"{tokens} tokens in {seconds:.2f} s{speed}"


class RunError(CodegenError):
    """An option, the prompt or a tokenizer file of `codegen run` is unusable; says which and why."""


def load_tokenizer(folder: Path):
    from tokenizers import Tokenizer

    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise RunError(
            f"{path} does not exist: pass --tokenizer a Hugging Face model folder that contains {TOKENIZER_FILE}"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises bare Exception for every parse failure
        raise RunError(f"{path} is not a usable tokenizer ({_first_line(exc)})") from None


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of the prompt; a prompt that is not text (bytes invalid in UTF-8 arrive from the
    command line as lone surrogates) is refused with the position of the first bad byte."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RunError(f"the prompt is not valid UTF-8 text (bad byte at character {exc.start})") from None
    ids = tokenizer.encode(prompt).ids
    if not ids:
        raise RunError("the prompt encodes to no tokens; give a non-empty --prompt")
    return ids


def stop_token_ids(*folders: Path) -> frozenset[int]:
    """The model's end-of-sequence ids from the first file in these folders that names them."""
    for folder in folders:
        for name in STOP_TOKEN_SOURCES:
            path = Path(folder) / name
            if not path.is_file():
                continue
            eos = read_json_object(path, RunError).get("eos_token_id")
            if eos is None:
                continue
            ids = eos if isinstance(eos, list) else [eos]
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise RunError(f"{path}: eos_token_id must be an integer or a list of them, got {eos!r}")
            return frozenset(ids)
    return frozenset()


class IncrementalDecoder:
    """The text of a growing token sequence, released piece by piece once it is final.

    Decoding each token alone would split characters whose UTF-8 bytes span tokens and lose the
    spaces a decoder adds or strips by context. So each step decodes a short window that ends at the
    new token, starts at most a few tokens back, and releases only the text beyond what the window's
    older part produced; text that ends in an incomplete character waits for the next token.
    """

    CONTEXT_TOKENS = 5

    def __init__(self, tokenizer, context_ids: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(context_ids)
        self.read = len(self.ids)  # text of ids before here has been released (or was context)
        self.start = max(self.read - self.CONTEXT_TOKENS, 0)

    def step(self, token: int) -> str:
        self.ids.append(token)
        return self._release(final=False)

    def flush(self) -> str:
        """What is still held back (an incomplete character at the very end), as decode shows it."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        released = self.tokenizer.decode(self.ids[self.start : self.read], skip_special_tokens=True)
        text = self.tokenizer.decode(self.ids[self.start :], skip_special_tokens=True)
        if len(text) <= len(released) or (text.endswith("\ufffd") and not final):
            return ""
        self.start, self.read = self.read, len(self.ids)
        return text[len(released) :]


def stream_completion(
    model,
    tokenizer,
    prompt_ids: list[int],
    stop_ids: Iterable[int],
    write: Callable[[str], None],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> Timings:
    """Generate after prompt_ids, writing text as soon as it is whole; stops at a stop id (not written)."""
    stop_ids = frozenset(stop_ids)
    decoder = IncrementalDecoder(tokenizer, prompt_ids)
    timings = Timings(prefill_tokens=len(prompt_ids))
    tokens = model.generate(
        prompt_ids,
        max_new_tokens,
        temperature,
        top_p,
        seed,
        stop=lambda generated: generated[-1] in stop_ids,
    )
    clock = time.perf_counter()
    for index, token in enumerate(tokens):
        elapsed = time.perf_counter() - clock
        if index == 0:
            timings.prefill_seconds = elapsed
        else:
            timings.decode_tokens += 1
            timings.decode_seconds += elapsed
        if token in stop_ids:
            break
        text = decoder.step(token)
        if text:
            write(text)
        clock = time.perf_counter()
    text = decoder.flush()
    if text:
        write(text)
    return timings


def check_options(args) -> None:
    """Every option of `codegen run`, before anything is loaded or printed."""
    if args.max_new_tokens < 1:
        raise RunError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise RunError(f"--seed must be an integer in [0, 2**63), got {args.seed}")
    check_sampling(args.temperature, args.top_p, names=("--temperature", "--top-p"))


def run_prompt(args) -> int:
    """Handler of `codegen run` (arguments parsed in codegen.cli)."""
    from codegen.runtime.model import Model

    check_options(args)
    tokenizer = load_tokenizer(args.tokenizer)
    prompt_ids = encode_prompt(tokenizer, args.prompt)
    stop_ids = stop_token_ids(args.tokenizer, args.artifact)
    model = Model(args.artifact, device=args.device)
    room = model.context_window_size - len(prompt_ids)
    if room < 1:
        raise RunError(
            f"the prompt is {len(prompt_ids)} tokens and the context window {model.context_window_size}:"
            " no room for a new token; shorten the prompt"
        )
    if args.max_new_tokens > room:
        print(f"note: the context window leaves room for {room} new tokens, not {args.max_new_tokens}", file=sys.stderr)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    write(args.prompt)
    timings = stream_completion(
        model,
        tokenizer,
        prompt_ids,
        stop_ids,
        write,
        args.max_new_tokens,
        args.temperature,
        args.top_p,
        args.seed,
    )
    write("\n")
    # Timings go to stderr so stdout carries only the text and can be piped.
    print(timings.summary(), file=sys.stderr)
    return 0
