"""Hostile and broken runtime input: every case is a clear Python exception, never a crash.

One tiny GPTBigCode (2 layers, 32 wide, 48 positions) is compiled and converted once per session.
Cases that would crash the process if a check were missing (token ids outside the vocabulary reach a
compiled gather that does not bounds-check) run in a subprocess, so a segfault fails the test
instead of killing the run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.support import REPO_ROOT, random_hf_model, save_hf_model

pytestmark = pytest.mark.slow

VOCAB = 64
WINDOW = 48
SPEC = "specs/gpt_bigcode.yaml"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    hf = random_hf_model(
        GPTBigCodeConfig,
        GPTBigCodeForCausalLM,
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=WINDOW,
        multi_query=True,
    )
    return save_hf_model(hf, tmp_path_factory.mktemp("tiny-bigcode"))


@pytest.fixture(scope="module")
def artifact(artifacts, tiny_model_dir) -> Path:
    return artifacts.build(SPEC, tiny_model_dir)


@pytest.fixture(scope="module")
def model(artifact):
    from codegen.runtime import Model

    return Model(artifact, max_batch_size=4)


@pytest.fixture
def fresh(model):
    """The shared model with no live sequences before and after each test."""
    model.reset()
    model._single = None
    yield model
    model.reset()
    model._single = None


@pytest.fixture
def artifact_copy(artifact, tmp_path) -> Path:
    """A private copy of the artifact that a test may damage."""
    return Path(shutil.copytree(artifact, tmp_path / "artifact"))


# ----------------------------------------------------------------------------- token ids (subprocess)

# label -> python expression for a token list whose last id is bad (decode cases use that one).
_BAD_TOKEN_CASES = {
    "negative": "[1, 2, -1]",
    "equal_to_vocab": f"[1, {VOCAB}]",
    "vocab_plus_one": f"[{VOCAB + 1}]",
    "huge": "[2**40]",
    "huge_numpy": "[np.int64(2**62)]",
    "numpy_uint_vocab": f"[np.uint32({VOCAB})]",
    "float": "[1.0]",
    "numpy_float": "[np.float32(3)]",
    "bool": "[True]",
    "string": "['7']",
    "none": "[None]",
    "nested_list": "[[1, 2]]",
}

_SUBPROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from codegen.runtime import Model, RuntimeInputError

    artifact, cases = sys.argv[1], json.loads(sys.argv[2])
    model = Model(artifact, max_batch_size=2)
    results = {}
    for label, source in cases.items():
        tokens = eval(source, {"np": np})  # test-owned literals, not input
        outcome = {}
        for entry in ("prefill", "decode", "batch_prefill", "batch_decode"):
            model.reset(); model._single = None
            try:
                if entry == "prefill":
                    model.prefill(tokens)
                elif entry == "decode":
                    model.prefill([1, 2, 3])
                    model.decode(tokens[-1])
                elif entry == "batch_prefill":
                    a, b = model.add_sequence(), model.add_sequence()
                    model.batch_prefill({a: [1, 2], b: tokens})
                else:
                    a, b = model.add_sequence(), model.add_sequence()
                    model.batch_prefill({a: [1, 2], b: [3]})
                    model.batch_decode({a: 4, b: tokens[-1]})
                outcome[entry] = ["no error", ""]
            except RuntimeInputError as exc:
                outcome[entry] = ["RuntimeInputError", str(exc)]
            except Exception as exc:
                outcome[entry] = [type(exc).__name__, str(exc)]
        # the model still works after every refusal
        model.reset(); model._single = None
        logits = model.prefill([1, 2, 3])
        outcome["still_works"] = bool(np.isfinite(logits).all() and logits.shape == (model.vocab_size,))
        results[label] = outcome
    print("RESULTS " + json.dumps(results))
    """
)


def test_out_of_vocabulary_tokens_are_refused_without_crashing(artifact):
    completed = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_SCRIPT, str(artifact), json.dumps(_BAD_TOKEN_CASES)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, f"runtime subprocess died (rc {completed.returncode}):\n{completed.stderr[-3000:]}"
    line = next(l for l in completed.stdout.splitlines() if l.startswith("RESULTS "))
    results = json.loads(line[len("RESULTS "):])
    assert set(results) == set(_BAD_TOKEN_CASES)
    for label, outcome in results.items():
        assert outcome.pop("still_works") is True, label
        for entry, (kind, message) in outcome.items():
            assert kind == "RuntimeInputError", f"{label} via {entry}: {kind} {message}"
            assert "outside the vocabulary" in message and f"[0, {VOCAB})" in message, f"{label} via {entry}: {message}"
            assert "sequence" in message and "position" in message, message


# ----------------------------------------------------------------------------- lengths and sequences


def test_empty_prompt(fresh):
    from codegen.runtime import RuntimeInputError

    with pytest.raises(RuntimeInputError, match=r"sequence \d+: no tokens given"):
        fresh.prefill([])
    seq = fresh.add_sequence()
    with pytest.raises(RuntimeInputError, match="no tokens given"):
        fresh.batch_prefill({seq: np.zeros(0, dtype="int32")})
    with pytest.raises(RuntimeInputError, match="batch_prefill needs at least one sequence"):
        fresh.batch_prefill({})
    with pytest.raises(RuntimeInputError, match="batch_decode needs at least one sequence"):
        fresh.batch_decode({})


def test_prompt_longer_than_the_context_window(fresh):
    from codegen.runtime import RuntimeInputError

    with pytest.raises(RuntimeInputError, match=rf"{WINDOW + 1} tokens would exceed the context window of {WINDOW}"):
        fresh.prefill([1] * (WINDOW + 1))
    with pytest.raises(RuntimeInputError, match=rf"{10 * WINDOW} tokens would exceed"):
        fresh.prefill(np.ones(10 * WINDOW, dtype="int64"))
    # exactly the window is fine
    assert fresh.prefill([1] * WINDOW).shape == (VOCAB,)


def test_decode_past_the_window(fresh):
    from codegen.runtime import RuntimeInputError

    fresh.prefill([2] * (WINDOW - 1))
    assert fresh.decode(3).shape == (VOCAB,)  # token WINDOW: still inside
    with pytest.raises(RuntimeInputError, match=rf"{WINDOW + 1} tokens would exceed the context window of {WINDOW}"):
        fresh.decode(4)
    # the refused step did not advance the sequence
    assert list(fresh.sequences.values()) == [WINDOW]


def test_batch_prefill_past_the_window_after_earlier_tokens(fresh):
    from codegen.runtime import RuntimeInputError

    seq = fresh.add_sequence()
    fresh.batch_prefill({seq: [1] * 40})
    with pytest.raises(RuntimeInputError, match=rf"sequence {seq}: 49 tokens would exceed"):
        fresh.batch_prefill({seq: [1] * 9})
    assert fresh.sequences == {seq: 40}


def test_generate_with_a_prompt_longer_than_the_window(fresh):
    from codegen.runtime import RuntimeInputError
    from codegen.runtime.sampling import SamplingError

    with pytest.raises(RuntimeInputError, match="would exceed the context window"):
        list(fresh.generate([1] * (WINDOW + 5), max_new_tokens=4))
    with pytest.raises(SamplingError, match="temperature must be a finite number >= 0"):
        list(fresh.generate([1], max_new_tokens=4, temperature=-1))
    with pytest.raises(SamplingError, match=r"top_p must be a number in \(0, 1\]"):
        list(fresh.generate([1], max_new_tokens=4, top_p=0))
    # generation stops at the window instead of decoding past it
    assert len(list(fresh.generate([1] * (WINDOW - 3), max_new_tokens=100))) == 3


def test_decode_before_prefill(fresh):
    from codegen.runtime import RuntimeInputError

    with pytest.raises(RuntimeInputError, match="decode needs a sequence: call prefill first"):
        fresh.decode(1)


def test_more_sequences_than_the_cache_holds(fresh):
    from codegen.runtime import RuntimeInputError

    ids = [fresh.add_sequence() for _ in range(fresh.max_batch_size)]
    assert len(set(ids)) == 4
    with pytest.raises(RuntimeInputError, match="the cache holds at most 4 sequences; remove one first"):
        fresh.add_sequence()
    fresh.remove_sequence(ids[0])
    assert fresh.add_sequence() == ids[0]


def test_unknown_and_duplicate_sequence_ids(fresh):
    from codegen.runtime import RuntimeInputError

    seq = fresh.add_sequence()
    fresh.batch_prefill({seq: [1, 2]})
    with pytest.raises(RuntimeInputError, match=r"sequence 99 does not exist; live sequences: \[0\]"):
        fresh.batch_decode({seq: 1, 99: 1})
    with pytest.raises(RuntimeInputError, match="sequence 7 does not exist"):
        fresh.batch_prefill({7: [1]})
    with pytest.raises(RuntimeInputError, match="sequence 5 does not exist"):
        fresh.remove_sequence(5)
    with pytest.raises(RuntimeInputError, match="sequence 'a' does not exist"):
        fresh.batch_decode({"a": 1})
    with pytest.raises(RuntimeInputError, match=rf"sequence id {seq} is already in use"):
        fresh.add_sequence(seq)
    for bad in (-1, "x", 1.5):
        with pytest.raises(RuntimeInputError, match=r"is invalid: use an integer in \[0, "):
            fresh.add_sequence(bad)
    # a refused batch leaves the good sequence untouched
    assert fresh.sequences == {seq: 2}


@pytest.mark.parametrize("size", [0, -3, 1.5, True])
def test_bad_cache_sizes(artifact, size):
    from codegen.runtime import Model, RuntimeInputError

    with pytest.raises(RuntimeInputError, match="max_batch_size must be a positive integer"):
        Model(artifact, max_batch_size=size)


def test_bad_total_sequence_length(artifact):
    from codegen.runtime import Model, RuntimeInputError

    with pytest.raises(RuntimeInputError, match="max_total_seq_len must be a positive integer"):
        Model(artifact, max_total_seq_len=-5)


# ----------------------------------------------------------------------------- artifacts that do not fit together


def test_unknown_device(artifact):
    from codegen.runtime import ArtifactError, Model

    with pytest.raises(ArtifactError, match="unknown device 'tpu'; choose one of: cpu, cuda"):
        Model(artifact, device="tpu")
    with pytest.raises(ArtifactError, match="compiled for llvm; it cannot run on device cuda"):
        Model(artifact, device="cuda")


def _edit_metadata(artifact: Path, edit) -> None:
    path = artifact / "metadata.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


@pytest.mark.parametrize(
    "label, edit, expected",
    [
        ("param shape", lambda m: m["params"][0]["shape"].__setitem__(0, 65), "parameters compiled into model.so"),
        ("param dropped", lambda m: m["params"].pop(), "parameters compiled into model.so"),
        ("param renamed", lambda m: m["params"][1].__setitem__("name", "x.weight"), "parameters compiled into model.so"),
        ("param dtype", lambda m: m["params"][2].__setitem__("dtype", "float16"), "parameters compiled into model.so"),
        # a larger vocabulary or window in metadata.json would let bad ids or positions through to the gathers
        ("vocab grown", lambda m: m["codegen"].__setitem__("vocab_size", 1000), "codegen.vocab_size"),
        ("window grown", lambda m: m.__setitem__("context_window_size", 4096), "context_window_size"),
        ("chunk grown", lambda m: m.__setitem__("prefill_chunk_size", 4096), "prefill_chunk_size"),
        ("config", lambda m: m["codegen"]["config"].__setitem__("num_hidden_layers", 3), "codegen.config.num_hidden_layers"),
        ("kv heads", lambda m: m["kv_cache"].__setitem__("num_key_value_heads", 4), "kv_cache.num_key_value_heads"),
        ("no codegen section", lambda m: m.pop("codegen"), "lacks the codegen section"),
    ],
)
def test_metadata_that_does_not_match_the_library(artifact_copy, label, edit, expected):
    from codegen.runtime import ArtifactError, Model

    _edit_metadata(artifact_copy, edit)
    with pytest.raises(ArtifactError) as info:
        Model(artifact_copy, device="cpu")
    message = str(info.value)
    assert "metadata.json" in message and expected in message, message


def test_metadata_that_claims_another_target(artifact_copy):
    from codegen.runtime import ArtifactError, Model

    _edit_metadata(artifact_copy, lambda m: m["codegen"].__setitem__("target", "cuda"))
    with pytest.raises(ArtifactError, match="this artifact was compiled for cuda; it cannot run on device cpu"):
        Model(artifact_copy, device="cpu")


def test_metadata_not_json_or_missing(artifact_copy):
    from codegen.runtime import ArtifactError, Model

    (artifact_copy / "metadata.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="metadata.json is not valid JSON"):
        Model(artifact_copy)
    (artifact_copy / "metadata.json").write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="metadata.json"):
        Model(artifact_copy)
    (artifact_copy / "metadata.json").unlink()
    with pytest.raises(ArtifactError, match="has no metadata.json: run `codegen compile"):
        Model(artifact_copy)


def test_library_missing_or_not_a_library(artifact_copy):
    from codegen.runtime import ArtifactError, Model

    (artifact_copy / "model.so").write_bytes(b"\x7fELF but not really")
    with pytest.raises(ArtifactError, match="model.so cannot be loaded"):
        Model(artifact_copy)
    (artifact_copy / "model.so").unlink()
    with pytest.raises(ArtifactError, match="has no model.so: run `codegen compile"):
        Model(artifact_copy)


def _edit_cache(artifact: Path, edit) -> None:
    path = artifact / "tensor-cache.json"
    index = json.loads(path.read_text())
    edit(index)
    path.write_text(json.dumps(index))


def _drop_record(index, name):
    for shard in index["records"]:
        shard["records"] = [r for r in shard["records"] if r["name"] != name]


def _find_record(index, name):
    return next(r for shard in index["records"] for r in shard["records"] if r["name"] == name)


@pytest.mark.parametrize(
    "label, edit, expected",
    [
        ("entry deleted", lambda i: _drop_record(i, "transformer.h.1.mlp.c_fc.bias"), r"lacks parameter 'transformer.h.1.mlp.c_fc.bias'"),
        ("shape altered", lambda i: _find_record(i, "transformer.ln_f.weight").__setitem__("shape", [16, 2]),
         r"parameter 'transformer.ln_f.weight' is float32\[16, 2\] in the tensor cache, the model needs float32\[32\]"),
        ("dtype altered", lambda i: _find_record(i, "transformer.ln_f.bias").update(dtype="float16", nbytes=64),
         r"parameter 'transformer.ln_f.bias' is float16\[32\]"),
        ("offset outside shard", lambda i: _find_record(i, "transformer.wte.weight").__setitem__("byteOffset", 10**9),
         r"transformer.wte.weight: offset/size in the index do not fit shard params_shard_0.bin"),
        ("negative offset", lambda i: _find_record(i, "transformer.wte.weight").__setitem__("byteOffset", -4),
         r"transformer.wte.weight: offset/size"),
        ("unknown encoding", lambda i: _find_record(i, "transformer.wpe.weight").__setitem__("format", "f32-to-bf16"),
         r"transformer.wpe.weight: encoding 'f32-to-bf16' is not supported"),
        ("unknown dtype", lambda i: _find_record(i, "transformer.wpe.weight").__setitem__("dtype", "int4"),
         r"transformer.wpe.weight: unsupported dtype 'int4'"),
        ("shard escapes", lambda i: i["records"][0].__setitem__("dataPath", "../../etc/passwd"),
         r"shard '../../etc/passwd' is missing or lies outside"),
        ("shard absolute", lambda i: i["records"][0].__setitem__("dataPath", "/etc/passwd"),
         r"shard '/etc/passwd' is missing or lies outside"),
        ("shard missing", lambda i: i["records"][0].__setitem__("dataPath", "params_shard_9.bin"),
         r"shard 'params_shard_9.bin' is missing"),
        ("shard size", lambda i: i["records"][0].__setitem__("nbytes", 12), r"shard params_shard_0.bin has \d+ bytes, the index says 12"),
        ("records not a list", lambda i: i.__setitem__("records", {"a": 1}), r"tensor-cache.json is malformed"),
        ("record lacks keys", lambda i: i["records"][0]["records"][0].pop("shape"), r"tensor-cache.json is malformed"),
    ],
)
def test_tensor_cache_that_does_not_match_the_model(artifact_copy, label, edit, expected):
    from codegen.runtime import Model
    from codegen.artifact.tensor_cache import TensorCacheError

    _edit_cache(artifact_copy, edit)
    with pytest.raises(TensorCacheError, match=expected):
        Model(artifact_copy)


def test_tensor_cache_shard_with_a_flipped_byte(artifact_copy):
    from codegen.runtime import Model
    from codegen.artifact.tensor_cache import TensorCacheError

    shard = artifact_copy / "params_shard_0.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(TensorCacheError, match="shard params_shard_0.bin fails its sha256 check: the file is damaged; convert again"):
        Model(artifact_copy)


def test_tensor_cache_missing_or_not_json(artifact_copy):
    from codegen.runtime import Model
    from codegen.artifact.tensor_cache import TensorCacheError

    (artifact_copy / "tensor-cache.json").write_text("{")
    with pytest.raises(TensorCacheError, match="tensor-cache.json is not valid JSON"):
        Model(artifact_copy)
    (artifact_copy / "tensor-cache.json").unlink()
    with pytest.raises(TensorCacheError, match="has no tensor-cache.json: run `codegen convert"):
        Model(artifact_copy)


def test_tensor_cache_symlinked_shard_outside(artifact_copy, tmp_path):
    from codegen.runtime import Model
    from codegen.artifact.tensor_cache import TensorCacheError

    outside = tmp_path / "elsewhere.bin"
    shard = artifact_copy / "params_shard_0.bin"
    shutil.move(shard, outside)
    shard.symlink_to(outside)
    with pytest.raises(TensorCacheError, match="shard 'params_shard_0.bin' is missing or lies outside"):
        Model(artifact_copy)
