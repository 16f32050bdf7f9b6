"""The runtime's bookkeeping stays true to TVM's KV cache, whatever a call does or how it fails.

Every call completes or leaves the model as it was. Limits are refused in Python before TVM sees
them; if TVM still fails inside a call, what it took is popped again, or the sequences whose state
TVM left half-updated are lost and refuse every use until removed. Correctness is always judged the
same way: a sequence's logits must equal a fresh single-sequence run of its token history.

One tiny GPTBigCode (vocab 64, 32 wide, 2 layers, window 48, prefill chunk 16) is compiled per
module, plus one with a 96-token chunk for the library's own batch limit. Failures inside TVM that
the Python checks now prevent are made to happen by `tvm_fails`, which lets TVM do its work and then
raises, the worst case for the bookkeeping.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tvm
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from tests.support import random_hf_model, save_hf_model

pytestmark = pytest.mark.slow

VOCAB = 64
WINDOW = 48
CHUNK = 16
PAGE = 16
SPEC = "specs/gpt_bigcode.yaml"
TOLERANCE = 1e-5


def _tiny(tmp_path_factory, positions: int) -> Path:
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    hf = random_hf_model(
        GPTBigCodeConfig, GPTBigCodeForCausalLM, vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
        n_positions=positions, multi_query=True,
    )
    return save_hf_model(hf, tmp_path_factory.mktemp(f"tiny-bigcode-{positions}"))


@pytest.fixture(scope="module")
def artifact(artifacts, tmp_path_factory) -> Path:
    return artifacts.build(SPEC, _tiny(tmp_path_factory, WINDOW), prefill_chunk_size=CHUNK)


@pytest.fixture(scope="module")
def reference(artifact):
    """A second model on the same artifact: the fresh single-sequence run every result is held to."""
    from codegen.runtime import Model

    return Model(artifact, max_batch_size=1)


@pytest.fixture(scope="module")
def expect(reference):
    def check(logits: np.ndarray, history: list[int]) -> None:
        assert float(np.max(np.abs(logits - reference.prefill(history)))) <= TOLERANCE, history

    return check


def prompt(seed: int, length: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, VOCAB, length)]


class Fault(RuntimeError):
    """What `tvm_fails` raises inside TVM's calls."""


@contextlib.contextmanager
def tvm_fails(model, where: str, at_pass: int = 0):
    """Pass number ``at_pass`` of the model's forward passes fails at ``where`` ("begin_forward" or
    "compute", the compiled function) after the real call did its work."""
    real_begin, real_functions = model._kv["begin_forward"], model._functions
    passes = []

    def begin_forward(*args):
        real_begin(*args)
        passes.append(None)
        if where == "begin_forward" and len(passes) - 1 == at_pass:
            raise Fault("begin_forward failed")

    def failing(name, function):
        def run(*args):
            result = function(*args)
            if name != "embed" and where == "compute" and len(passes) - 1 == at_pass:
                raise Fault(f"{name} failed")
            return result

        return run

    model._kv["begin_forward"] = begin_forward
    model._functions = {name: failing(name, function) for name, function in real_functions.items()}
    try:
        yield
    finally:
        model._kv["begin_forward"], model._functions = real_begin, real_functions


def tvm_length(model, seq_id: int) -> int:
    return tvm.get_global_func("vm.builtin.attention_kv_cache_get_sequence_length")(model.kv_cache, seq_id)


# ----------------------------------------------------------------------------- limits of the constructor


def test_batch_size_above_the_prefill_chunk_is_refused(artifact, expect):
    """A 20-sequence batch_decode with a 16-token chunk used to raise and leave lengths off by one."""
    from codegen.runtime import Model, RuntimeInputError

    for size in (20, 300):
        with pytest.raises(RuntimeInputError, match=f"max_batch_size {size} exceeds the prefill chunk size 16 of this library"):
            Model(artifact, max_batch_size=size)
    model = Model(artifact, max_batch_size=CHUNK)  # the limit itself works
    ids = [model.add_sequence() for _ in range(CHUNK)]
    model.batch_prefill({s: prompt(s, 2) for s in ids})
    out = model.batch_decode({s: s for s in ids})
    for s in ids:
        expect(out[s], prompt(s, 2) + [s])


def test_batch_size_above_the_library_limit_is_refused(artifacts, tmp_path_factory):
    from codegen.artifact.contract import MAX_BATCH_SIZE
    from codegen.runtime import Model, RuntimeInputError

    wide = artifacts.build(SPEC, _tiny(tmp_path_factory, 96))  # prefill chunk 96 > 80
    with pytest.raises(RuntimeInputError, match=f"max_batch_size 81 exceeds the max_batch_size {MAX_BATCH_SIZE} of this library"):
        Model(wide, max_batch_size=MAX_BATCH_SIZE + 1)
    model = Model(wide, max_batch_size=MAX_BATCH_SIZE)
    ids = [model.add_sequence() for _ in range(MAX_BATCH_SIZE)]
    model.batch_prefill({s: [s % VOCAB] for s in ids})
    assert len(model.batch_decode({s: 1 for s in ids})) == MAX_BATCH_SIZE


def test_total_length_the_cache_cannot_address_is_refused(artifact):
    """2**31 - 1 tokens used to reach TVM and die in std::bad_alloc."""
    from codegen.runtime import Model, RuntimeInputError

    with pytest.raises(RuntimeInputError, match=r"max_total_seq_len 2147483647 exceeds 2147483632, the most the KV cache can address"):
        Model(artifact, max_total_seq_len=2**31 - 1)


def test_total_length_beyond_the_memory_of_the_machine_is_refused(artifact):
    from codegen.runtime import Model, RuntimeInputError

    largest = 2**31 - PAGE
    needed = (largest // PAGE + 1) * PAGE * 2 * 2 * 1 * 8 * 4  # pages x layers x K,V x heads x head_dim x float32
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed <= memory:
        pytest.skip(f"this machine has {memory / 2**30:.0f} GiB, enough for the largest cache")
    with pytest.raises(RuntimeInputError, match=rf"max_total_seq_len {largest} needs a KV cache of 256.0 GiB, more than the .* GiB of memory of this cpu device"):
        Model(artifact, max_total_seq_len=largest)


def test_weights_without_hash_check_warn(artifact, tmp_path):
    from codegen.artifact.tensor_cache import TensorCacheError
    from codegen.runtime import Model

    copy = Path(shutil.copytree(artifact, tmp_path / "artifact"))
    shard = copy / "params_shard_0.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(TensorCacheError, match="fails its sha256 check"):
        Model(copy)
    with pytest.warns(UserWarning, match="the sha256 hashes of the weights in .* are not checked"):
        model = Model(copy, verify_sha256=False)
    assert model.prefill([1, 2, 3]).shape == (VOCAB,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Model(artifact)  # checked: no warning


# ----------------------------------------------------------------------------- capacity


def test_decode_over_the_total_length_is_refused(artifact, expect):
    """Two 16-token sequences in a 32-token cache: the decode used to fail inside TVM ("The KV cache
    is full") and leave the survivor's next logits off by 0.41."""
    from codegen.runtime import Model, RuntimeInputError

    model = Model(artifact, max_batch_size=2, max_total_seq_len=32)
    a, b = model.add_sequence(), model.add_sequence()
    model.batch_prefill({a: prompt(1, 16), b: prompt(2, 16)})
    with pytest.raises(RuntimeInputError, match="the KV cache would hold 34 tokens, more than max_total_seq_len 32"):
        model.batch_decode({a: 3, b: 4})
    with pytest.raises(RuntimeInputError, match="would hold 33 tokens"):
        model.batch_decode({a: 3})
    assert model.sequences == {a: 16, b: 16} and tvm_length(model, a) == 16
    model.remove_sequence(b)
    expect(model.batch_decode({a: 5})[a], prompt(1, 16) + [5])


def test_pages_are_counted(artifact, expect):
    """Each sequence takes whole 16-token pages: 35 tokens fit in 40, but not in 4 pages."""
    from codegen.runtime import Model, RuntimeInputError

    model = Model(artifact, max_batch_size=3, max_total_seq_len=40)  # TVM: 40 / 16 -> 3 pages, plus 1
    a, b, c = (model.add_sequence() for _ in range(3))
    model.batch_prefill({a: prompt(1, 17), b: prompt(2, 17)})
    with pytest.raises(RuntimeInputError, match=r"the KV cache has 0 free pages of 16 tokens, this call needs 1 \(each sequence takes whole pages; max_total_seq_len 40\)"):
        model.batch_prefill({c: [3]})
    assert model.sequences == {a: 17, b: 17, c: 0}
    model.remove_sequence(a)
    expect(model.batch_prefill({c: [3]})[c], [3])
    expect(model.batch_decode({b: 9})[b], prompt(2, 17) + [9])


def test_batch_prefill_over_capacity_changes_nothing(artifact, expect):
    """Three 40-token prompts in a 96-token cache used to raise after taking {40, 40, 16} tokens."""
    from codegen.runtime import Model, RuntimeInputError

    model = Model(artifact, max_batch_size=3, max_total_seq_len=96)
    ids = [model.add_sequence() for _ in range(3)]
    prompts = {s: prompt(s, 40) for s in ids}
    with pytest.raises(RuntimeInputError, match="the KV cache would hold 120 tokens, more than max_total_seq_len 96"):
        model.batch_prefill(prompts)
    assert model.sequences == dict.fromkeys(ids, 0) and [tvm_length(model, s) for s in ids] == [0, 0, 0]
    expect(model.batch_prefill({ids[2]: prompts[ids[2]]})[ids[2]], prompts[ids[2]])


# ----------------------------------------------------------------------------- failures inside TVM


def test_failure_in_a_later_chunk_rolls_back_or_loses_sequences(artifact, expect, monkeypatch):
    """With the Python check switched off, TVM itself runs out of pages in the 7th of 8 chunks. The
    sequences it finished are popped back; the one it was filling is lost, clearly."""
    from codegen.runtime import Model, RuntimeInputError

    model = Model(artifact, max_batch_size=3, max_total_seq_len=96)
    a, b, c = (model.add_sequence() for _ in range(3))
    prompts = {s: prompt(s, 40) for s in (a, b, c)}
    with monkeypatch.context() as patch:
        patch.setattr(model, "_check_room", lambda *args, **kwargs: None)
        with pytest.raises(tvm.error.InternalError, match="The KV cache is full"):
            model.batch_prefill(prompts)
    assert model.sequences == {a: 0, b: 0}
    assert tvm_length(model, a) == tvm_length(model, b) == 0
    lost = f"sequence {c} was lost by an earlier failure inside TVM; remove it with remove_sequence\\({c}\\)"
    for call in (lambda: model.batch_decode({c: 1}), lambda: model.batch_prefill({a: [1], c: [1]})):
        with pytest.raises(RuntimeInputError, match=lost):
            call()
    out = model.batch_prefill({a: prompts[a], b: prompts[b]})
    expect(out[a], prompts[a])
    expect(out[b], prompts[b])
    model.remove_sequence(c)
    model.remove_sequence(a)
    assert model.add_sequence(c) == c
    expect(model.batch_prefill({c: prompts[c]})[c], prompts[c])


@pytest.mark.parametrize("at_pass", [0, 3])
def test_compiled_function_failure_in_batch_prefill_is_popped(artifact, expect, at_pass):
    from codegen.runtime import Model

    model = Model(artifact, max_batch_size=3)
    ids = [model.add_sequence() for _ in range(3)]
    model.batch_prefill({ids[0]: [5, 6]})
    prompts = {s: prompt(s, 20) for s in ids}
    with tvm_fails(model, "compute", at_pass), pytest.raises(Fault):
        model.batch_prefill(prompts)
    assert model.sequences == {ids[0]: 2, ids[1]: 0, ids[2]: 0}
    assert [tvm_length(model, s) for s in ids] == [2, 0, 0]
    out = model.batch_prefill(prompts)
    expect(out[ids[0]], [5, 6] + prompts[ids[0]])
    for s in ids[1:]:
        expect(out[s], prompts[s])


def test_decode_that_fails_inside_tvm(artifact, expect):
    """A failing compiled decode is popped; a failing begin_forward loses its sequences, clearly."""
    from codegen.runtime import Model, RuntimeInputError

    model = Model(artifact, max_batch_size=3)
    a, b, c = (model.add_sequence() for _ in range(3))
    model.batch_prefill({a: [1, 2], b: [3], c: [4]})
    for batch in ({a: 7}, {a: 7, b: 8}):
        with tvm_fails(model, "compute"), pytest.raises(Fault):
            model.batch_decode(batch)
    assert model.sequences == {a: 2, b: 1, c: 1} and tvm_length(model, a) == 2
    expect(model.batch_decode({a: 9})[a], [1, 2, 9])

    with tvm_fails(model, "begin_forward"), pytest.raises(Fault):
        model.batch_decode({a: 7, b: 8})
    assert model.sequences == {c: 1}
    for seq_id in (a, b):
        with pytest.raises(RuntimeInputError, match=f"sequence {seq_id} was lost by an earlier failure inside TVM"):
            model.batch_decode({seq_id: 1})
    with pytest.raises(RuntimeInputError, match="the cache holds at most 3 sequences"):
        model.add_sequence()  # lost sequences hold their slots until removed
    expect(model.batch_decode({c: 5})[c], [4, 5])
    model.remove_sequence(a)
    assert model.add_sequence() == a
    expect(model.batch_prefill({a: [1, 2]})[a], [1, 2])


# ----------------------------------------------------------------------------- types of ids and tokens


def test_sequence_ids(artifact, expect):
    from codegen.runtime import Model, RuntimeInputError

    model = Model(artifact, max_batch_size=4)
    for bad in (True, False, 1.0, "1", -1, 2**63, np.float64(2)):
        with pytest.raises(RuntimeInputError, match=re.escape(f"sequence id {bad!r} is invalid: use an integer in")):
            model.add_sequence(bad)
    seq = model.add_sequence(np.int64(3))
    assert seq == 3 and type(seq) is int and model.sequences == {3: 0}
    with pytest.raises(RuntimeInputError, match="sequence id 3 is already in use"):
        model.add_sequence(np.uint8(3))
    one = model.add_sequence(1)
    for bad in (True, 1.0, np.float32(1)):  # equal to 1, but not an id
        for call in (lambda: model.batch_prefill({bad: [1]}), lambda: model.batch_decode({bad: 1}), lambda: model.remove_sequence(bad)):
            with pytest.raises(RuntimeInputError, match=re.escape(f"sequence {bad!r} does not exist")):
                call()
    out = model.batch_prefill({np.int32(3): [1, 2], one: [3]})
    assert all(type(s) is int for s in out)
    expect(out[3], [1, 2])
    expect(model.batch_decode({np.int64(3): np.int16(4)})[3], [1, 2, 4])
    model.remove_sequence(np.int64(3))
    assert model.sequences == {1: 1}


def test_token_lists(artifact, expect):
    from codegen.runtime import Model, RuntimeInputError

    model = Model(artifact, max_batch_size=2)
    seq = model.add_sequence()
    for bad, kind in ((b"\x01\x02", "bytes"), ("12", "str"), ({1, 2}, "set"), ({1: 2}, "dict"), (np.ones((1, 2), "int64"), "ndarray"), (iter([1, 2]), "list_iterator"), (5, "int")):
        with pytest.raises(RuntimeInputError, match=f"sequence {seq}: tokens must be a list, tuple or 1-D numpy array of integers, not {kind}"):
            model.batch_prefill({seq: bad})
    for bad in ([1, True], [1, 2.0], (np.float32(1),), np.array([1.5])):
        with pytest.raises(RuntimeInputError, match="is outside the vocabulary"):
            model.batch_prefill({seq: bad})
    assert model.sequences == {seq: 0}
    for tokens in ((1, 2), np.array([1, 2], dtype="uint8"), [np.int64(1), np.int32(2)]):
        expect(model.prefill(tokens), [1, 2])


def test_prefill_checks_before_it_replaces_the_sequence(artifact, expect):
    """prefill(5) used to remove the previous sequence and then fail with a raw TypeError."""
    from codegen.runtime import Model, RuntimeInputError

    model = Model(artifact, max_batch_size=1, max_total_seq_len=WINDOW)
    model.prefill([1, 2, 3])
    for bad, message in ((5, "not int"), (b"ab", "not bytes"), ([1] * (WINDOW + 1), "would exceed the context window"), ([VOCAB], "outside the vocabulary")):
        with pytest.raises(RuntimeInputError, match=message):
            model.prefill(bad)
        with pytest.raises(RuntimeInputError, match=message):
            list(model.generate(bad, max_new_tokens=2))
    assert model.sequences == {0: 3}
    expect(model.decode(4), [1, 2, 3, 4])
    expect(model.prefill([5] * WINDOW), [5] * WINDOW)  # the replaced sequence's room is reused


# ----------------------------------------------------------------------------- stateful property


MAX_SEQUENCES = 4
MAX_TOTAL = 64  # 4 pages + TVM's spare one: several short sequences run out of pages before tokens


def _pages(tokens: int) -> int:
    return -(-tokens // PAGE)


class RuntimeMachine(RuleBasedStateMachine):
    """Random adds, removes, prefills and decodes, valid or not, some failing inside TVM.

    ``history`` holds each live sequence's tokens; every logits row a call returns must match the
    reference run of that history, and a refused call must change nothing.
    """

    def __init__(self, model, reference):
        super().__init__()
        self.model, self.reference = model, reference
        model.reset()
        self.history: dict[int, list[int]] = {}
        self.lost: set[int] = set()
        self.fault: tuple[str, int] | None = None

    def ids(self, data) -> list:
        """Mostly live sequences; now and then a lost, an unknown (7) or a bool id too."""
        live = sorted(self.history)
        chosen = data.draw(st.lists(st.sampled_from(live), max_size=MAX_SEQUENCES, unique=True)) if live else []
        if not chosen or data.draw(st.integers(0, 5)) == 0:
            chosen.append(data.draw(st.sampled_from(sorted(self.lost) + [7, True])))
        return chosen

    def must_refuse(self, calls: dict) -> bool | None:
        """Whether the model has to refuse these appends (id -> tokens); None when it may go either way."""
        for seq_id, tokens in calls.items():
            if isinstance(seq_id, bool) or seq_id not in self.history:
                return True
            if any(isinstance(t, bool) or not 0 <= t < VOCAB for t in tokens) or len(self.history[seq_id]) + len(tokens) > WINDOW:
                return True
        lengths = {s: len(h) + len(calls.get(s, ())) for s, h in self.history.items()}
        if sum(lengths.values()) > MAX_TOTAL:
            return True
        if self.lost:
            return None  # the pages a lost sequence holds are not known
        return sum(_pages(n) for n in lengths.values()) > _pages(MAX_TOTAL) + 1

    def run(self, call, calls: dict) -> None:
        from codegen.runtime import RuntimeInputError

        refuse = self.must_refuse(calls)
        fault, self.fault = self.fault, None
        before = set(self.history)
        with tvm_fails(self.model, *fault) if fault else contextlib.nullcontext():
            try:
                out = call()
            except RuntimeInputError:
                assert refuse is not False, calls
                return
            except Fault:
                assert refuse is not True, calls
                newly_lost = before - set(self.model.sequences)
                assert newly_lost <= set(calls) and (fault[0] == "begin_forward" or not newly_lost)
                for seq_id in newly_lost:
                    self.lost.add(seq_id)
                    del self.history[seq_id]
                return
        assert refuse is not True, calls
        assert set(out) == set(calls)
        for seq_id, tokens in calls.items():
            self.history[seq_id] += tokens
            got = float(np.max(np.abs(out[seq_id] - self.reference.prefill(self.history[seq_id]))))
            assert got <= TOLERANCE, (seq_id, self.history[seq_id], got)

    @initialize()
    def two_sequences(self):
        for _ in range(2):
            self.history[self.model.add_sequence()] = []

    @rule(seq_id=st.none() | st.integers(0, 5) | st.sampled_from([True, 1.5, "2", -1]))
    def add(self, seq_id):
        from codegen.runtime import RuntimeInputError

        taken = set(self.history) | self.lost
        valid = seq_id is None or (type(seq_id) is int and seq_id >= 0 and seq_id not in taken)
        if len(taken) >= MAX_SEQUENCES or not valid:
            with pytest.raises(RuntimeInputError):
                self.model.add_sequence(seq_id)
        else:
            self.history[self.model.add_sequence(seq_id)] = []

    @rule(seq_id=st.integers(0, 5))
    def remove(self, seq_id):
        from codegen.runtime import RuntimeInputError

        if seq_id in self.history or seq_id in self.lost:
            self.model.remove_sequence(seq_id)
            self.history.pop(seq_id, None)
            self.lost.discard(seq_id)
        else:
            with pytest.raises(RuntimeInputError, match="does not exist"):
                self.model.remove_sequence(seq_id)

    @rule(data=st.data())
    def batch_prefill(self, data):
        tokens = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=data.draw(st.sampled_from([4, 20, 40])))
        calls = {seq_id: data.draw(tokens) for seq_id in self.ids(data)}
        if data.draw(st.integers(0, 9)) == 0:  # now and then one bad token
            seq_id = next(iter(calls))
            calls[seq_id] = calls[seq_id] + [data.draw(st.sampled_from([VOCAB, -1, True]))]
        self.run(lambda: self.model.batch_prefill(calls), calls)

    @rule(data=st.data())
    def batch_decode(self, data):
        calls = {seq_id: [data.draw(st.integers(0, VOCAB))] for seq_id in self.ids(data)}  # VOCAB is out of range
        self.run(lambda: self.model.batch_decode({s: t[0] for s, t in calls.items()}), calls)

    @rule(where=st.sampled_from(["begin_forward", "compute"]), at_pass=st.integers(0, 2))
    def next_call_fails_inside_tvm(self, where, at_pass):
        self.fault = (where, at_pass)

    @invariant()
    def bookkeeping_matches_tvm(self):
        assert self.model.sequences == {s: len(h) for s, h in self.history.items()}
        for seq_id, history in self.history.items():
            assert tvm_length(self.model, seq_id) == len(history)
        if not self.lost:
            free = self.model._free_pages(self.model.kv_cache)
            assert free == _pages(MAX_TOTAL) + 1 - sum(_pages(len(h)) for h in self.history.values())


def test_any_sequence_of_calls_keeps_the_cache_true(artifact, reference):
    from codegen.runtime import Model

    model = Model(artifact, max_batch_size=MAX_SEQUENCES, max_total_seq_len=MAX_TOTAL)
    run_state_machine_as_test(
        lambda: RuntimeMachine(model, reference),
        settings=settings(max_examples=30, stateful_step_count=20, deadline=None),
    )
