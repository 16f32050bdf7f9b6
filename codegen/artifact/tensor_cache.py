"""The tensor-cache weight format (tensor-cache.json + binary shards) that MLC LLM and WebLLM read.

We write it ourselves so we can stream (one shard in memory), store tensors raw (no lossy
re-encoding) and add a sha256 per shard, which our loader verifies. Readers built for the format
ignore the extra key.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable

import ml_dtypes
import numpy as np
import tvm

from codegen.artifact.contract import ArtifactError
from codegen.files import read_json_object

INDEX_NAME = "tensor-cache.json"
SHARD_PREFIX = "params_shard_"
DEFAULT_SHARD_BYTES = 32 << 20

# numpy has no bfloat16 of its own; ml_dtypes provides it.
_NUMPY_DTYPES = {name: np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else name) for name in ("float32", "float16", "bfloat16")}


class TensorCacheError(ArtifactError):
    """A tensor cache is missing, damaged, or does not hold what the model needs."""


def numpy_dtype(dtype: str) -> np.dtype:
    if dtype not in _NUMPY_DTYPES:
        raise TensorCacheError(f"unsupported dtype {dtype!r}; supported: {', '.join(_NUMPY_DTYPES)}")
    return _NUMPY_DTYPES[dtype]


class ShardWriter:
    """Append tensors in order; shards are flushed to disk when full, so memory stays at one shard."""

    def __init__(self, directory: Path, shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.directory = Path(directory)
        self.shard_bytes = shard_bytes
        self.shards: list[dict[str, Any]] = []
        self._buffer = bytearray()
        self._records: list[dict[str, Any]] = []

    def add(self, name: str, array: np.ndarray, dtype: str) -> None:
        data = np.ascontiguousarray(array).tobytes()
        if self._buffer and len(self._buffer) + len(data) > self.shard_bytes:
            self._flush()
        self._records.append(
            {
                "name": name,
                "shape": [int(d) for d in array.shape],
                "dtype": dtype,
                "format": "raw",
                "nbytes": len(data),
                "byteOffset": len(self._buffer),
            }
        )
        self._buffer += data

    def _flush(self) -> None:
        path = f"{SHARD_PREFIX}{len(self.shards)}.bin"
        (self.directory / path).write_bytes(self._buffer)
        self.shards.append(
            {
                "dataPath": path,
                "format": "raw-shard",
                "nbytes": len(self._buffer),
                "records": self._records,
                "sha256": hashlib.sha256(self._buffer).hexdigest(),
            }
        )
        self._buffer, self._records = bytearray(), []

    def finish(self, metadata: dict[str, Any]) -> None:
        if self._records:
            self._flush()
        index = {"metadata": metadata, "records": self.shards}
        (self.directory / INDEX_NAME).write_text(json.dumps(index, indent=1) + "\n")


def write(tensors: Iterable[tuple[str, np.ndarray, str]], directory: Path, metadata: dict[str, Any]) -> None:
    writer = ShardWriter(directory)
    for name, array, dtype in tensors:
        writer.add(name, array, dtype)
    writer.finish(metadata)


def read_index(directory: Path) -> dict[str, Any]:
    path = Path(directory) / INDEX_NAME
    if not path.is_file():
        raise TensorCacheError(f"{directory} has no {INDEX_NAME}: run `codegen convert --output {directory}` first")
    return read_json_object(path, TensorCacheError)


def load_params(directory: Path, expected: list[dict[str, Any]], device: tvm.runtime.Device) -> list[tvm.runtime.Tensor]:
    """Load and verify every parameter, in the order the compiled model expects them.

    Shard by shard: each is read, checked and copied to the device before the next, so the host
    holds one shard beside the parameters, not a second copy of the whole model.
    """
    directory = Path(directory)
    index = read_index(directory)
    wanted = {param["name"]: param for param in expected}
    tensors: dict[str, tvm.runtime.Tensor] = {}
    try:
        shards = index["records"]
        if not isinstance(shards, list):
            raise TypeError("records is not a list")
        for shard in shards:
            arrays: dict[str, np.ndarray] = {}
            _load_shard(directory, shard, arrays)
            for name, array in arrays.items():
                if name in wanted:
                    tensors[name] = _to_device(name, array, wanted[name], device)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TensorCacheError(
            f"{directory / INDEX_NAME} is malformed ({type(exc).__name__}: {exc}); convert again"
        ) from None
    missing = [name for name in wanted if name not in tensors]
    if missing:
        raise TensorCacheError(f"the tensor cache in {directory} lacks parameter {missing[0]!r}")
    return [tensors[param["name"]] for param in expected]


def _to_device(name: str, array: np.ndarray, param: dict[str, Any], device: tvm.runtime.Device) -> tvm.runtime.Tensor:
    if list(array.shape) != list(param["shape"]) or str(array.dtype) != param["dtype"]:
        raise TensorCacheError(
            f"parameter {name!r} is {array.dtype}{list(array.shape)} in the tensor cache,"
            f" the model needs {param['dtype']}{list(param['shape'])}"
        )
    tensor = tvm.runtime.empty(array.shape, param["dtype"], device=device)
    tensor.copyfrom(array)
    return tensor


def _load_shard(directory: Path, shard: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    data_path = shard["dataPath"]
    if not isinstance(data_path, str) or "\0" in data_path:
        raise TensorCacheError(f"shard path {data_path!r} is not a file name")
    path = (directory / data_path).resolve()
    if not path.is_relative_to(directory.resolve()) or not path.is_file():
        raise TensorCacheError(f"shard {data_path!r} is missing or lies outside {directory}")
    data = path.read_bytes()
    if len(data) != shard["nbytes"]:
        raise TensorCacheError(f"shard {path.name} has {len(data)} bytes, the index says {shard['nbytes']}")
    if "sha256" in shard and hashlib.sha256(data).hexdigest() != shard["sha256"]:
        raise TensorCacheError(f"shard {path.name} fails its sha256 check: the file is damaged; convert again")
    for record in shard["records"]:
        arrays[record["name"]] = _decode(record, data, path.name)


def _decode(record: dict[str, Any], data: bytes, shard_name: str) -> np.ndarray:
    if record.get("format") != "raw":
        raise TensorCacheError(f"{record['name']}: encoding {record.get('format')!r} is not supported (only raw)")
    if record.get("dtype") not in _NUMPY_DTYPES:
        raise TensorCacheError(f"{record['name']}: unsupported dtype {record.get('dtype')!r}; supported: {', '.join(_NUMPY_DTYPES)}")
    dtype = _NUMPY_DTYPES[record["dtype"]]
    offset, nbytes = int(record["byteOffset"]), int(record["nbytes"])
    shape = [int(d) for d in record["shape"]]
    count = math.prod(shape)
    if any(d < 0 for d in shape) or offset < 0 or offset + nbytes > len(data) or nbytes != count * dtype.itemsize:
        raise TensorCacheError(f"{record['name']}: offset/size in the index do not fit shard {shard_name}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
