"""The checkpoint and tensor-cache readers accept exactly the format and nothing looser.

safetensors headers: keys are unique, shapes and offsets are integers (not floats, strings or
booleans), tensors lie inside the file and overlap no other. Tensor caches: the same for records,
each shard's size is checked before it is read, shards are hashed while they are read, and a shard
without a sha256 is refused unless the caller opts out.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from codegen.artifact import tensor_cache
from codegen.artifact.tensor_cache import TensorCacheError
from codegen.convert import weights
from codegen.convert.checkpoint import CheckpointError, open_checkpoint
from tests.test_bad_checkpoints import (  # noqa: F401 (fixtures)
    WIDTH,
    edit_header,
    model,
    model_dir,
    out,
    read_safetensors,
    saved,
    small_shards,
)

# ----------------------------------------------------------------------------- safetensors headers


def write_raw_header(path: Path, text: str, body: bytes) -> None:
    raw = text.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def pairs_text(pairs: list[tuple[str, object]]) -> str:
    """A JSON object that may name a key twice (json.dumps cannot write one)."""
    return "{" + ", ".join(f"{json.dumps(key)}: {json.dumps(value)}" for key, value in pairs) + "}"


def test_header_with_a_duplicated_tensor_name(model_dir):
    """The last entry won: ln_f.weight silently took ln_f.bias's bytes."""
    path = model_dir / "model.safetensors"
    header, body = read_safetensors(path)
    pairs = [*header.items(), ("transformer.ln_f.weight", header["transformer.ln_f.bias"])]
    write_raw_header(path, pairs_text(pairs), body)
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(model_dir)
    assert str(info.value) == (
        f"{path}: header has key 'transformer.ln_f.weight' twice; the header is corrupt or crafted"
        " (re-download or re-save the checkpoint)"
    )


def test_header_entry_with_a_duplicated_field(model_dir):
    path = model_dir / "model.safetensors"
    header, body = read_safetensors(path)
    entry = header.pop("transformer.ln_f.bias")
    duplicated = pairs_text([*entry.items(), ("dtype", "F16")])
    write_raw_header(path, pairs_text(list(header.items()))[:-1] + f', "transformer.ln_f.bias": {duplicated}}}', body)
    with pytest.raises(CheckpointError, match=r"model.safetensors: header has key 'dtype' twice"):
        open_checkpoint(model_dir)


@pytest.mark.parametrize("shift", [0, 4, -4])
def test_tensors_whose_bytes_overlap(model_dir, shift):
    """ln_f.weight and ln_f.bias are both F32[32]: point one at (part of) the other's bytes."""
    path = model_dir / "model.safetensors"

    def edit(header):
        begin, end = header["transformer.ln_f.bias"]["data_offsets"]
        header["transformer.ln_f.weight"]["data_offsets"] = [begin + shift, end + shift]

    edit_header(path, edit)
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensors '[\w.]+' and '[\w.]+' overlap in the data section") as info:
        open_checkpoint(model_dir)
    assert "'transformer.ln_f.weight'" in str(info.value)


def test_empty_tensors_overlap_nothing(model_dir):
    edit_header(model_dir / "model.safetensors", lambda h: h.update(empty={"dtype": "F32", "shape": [0, 8], "data_offsets": [0, 0]}))
    assert "empty" in open_checkpoint(model_dir).names()


@pytest.mark.parametrize(
    "field, make, expected",
    [
        ("shape", lambda e: [64.9, WIDTH], "shape must be a list of integers"),
        ("shape", lambda e: [64.0, WIDTH], "shape must be a list of integers"),
        ("shape", lambda e: ["64", WIDTH], "shape must be a list of integers"),
        ("shape", lambda e: [True, WIDTH], "shape must be a list of integers"),
        ("shape", lambda e: [[64], WIDTH], "shape must be a list of integers"),
        ("data_offsets", lambda e: [str(v) for v in e["data_offsets"]], r"data_offsets must be two integers \[begin, end\]"),
        ("data_offsets", lambda e: [float(v) for v in e["data_offsets"]], r"data_offsets must be two integers \[begin, end\]"),
        ("data_offsets", lambda e: [False, e["data_offsets"][1]], r"data_offsets must be two integers \[begin, end\]"),
        ("data_offsets", lambda e: [*e["data_offsets"], 0], r"data_offsets must be two integers \[begin, end\]"),
        ("dtype", lambda e: [e["dtype"]], "dtype must be one of F64, F32, F16, BF16"),
    ],
)
def test_header_entry_with_values_that_are_not_integers(model_dir, field, make, expected):
    """int() used to accept 64.9 (as 64), 64.0 and "64"."""
    path = model_dir / "model.safetensors"
    edit_header(path, lambda h: h["transformer.wte.weight"].update({field: make(h["transformer.wte.weight"])}))
    with pytest.raises(CheckpointError, match=rf"{path}: tensor 'transformer.wte.weight' has a malformed header entry .*: {expected}"):
        open_checkpoint(model_dir)


def test_header_with_an_integer_too_long_to_parse(model_dir):
    """Python refuses to parse integers of over 4300 digits; that was an uncaught ValueError."""
    path = model_dir / "model.safetensors"
    header, body = read_safetensors(path)
    text = json.dumps(header).replace('"shape": [64, 32]', f'"shape": [{"9" * 5000}, 32]', 1)
    write_raw_header(path, text, body)
    with pytest.raises(CheckpointError, match=r"model.safetensors: header is not valid JSON \(Exceeds the limit"):
        open_checkpoint(model_dir)


def test_shape_of_many_huge_dimensions_is_refused_quickly(model_dir):
    """The byte count stops growing at the file's size: 2,000 dimensions of 4000 digits multiply
    into an 8-million-digit number (minutes) otherwise."""
    path = model_dir / "model.safetensors"
    header, body = read_safetensors(path)
    huge = ", ".join(["9" * 4000] * 2_000)
    text = json.dumps(header).replace('"shape": [64, 32]', f'"shape": [{huge}]', 1)
    write_raw_header(path, text, body)
    with pytest.raises(CheckpointError, match=r"bytes do not hold F32\[9+\.\.\.9+, .*\] \(more than the \d+-byte data section\)") as info:
        open_checkpoint(model_dir)
    assert len(str(info.value)) < 1000


# ----------------------------------------------------------------------------- tensor caches


@pytest.fixture
def cache(model, model_dir, out, monkeypatch) -> tuple[Path, list[dict]]:
    """A converted tensor cache in several shards and the parameter list a model would expect."""
    small_shards(monkeypatch, 8192)
    index = weights.convert(model, model_dir, out, progress=False)["index"]
    assert len(index["records"]) >= 3
    expected = [{"name": r["name"], "shape": r["shape"], "dtype": r["dtype"]} for s in index["records"] for r in s["records"]]
    return out, expected


def load(cache, **options):
    import tvm

    out, expected = cache
    return {p["name"]: t.numpy() for p, t in zip(expected, tensor_cache.load_params(out, expected, tvm.cpu(), **options))}


def edit_index(out: Path, edit) -> None:
    path = out / tensor_cache.INDEX_NAME
    index = json.loads(path.read_text())
    edit(index)
    path.write_text(json.dumps(index))


def record(index: dict, name: str) -> dict:
    return next(r for shard in index["records"] for r in shard["records"] if r["name"] == name)


def shard_of(index: dict, name: str) -> dict:
    return next(shard for shard in index["records"] if any(r["name"] == name for r in shard["records"]))


def test_shards_are_hashed_in_chunks_and_a_late_flipped_byte_is_found(cache, monkeypatch):
    good = load(cache)
    monkeypatch.setattr(tensor_cache, "_READ_CHUNK", 1000)  # shards of ~8 KB: many chunks each
    assert all(np.array_equal(good[name], array) for name, array in load(cache).items())
    out, _ = cache
    shard = out / "params_shard_1.bin"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(TensorCacheError, match="shard params_shard_1.bin fails its sha256 check: the file is damaged; convert again"):
        load(cache)


def test_shard_without_a_sha256_is_refused(cache):
    """A damaged shard without a hash loaded (NaN logits): the hash was optional."""
    out, _ = cache
    edit_index(out, lambda index: index["records"][1].pop("sha256"))
    with pytest.raises(TensorCacheError) as info:
        load(cache)
    assert str(info.value) == (
        f"{out / tensor_cache.INDEX_NAME} lacks the sha256 of shard params_shard_1.bin, so its bytes cannot be"
        " verified (written by another tool or an older codegen); convert again to write one"
    )


def test_require_sha256_false_loads_without_hashes_and_skips_hashing(cache):
    good = load(cache)
    out, _ = cache
    edit_index(out, lambda index: [shard.pop("sha256") for shard in index["records"][1:]])
    edit_index(out, lambda index: index["records"][0].update(sha256="0" * 64))  # wrong: not checked
    assert all(np.array_equal(good[name], array) for name, array in load(cache, require_sha256=False).items())


def test_an_oversized_shard_is_refused_before_it_is_read(cache):
    """A shard swapped for a sparse 1 TB file: read whole, that was a MemoryError (2 GB: 17 s, 2.5 GB RSS)."""
    out, _ = cache
    shard = out / "params_shard_1.bin"
    nbytes = shard.stat().st_size
    os.truncate(shard, 1 << 40)
    with pytest.raises(TensorCacheError, match=rf"shard params_shard_1.bin has 1099511627776 bytes, the index says {nbytes}; convert again"):
        load(cache)


def test_the_whole_index_is_checked_before_any_shard_is_read(cache, monkeypatch):
    out, _ = cache
    edit_index(out, lambda index: index["records"][-1]["records"][-1].update(shape=[1.5]))
    read = []
    monkeypatch.setattr(tensor_cache, "_read_shard", lambda shard: read.append(shard) or pytest.fail("a shard was read"))
    with pytest.raises(TensorCacheError, match="is malformed"):
        load(cache)
    assert read == []


@pytest.mark.parametrize(
    "label, edit, expected",
    [
        ("shape of floats", lambda i: record(i, "transformer.ln_f.weight").update(shape=[32.0]),
         r"record 'transformer.ln_f.weight' has shape \[32.0\], expected a list of integers"),
        ("shape of strings", lambda i: record(i, "transformer.ln_f.weight").update(shape=["32"]),
         r"record 'transformer.ln_f.weight' has shape \['32'\], expected a list of integers"),
        ("shape of booleans", lambda i: record(i, "transformer.ln_f.weight").update(shape=[True]),
         r"record 'transformer.ln_f.weight' has shape \[True\], expected a list of integers"),
        ("offset as a string", lambda i: record(i, "transformer.ln_f.weight").update(byteOffset="0"),
         r"record 'transformer.ln_f.weight' has byteOffset '0', expected an integer"),
        ("offset as a float", lambda i: record(i, "transformer.ln_f.weight").update(byteOffset=0.0),
         r"record 'transformer.ln_f.weight' has byteOffset 0.0, expected an integer"),
        ("nbytes as a float", lambda i: record(i, "transformer.ln_f.bias").update(nbytes=128.0),
         r"record 'transformer.ln_f.bias' has nbytes 128.0, expected an integer"),
        ("shard nbytes as a string", lambda i: i["records"][0].update(nbytes=str(i["records"][0]["nbytes"])),
         r"shard 0 has nbytes '\d+', expected an integer"),
        ("sha256 not a string", lambda i: i["records"][0].update(sha256=123), r"shard 0 has sha256 123, expected a str"),
        ("record not an object", lambda i: i["records"][0]["records"].append([1, 2]),
         r"a record of shard params_shard_0.bin is \[1, 2\], not an object"),
        ("shard not an object", lambda i: i["records"].append("params_shard_0.bin"), r"shard \d+ is 'params_shard_0.bin', not an object"),
        ("record lacks its offset", lambda i: record(i, "transformer.wpe.weight").pop("byteOffset"),
         r"record 'transformer.wpe.weight' lacks 'byteOffset'"),
    ],
)
def test_tensor_cache_record_with_values_that_are_not_integers(cache, label, edit, expected):
    """int() used to accept "0" and 0.0, and [32.0] compared equal to the model's [32]."""
    out, _ = cache
    edit_index(out, edit)
    with pytest.raises(TensorCacheError, match=rf"tensor-cache.json is malformed \({expected}\); convert again"):
        load(cache)


def test_tensor_cache_records_that_overlap(cache):
    """ln_f.weight pointed at ln_f.bias's bytes loaded the bias as the weight."""
    out, _ = cache

    def edit(index):
        assert shard_of(index, "transformer.ln_f.weight") is shard_of(index, "transformer.ln_f.bias")
        record(index, "transformer.ln_f.weight")["byteOffset"] = record(index, "transformer.ln_f.bias")["byteOffset"]

    edit_index(out, edit)
    with pytest.raises(TensorCacheError, match=r"records 'transformer.ln_f.\w+' and 'transformer.ln_f.\w+' overlap in shard params_shard_\d+.bin; convert again"):
        load(cache)


def test_tensor_cache_that_stores_a_tensor_twice(cache):
    out, _ = cache
    edit_index(out, lambda index: record(index, "transformer.ln_f.bias").update(name="transformer.ln_f.weight"))
    with pytest.raises(TensorCacheError, match=r"tensor-cache.json stores tensor 'transformer.ln_f.weight' twice; convert again"):
        load(cache)


def test_tensor_cache_shape_of_many_huge_dimensions_is_refused_quickly(cache):
    """The same bounded byte count as for safetensors headers (the product would take minutes)."""
    out, _ = cache
    edit_index(out, lambda index: record(index, "transformer.ln_f.weight").update(shape="HUGE"))
    path = out / tensor_cache.INDEX_NAME
    path.write_text(path.read_text().replace('"HUGE"', "[" + ", ".join(["9" * 4000] * 2_000) + "]"))
    with pytest.raises(TensorCacheError, match=r"transformer.ln_f.weight: offset/size in the index do not fit shard params_shard_\d+.bin"):
        load(cache)
