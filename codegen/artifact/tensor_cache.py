"""The tensor-cache weight format (tensor-cache.json + binary shards) that MLC LLM and WebLLM read.

We write it ourselves so we can stream (one shard in memory), store tensors raw (no lossy
re-encoding) and add a sha256 per shard, which our loader requires and verifies. Readers built for
the format ignore the extra key. The loader trusts nothing in the index: every field has its JSON
type, every record lies inside its shard and overlaps no other, every shard has its stated size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import reprlib
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
_READ_CHUNK = 16 << 20

# numpy has no bfloat16 of its own (ml_dtypes has); uint32 holds quantized codes.
_NUMPY_DTYPES = {
    name: np.dtype(ml_dtypes.bfloat16 if name == "bfloat16" else name) for name in ("float32", "float16", "bfloat16", "uint32")
}


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


# The checkpoint reader checks its headers with these two as well.


def byte_count(shape: tuple[int, ...] | list[int], itemsize: int, limit: int) -> int | None:
    """Bytes of a tensor of shape (no negative dimensions), or None beyond limit. Python ints, so a
    lying shape cannot wrap around, and the product stops at limit: thousands of 4000-digit
    dimensions cost no minutes."""
    if 0 in shape:
        return 0
    total = itemsize
    for dimension in shape:
        total *= dimension
        if total > limit:
            return None
    return total


def first_overlap(extents: Iterable[tuple[int, int, str]]) -> tuple[str, str] | None:
    """Names of two byte ranges [begin, end) that share a byte, or None (an empty range shares none)."""
    ordered = sorted(extent for extent in extents if extent[1] > extent[0])
    for (_, end, first), (begin, _, second) in zip(ordered, ordered[1:]):
        if begin < end:  # sorted by begin: any overlap shows up between neighbours
            return first, second
    return None


def load_params(
    directory: Path, expected: list[dict[str, Any]], device: tvm.runtime.Device, require_sha256: bool = True
) -> list[tvm.runtime.Tensor]:
    """Load and verify every parameter, in the order the compiled model expects them.

    The whole index is checked first (types, offsets, overlaps, each shard's size on disk), so a
    damaged cache is refused before any shard is read. Then shard by shard: each is read in chunks,
    hashed as it arrives, and copied to the device before the next, so the host holds one shard beside
    the parameters. ``require_sha256=False`` accepts shards without a hash and skips hashing.
    """
    directory = Path(directory)
    shards = _checked_index(directory, read_index(directory), require_sha256)
    wanted = {param["name"]: param for param in expected}
    tensors: dict[str, tvm.runtime.Tensor] = {}
    for shard in shards:
        data = _read_shard(shard)
        for record in shard.records:
            if record.name in wanted:
                tensors[record.name] = _to_device(record.name, record.array(data), wanted[record.name], device)
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


@dataclasses.dataclass(frozen=True)
class _Record:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    def array(self, data: bytearray) -> np.ndarray:
        return np.frombuffer(data, dtype=self.dtype, count=math.prod(self.shape), offset=self.offset).reshape(self.shape)


@dataclasses.dataclass(frozen=True)
class _Shard:
    path: Path
    nbytes: int
    sha256: str | None  # None: not verified (require_sha256=False)
    records: list[_Record]


def _checked_index(directory: Path, index: dict[str, Any], require_sha256: bool) -> list[_Shard]:
    index_path = directory / INDEX_NAME
    names: set[str] = set()
    shards = _field(index_path, index, "records", list, "the index")
    return [
        _checked_shard(directory, index_path, shard, f"shard {number}", require_sha256, names)
        for number, shard in enumerate(shards)
    ]


def _checked_shard(
    directory: Path, index_path: Path, shard: Any, where: str, require_sha256: bool, names: set[str]
) -> _Shard:
    data_path = _field(index_path, shard, "dataPath", str, where)
    if "\0" in data_path:
        raise TensorCacheError(f"shard path {data_path!r} is not a file name")
    path = (directory / data_path).resolve()
    if not path.is_relative_to(directory.resolve()) or not path.is_file():
        raise TensorCacheError(f"shard {data_path!r} is missing or lies outside {directory}")
    nbytes = _field(index_path, shard, "nbytes", int, where)
    size = path.stat().st_size  # before reading: a shard swapped for a huge file is refused at once
    if size != nbytes:
        raise TensorCacheError(f"shard {path.name} has {size} bytes, the index says {nbytes}; convert again")
    sha256 = None
    if require_sha256:
        if "sha256" not in shard:
            raise TensorCacheError(
                f"{index_path} lacks the sha256 of shard {path.name}, so its bytes cannot be verified"
                " (written by another tool or an older codegen); convert again to write one"
            )
        sha256 = _field(index_path, shard, "sha256", str, where)
    records = [
        _checked_record(index_path, record, path.name, nbytes, names)
        for record in _field(index_path, shard, "records", list, where)
    ]
    overlap = first_overlap((r.offset, r.offset + r.nbytes, r.name) for r in records)
    if overlap:
        raise TensorCacheError(f"{index_path}: records {overlap[0]!r} and {overlap[1]!r} overlap in shard {path.name}; convert again")
    return _Shard(path, nbytes, sha256, records)


def _checked_record(index_path: Path, record: Any, shard_name: str, shard_bytes: int, names: set[str]) -> _Record:
    name = _field(index_path, record, "name", str, f"a record of shard {shard_name}")
    if name in names:
        raise TensorCacheError(f"{index_path} stores tensor {name!r} twice; convert again")
    names.add(name)
    if record.get("format") != "raw":
        raise TensorCacheError(f"{name}: encoding {reprlib.repr(record.get('format'))} is not supported (only raw)")
    dtype_name = record.get("dtype")
    if not isinstance(dtype_name, str) or dtype_name not in _NUMPY_DTYPES:
        raise TensorCacheError(f"{name}: unsupported dtype {reprlib.repr(dtype_name)}; supported: {', '.join(_NUMPY_DTYPES)}")
    dtype = _NUMPY_DTYPES[dtype_name]
    where = f"record {name!r}"
    shape = _field(index_path, record, "shape", list, where)
    if not all(type(d) is int for d in shape):
        raise _malformed(index_path, f"{where} has shape {reprlib.repr(shape)}, expected a list of integers")
    offset, nbytes = (_field(index_path, record, key, int, where) for key in ("byteOffset", "nbytes"))
    if (
        any(d < 0 for d in shape)
        or offset < 0
        or offset + nbytes > shard_bytes
        or nbytes != byte_count(shape, dtype.itemsize, shard_bytes)
    ):
        raise TensorCacheError(f"{name}: offset/size in the index do not fit shard {shard_name}")
    return _Record(name, dtype, tuple(shape), offset, nbytes)


def _field(index_path: Path, entry: Any, key: str, kind: type, where: str) -> Any:
    """entry[key], refused unless it has the JSON type the format gives it (int: not a bool or float)."""
    if not isinstance(entry, dict):
        raise _malformed(index_path, f"{where} is {reprlib.repr(entry)}, not an object")
    if key not in entry:
        raise _malformed(index_path, f"{where} lacks {key!r}")
    value = entry[key]
    if type(value) is not kind:
        raise _malformed(index_path, f"{where} has {key} {reprlib.repr(value)}, expected {'an integer' if kind is int else 'a ' + kind.__name__}")
    return value


def _malformed(index_path: Path, what: str) -> TensorCacheError:
    return TensorCacheError(f"{index_path} is malformed ({what}); convert again")


def _read_shard(shard: _Shard) -> bytearray:
    """The shard's bytes, read in chunks and hashed as they arrive (unless there is no hash to check)."""
    data = bytearray(shard.nbytes)
    digest = hashlib.sha256() if shard.sha256 is not None else None
    with open(shard.path, "rb") as file, memoryview(data) as view:
        done = 0
        while done < shard.nbytes:
            count = file.readinto(view[done : done + _READ_CHUNK])
            if not count:
                raise TensorCacheError(f"shard {shard.path.name} ended after {done} of {shard.nbytes} bytes: it changed while loading")
            if digest is not None:
                digest.update(view[done : done + count])
            done += count
    if digest is not None and digest.hexdigest() != shard.sha256:
        raise TensorCacheError(f"shard {shard.path.name} fails its sha256 check: the file is damaged; convert again")
    return data
