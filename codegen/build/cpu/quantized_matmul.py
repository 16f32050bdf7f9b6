"""The generated quantized matmul, rewritten for the CPU: factored for decode, widened for 16 bits.

Decode (one activation row). The generated model's `dequantize_matmul` computes
x[k] * ((code_k - max_code) * scale) per weight element: shift, mask, convert, subtract, scale and
FMA, which made the q4 decode kernel compute-bound (slower than the float32 one with 8x the bytes).
Summed word by word, with P codes per uint32 word w sharing one scale (a group spans whole words):

    y[n] = sum_w scale[n, w] * (sum_j x[w*P + j] * code_j(q[n, w])  -  max_code * sum_j x[w*P + j])

and code j read in place, q & (mask << bits*j) = code_j * 2^(bits*j) (exact in float32: at most
8 significant bits), against x pre-scaled by 2^(-bits*j), each code costs a mask, a conversion and
an FMA. The last code is shifted down instead: in place it would reach the sign bit, and the int32
conversion is the one with a vector instruction. The activation terms (x pre-scaled, -max_code * the
sum of each word's x) are computed once per call, in float32 whatever the model dtype (2^-28
underflows in float16). The sums are reassociated, so results differ from the generated kernel's at
float32 rounding (tests/test_quantized_kernels.py checks both against float64).

Prefill (many rows) in a 16-bit scheme (q4f16_1, ...): the generated kernel unpacks and sums in
float16, which x86 without AVX512-FP16 computes in float32 and rounds after every operation (6-8x
slower than float32, as build/cpu/half_precision.py explains for the plain matmuls). It is swapped
for the same kernel with a float32 weight and float32 sums, cast once at the end; the GEMM rule
(rules.QuantizedWeightMatmul) then widens the activations once and unpacks panels as for float32.

A scheme with `cpu_activations: int8` (the float16-compute ones) swaps both for
build/cpu/int8_dot.py's kernels instead, where the target has VNNI and the weight rows are whole
vectors of words.

Only the CPU build swaps kernels: dlight's GPU rules look for the generated kernel's blocks. The
blocks are named so that the rules in rules.py find them after fusion.
"""

from __future__ import annotations

import dataclasses

import tvm
import tvm_ffi
from tvm import te, tirx
from tvm.tirx.buffer import is_buffer_var

from codegen.build.cpu import int8_dot

SCALED_ACTIVATIONS = "x_scaled"
OFFSETS = "x_offsets"
WORD_DOTS = "word_dots"
MATMUL = "matmul"
BLOCKS = (SCALED_ACTIVATIONS, OFFSETS, WORD_DOTS, MATMUL)
_WORD_BITS = 32
_WIDE = "float32"


@dataclasses.dataclass(frozen=True)
class _Kernel:
    """What the generated kernel computes: x [.., K] @ dequantize(q [N, K/P], s [N, G])^T."""

    x: tirx.Buffer
    words: tirx.Buffer
    scales: tirx.Buffer
    out: tirx.Buffer
    max_code: float

    @property
    def codes_per_word(self) -> int:
        return int(self.x.shape[-1]) // int(self.words.shape[1])

    @property
    def bits(self) -> int:
        return _WORD_BITS // self.codes_per_word

    @property
    def words_per_group(self) -> int:
        return int(self.words.shape[1]) // int(self.scales.shape[1])

    @property
    def one_row(self) -> bool:
        return all(isinstance(d, tirx.IntImm) and int(d) == 1 for d in self.x.shape[:-1])


def rewrite_quantized_matmuls(int8_dot_threads: int | None = None) -> tvm.transform.Pass:
    """Given `int8_dot_threads`, each generated dequantize_matmul PrimFunc build/cpu/int8_dot.py
    takes replaced by its kernel; each other of one static row by the factored kernel, each other
    16-bit one by the same kernel computed in float32 (same parameters)."""

    @tvm.transform.module_pass(opt_level=0, name="CodegenRewriteQuantizedMatmuls")
    def rewrite(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for global_var, func in list(mod.functions.items()):
            kernel = _generated_quantized_matmul(func) if isinstance(func, tirx.PrimFunc) else None
            if kernel is None:
                continue
            if int8_dot_threads is not None and int8_dot.fits(kernel):
                replacement = int8_dot.int8_dot_kernel(kernel, int8_dot_threads)
            elif kernel.one_row:
                replacement = _factored(kernel)
            elif kernel.out.dtype != _WIDE:
                replacement = _widened(kernel)
            else:  # float32 prefill: the GEMM rule unpacks the generated kernel's panels as they are
                continue
            # create_prim_func names the function "main": an exported symbol FuseTIR would keep.
            replacement = replacement.without_attr("global_symbol")
            for key, value in (func.attrs or {}).items():
                replacement = replacement.with_attr(key, value)
            mod[global_var] = replacement
        return mod

    return rewrite


def _generated_quantized_matmul(func: tirx.PrimFunc) -> _Kernel | None:
    """The kernel's operands if `func` is the generated dequantize_matmul (rows may be symbolic)."""
    if len(func.params) != 4 or not all(is_buffer_var(p) for p in func.params):
        return None
    x, words, scales, out = func.params
    static = all(isinstance(d, tirx.IntImm) for b in (words, scales) for d in b.shape)
    if not static or words.dtype != "uint32" or len(words.shape) != 2 or len(scales.shape) != 2:
        return None
    if len(x.shape) != len(out.shape) or not all(isinstance(b.shape[-1], tirx.IntImm) for b in (x, out)):
        return None
    k, (n, word_count), group_count = int(x.shape[-1]), (int(d) for d in words.shape), int(scales.shape[1])
    if int(out.shape[-1]) != n or int(scales.shape[0]) != n or k % word_count or word_count % group_count:
        return None
    per_word = k // word_count
    if per_word < 2 or _WORD_BITS % per_word:
        return None
    blocks = _block_names(func)
    if blocks != ["dequantize", MATMUL]:
        return None
    max_code = _subtracted_constant(func)
    return None if max_code is None else _Kernel(x, words, scales, out, max_code)


def _block_names(func: tirx.PrimFunc) -> list[str]:
    names = []
    tvm_ffi.structural_walk(func.body, [(tvm.s_tir.SBlock, lambda b: names.append(b.name_hint))])
    return [name for name in names if name != "root"]


def _subtracted_constant(func: tirx.PrimFunc) -> float | None:
    """max_code, from the dequantize's (code - max_code): the one constant the kernel subtracts."""
    constants = []

    def visit(sub: tirx.Sub) -> None:
        if isinstance(sub.b, tirx.FloatImm):
            constants.append(float(sub.b.value))

    tvm_ffi.structural_walk(func.body, [(tirx.Sub, visit)])
    return constants[0] if len(set(constants)) == 1 else None


def _factored(kernel: _Kernel) -> tirx.PrimFunc:
    x, words, scales = _operands(kernel)
    per_word, bits = kernel.codes_per_word, kernel.bits
    n, word_count = words.shape
    rows = [tirx.IntImm("int64", 0)] * (len(x.shape) - 1)

    def activation(w, j):
        return x[(*rows, w * per_word + j)].astype(_WIDE)

    def in_place_factor(j):
        """2^(-bits*j) for the codes read in place, 1 for the last (shifted down)."""
        factor = tirx.const(1.0, _WIDE)
        for code in range(per_word - 2, 0, -1):
            factor = tirx.Select(j == code, tirx.const(2.0 ** (-bits * code), _WIDE), factor)
        return factor

    scaled = te.compute(
        (per_word, word_count), lambda j, w: activation(w, j) * in_place_factor(j), name=SCALED_ACTIVATIONS
    )
    j = te.reduce_axis((0, per_word), name="j")
    minus_max_code = tirx.const(-kernel.max_code, _WIDE)
    offsets = te.compute(
        (word_count,), lambda w: te.sum(activation(w, j) * minus_max_code, axis=j), name=OFFSETS
    )

    def code_in_place(word, j):
        mask = tirx.const((1 << bits) - 1, "uint32")
        last = tirx.const(bits * (per_word - 1), "uint32")
        code = tirx.if_then_else(j < per_word - 1, word & (mask << (j * bits).astype("uint32")), word >> last)
        return code.astype("int32").astype(_WIDE)

    j = te.reduce_axis((0, per_word), name="j")
    word_dots = te.compute(
        (n, word_count),
        lambda row, w: te.sum(scaled[j, w] * code_in_place(words[row, w], j), axis=j),
        name=WORD_DOTS,
    )
    w = te.reduce_axis((0, word_count), name="w")
    group = kernel.words_per_group

    out = te.compute(
        kernel.out.shape,
        lambda *index: te.sum(
            (word_dots[index[-1], w] + offsets[w]) * scales[index[-1], w // group].astype(_WIDE), axis=w
        ),
        name=MATMUL,
    )
    return _prim_func(kernel, x, words, scales, out)


def _widened(kernel: _Kernel) -> tirx.PrimFunc:
    """The generated kernel with its weight unpacked and its sums in float32, rounded once at the end."""
    x, words, scales = _operands(kernel)
    per_word, bits, group = kernel.codes_per_word, kernel.bits, kernel.words_per_group * kernel.codes_per_word
    mask, max_code = tirx.const((1 << bits) - 1, "uint32"), tirx.const(kernel.max_code, _WIDE)

    def weight(row, col):
        code = (words[row, col // per_word] >> ((col % per_word) * bits).astype("uint32")) & mask
        return (code.astype(_WIDE) - max_code) * scales[row, col // group].astype(_WIDE)

    k = int(kernel.x.shape[-1])
    unpacked = te.compute((words.shape[0], k), weight, name="dequantize")
    reduce = te.reduce_axis((0, k), name="k")
    out = te.compute(
        kernel.out.shape,
        lambda *index: te.sum(x[(*index[:-1], reduce)].astype(_WIDE) * unpacked[index[-1], reduce], axis=reduce),
        name=MATMUL,
    )
    return _prim_func(kernel, x, words, scales, out)


def _operands(kernel: _Kernel) -> tuple[te.Tensor, te.Tensor, te.Tensor]:
    return tuple(te.placeholder(b.shape, b.dtype, name=b.name) for b in (kernel.x, kernel.words, kernel.scales))


def _prim_func(kernel: _Kernel, x, words, scales, out: te.Tensor) -> tirx.PrimFunc:
    """The replacement kernel, its float32 result cast to the generated kernel's output type."""
    if kernel.out.dtype != _WIDE:
        wide = out
        out = te.compute(wide.shape, lambda *index: wide[index].astype(kernel.out.dtype), name="cast")
    return te.create_prim_func([x, words, scales, out], index_dtype_override="int64")
