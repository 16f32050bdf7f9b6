"""Read Hugging Face checkpoints tensor by tensor: safetensors (single or sharded) and pytorch_model.bin.

safetensors files are memory-mapped and their headers checked against the file size before any
tensor is read, so a truncated or lying file gives an error naming it, never a crash or garbage.
A .bin file is read only with torch.load(weights_only=True): a pickle that wants to run code is refused.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

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


class CheckpointError(CodegenError):
    """A checkpoint is missing, damaged or does not fit the model; the message names file and tensor."""


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
            header = json.loads(self._file.read(header_size))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{self.path}: header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: header is not a JSON object")
        header.pop("__metadata__", None)
        self._data_start = 8 + header_size
        data_size = size - self._data_start
        self._entries = {}
        for name, entry in header.items():
            self._entries[name] = self._check_entry(name, entry, data_size)
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None

    def _check_entry(self, name: str, entry, data_size: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
        where = f"{self.path}: tensor {name!r}"
        try:
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where} has a malformed header entry {entry!r}") from None
        if any(d < 0 for d in shape):
            raise CheckpointError(f"{where} has a negative dimension in shape {list(shape)}")
        expected = math.prod(shape) * dtype.itemsize  # Python ints: a lying shape cannot wrap around
        if not 0 <= begin <= end <= data_size:
            raise CheckpointError(f"{where}: offsets [{begin}, {end}) lie outside the {data_size}-byte data section (truncated?)")
        if end - begin != expected:
            raise CheckpointError(f"{where}: {end - begin} bytes do not hold {entry['dtype']}{list(shape)} ({expected} bytes)")
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
