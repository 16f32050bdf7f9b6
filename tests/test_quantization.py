"""Quantization schemes (specs/quantization/schemes.yaml) and the numpy group quantizer.

The schemes file fails like a model spec: one SpecError with file, line and key path. The quantizer
is checked against a straightforward reference written here with Python ints and scalar float32
arithmetic, on hand-made packing examples, and by round-trip properties on random inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from codegen.convert.quantize import QuantizeError, dequantize, quantize
from codegen.errors import CodegenError
from codegen.spec import SpecError
from codegen.spec.quantization import Scheme, UnknownScheme, load_schemes, scheme, schemes_path
from tests.support import REPO_ROOT

SCHEMES_FILE = REPO_ROOT / "specs" / "quantization" / "schemes.yaml"
BASE = SCHEMES_FILE.read_text()
GROUP_SCHEMES = ["q4f16_1", "q4f16_2", "q4f32_1", "q8f16_1", "q8f32_1"]


def edited(old: str, new: str) -> str:
    assert BASE.count(old) == 1, f"test edit {old!r} must match the schemes file exactly once"
    return BASE.replace(old, new)


def line_of(text: str, marker: str) -> int:
    assert text.count(marker) == 1, f"marker {marker!r} must occur once"
    return text.count("\n", 0, text.index(marker)) + 1


# ----------------------------------------------------------------------------- the schemes file


def test_the_shipped_schemes_load():
    assert schemes_path().resolve() == SCHEMES_FILE.resolve()
    schemes = load_schemes()
    assert sorted(schemes) == sorted(["q0f32", "q0f16", "q0bf16", *GROUP_SCHEMES])
    assert BASE.startswith("# yaml-language-server: $schema=schema.json\n")
    for name in ("q0f32", "q0f16", "q0bf16"):
        s = schemes[name]
        assert not s.quantized and s.bits is None and s.group_size is None and s.storage is None and s.scale_dtype is None
        assert s.keep == frozenset() and s.model_dtype == {"q0f32": "float32", "q0f16": "float16", "q0bf16": "bfloat16"}[name]
    for name in GROUP_SCHEMES:
        s = schemes[name]
        assert s.quantized and s.kind == "group" and s.group_size == 32 and s.storage == "uint32"
        assert s.scale_dtype == s.model_dtype == ("float16" if "f16" in name else "float32")
        assert (s.bits, s.codes_per_word, s.max_code) == ((4, 8, 7) if name.startswith("q4") else (8, 4, 127))
        assert s.keep == (frozenset({"embedding", "lm_head"}) if name == "q4f16_2" else frozenset())
        # float32 compute stays exact against the dequantized weights (tests/test_quantized_parity.py).
        assert s.cpu_activations == ("int8" if s.model_dtype == "float16" else "float")
        assert s.description and "\n" not in s.description
    assert scheme("q4f16_1") == schemes["q4f16_1"]


def test_the_schema_is_valid_json_schema():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(json.loads((SCHEMES_FILE.parent / "schema.json").read_text()))


def test_an_unknown_scheme_lists_the_known_ones():
    with pytest.raises(UnknownScheme) as error:
        scheme("q3f16_1")
    assert isinstance(error.value, CodegenError) and not isinstance(error.value, SpecError)
    assert "'q3f16_1'" in str(error.value) and "q0bf16, q0f16, q0f32, q4f16_1" in str(error.value)


def test_an_unquantized_scheme_has_no_codes():
    with pytest.raises(ValueError, match="q0f16 stores its weights unquantized"):
        scheme("q0f16").codes_per_word
    with pytest.raises(ValueError, match="q0f16"):
        scheme("q0f16").max_code


Q4F32 = "  q4f32_1:\n    kind: group\n    model_dtype: float32\n    bits: 4\n    group_size: 32\n"
Q8F32 = "  q8f32_1:\n    kind: group\n    model_dtype: float32\n    bits: 8\n    group_size: 32\n"

# (id, edit (old, new), expected key path, marker whose line is expected, words in the message)
CASES = [
    ("unknown key", ("    bits: 4\n    group_size: 32\n    storage: uint32\n    scale_dtype: float32\n",
                     "    bits: 4\n    group_size: 32\n    storage: uint32\n    scale_dtype: float32\n    zero_point: true\n"),
     ("schemes", "q4f32_1", "zero_point"), "zero_point", ["unknown key 'zero_point'", "allowed keys: bits, cpu_activations, description"]),
    ("unknown top-level key", ("schemes:\n", "version: 1\nschemes:\n"), ("version",), "version: 1", ["unknown key 'version'"]),
    ("bad bits", (Q4F32, Q4F32.replace("bits: 4", "bits: 3")),
     ("schemes", "q4f32_1", "bits"), "bits: 3", ["3 is not allowed; allowed values: 4, 8"]),
    ("bits not an integer", (Q4F32, Q4F32.replace("bits: 4", "bits: four")),
     ("schemes", "q4f32_1", "bits"), "bits: four", ["'four' is not of type integer"]),
    ("int4 group not a multiple of 8", (Q4F32, Q4F32.replace("group_size: 32", "group_size: 36")),
     ("schemes", "q4f32_1", "group_size"), "group_size: 36", ["group_size 36 must be a multiple of 8", "4-bit codes per uint32"]),
    ("int8 group not a multiple of 4", (Q8F32, Q8F32.replace("group_size: 32", "group_size: 30")),
     ("schemes", "q8f32_1", "group_size"), "group_size: 30", ["group_size 30 must be a multiple of 4"]),
    ("group size zero", (Q8F32, Q8F32.replace("group_size: 32", "group_size: 0")),
     ("schemes", "q8f32_1", "group_size"), "group_size: 0", ["0 is less than the minimum of 1"]),
    ("kind none with bits", ("    model_dtype: float16\n    description: Unquantized",
                             "    model_dtype: float16\n    bits: 4\n    description: Unquantized"),
     ("schemes", "q0f16", "bits"), "bits: 4\n    description: Unq", ["bits is not allowed with kind 'none'"]),
    ("kind none with keep", ("    model_dtype: float32\n    description: Unquantized",
                             "    model_dtype: float32\n    keep: [lm_head]\n    description: Unquantized"),
     ("schemes", "q0f32", "keep"), "keep: [lm_head]", ["keep is not allowed with kind 'none'"]),
    ("kind none with cpu activations", ("    model_dtype: float32\n    description: Unquantized",
                                        "    model_dtype: float32\n    cpu_activations: float\n    description: Unquantized"),
     ("schemes", "q0f32", "cpu_activations"), "cpu_activations: float", ["cpu_activations is not allowed with kind 'none'"]),
    ("bad cpu activations", (Q4F32 + "    storage: uint32\n    scale_dtype: float32\n",
                             Q4F32 + "    storage: uint32\n    scale_dtype: float32\n    cpu_activations: int4\n"),
     ("schemes", "q4f32_1", "cpu_activations"), "cpu_activations: int4", ["'int4' is not allowed; allowed values: float, int8"]),
    ("kind group without a scale dtype", (Q8F32 + "    storage: uint32\n    scale_dtype: float32\n", Q8F32 + "    storage: uint32\n"),
     ("schemes", "q8f32_1"), "q8f32_1:", ["missing required key 'scale_dtype'", "kind group"]),
    ("bad kind", ("  q0bf16:\n    kind: none", "  q0bf16:\n    kind: fp8"),
     ("schemes", "q0bf16", "kind"), "kind: fp8", ["'fp8' is not allowed; allowed values: none, group"]),
    ("bad model dtype", ("    model_dtype: bfloat16\n", "    model_dtype: float8\n"),
     ("schemes", "q0bf16", "model_dtype"), "model_dtype: float8", ["'float8' is not allowed", "float32, float16, bfloat16"]),
    ("bad storage", (Q4F32 + "    storage: uint32", Q4F32 + "    storage: uint16"),
     ("schemes", "q4f32_1", "storage"), "storage: uint16", ["'uint16' is not allowed; allowed values: uint32"]),
    ("bad keep role", ("keep: [embedding, lm_head]", "keep: [embedding, lm_haed]"),
     ("schemes", "q4f16_2", "keep", 1), "keep: [embedding, lm_haed]", ["'lm_haed' is not allowed; allowed values: embedding, lm_head"]),
    ("keep role twice", ("keep: [embedding, lm_head]", "keep: [lm_head, lm_head]"),
     ("schemes", "q4f16_2", "keep"), "keep: [lm_head, lm_head]", ["non-unique"]),
    ("duplicate key", ("    model_dtype: float32\n    description: Unquantized",
                       "    model_dtype: float32\n    model_dtype: float16\n    description: Unquantized"),
     ("schemes", "q0f32", "model_dtype"), "model_dtype: float16\n    description: Unquantized float32", ["duplicate key"]),
    ("duplicate scheme", ("  q4f16_2:\n", "  q4f16_1:\n"),
     ("schemes", "q4f16_1"), "q4f16_1:\n    kind: group\n    model_dtype: float16\n    bits: 4\n    group_size: 32\n    storage: uint32\n    scale_dtype: float16\n    keep: [e", ["duplicate key"]),
    ("bad scheme name", ("  q4f16_2:\n", "  q4x16_2:\n"),
     ("schemes", "q4x16_2"), "q4x16_2:", ["'q4x16_2' does not match the pattern"]),
    ("name disagrees with bits", ("  q8f32_1:\n", "  q4f32_9:\n"),
     ("schemes", "q4f32_9"), "q4f32_9:", ["the name says 4 bits, but the scheme has bits 8"]),
    ("name disagrees with dtype", ("  q8f32_1:\n", "  q8f16_9:\n"),
     ("schemes", "q8f16_9"), "q8f16_9:", ["the name says float16, but model_dtype is float32"]),
    ("description on two lines", ("Unquantized bfloat16 weights and compute.", "\"two\\nlines\""),
     ("schemes", "q0bf16", "description"), "description: \"two", ["does not match the pattern"]),
    ("invalid YAML", ("  q0f16:\n    kind: none", "  q0f16:\n    kind: [none"), (), "model_dtype: float16\n    description: Unquantized float16", ["invalid YAML"]),
]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_broken_schemes_name_file_line_and_key(tmp_path, case):
    _, (old, new), key_path, marker, words = case
    text = edited(old, new)
    path = tmp_path / "schemes.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as error:
        load_schemes(path)
    assert error.value.key_path == key_path, str(error.value)
    assert error.value.file.resolve() == path.resolve()
    assert error.value.line == line_of(text, marker), str(error.value)
    message = str(error.value)
    assert f"schemes.yaml:{error.value.line}:" in message
    for word in words:
        assert word in message


def test_no_schemes_at_all(tmp_path):
    path = tmp_path / "schemes.yaml"
    path.write_text("# nothing\nschemes: {}\n")
    with pytest.raises(SpecError) as error:
        load_schemes(path)
    assert (error.value.key_path, error.value.line) == (("schemes",), 2)


def test_imports_neither_tvm_nor_the_compiler():
    code = (
        "import json, sys\nimport codegen.spec.quantization, codegen.convert.quantize\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    modules = json.loads(done.stdout.splitlines()[-1])
    assert [m for m in modules if m == "tvm" or m.startswith(("tvm.", "tvm_ffi", "codegen.build", "jinja2", "black", "torch"))] == []


# ----------------------------------------------------------------------------- the quantizer


def reference(weight: np.ndarray, s: Scheme) -> tuple[list[list[int]], list[list[float]], list[list[int]]]:
    """(codes, stored scales as floats, packed words), one element at a time with Python ints.

    float(np.float32(a / b)) is the correctly rounded float32 quotient of two float32 values (the
    double quotient rounded once more to float32 is the same); Python's round() is half to even.
    """
    max_code, per_word = 2 ** (s.bits - 1) - 1, 32 // s.bits
    to_scale = ml_dtypes.bfloat16 if s.scale_dtype == "bfloat16" else np.dtype(s.scale_dtype).type
    rows, k = weight.shape
    codes, scales, words = [], [], []
    for r in range(rows):
        row_codes, row_scales = [], []
        for g in range(k // s.group_size):
            values = [float(np.float32(weight[r, g * s.group_size + i])) for i in range(s.group_size)]
            amax = max(abs(v) for v in values)
            stored = float(to_scale(float(np.float32(amax / max_code))))
            row_scales.append(stored)
            for v in values:
                code = max_code if stored == 0 else round(float(np.float32(v / stored))) + max_code
                row_codes.append(min(max(code, 0), 2 * max_code))
        row_words = []
        for i in range(k // per_word):
            word = 0
            for j in range(per_word):
                word |= row_codes[i * per_word + j] << (j * s.bits)
            row_words.append(word)
        codes.append(row_codes)
        scales.append(row_scales)
        words.append(row_words)
    return codes, scales, words


def with_scale(name: str, scale_dtype: str) -> Scheme:
    import dataclasses

    return dataclasses.replace(scheme(name), scale_dtype=scale_dtype)


REFERENCE_SCHEMES = [
    scheme("q4f16_1"), scheme("q4f32_1"), scheme("q8f16_1"), scheme("q8f32_1"),
    with_scale("q4f16_1", "bfloat16"), with_scale("q8f16_1", "bfloat16"),
]


def _ids(s: Scheme) -> str:
    return f"{s.name}-{s.scale_dtype}"


def awkward_matrix(rows: int, k: int, seed: int, dtype) -> np.ndarray:
    """Random values plus the cases that matter: zero groups, exact halves, tiny groups, one outlier."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, k)) * rng.choice([1e-3, 1.0, 30.0], size=(rows, 1))).astype(dtype)
    w[0, :32] = 0
    if rows > 1:
        w[1, :32] = np.arange(32) * 0.5 - 7.0  # amax 8.5 after the outlier below; many .5 quotients
        w[1, 5] = 8.5
    if rows > 2:
        w[2, 32:64] = 1e-7  # float16 scale underflows to 0
    return w


@pytest.mark.parametrize("s", REFERENCE_SCHEMES, ids=_ids)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, ml_dtypes.bfloat16], ids=["w16", "w32", "wbf16"])
def test_codes_and_scales_equal_the_reference(s, dtype):
    w = awkward_matrix(5, 96, seed=s.bits + len(s.scale_dtype), dtype=dtype)
    q_weight, q_scale = quantize(w, s)
    codes, scales, words = reference(w, s)
    assert q_weight.dtype == np.uint32 and q_weight.shape == (5, 96 // s.codes_per_word)
    assert q_scale.dtype.name == s.scale_dtype and q_scale.shape == (5, 3)
    assert q_scale.astype(np.float64).tolist() == scales
    assert q_weight.tolist() == words
    unpacked = [[(int(word) >> (j * s.bits)) & ((1 << s.bits) - 1) for word in row for j in range(s.codes_per_word)] for row in q_weight]
    assert unpacked == codes


def test_int4_packing_order():
    s = scheme("q4f32_1")
    w = np.zeros((2, 32), np.float32)
    w[0, :8] = np.arange(8) - 7.0  # codes 0..7 with scale 1
    w[1, :8] = 7.0 - np.arange(8)  # codes 14..7
    w[1, 8] = 1.0  # code 8, first of the second word
    q_weight, q_scale = quantize(w, s)
    assert q_scale.tolist() == [[1.0], [1.0]]
    assert [hex(x) for x in q_weight[0]] == ["0x76543210"] + ["0x77777777"] * 3
    assert [hex(x) for x in q_weight[1]] == ["0x789abcde", "0x77777778", "0x77777777", "0x77777777"]


def test_int8_packing_order():
    s = scheme("q8f32_1")
    w = np.zeros((1, 32), np.float32)
    w[0, :4] = np.array([0x10, 0x20, 0x30, 0x40]) - 127.0
    w[0, 4] = -127.0  # code 0: fixes the scale at 1
    w[0, 31] = 127.0  # code 254 in the top byte of the last word
    q_weight, q_scale = quantize(w, s)
    assert q_scale.tolist() == [[1.0]]
    assert [hex(x) for x in q_weight[0]] == ["0x40302010", "0x7f7f7f00", *["0x7f7f7f7f"] * 5, "0xfe7f7f7f"]


@pytest.mark.parametrize("name", ["q4f16_1", "q8f32_1"])
def test_all_zero_groups(name):
    s = scheme(name)
    w = np.zeros((3, 64), np.float16)
    w[1, 40] = -2.0
    q_weight, q_scale = quantize(w, s)
    filler = sum(s.max_code << (j * s.bits) for j in range(s.codes_per_word))
    assert q_scale.astype(np.float32).tolist() == [[0, 0], [0, np.float32(2 / s.max_code).astype(s.scale_dtype)], [0, 0]]
    assert (q_weight[[0, 2]] == filler).all() and (q_weight[1, : 32 // s.codes_per_word] == filler).all()
    restored = dequantize(q_weight, q_scale, s)
    assert not np.isnan(restored).any() and (restored[[0, 2]] == 0).all()
    assert restored[1, 40] == pytest.approx(-2.0, rel=1e-3)


def test_rounding_is_half_to_even():
    s = scheme("q4f32_1")
    w = np.zeros((1, 32), np.float32)
    w[0, :5] = [7.0, 0.5, 1.5, 2.5, -0.5]  # scale 1
    q_weight, _ = quantize(w, s)
    assert [(int(q_weight[0, 0]) >> (4 * j)) & 15 for j in range(5)] == [14, 7, 9, 9, 7]


@pytest.mark.parametrize(
    "weight, name, words",
    [
        (np.zeros((4, 40), np.float16), "q4f16_1", ["(4, 40)", "q4f16_1", "K = 40 is not a multiple of its group_size 32"]),
        (np.zeros((2, 48), np.float32), "q8f32_1", ["(2, 48)", "q8f32_1", "group_size 32"]),
        (np.zeros(64, np.float16), "q4f16_1", ["(64,)", "q4f16_1", "must be 2-D"]),
        (np.zeros((2, 2, 32), np.float16), "q4f16_1", ["(2, 2, 32)", "must be 2-D"]),
        (np.zeros((2, 32), np.int8), "q4f16_1", ["(2, 32)", "dtype int8 is not floating"]),
        (np.zeros((2, 32), np.float16), "q0f16", ["(2, 32)", "q0f16", "unquantized in float16"]),
        (np.full((2, 32), np.inf, np.float32), "q4f32_1", ["(2, 32)", "q4f32_1", "inf or NaN"]),
        (np.full((2, 32), np.nan, np.float16), "q4f16_1", ["inf or NaN"]),
        (np.full((2, 32), 1e6, np.float32), "q4f16_1", ["(2, 32)", "q4f16_1", "past the range of float16"]),
    ],
    ids=["K not a multiple", "int8 K not a multiple", "1-D", "3-D", "integer", "unquantized scheme", "inf", "nan", "scale overflow"],
)
def test_weights_a_scheme_cannot_take(weight, name, words):
    with pytest.raises(QuantizeError) as error:
        quantize(weight, scheme(name))
    assert isinstance(error.value, CodegenError)
    for word in words:
        assert word in str(error.value)


def test_dequantize_refuses_mismatched_inputs():
    s = scheme("q4f16_1")
    q_weight, q_scale = quantize(np.ones((2, 64), np.float16), s)
    with pytest.raises(QuantizeError, match="uint32 codes and float16 scales"):
        dequantize(q_weight, q_scale.astype(np.float32), s)
    with pytest.raises(QuantizeError, match=r"\[out, K // 8\] and \[out, K // 32\]"):
        dequantize(q_weight[:, :4], q_scale, s)
    with pytest.raises(QuantizeError, match="unquantized"):
        dequantize(q_weight, q_scale, scheme("q0f16"))


def check_round_trip(w: np.ndarray, s: Scheme) -> None:
    """|dequantize - w| <= scale / 2, and quantizing the dequantized matrix gives the same codes."""
    q_weight, q_scale = quantize(w, s)
    restored = dequantize(q_weight, q_scale, s)
    assert restored.dtype == np.float32 and restored.shape == w.shape
    # A group whose scale is a normal number (or whose weights are all zero) is within scale / 2;
    # a subnormal scale has too few bits for that, and one that underflows to 0 restores zeros.
    tiny = np.finfo(ml_dtypes.bfloat16 if s.scale_dtype == "bfloat16" else s.scale_dtype).tiny
    stored = q_scale.astype(np.float32)
    exact = w.astype(np.float32)
    amax = np.abs(exact).reshape(*stored.shape, s.group_size).max(axis=-1)
    normal = (stored >= tiny) | (amax == 0)
    bound = np.where(normal, stored * np.float32(0.5 + 1e-5), np.float32(s.max_code * tiny))
    assert (np.abs(restored - exact) <= np.repeat(bound, s.group_size, axis=1)).all()
    # Those groups always reach a code at the edge (0 or 2 * max_code), so their scale comes back
    # and so do all their codes.
    again_weight, again_scale = quantize(restored, s)
    again = again_scale.astype(np.float32)
    assert np.allclose(again[normal], stored[normal], rtol=2 ** -22, atol=0)
    if s.scale_dtype != "float32":  # max_code * scale is exact in float32: the scale itself comes back
        assert (again[normal] == stored[normal]).all()
    words_per_group = s.group_size // s.codes_per_word
    same = np.repeat(normal, words_per_group, axis=1)
    assert (again_weight[same] == q_weight[same]).all()


@pytest.mark.parametrize("s", REFERENCE_SCHEMES, ids=_ids)
def test_round_trip(s):
    check_round_trip(awkward_matrix(16, 256, seed=3, dtype=np.float16), s)


@given(
    data=st.data(),
    s=st.sampled_from(REFERENCE_SCHEMES),
    rows=st.integers(1, 5),
    groups=st.integers(1, 3),
    width=st.sampled_from([16, 32]),
)
def test_random_weights_match_the_reference_and_round_trip(data, s, rows, groups, width):
    limit = 60000.0 if width == 16 else 4e5  # keeps max|w| / max_code inside float16
    elements = st.floats(-limit, limit, width=width, allow_nan=False, allow_infinity=False)
    w = data.draw(hnp.arrays(np.float16 if width == 16 else np.float32, (rows, groups * s.group_size), elements=elements))
    q_weight, q_scale = quantize(w, s)
    _, scales, words = reference(w, s)
    assert q_weight.tolist() == words and q_scale.astype(np.float64).tolist() == scales
    check_round_trip(w, s)


def test_a_layer_sized_matrix_is_fast():
    w = np.random.default_rng(0).standard_normal((768, 3072)).astype(np.float16)
    s = scheme("q4f16_1")
    quantize(w[:8], s)
    start = time.perf_counter()
    q_weight, q_scale = quantize(w, s)
    dequantize(q_weight, q_scale, s)
    assert time.perf_counter() - start < 1.0


def test_memory_stays_within_two_float32_copies():
    """A matrix of two row blocks: the peak stays under two float32 copies of the whole of it."""
    w = np.random.default_rng(1).standard_normal((4096, 2048)).astype(np.float16)
    tracemalloc.start()
    try:
        quantize(w, scheme("q4f16_1"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 4 * w.size, f"peak {peak / 2**20:.1f} MiB"


def test_layout_of_the_input_does_not_matter():
    w = awkward_matrix(6, 64, seed=7, dtype=np.float32)
    s = scheme("q4f16_1")
    expected = quantize(w, s)
    for variant in (np.asfortranarray(w), w.astype(np.float64), w.tolist()):
        got = quantize(variant, s)
        assert (got[0] == expected[0]).all() and (got[1] == expected[1]).all()
