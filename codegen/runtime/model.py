"""Run a compiled artifact: Relax VM + TVM's paged KV cache, one or many sequences.

An artifact folder holds model.so and metadata.json (from `codegen compile`) and the tensor cache
(from `codegen convert`). Every input is checked here before it reaches compiled code, because the
compiled gathers do not bounds-check: a bad token id would crash the process, not raise.
"""

from __future__ import annotations

import json
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


class RuntimeInputError(CodegenError):
    """An input (token id, length, sequence id, batch size) the model cannot take; says which and why."""


def _shape(*values: int) -> tvm.runtime.ShapeTuple:
    return tvm.runtime.ShapeTuple([int(v) for v in values])


class Model:
    """A loaded artifact with a paged KV cache.

    Single-sequence use: ``prefill(token_ids)`` then ``decode(token_id)`` repeatedly; both return the
    float32 logits of the last position as numpy. Several sequences: ``add_sequence``,
    ``batch_prefill``/``batch_decode``, ``remove_sequence``.
    """

    def __init__(
        self,
        artifact: str | Path,
        device: str | None = None,
        max_batch_size: int = 4,
        max_total_seq_len: int | None = None,
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
        self.max_batch_size = max_batch_size
        self.device_name = device or ("cuda" if target == "cuda" else "cpu")
        self.device = _device(self.device_name, target)

        try:
            library = tvm.runtime.load_module(str(artifact / LIBRARY_NAME))
            self.vm = VirtualMachine(library, self.device)
            embedded = json.loads(self.vm["_metadata"]())
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
        self.params = tensor_cache.load_params(artifact, self.metadata["params"], self.device)

        self.max_total_seq_len = max_total_seq_len or self.context_window_size * max_batch_size
        self.kv_cache = self.vm["create_paged_kv_cache"](
            _shape(max_batch_size),
            _shape(self.max_total_seq_len),
            _shape(self.prefill_chunk_size),
            _shape(PAGE_SIZE),
            _shape(0),
        )
        self._kv = {
            name: tvm.get_global_func(f"vm.builtin.kv_state_{name}")
            for name in ("add_sequence", "remove_sequence", "begin_forward", "end_forward")
        }
        self._lengths: dict[int, int] = {}
        self._single = None

    # ------------------------------------------------------------------ sequences

    @property
    def sequences(self) -> dict[int, int]:
        """Live sequence id -> tokens in its cache."""
        return dict(self._lengths)

    def add_sequence(self, seq_id: int | None = None) -> int:
        if len(self._lengths) >= self.max_batch_size:
            raise RuntimeInputError(f"the cache holds at most {self.max_batch_size} sequences; remove one first")
        if seq_id is None:
            seq_id = next(i for i in range(len(self._lengths) + 1) if i not in self._lengths)
        if not isinstance(seq_id, int) or seq_id < 0 or seq_id in self._lengths:
            raise RuntimeInputError(f"sequence id {seq_id!r} is invalid or already in use")
        self._kv["add_sequence"](self.kv_cache, seq_id)
        self._lengths[seq_id] = 0
        return seq_id

    def remove_sequence(self, seq_id: int) -> None:
        self._check_live(seq_id)
        self._kv["remove_sequence"](self.kv_cache, seq_id)
        del self._lengths[seq_id]
        if self._single == seq_id:
            self._single = None

    def reset(self) -> None:
        for seq_id in list(self._lengths):
            self.remove_sequence(seq_id)

    # ------------------------------------------------------------------ one sequence

    def prefill(self, token_ids: Sequence[int]) -> np.ndarray:
        """Start a fresh sequence with these tokens; logits of the last one, shape (vocab,)."""
        if self._single is not None:
            self.remove_sequence(self._single)
        self._single = self.add_sequence()
        return self.batch_prefill({self._single: token_ids})[self._single]

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
        checked = {seq_id: self._check_tokens(seq_id, tokens) for seq_id, tokens in prompts.items()}
        pending = {seq_id: list(tokens) for seq_id, tokens in checked.items()}
        logits: dict[int, np.ndarray] = {}
        while pending:
            chunk = self._next_chunk(pending)
            seq_ids = list(chunk)
            ids = np.concatenate([np.asarray(chunk[s], dtype="int32") for s in seq_ids])
            ends = np.cumsum([len(chunk[s]) for s in seq_ids]) - 1
            embeds = self._embed(ids)
            self._kv["begin_forward"](self.kv_cache, _shape(*seq_ids), _shape(*(len(chunk[s]) for s in seq_ids)))
            out, self.kv_cache = self.vm["batch_prefill"](
                embeds, tvm.runtime.tensor(ends.astype("int32"), self.device), self.kv_cache, self.params
            )
            self._kv["end_forward"](self.kv_cache)
            rows = out.numpy()[0]
            for row, seq_id in enumerate(seq_ids):
                self._lengths[seq_id] += len(chunk[seq_id])
                logits[seq_id] = rows[row]
        return logits

    def batch_decode(self, tokens: dict[int, int]) -> dict[int, np.ndarray]:
        """Append one token to each listed sequence; logits for each."""
        if not tokens:
            raise RuntimeInputError("batch_decode needs at least one sequence")
        for seq_id, token in tokens.items():
            self._check_tokens(seq_id, [token])
        seq_ids = list(tokens)
        embeds = self._embed(np.asarray([tokens[s] for s in seq_ids], dtype="int32"))
        embeds = embeds._create_view((len(seq_ids), 1, embeds.shape[-1]))
        self._kv["begin_forward"](self.kv_cache, _shape(*seq_ids), _shape(*([1] * len(seq_ids))))
        # One sequence runs `decode`, whose kernels are specialised for a single row (static shapes).
        function = "decode" if len(seq_ids) == 1 else "batch_decode"
        out, self.kv_cache = self.vm[function](embeds, self.kv_cache, self.params)
        self._kv["end_forward"](self.kv_cache)
        rows = out.numpy()[:, 0, :]
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
        max_new_tokens = min(max_new_tokens, self.context_window_size - len(prompt_ids))
        rng = np.random.default_rng(seed)
        logits = self.prefill(prompt_ids)
        generated: list[int] = []
        for step in range(max_new_tokens):
            token = sample(logits, temperature, top_p, rng)
            generated.append(token)
            yield token
            if (stop is not None and stop(generated)) or step == max_new_tokens - 1:
                return
            logits = self.decode(token)

    # ------------------------------------------------------------------ helpers

    def _embed(self, ids: np.ndarray) -> tvm.runtime.Tensor:
        embeds = self.vm["embed"](tvm.runtime.tensor(ids, self.device), self.params)
        return embeds._create_view((1, ids.shape[0], embeds.shape[-1]))

    def _check_live(self, seq_id: int) -> None:
        if seq_id not in self._lengths:
            raise RuntimeInputError(f"sequence {seq_id!r} does not exist; live sequences: {sorted(self._lengths)}")

    def _check_tokens(self, seq_id: int, tokens: Sequence[int]) -> list[int]:
        self._check_live(seq_id)
        ids = list(tokens)
        if not ids:
            raise RuntimeInputError(f"sequence {seq_id}: no tokens given")
        for position, token in enumerate(ids):
            if isinstance(token, bool) or not isinstance(token, (int, np.integer)) or not 0 <= token < self.vocab_size:
                raise RuntimeInputError(
                    f"sequence {seq_id}: token {token!r} at position {position} is outside the vocabulary [0, {self.vocab_size})"
                )
        total = self._lengths[seq_id] + len(ids)
        if total > self.context_window_size:
            raise RuntimeInputError(
                f"sequence {seq_id}: {total} tokens would exceed the context window of {self.context_window_size}"
            )
        return [int(t) for t in ids]

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


def _check_size(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise RuntimeInputError(f"{name} must be a positive integer, got {value!r}")


def _read_metadata(artifact: Path) -> dict:
    for name in (LIBRARY_NAME, METADATA_NAME):
        if not (artifact / name).is_file():
            raise ArtifactError(f"{artifact} has no {name}: run `codegen compile --output {artifact}` first")
    return read_json_object(artifact / METADATA_NAME, ArtifactError)


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
