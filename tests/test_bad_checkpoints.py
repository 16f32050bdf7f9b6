"""Damaged, lying and malicious checkpoints: each gives a clear CheckpointError naming the file and
tensor, nothing runs, and a failed conversion never leaves a tensor cache that looks complete.

A tiny GPTBigCode is saved with transformers' save_pretrained once per module; each test damages a
copy of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from codegen.artifact import tensor_cache
from codegen.errors import CodegenError
from codegen.convert import weights
from codegen.convert.checkpoint import CheckpointError, SafetensorsFile, open_checkpoint
from tests.support import random_hf_model, save_hf_model

VOCAB, WIDTH, LAYERS, POSITIONS = 64, 32, 2, 48


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    hf = random_hf_model(GPTBigCodeConfig, GPTBigCodeForCausalLM, vocab_size=VOCAB, n_embd=WIDTH, n_layer=LAYERS, n_head=4, n_positions=POSITIONS)
    folder = save_hf_model(hf, tmp_path_factory.mktemp("tiny"))
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    return folder


@pytest.fixture(scope="module")
def model():
    from codegen.models import load_model

    return load_model("gpt_bigcode")


@pytest.fixture
def model_dir(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "model"))


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "artifact"


# ----------------------------------------------------------------------------- helpers


def read_safetensors(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def write_safetensors(path: Path, header: dict, body: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def edit_header(path: Path, edit) -> None:
    header, body = read_safetensors(path)
    edit(header)
    write_safetensors(path, header, body)


def tensors(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(model_dir / "model.safetensors")


def save_tensors(model_dir: Path, arrays: dict[str, np.ndarray], name: str = "model.safetensors") -> None:
    from safetensors.numpy import save_file

    save_file(arrays, model_dir / name, metadata={"format": "pt"})


def convert_error(model, model_dir: Path, out: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        weights.convert(model, model_dir, out, progress=False)
    return str(info.value)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def assert_no_partial_cache(out: Path) -> None:
    assert not (out / tensor_cache.INDEX_NAME).exists(), "a failed conversion left a tensor-cache.json"
    assert not list(out.glob(f"{tensor_cache.SHARD_PREFIX}*")), "a failed conversion left shards"
    assert not list(out.glob(".weights-*")) if out.exists() else True, "staging folder left behind"


def small_shards(monkeypatch, size: int) -> None:
    """Make convert write many small tensor-cache shards."""
    monkeypatch.setattr(tensor_cache.ShardWriter.__init__, "__defaults__", (size,))


def shard_index(model_dir: Path, weight_map: dict) -> None:
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def split_into_shards(model_dir: Path) -> dict[str, str]:
    """Rewrite the single file as two shards plus an index; returns the weight map."""
    arrays = tensors(model_dir)
    names = sorted(arrays)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    weight_map = {}
    for shard, members in halves.items():
        save_tensors(model_dir, {n: arrays[n] for n in members}, shard)
        weight_map.update({n: shard for n in members})
    (model_dir / "model.safetensors").unlink()
    shard_index(model_dir, weight_map)
    return weight_map


# ----------------------------------------------------------------------------- the good path first


def test_the_undamaged_checkpoint_converts(model, model_dir, out):
    result = weights.convert(model, model_dir, out, progress=False)
    assert (out / tensor_cache.INDEX_NAME).is_file()
    shards = result["index"]["records"]
    assert all(len(s["sha256"]) == 64 for s in shards)
    for shard in shards:
        assert hashlib.sha256((out / shard["dataPath"]).read_bytes()).hexdigest() == shard["sha256"]
    assert not list(out.glob(".weights-*"))


def test_sharded_checkpoint_converts(model, model_dir, out):
    split_into_shards(model_dir)
    weights.convert(model, model_dir, out, progress=False)
    assert (out / tensor_cache.INDEX_NAME).is_file()


# ----------------------------------------------------------------------------- damaged safetensors files


def test_truncated_safetensors(model, model_dir, out):
    path = model_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    message = convert_error(model, model_dir, out)
    assert str(path) in message and "lie outside the" in message and "(truncated?)" in message
    assert "tensor 'transformer." in message or "tensor 'lm_head" in message
    assert_no_partial_cache(out)


def test_safetensors_cut_inside_the_header(model_dir):
    path = model_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=r"model.safetensors: header claims \d+ bytes but the file has 50 \(truncated or corrupt\)"):
        open_checkpoint(model_dir)


@pytest.mark.parametrize("size", [0, 7])
def test_safetensors_shorter_than_its_length_field(model_dir, size):
    path = model_dir / "model.safetensors"
    path.write_bytes(b"\x01" * size)
    with pytest.raises(CheckpointError, match=rf"model.safetensors: {size} bytes is too short for a safetensors file"):
        open_checkpoint(model_dir)


@pytest.mark.parametrize("claimed", [10**6, 2**63, 2**64 - 1])
def test_header_length_larger_than_the_file(model_dir, claimed):
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", claimed) + data[8:])
    with pytest.raises(CheckpointError, match=rf"model.safetensors: header claims {claimed} bytes but the file has {len(data)}"):
        open_checkpoint(model_dir)


def test_header_that_is_not_json(model_dir):
    path = model_dir / "model.safetensors"
    header, body = read_safetensors(path)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + b"\xff\xfe{not json" + raw[11:] + body)
    with pytest.raises(CheckpointError, match=r"model.safetensors: header is not valid JSON"):
        open_checkpoint(model_dir)


@pytest.mark.parametrize("header", [[1, 2], "text", 7, None])
def test_header_that_is_json_but_not_an_object(model_dir, header):
    path = model_dir / "model.safetensors"
    write_safetensors(path, header, b"")
    with pytest.raises(CheckpointError, match=r"model.safetensors: header is not a JSON object"):
        open_checkpoint(model_dir)


@pytest.mark.parametrize(
    "label, edit, expected",
    [
        ("shape grows", lambda e: e.update(shape=[VOCAB * 2, WIDTH]), r"bytes do not hold F32\[128, 32\]"),
        ("shape shrinks", lambda e: e.update(shape=[VOCAB, WIDTH - 1]), r"bytes do not hold F32\[64, 31\]"),
        ("dtype lies", lambda e: e.update(dtype="F64"), r"bytes do not hold F64\[64, 32\]"),
        ("end beyond the data", lambda e: e.update(data_offsets=[e["data_offsets"][0], 10**12]), r"offsets \[\d+, 1000000000000\) lie outside the \d+-byte data section"),
        ("begin after end", lambda e: e.update(data_offsets=[e["data_offsets"][1], e["data_offsets"][0]]), r"lie outside the \d+-byte data section"),
        ("negative begin", lambda e: e.update(data_offsets=[-8, e["data_offsets"][1]]), r"offsets \[-8, \d+\) lie outside"),
        ("unknown dtype", lambda e: e.update(dtype="F99"), r"has a malformed header entry"),
        ("offsets missing", lambda e: e.pop("data_offsets"), r"has a malformed header entry"),
        ("shape not a list", lambda e: e.update(shape="64x32"), r"has a malformed header entry"),
        ("negative dimension", lambda e: e.update(shape=[-64, -32]), r"has a negative dimension in shape \[-64, -32\]"),
        ("overflowing shape", lambda e: e.update(shape=[2**63, 2**63]), r"bytes do not hold F32\[9223372036854775808, 9223372036854775808\]"),
        ("wrapping shape", lambda e: e.update(shape=[2**62, 2**62 + 2048 // 4]), r"bytes do not hold F32"),
    ],
)
def test_header_that_lies_about_a_tensor(model_dir, label, edit, expected):
    path = model_dir / "model.safetensors"
    edit_header(path, lambda h: edit(h["transformer.wte.weight"]))
    with pytest.raises(CheckpointError, match=expected) as info:
        open_checkpoint(model_dir)
    assert f"{path}: tensor 'transformer.wte.weight'" in str(info.value)


def test_header_entry_that_is_not_an_object(model_dir):
    edit_header(model_dir / "model.safetensors", lambda h: h.__setitem__("transformer.wpe.weight", [1, 2, 3]))
    with pytest.raises(CheckpointError, match=r"tensor 'transformer.wpe.weight' has a malformed header entry \[1, 2, 3\]"):
        open_checkpoint(model_dir)


# ----------------------------------------------------------------------------- tensors that do not fit the model


def test_tensor_with_the_wrong_shape(model, model_dir, out):
    arrays = tensors(model_dir)
    arrays["transformer.h.1.mlp.c_fc.weight"] = np.ascontiguousarray(arrays["transformer.h.1.mlp.c_fc.weight"].T)
    save_tensors(model_dir, arrays)
    message = convert_error(model, model_dir, out)
    assert message == "transformer.h.1.mlp.c_fc.weight: shape [32, 128] does not fit parameter transformer.h.1.mlp.c_fc.weight [128, 32]"
    assert_no_partial_cache(out)


@pytest.mark.parametrize("dtype", ["int64", "int8", "bool", "uint8"])
def test_tensor_with_a_non_float_dtype(model, model_dir, out, dtype):
    arrays = tensors(model_dir)
    arrays["transformer.ln_f.weight"] = np.ones(WIDTH, dtype=dtype)
    save_tensors(model_dir, arrays)
    message = convert_error(model, model_dir, out)
    assert "transformer.ln_f.weight" in message and f"dtype {dtype}" in message and "floating-point" in message, message
    assert_no_partial_cache(out)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_other_float_dtypes_are_converted(model, model_dir, out, dtype):
    arrays = {k: v.astype(dtype) for k, v in tensors(model_dir).items()}
    save_tensors(model_dir, arrays)
    weights.convert(model, model_dir, out, progress=False)
    assert (out / tensor_cache.INDEX_NAME).is_file()


def test_missing_tensors(model, model_dir, out):
    arrays = tensors(model_dir)
    del arrays["transformer.h.1.ln_2.bias"], arrays["transformer.wpe.weight"]
    save_tensors(model_dir, arrays)
    message = convert_error(model, model_dir, out)
    assert "does not match gpt_bigcode" in message and str(model_dir / "model.safetensors") in message
    assert "missing 2 tensors: 'transformer.h.1.ln_2.bias', 'transformer.wpe.weight'" in message
    assert "unexpected" not in message
    assert_no_partial_cache(out)


def test_extra_tensors(model, model_dir, out):
    arrays = tensors(model_dir)
    arrays["transformer.h.2.attn.c_attn.weight"] = arrays["transformer.h.1.attn.c_attn.weight"]
    arrays["evil.payload"] = np.zeros(3, dtype="float32")
    save_tensors(model_dir, arrays)
    message = convert_error(model, model_dir, out)
    assert "unexpected 2 tensors: 'evil.payload', 'transformer.h.2.attn.c_attn.weight'" in message
    assert "missing" not in message
    assert_no_partial_cache(out)


def test_config_that_does_not_fit_the_tensors(model, model_dir, out):
    config = json.loads((model_dir / "config.json").read_text())
    config["n_layer"] = 3
    (model_dir / "config.json").write_text(json.dumps(config))
    message = convert_error(model, model_dir, out)
    assert "missing 12 tensors, e.g. 'transformer.h.2." in message


def test_config_with_an_absurd_layer_count_is_refused_before_any_work(model, model_dir, out, monkeypatch):
    """n_layer=100000 took 147 s to fail: the model was built first. Now the count is compared first,
    from weight maps of one and two layers, and neither the model nor a big weight map is built."""
    config = json.loads((model_dir / "config.json").read_text())
    config["n_layer"] = 100_000
    (model_dir / "config.json").write_text(json.dumps(config))
    layer_counts = []
    real_weight_map = model.package.weight_map
    monkeypatch.setattr(model.package, "weight_map", lambda c: layer_counts.append(c.num_hidden_layers) or real_weight_map(c))
    monkeypatch.setattr(weights, "parameter_specs", lambda *a: pytest.fail("the model was built before the names were checked"))
    message = convert_error(model, model_dir, out)
    assert message == (
        f"checkpoint {model_dir / 'model.safetensors'} holds 28 tensors, but gpt_bigcode with this config.json"
        " (100,000 layers) needs 1,200,004: the config.json does not describe this checkpoint"
    )
    assert max(layer_counts) <= 2
    assert not out.exists()


def test_a_mismatch_lists_a_few_names_and_a_count(model, model_dir, out):
    """200,000 junk header entries gave a 2.3 MB message; now five names per list and the count (50,000 here)."""
    header, body = read_safetensors(model_dir / "model.safetensors")
    del header["transformer.wpe.weight"]
    header.update({f"junk.{i:06d}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(50_000)})
    write_safetensors(model_dir / "model.safetensors", header, body)
    message = convert_error(model, model_dir, out)
    assert message.endswith(
        "does not match gpt_bigcode for this config.json:\n  missing 1 tensor: 'transformer.wpe.weight'"
        "\n  unexpected 50,000 tensors, e.g. 'junk.000000', 'junk.000001', 'junk.000002', 'junk.000003', 'junk.000004'"
    )
    assert len(message) < 500


def test_a_crafted_tensor_name_is_cut_short_in_messages(model, model_dir, out):
    arrays = tensors(model_dir)
    arrays["x" * 1_000_000] = np.zeros(1, dtype="float32")
    save_tensors(model_dir, arrays)
    message = convert_error(model, model_dir, out)
    assert "unexpected 1 tensor: 'xxx" in message and len(message) < 500


# ----------------------------------------------------------------------------- values that are not finite


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(model, model_dir, out, bad):
    """A NaN model emits token 0 forever; the tensor is named, with the count of bad values."""
    arrays = tensors(model_dir)
    arrays["transformer.h.1.mlp.c_fc.bias"][[3, 7, 9]] = bad
    save_tensors(model_dir, arrays)
    message = convert_error(model, model_dir, out)
    assert message == (
        f"{model_dir / 'model.safetensors'}: tensor 'transformer.h.1.mlp.c_fc.bias' has 3 NaN or infinite values"
        " (of 128): the model would compute garbage; use an undamaged checkpoint, or --allow-non-finite"
        " (allow_non_finite=True) to convert it anyway"
    )
    assert_no_partial_cache(out)


@pytest.mark.parametrize("dtype, largest", [("float16", "65504"), ("bfloat16", "3.38953e+38")])
def test_values_that_overflow_the_target_dtype_are_refused(model, model_dir, out, dtype, largest):
    """float64 1e6 -> float16 was inf with only numpy's RuntimeWarning; now an error, and no warning."""
    arrays = {k: v.astype("float64") for k, v in tensors(model_dir).items()}
    arrays["transformer.h.0.attn.c_proj.bias"][:2] = 1e6 if dtype == "float16" else 1e300
    save_tensors(model_dir, arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError) as info:
            weights.convert(model, model_dir, out, dtype=dtype, progress=False)
    assert str(info.value).startswith(
        f"{model_dir / 'model.safetensors'}: tensor 'transformer.h.0.attn.c_proj.bias' has 2 values (of 32) beyond the range of"
        f" {dtype} (largest {largest}): convert with a wider --dtype"
    )
    assert_no_partial_cache(out)


def test_non_finite_weights_convert_when_allowed(model, model_dir, out):
    import tvm

    arrays = tensors(model_dir)
    arrays["transformer.ln_f.bias"][0] = np.nan
    save_tensors(model_dir, arrays)
    index = weights.convert(model, model_dir, out, progress=False, allow_non_finite=True)["index"]
    expected = [{"name": r["name"], "shape": r["shape"], "dtype": r["dtype"]} for s in index["records"] for r in s["records"]]
    loaded = dict(zip([e["name"] for e in expected], tensor_cache.load_params(out, expected, tvm.cpu())))
    assert np.isnan(loaded["transformer.ln_f.bias"].numpy()[0])


def test_cli_refuses_non_finite_weights_unless_allowed(model_dir, out, capsys):
    from codegen import cli

    arrays = tensors(model_dir)
    arrays["transformer.wte.weight"][5, 5] = np.inf
    save_tensors(model_dir, arrays)
    argv = ["convert", "--spec", "gpt_bigcode", "--model-dir", str(model_dir), "--output", str(out), "--quiet"]
    assert cli.main(argv) == 1
    assert "tensor 'transformer.wte.weight' has 1 NaN or infinite values (of 2,048)" in capsys.readouterr().err
    assert cli.main([*argv, "--allow-non-finite"]) == 0
    assert (out / tensor_cache.INDEX_NAME).is_file()


# ----------------------------------------------------------------------------- config.json


def test_missing_config_json(model, model_dir, out):
    (model_dir / "config.json").unlink()
    message = convert_error(model, model_dir, out)
    assert message == f"{model_dir} has no config.json (the Hugging Face model config)"
    assert not out.exists()


@pytest.mark.parametrize("text, expected", [("{not json", "is not valid JSON"), ("[1, 2]", "must hold a JSON object"), ("\xff", "is not valid JSON")])
def test_config_json_that_is_not_a_config(model, model_dir, out, text, expected):
    (model_dir / "config.json").write_bytes(text.encode("latin-1"))
    message = convert_error(model, model_dir, out)
    assert str(model_dir / "config.json") in message and expected in message, message


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("n_head", 0, "config.json field 'n_head' must be a positive integer below 2**31, got 0"),
        ("n_head", -4, "config.json field 'n_head' must be a positive integer below 2**31, got -4"),
        ("layer_norm_epsilon", float("nan"), "config.json field 'layer_norm_epsilon' must be a positive finite number, got nan"),
        ("n_embd", "32", "config.json field 'n_embd' must be int, got '32'"),
        ("model_type", "llama", "config.json model_type 'llama' is not 'gpt_bigcode'"),
        ("multi_query", False, "multi_query=False"),
    ],
)
def test_config_json_with_impossible_values(model, model_dir, out, field, value, expected):
    config = json.loads((model_dir / "config.json").read_text())
    config[field] = value
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CodegenError) as info:
        weights.convert(model, model_dir, out, progress=False)
    assert expected in str(info.value)
    assert type(info.value).__name__ in ("CheckpointError", "ModelConfigError")
    assert not out.exists()


def test_no_weights_at_all(model, model_dir, out):
    (model_dir / "model.safetensors").unlink()
    message = convert_error(model, model_dir, out)
    assert message == f"{model_dir} has none of model.safetensors, model.safetensors.index.json, pytorch_model.bin"


# ----------------------------------------------------------------------------- sharded checkpoints and their index


def test_index_names_a_missing_shard(model, model_dir, out):
    weight_map = split_into_shards(model_dir)
    (model_dir / "model-00002-of-00002.safetensors").unlink()
    message = convert_error(model, model_dir, out)
    missing = next(n for n, s in weight_map.items() if s == "model-00002-of-00002.safetensors")
    assert "shard 'model-00002-of-00002.safetensors' of tensor" in message and "does not exist" in message
    assert "model.safetensors.index.json" in message and missing.split(".")[0] in message


def test_index_names_a_tensor_its_shard_lacks(model, model_dir, out):
    weight_map = split_into_shards(model_dir)
    name = next(iter(weight_map))
    other = "model-00002-of-00002.safetensors" if weight_map[name] != "model-00002-of-00002.safetensors" else "model-00001-of-00002.safetensors"
    weight_map[name] = other
    shard_index(model_dir, weight_map)
    message = convert_error(model, model_dir, out)
    assert f"tensor {name!r} is not in shard {other!r}" in message


@pytest.mark.parametrize("escape", ["../outside.safetensors", "../../outside.safetensors", "ABSOLUTE", "sub/../../outside.safetensors"])
def test_shard_path_escaping_the_model_dir(model, model_dir, out, tmp_path, escape):
    weight_map = split_into_shards(model_dir)
    outside = tmp_path / "outside.safetensors"
    shutil.copy(model_dir / "model-00001-of-00002.safetensors", outside)  # exists, so only the location is wrong
    shutil.copy(outside, tmp_path.parent / "outside.safetensors") if escape.startswith("../../") else None
    shard_name = str(outside) if escape == "ABSOLUTE" else escape
    weight_map = {n: (shard_name if s == "model-00001-of-00002.safetensors" else s) for n, s in weight_map.items()}
    shard_index(model_dir, weight_map)
    message = convert_error(model, model_dir, out)
    assert f"shard {shard_name!r} of tensor" in message and f"lies outside {model_dir}" in message, message
    assert_no_partial_cache(out)


def test_shard_that_is_a_symlink_out_of_the_model_dir(model, model_dir, out, tmp_path):
    split_into_shards(model_dir)
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(model_dir / "model-00001-of-00002.safetensors", outside)
    (model_dir / "model-00001-of-00002.safetensors").symlink_to(outside)
    message = convert_error(model, model_dir, out)
    assert "shard 'model-00001-of-00002.safetensors' of tensor" in message and "lies outside" in message


def test_single_file_that_is_a_symlink_out_of_the_model_dir(model, model_dir, out, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(model_dir / "model.safetensors", outside)
    (model_dir / "model.safetensors").symlink_to(outside)
    message = convert_error(model, model_dir, out)
    assert "model.safetensors" in message and "lies outside" in message


@pytest.mark.parametrize(
    "index, expected",
    [
        ("{broken", "is not valid JSON"),
        ('{"metadata": {}}', "not a valid shard index"),
        ('{"weight_map": ["a", "b"]}', "not a valid shard index"),
        ('{"weight_map": {"transformer.wte.weight": 7}}', "shard 7 of tensor 'transformer.wte.weight'"),
        ('{"weight_map": {"transformer.wte.weight": "a\\u0000b"}}', "shard 'a\\x00b' of tensor 'transformer.wte.weight'"),
        ('{"weight_map": {"transformer.wte.weight": ""}}', "shard '' of tensor 'transformer.wte.weight'"),
    ],
)
def test_index_that_is_not_an_index(model, model_dir, out, index, expected):
    (model_dir / "model.safetensors.index.json").write_text(index)
    message = convert_error(model, model_dir, out)
    assert "model.safetensors.index.json" in message and expected in message, message


# ----------------------------------------------------------------------------- pytorch_model.bin


class _RunsCode:
    """A pickle that, when loaded by a full unpickler, calls os.system (creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _as_bin(model_dir: Path, payload) -> None:
    import torch

    (model_dir / "model.safetensors").unlink()
    torch.save(payload, model_dir / "pytorch_model.bin")


def test_malicious_pickle_is_refused_and_never_runs(model, model_dir, out, tmp_path):
    import torch

    marker = tmp_path / "pwned"
    state = {k: torch.from_numpy(v) for k, v in tensors(model_dir).items()}
    state["transformer.h.0.attn.c_attn.weight"] = _RunsCode(marker)
    _as_bin(model_dir, state)
    message = convert_error(model, model_dir, out)
    assert not marker.exists(), "the pickle's code ran"
    assert str(model_dir / "pytorch_model.bin") in message and "cannot be read as a weights-only PyTorch checkpoint" in message
    assert "UnpicklingError" in message
    assert_no_partial_cache(out)


def test_raw_malicious_pickle_file_never_runs(model, model_dir, out, tmp_path):
    marker = tmp_path / "pwned-raw"
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_RunsCode(marker)))
    message = convert_error(model, model_dir, out)
    assert not marker.exists()
    assert "cannot be read as a weights-only PyTorch checkpoint" in message


def test_bin_that_is_not_a_state_dict(model, model_dir, out):
    import torch

    _as_bin(model_dir, {"transformer.wte.weight": torch.zeros(2), "note": "hello"})
    message = convert_error(model, model_dir, out)
    assert message == f"{model_dir / 'pytorch_model.bin'}: expected a dict of tensors (a state_dict)"


def test_truncated_bin(model, model_dir, out):
    import torch

    _as_bin(model_dir, {k: torch.from_numpy(v) for k, v in tensors(model_dir).items()})
    path = model_dir / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = convert_error(model, model_dir, out)
    assert str(path) in message and "cannot be read as a weights-only PyTorch checkpoint" in message


def test_good_bin_converts(model, model_dir, out):
    import torch

    _as_bin(model_dir, {k: torch.from_numpy(v) for k, v in tensors(model_dir).items()})
    weights.convert(model, model_dir, out, progress=False)
    assert (out / tensor_cache.INDEX_NAME).is_file()


# ----------------------------------------------------------------------------- atomic conversion output


def test_failed_conversion_keeps_an_earlier_good_cache_intact(model, model_dir, out):
    weights.convert(model, model_dir, out, progress=False)
    before = snapshot(out)
    arrays = tensors(model_dir)
    arrays["transformer.ln_f.bias"] = np.zeros(WIDTH + 1, dtype="float32")  # one of the last tensors
    save_tensors(model_dir, arrays)
    message = convert_error(model, model_dir, out)
    assert "transformer.ln_f.bias: shape [33]" in message
    assert snapshot(out) == before
    assert not list(out.glob(".weights-*"))


def test_interrupted_conversion_keeps_an_earlier_good_cache_intact(model, model_dir, out, monkeypatch):
    weights.convert(model, model_dir, out, progress=False)
    before = snapshot(out)
    real_add = tensor_cache.ShardWriter.add
    count = []

    def add_then_interrupt(self, *args, **kwargs):
        count.append(1)
        if len(count) == 10:
            raise KeyboardInterrupt
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(tensor_cache.ShardWriter, "add", add_then_interrupt)
    small_shards(monkeypatch, 4096)  # several shards were flushed by then
    with pytest.raises(KeyboardInterrupt):
        weights.convert(model, model_dir, out, progress=False)
    assert snapshot(out) == before
    assert not list(out.glob(".weights-*"))


@pytest.mark.parametrize("fail_at", ["first shard", "last shard", "index"])
def test_failure_while_swapping_the_cache_in_never_leaves_a_mix(model, model_dir, out, monkeypatch, fail_at):
    """Old cache (3 shards) replaced by a new one (many small shards); a rename fails part way.
    Afterwards tensor-cache.json is either the old one with all its shards, or absent; never an
    index next to shards it does not describe."""
    small_shards(monkeypatch, 8192)
    weights.convert(model, model_dir, out, progress=False)
    before = snapshot(out)
    old_shards = sorted(out.glob("params_shard_*.bin"))
    small_shards(monkeypatch, 2048)
    arrays = {k: v * 2 for k, v in tensors(model_dir).items()}
    save_tensors(model_dir, arrays)
    real_replace = os.replace
    moves = []

    def failing_replace(src, dst):
        name = Path(dst).name
        moves.append(name)
        shard_moves = [m for m in moves if m.startswith("params_shard_")]
        if (fail_at == "first shard" and name.startswith("params_shard_")) or (fail_at == "index" and name == tensor_cache.INDEX_NAME) or (
            fail_at == "last shard" and len(shard_moves) == 3
        ):
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(weights.os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output error"):
        weights.convert(model, model_dir, out, progress=False)
    monkeypatch.undo()
    assert len(old_shards) >= 2
    index_path = out / tensor_cache.INDEX_NAME
    if index_path.exists():
        assert snapshot(out) == before, "the old index survived, but not its shards"
    else:
        assert not list(out.glob(".weights-*"))
    # whatever is there is either loadable and verified, or refused with a clear error
    if index_path.exists():
        index = tensor_cache.read_index(out)
        expected = [{"name": r["name"], "shape": r["shape"], "dtype": r["dtype"]} for s in index["records"] for r in s["records"]]
        import tvm

        tensor_cache.load_params(out, expected, tvm.cpu())
    else:
        with pytest.raises(tensor_cache.TensorCacheError, match="has no tensor-cache.json"):
            tensor_cache.read_index(out)


def test_shard_with_a_flipped_byte_fails_its_sha256(model, model_dir, out):
    import tvm

    weights.convert(model, model_dir, out, progress=False)
    index = tensor_cache.read_index(out)
    expected = [{"name": r["name"], "shape": r["shape"], "dtype": r["dtype"]} for s in index["records"] for r in s["records"]]
    assert len(tensor_cache.load_params(out, expected, tvm.cpu())) == len(expected)
    shard = out / index["records"][0]["dataPath"]
    data = bytearray(shard.read_bytes())
    data[7] ^= 0x80
    shard.write_bytes(bytes(data))
    with pytest.raises(tensor_cache.TensorCacheError, match=rf"shard {shard.name} fails its sha256 check: the file is damaged; convert again"):
        tensor_cache.load_params(out, expected, tvm.cpu())


def test_checkpoint_file_handles_are_closed_after_errors(model_dir):
    """A refused file is closed, not leaked (hundreds of refused shards must not exhaust handles)."""
    path = model_dir / "model.safetensors"
    edit_header(path, lambda h: h["transformer.wte.weight"].update(dtype="F99"))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        with pytest.raises(CheckpointError):
            SafetensorsFile(path)
    assert len(os.listdir("/proc/self/fd")) <= before + 2


def test_failure_removing_the_old_index_leaves_the_old_cache_whole(model, model_dir, out, monkeypatch):
    """The old index is removed before its shards: if that removal fails, nothing was deleted yet.
    (Removing shards first would leave the old index naming shards that are gone.)"""
    small_shards(monkeypatch, 8192)
    weights.convert(model, model_dir, out, progress=False)
    before = snapshot(out)
    real_unlink = Path.unlink

    def unlink(self, *args, **kwargs):
        if self.name == tensor_cache.INDEX_NAME and self.parent == out:
            raise PermissionError(13, "Permission denied")
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(PermissionError):
        weights.convert(model, model_dir, out, progress=False)
    monkeypatch.undo()
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- staging folders of killed conversions


def test_convert_removes_the_staging_folders_of_dead_converts_only(model, model_dir, out, monkeypatch):
    """A convert killed mid-way leaves .weights-PID-*; the next convert into that output removes it once
    that PID is gone, and leaves the folders of live converts (and names it does not know) alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".weights-{dead.pid}-abc_12"
    (stale / "params_shard_0.bin").parent.mkdir(parents=True)
    (stale / "params_shard_0.bin").write_bytes(b"half a shard")
    live = [out / f".weights-{os.getpid()}-xyz", out / f".weights-{os.getppid()}-q1", out / ".weights-k2x9ab"]
    for folder in live:
        folder.mkdir()
    used = []
    real_finish = tensor_cache.ShardWriter.finish
    monkeypatch.setattr(tensor_cache.ShardWriter, "finish", lambda self, m: used.append(self.directory.name) or real_finish(self, m))
    weights.convert(model, model_dir, out, progress=False)
    assert not stale.exists()
    assert all(folder.is_dir() for folder in live)
    assert len(used) == 1 and used[0].startswith(f".weights-{os.getpid()}-")
    assert sorted(p.name for p in out.glob(".weights-*")) == sorted(p.name for p in live)
