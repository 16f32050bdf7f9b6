"""Read Hugging Face checkpoints tensor by tensor: safetensors (single or sharded) and pytorch_model.bin.

safetensors files are memory-mapped and their headers checked before any tensor is read: keys are
unique, shapes and offsets are integers, every tensor lies inside the file and overlaps no other. A
truncated, lying or crafted file gives an error naming it, never a crash or garbage.
A .bin file is read only with torch.load(weights_only=True): a pickle that wants to run code is refused.
"""

from __future__ import annotations

import json
import mmap
import os
import reprlib
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from codegen.artifact.tensor_cache import byte_count, first_overlap
from codegen.errors import CodegenError
from codegen.files import read_json_object

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
_MAX_HEADER_BYTES = 100 << 20

_SAFETENSORS_DTYPES = {
    "F64": np.dtype("float64"),
    "F32": np.dtype("float32"),
    "F16": np.dtype("float16"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("int64"),
    "I32": np.dtype("int32"),
    "I16": np.dtype("int16"),
    "I8": np.dtype("int8"),
    "U8": np.dtype("uint8"),
    "BOOL": np.dtype("bool"),
}


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 100


class CheckpointError(CodegenError):
    """A checkpoint is missing, damaged or does not fit the model; the message names file and tensor."""


def shown(value) -> str:
    """repr(value), cut short: the names and entries of a crafted header can be megabytes long."""
    return _SHORT.repr(value)


class Checkpoint:
    """Tensor names and lazy access to each tensor as numpy (float tensors keep their dtype)."""

    location: str

    def names(self) -> list[str]:
        raise NotImplementedError

    def get(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SafetensorsFile(Checkpoint):
    def __init__(self, path: Path):
        self.path = Path(path)
        self.location = str(self.path)
        self._map = None
        try:
            self._file = open(self.path, "rb")
        except OSError as exc:
            raise CheckpointError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            self._read_header()
        except BaseException:
            self.close()  # a refused file is closed, not leaked
            raise

    def _read_header(self) -> None:
        size = os.fstat(self._file.fileno()).st_size
        if size < 8:
            raise CheckpointError(f"{self.path}: {size} bytes is too short for a safetensors file (truncated?)")
        (header_size,) = struct.unpack("<Q", self._file.read(8))
        if header_size > min(size - 8, _MAX_HEADER_BYTES):
            raise CheckpointError(f"{self.path}: header claims {header_size} bytes but the file has {size} (truncated or corrupt)")
        try:
            header = json.loads(self._file.read(header_size), object_pairs_hook=self._unique_keys)
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
            raise CheckpointError(f"{self.path}: header is not valid JSON ({exc})") from None
        except RecursionError:
            raise CheckpointError(f"{self.path}: header is nested too deeply to be a safetensors header") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: header is not a JSON object")
        header.pop("__metadata__", None)
        self._data_start = 8 + header_size
        data_size = size - self._data_start
        self._entries = {name: self._check_entry(name, entry, data_size) for name, entry in header.items()}
        overlap = first_overlap((begin, end, name) for name, (_, _, begin, end) in self._entries.items())
        if overlap:
            raise CheckpointError(
                f"{self.path}: tensors {shown(overlap[0])} and {shown(overlap[1])} overlap in the data section;"
                " the header is corrupt or crafted (re-download or re-save the checkpoint)"
            )
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    def _unique_keys(self, pairs: list[tuple[str, object]]) -> dict[str, object]:
        """json's object hook: a key given twice is refused (json.loads would keep the last silently)."""
        entries = dict(pairs)
        if len(entries) < len(pairs):
            seen = set()
            twice = next(key for key, _ in pairs if key in seen or seen.add(key))
            raise CheckpointError(
                f"{self.path}: header has key {shown(twice)} twice; the header is corrupt or crafted"
                " (re-download or re-save the checkpoint)"
            )
        return entries

    def _check_entry(self, name: str, entry, data_size: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
        def refuse(what: str) -> CheckpointError:
            return CheckpointError(f"{self.path}: tensor {shown(name)}{what}")

        problem = _entry_problem(entry)
        if problem:
            raise refuse(f" has a malformed header entry {shown(entry)}: {problem}")
        dtype, shape, (begin, end) = _SAFETENSORS_DTYPES[entry["dtype"]], tuple(entry["shape"]), entry["data_offsets"]
        if any(d < 0 for d in shape):
            raise refuse(f" has a negative dimension in shape {shown(list(shape))}")
        if not 0 <= begin <= end <= data_size:
            raise refuse(f": offsets [{begin}, {end}) lie outside the {data_size}-byte data section (truncated?)")
        expected = byte_count(shape, dtype.itemsize, data_size)
        if end - begin != expected:
            needs = f"{expected} bytes" if expected is not None else f"more than the {data_size}-byte data section"
            raise refuse(f": {end - begin} bytes do not hold {entry['dtype']}{shown(list(shape))} ({needs})")
        return dtype, shape, begin, end

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> np.ndarray:
        dtype, shape, begin, end = self._entries[name]
        count = (end - begin) // dtype.itemsize
        return np.frombuffer(self._map, dtype=dtype, count=count, offset=self._data_start + begin).reshape(shape)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # arrays still view the map (e.g. held by a traceback); it closes when they go
        self._file.close()


def _entry_problem(entry) -> str | None:
    """What is wrong with the form of a header entry, or None."""
    if not isinstance(entry, dict):
        return "it is not an object"
    if not isinstance(entry.get("dtype"), str) or entry["dtype"] not in _SAFETENSORS_DTYPES:
        return f"dtype must be one of {', '.join(_SAFETENSORS_DTYPES)}"
    if not _integers(entry.get("shape")):
        return "shape must be a list of integers"
    if not _integers(entry.get("data_offsets")) or len(entry["data_offsets"]) != 2:
        return "data_offsets must be two integers [begin, end]"
    return None


def _integers(value) -> bool:
    """A JSON list of integers: no floats (64.9 or 64.0), strings or booleans."""
    return isinstance(value, list) and all(type(v) is int for v in value)


class ShardedSafetensors(Checkpoint):
    def __init__(self, model_dir: Path):
        index_path = model_dir / SHARD_INDEX
        self.location = str(index_path)
        weight_map = read_json_object(index_path, CheckpointError).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index_path}: not a valid shard index (its weight_map must be an object)")
        root = model_dir.resolve()
        self._shards: dict[str, SafetensorsFile] = {}
        self._owner: dict[str, SafetensorsFile] = {}
        try:
            for name, shard_name in weight_map.items():
                if not isinstance(shard_name, str) or not shard_name or "\0" in shard_name:
                    raise CheckpointError(f"{index_path}: shard {shard_name!r} of tensor {name!r} is not a file name")
                shard_path = (model_dir / shard_name).resolve()
                if not shard_path.is_relative_to(root):
                    raise CheckpointError(f"{index_path}: shard {shard_name!r} of tensor {name!r} lies outside {model_dir}")
                if not shard_path.is_file():
                    raise CheckpointError(f"{index_path}: shard {shard_name!r} of tensor {name!r} does not exist")
                if shard_path not in self._shards:
                    self._shards[shard_path] = SafetensorsFile(shard_path)
                shard = self._shards[shard_path]
                if name not in shard.names():
                    raise CheckpointError(f"{index_path}: tensor {name!r} is not in shard {shard_name!r}")
                self._owner[name] = shard
        except CheckpointError:
            self.close()
            raise

    def names(self) -> list[str]:
        return list(self._owner)

    def get(self, name: str) -> np.ndarray:
        return self._owner[name].get(name)

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()


class TorchFile(Checkpoint):
    def __init__(self, path: Path):
        import torch

        self.location = str(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many types for a bad pickle; all mean the same here
            raise CheckpointError(f"{path}: cannot be read as a weights-only PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: expected a dict of tensors (a state_dict)")
        self._state = state

    def names(self) -> list[str]:
        return list(self._state)

    def get(self, name: str) -> np.ndarray:
        import torch

        tensor = self._state[name]
        if tensor.dtype == torch.bfloat16:
            return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()


def open_checkpoint(model_dir: Path) -> Checkpoint:
    model_dir = Path(model_dir)
    for name, kind in ((SHARD_INDEX, ShardedSafetensors), (SINGLE_FILE, SafetensorsFile), (TORCH_FILE, TorchFile)):
        if (model_dir / name).is_file():
            if not (model_dir / name).resolve().is_relative_to(model_dir.resolve()):
                raise CheckpointError(f"{model_dir / name} lies outside {model_dir} (a symlink out of the model folder)")
            return kind(model_dir) if kind is ShardedSafetensors else kind(model_dir / name)
    raise CheckpointError(f"{model_dir} has none of {SINGLE_FILE}, {SHARD_INDEX}, {TORCH_FILE}")
