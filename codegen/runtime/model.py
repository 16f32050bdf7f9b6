"""Run a compiled artifact: Relax VM + TVM's paged KV cache, one or many sequences.

An artifact folder holds model.so and metadata.json (from `codegen compile`) and the tensor cache
(from `codegen convert`). Every input is checked here before it reaches compiled code, because the
compiled gathers do not bounds-check: a bad token id would crash the process, not raise.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

from codegen.artifact import tensor_cache
from codegen.artifact.contract import LIBRARY_NAME, METADATA_NAME, ArtifactError
from codegen.errors import CodegenError
from codegen.files import read_json_object
from codegen.runtime.sampling import check_sampling, sample

PAGE_SIZE = 16
DEVICES = ("cpu", "cuda")
# The cache addresses its token slots with int32 and allocates one page beyond max_total_seq_len.
MAX_TOTAL_SEQ_LEN = 2**31 - PAGE_SIZE
MAX_SEQUENCE_ID = 2**63 - 1  # TVM's sequence ids are int64


class RuntimeInputError(CodegenError):
    """An input (token id, length, sequence id, batch size) the model cannot take; says which and why."""


def _shape(*values: int) -> tvm.runtime.ShapeTuple:
    return tvm.runtime.ShapeTuple([int(v) for v in values])


class Model:
    """A loaded artifact with a paged KV cache.

    Single-sequence use: ``prefill(token_ids)`` then ``decode(token_id)`` repeatedly; both return the
    float32 logits of the last position as numpy. Several sequences: ``add_sequence``,
    ``batch_prefill``/``batch_decode``, ``remove_sequence``.

    Every call completes or leaves the model as it was: limits are checked here before TVM sees the
    call, and if TVM still fails, the tokens it took are popped again. Where TVM's own bookkeeping of a
    sequence cannot be trusted after its failure, that sequence is lost: every later use of it raises
    until it is removed.
    """

    def __init__(
        self,
        artifact: str | Path,
        device: str | None = None,
        max_batch_size: int = 4,
        max_total_seq_len: int | None = None,
        verify_sha256: bool = True,
    ):
        artifact = Path(artifact)
        _check_size("max_batch_size", max_batch_size)
        if max_total_seq_len is not None:
            _check_size("max_total_seq_len", max_total_seq_len)
        self.metadata = _read_metadata(artifact)
        try:
            build = self.metadata["codegen"]
            target = build["target"]
        except (KeyError, TypeError):
            raise ArtifactError(f"{artifact / METADATA_NAME} lacks the codegen section; recompile") from None
        self.device_name = device or ("cuda" if target == "cuda" else "cpu")
        self.device = _device(self.device_name, target)

        try:
            library = tvm.runtime.load_module(str(artifact / LIBRARY_NAME))
            self.vm = VirtualMachine(library, self.device)
            embedded = json.loads(self.vm["_metadata"]())
            # Looked up once: a lookup per call is measurable in a decode step of a few milliseconds.
            self._functions = {name: self.vm[name] for name in ("embed", "batch_prefill", "decode", "batch_decode")}
        except (RuntimeError, ValueError, OSError, KeyError, AttributeError) as exc:  # what TVM raises for a non-model file
            raise ArtifactError(f"{artifact / LIBRARY_NAME} cannot be loaded as a model library ({type(exc).__name__}: {exc})") from None
        # The library's own metadata is the truth: vocab size and window guard the compiled gathers,
        # so metadata.json must agree with it on every field, not only on the parameters.
        _check_metadata(artifact, self.metadata, embedded)
        build = self.metadata["codegen"]
        self.config = build["config"]
        self.vocab_size = int(build["vocab_size"])
        self.context_window_size = int(self.metadata["context_window_size"])
        self.prefill_chunk_size = int(self.metadata["prefill_chunk_size"])
        self.max_batch_size = self._checked_batch_size(int(max_batch_size))
        # By default every sequence fits at its full window, in whole pages.
        default_len = _pages(self.context_window_size) * PAGE_SIZE * self.max_batch_size
        self.max_total_seq_len = self._checked_total_len(int(max_total_seq_len or default_len))

        _check_same_scheme(artifact, self.metadata)
        if not verify_sha256:
            warnings.warn(f"the sha256 hashes of the weights in {artifact} are not checked", stacklevel=2)
        self.params = tensor_cache.load_params(
            artifact, self.metadata["params"], self.device, require_sha256=verify_sha256
        )
        self.kv_cache = self.vm["create_paged_kv_cache"](
            _shape(self.max_batch_size),
            _shape(self.max_total_seq_len),
            _shape(self.prefill_chunk_size),
            _shape(PAGE_SIZE),
            _shape(0),
        )
        self._kv = {
            name: tvm.get_global_func(f"vm.builtin.kv_state_{name}")
            for name in ("add_sequence", "remove_sequence", "begin_forward", "end_forward", "popn")
        }
        self._free_pages = tvm.get_global_func("vm.builtin.attention_kv_cache_get_num_available_pages")
        self._lengths: dict[int, int] = {}  # every sequence in the cache, lost ones included
        self._lost: set[int] = set()
        self._single = None

    def _checked_batch_size(self, size: int) -> int:
        # TVM sizes its per-token buffers by the prefill chunk, a decode batch included.
        library_max = int(self.metadata["max_batch_size"])
        for what, limit in {"the prefill chunk size": self.prefill_chunk_size, "the max_batch_size": library_max}.items():
            if size > limit:
                raise RuntimeInputError(f"max_batch_size {size} exceeds {what} {limit} of this library")
        return size

    def _checked_total_len(self, total: int) -> int:
        if total > MAX_TOTAL_SEQ_LEN:
            raise RuntimeInputError(
                f"max_total_seq_len {total} exceeds {MAX_TOTAL_SEQ_LEN}, the most the KV cache can address"
            )
        kv = self.metadata["kv_cache"]
        element_bytes = tvm.runtime.DataType(self.metadata["codegen"]["dtype"]).bits // 8
        per_token = 2 * kv["num_hidden_layers"] * kv["num_key_value_heads"] * kv["head_dim"] * element_bytes  # K and V
        needed = (_pages(total) + 1) * PAGE_SIZE * per_token  # TVM allocates one page more
        if self.device_name == "cuda":
            memory = self.device.total_global_memory
        else:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if needed > memory:
            raise RuntimeInputError(
                f"max_total_seq_len {total} needs a KV cache of {needed / 2**30:.1f} GiB,"
                f" more than the {memory / 2**30:.1f} GiB of memory of this {self.device_name} device"
            )
        return total

    # ------------------------------------------------------------------ sequences

    @property
    def sequences(self) -> dict[int, int]:
        """Live sequence id -> tokens in its cache (lost sequences are left out)."""
        return {seq_id: length for seq_id, length in self._lengths.items() if seq_id not in self._lost}

    def add_sequence(self, seq_id: int | None = None) -> int:
        if len(self._lengths) >= self.max_batch_size:
            raise RuntimeInputError(f"the cache holds at most {self.max_batch_size} sequences; remove one first")
        if seq_id is None:
            seq_id = self._next_id()
        if not _is_id(seq_id):
            raise RuntimeInputError(f"sequence id {seq_id!r} is invalid: use an integer in [0, {MAX_SEQUENCE_ID}]")
        if seq_id in self._lengths:
            raise RuntimeInputError(f"sequence id {seq_id} is already in use")
        self._kv["add_sequence"](self.kv_cache, int(seq_id))
        self._lengths[int(seq_id)] = 0
        return int(seq_id)

    def remove_sequence(self, seq_id: int) -> None:
        """Remove a sequence, live or lost, and free its pages."""
        self._check_exists(seq_id)
        self._kv["remove_sequence"](self.kv_cache, int(seq_id))
        del self._lengths[seq_id]
        self._lost.discard(seq_id)
        if self._single == seq_id:
            self._single = None

    def reset(self) -> None:
        for seq_id in list(self._lengths):
            self.remove_sequence(seq_id)

    # ------------------------------------------------------------------ one sequence

    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        """Start a fresh sequence with these tokens, in place of the last one; last token's logits, shape (vocab,)."""
        old = self._single
        seq_id = self._next_id() if old is None else old
        tokens = self._check_tokens(seq_id, token_ids, start=0)
        self._check_room({seq_id: len(tokens)}, replacing=old)
        if old is not None:
            self.remove_sequence(old)
        self._single = self.add_sequence(seq_id)
        return self.batch_prefill({seq_id: tokens})[seq_id]

    def decode(self, token_id: int) -> np.ndarray:
        """Append one token to the sequence started by prefill; its logits, shape (vocab,)."""
        if self._single is None:
            raise RuntimeInputError("decode needs a sequence: call prefill first")
        return self.batch_decode({self._single: token_id})[self._single]

    # ------------------------------------------------------------------ many sequences

    def batch_prefill(self, prompts: dict[int, Sequence[int]]) -> dict[int, np.ndarray]:
        """Extend each live sequence by its tokens; logits of each one's last token."""
        if not prompts:
            raise RuntimeInputError("batch_prefill needs at least one sequence")
        pending = {}
        for seq_id, tokens in prompts.items():
            self._check_live(seq_id)
            pending[int(seq_id)] = self._check_tokens(seq_id, tokens, start=self._lengths[seq_id])
        appends = {seq_id: len(tokens) for seq_id, tokens in pending.items()}
        self._check_room(appends)
        logits: dict[int, np.ndarray] = {}
        done: dict[int, int] = {}  # tokens TVM took in earlier chunks of this call
        while pending:
            chunk = self._next_chunk(pending)
            seq_ids = list(chunk)
            ids = np.concatenate([np.asarray(chunk[s], dtype="int32") for s in seq_ids])
            ends = np.cumsum([len(chunk[s]) for s in seq_ids]) - 1
            embeds = self._embed(ids, (1, len(ids)))
            positions = tvm.runtime.tensor(ends.astype("int32"), self.device)
            rows = self._forward("batch_prefill", {s: len(chunk[s]) for s in seq_ids}, done, embeds, positions)[0]
            for row, seq_id in enumerate(seq_ids):
                done[seq_id] = done.get(seq_id, 0) + len(chunk[seq_id])
                logits[seq_id] = rows[row]
        for seq_id, count in appends.items():
            self._lengths[seq_id] += count
        return logits

    def batch_decode(self, tokens: dict[int, int]) -> dict[int, np.ndarray]:
        """Append one token to each listed sequence; logits for each."""
        if not tokens:
            raise RuntimeInputError("batch_decode needs at least one sequence")
        ids = []
        for seq_id, token in tokens.items():
            self._check_live(seq_id)
            ids += self._check_tokens(seq_id, [token], start=self._lengths[seq_id])
        appends = {int(seq_id): 1 for seq_id in tokens}
        self._check_room(appends)
        seq_ids = list(appends)
        embeds = self._embed(np.asarray(ids, dtype="int32"), (len(seq_ids), 1))
        # One sequence runs `decode`, whose kernels are specialised for a single row (static shapes).
        function = "decode" if len(seq_ids) == 1 else "batch_decode"
        rows = self._forward(function, appends, {}, embeds)[:, 0, :]
        for seq_id in seq_ids:
            self._lengths[seq_id] += 1
        return {seq_id: rows[i] for i, seq_id in enumerate(seq_ids)}

    # ------------------------------------------------------------------ text

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Callable[[list[int]], bool] | None = None,
    ) -> Iterator[int]:
        """Yield new token ids; temperature 0 is greedy. ``stop(generated)`` ends the loop when true."""
        check_sampling(temperature, top_p)
        rng = np.random.default_rng(seed)
        logits = self.prefill(prompt_ids)
        max_new_tokens = min(max_new_tokens, self.context_window_size - self._lengths[self._single])
        generated: list[int] = []
        for step in range(max_new_tokens):
            token = sample(logits, temperature, top_p, rng)
            generated.append(token)
            yield token
            if (stop is not None and stop(generated)) or step == max_new_tokens - 1:
                return
            logits = self.decode(token)

    # ------------------------------------------------------------------ helpers

    def _forward(self, function: str, appends: dict[int, int], done: dict[int, int], *inputs) -> np.ndarray:
        """One pass of `function` appending appends[seq] tokens to each sequence; its logits as numpy.

        If TVM fails, the cache is put back to before this call: ``done`` (tokens TVM took in earlier
        passes of the call) and this pass's tokens are popped. A failed begin_forward may have
        half-updated TVM's bookkeeping of this pass's sequences, so those are marked lost instead.
        """
        seq_ids = list(appends)
        try:
            self._kv["begin_forward"](self.kv_cache, _shape(*seq_ids), _shape(*appends.values()))
        except BaseException:  # whatever TVM raised: undo, then let it through
            self._lost.update(seq_ids)
            self._pop({s: n for s, n in done.items() if s not in appends})
            raise
        try:
            out, self.kv_cache = self._functions[function](*inputs, self.kv_cache, self.params)
            self._kv["end_forward"](self.kv_cache)
            return out.numpy()
        except BaseException:
            self._pop({s: done.get(s, 0) + appends.get(s, 0) for s in done.keys() | appends.keys()})
            raise

    def _pop(self, counts: dict[int, int]) -> None:
        for seq_id, count in counts.items():
            self._kv["popn"](self.kv_cache, seq_id, count)

    def _embed(self, ids: np.ndarray, leading: tuple[int, int]) -> tvm.runtime.Tensor:
        """The embeddings of the token ids, viewed as ``(*leading, hidden)``: (1, tokens) for a
        prefill, (sequences, 1) for a decode."""
        embeds = self._functions["embed"](tvm.runtime.tensor(ids, self.device), self.params)
        return embeds._create_view((*leading, embeds.shape[-1]))

    def _next_id(self) -> int:
        return next(i for i in range(len(self._lengths) + 1) if i not in self._lengths)

    def _check_exists(self, seq_id: int) -> None:
        if not _is_id(seq_id) or seq_id not in self._lengths:
            raise RuntimeInputError(f"sequence {seq_id!r} does not exist; live sequences: {sorted(self.sequences)}")

    def _check_live(self, seq_id: int) -> None:
        self._check_exists(seq_id)
        if seq_id in self._lost:
            raise RuntimeInputError(
                f"sequence {seq_id} was lost by an earlier failure inside TVM; remove it with remove_sequence({seq_id})"
            )

    def _check_tokens(self, seq_id: int, tokens: Sequence[int], start: int) -> list[int]:
        """The tokens as a list of ints, if each is in the vocabulary and they fit the window after ``start``."""
        if isinstance(tokens, np.ndarray) and tokens.ndim == 1:
            tokens = tokens.tolist()
        if not isinstance(tokens, (list, tuple)):
            raise RuntimeInputError(
                f"sequence {seq_id}: tokens must be a list, tuple or 1-D numpy array of integers, not {type(tokens).__name__}"
            )
        if not tokens:
            raise RuntimeInputError(f"sequence {seq_id}: no tokens given")
        for position, token in enumerate(tokens):
            if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= token < self.vocab_size:
                raise RuntimeInputError(
                    f"sequence {seq_id}: token {token!r} at position {position} is outside the vocabulary [0, {self.vocab_size})"
                )
        total = start + len(tokens)
        if total > self.context_window_size:
            raise RuntimeInputError(
                f"sequence {seq_id}: {total} tokens would exceed the context window of {self.context_window_size}"
            )
        return [int(t) for t in tokens]

    def _check_room(self, appends: dict[int, int], replacing: int | None = None) -> None:
        """Refuse appends (sequence id -> new tokens) the KV cache cannot hold, in tokens or in pages.
        ``replacing`` is a sequence removed before the appends (prefill's previous one).
        """
        lengths = {s: n for s, n in self._lengths.items() if s != replacing}
        total = sum(lengths.values()) + sum(appends.values())
        if total > self.max_total_seq_len:
            raise RuntimeInputError(
                f"the KV cache would hold {total} tokens, more than max_total_seq_len {self.max_total_seq_len}"
            )
        # Each sequence holds whole pages; a lost one holds at least those of its length, so this is safe.
        needed = sum(_pages(lengths.get(s, 0) + n) - _pages(lengths.get(s, 0)) for s, n in appends.items())
        if needed == 0:  # most decode steps: no new page, nothing to ask TVM
            return
        free = self._free_pages(self.kv_cache) + (_pages(self._lengths[replacing]) if replacing is not None else 0)
        if needed > free:
            raise RuntimeInputError(
                f"the KV cache has {free} free pages of {PAGE_SIZE} tokens, this call needs {needed}"
                f" (each sequence takes whole pages; max_total_seq_len {self.max_total_seq_len}); remove a sequence first"
            )

    def _next_chunk(self, pending: dict[int, list[int]]) -> dict[int, list[int]]:
        """Take up to prefill_chunk_size tokens across sequences, in order, splitting the last one."""
        chunk, budget = {}, self.prefill_chunk_size
        for seq_id in list(pending):
            if budget == 0:
                break
            tokens = pending[seq_id]
            chunk[seq_id], pending[seq_id] = tokens[:budget], tokens[budget:]
            budget -= len(chunk[seq_id])
            if not pending[seq_id]:
                del pending[seq_id]
        return chunk


def _pages(tokens: int) -> int:
    return -(-tokens // PAGE_SIZE)


def _is_id(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and 0 <= value <= MAX_SEQUENCE_ID


def _check_size(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise RuntimeInputError(f"{name} must be a positive integer, got {value!r}")


def _read_metadata(artifact: Path) -> dict:
    for name in (LIBRARY_NAME, METADATA_NAME):
        if not (artifact / name).is_file():
            raise ArtifactError(f"{artifact} has no {name}: run `codegen compile --output {artifact}` first")
    return read_json_object(artifact / METADATA_NAME, ArtifactError)


def _check_same_scheme(artifact: Path, metadata: dict) -> None:
    """The weights must be converted with the scheme the library was compiled for."""
    index = tensor_cache.read_index(artifact)
    converted = index.get("metadata", {}).get("quantization") if isinstance(index.get("metadata"), dict) else None
    compiled = metadata.get("quantization")
    if converted is not None and converted != compiled:
        raise ArtifactError(
            f"the weights in {artifact} were converted as {converted}, but {LIBRARY_NAME} was compiled for"
            f" {compiled}: convert again with --quantization {compiled} (or compile with {converted})"
        )


def _check_metadata(artifact: Path, metadata: dict, embedded: dict) -> None:
    """metadata.json must say what the library says (compile_seconds is only in the file)."""
    expected = json.loads(json.dumps(metadata))
    if isinstance(expected.get("codegen"), dict):
        expected["codegen"].pop("compile_seconds", None)
    if expected.get("params") != embedded.get("params"):
        raise ArtifactError(f"{artifact / METADATA_NAME} does not match the parameters compiled into {LIBRARY_NAME}; recompile")
    differ = sorted(_differences(expected, embedded))
    if differ:
        raise ArtifactError(
            f"{artifact / METADATA_NAME} does not match the metadata compiled into {LIBRARY_NAME}"
            f" ({', '.join(differ)}); recompile"
        )


def _differences(a, b, prefix: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _differences(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")


def _device(name: str, target: str) -> tvm.runtime.Device:
    if name not in DEVICES:
        raise ArtifactError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}")
    if (name == "cuda") != (target == "cuda"):
        raise ArtifactError(f"this artifact was compiled for {target}; it cannot run on device {name}")
    device = tvm.cuda(0) if name == "cuda" else tvm.cpu(0)
    if not device.exist:
        raise ArtifactError(f"no {name} device is present on this machine")
    return device
