"""Group quantization of linear weights in numpy: the reference the TVM kernels mirror.

A weight [out, K] under a group scheme (codegen.spec.quantization.Scheme) becomes

    q_scale [out, K // group_size]  scale_dtype   scale = max|w| / max_code over each group of
                                                  group_size consecutive elements of K, in float32,
                                                  then cast (round to nearest even) to scale_dtype
    q_weight [out, K // codes_per_word]  uint32   code = clip(rint(w / scale) + max_code, 0, 2 * max_code)
                                                  against the cast scale; code j of word i is element
                                                  K index i * codes_per_word + j, at bits [j*bits, (j+1)*bits)

and element k dequantizes to (code - max_code) * float32(scale). Arithmetic is float32 throughout:
w is converted to float32 (exact from float16 and bfloat16), w / scale is one correctly rounded
float32 division and rint rounds half to even. A group whose cast scale is 0 (all zeros, or so small
that the scale underflows) divides by 1 instead: its codes are max_code and it dequantizes to 0.

Work goes in blocks of rows, so memory stays a few float32 temporaries of one block whatever the
size of the matrix. Imports numpy only (ml_dtypes for bfloat16 scales or weights).
"""

from __future__ import annotations

import numpy as np

from codegen.errors import CodegenError
from codegen.spec.quantization import Scheme

_BLOCK_ELEMENTS = 1 << 22  # elements per block of rows: 16 MiB per float32 temporary


class QuantizeError(CodegenError):
    """A weight, or q_weight / q_scale pair, that a scheme cannot take; names the shape and the scheme."""


def quantize(weight: np.ndarray, scheme: Scheme) -> tuple[np.ndarray, np.ndarray]:
    """weight [out, K] floating -> (q_weight uint32 [out, K // codes_per_word], q_scale scale_dtype [out, K // group_size])."""
    weight = np.asarray(weight)
    _check_scheme(scheme, f"quantize a weight of shape {weight.shape}")
    if weight.ndim != 2:
        raise QuantizeError(f"cannot quantize a weight of shape {weight.shape} with {scheme.name}: it must be 2-D [out, K]")
    if not _is_float(weight.dtype):
        raise QuantizeError(
            f"cannot quantize a weight of shape {weight.shape} with {scheme.name}: dtype {weight.dtype} is not floating"
        )
    rows, k = weight.shape
    _check_k(k, scheme, f"quantize a weight of shape {weight.shape}")
    per_word, group, max_code = scheme.codes_per_word, scheme.group_size, scheme.max_code
    scale_dtype = _dtype(scheme.scale_dtype)
    q_weight = np.empty((rows, k // per_word), np.uint32)
    q_scale = np.empty((rows, k // group), scale_dtype)
    for start, stop in _blocks(rows, k):
        w = weight[start:stop].astype(np.float32, copy=False).reshape(stop - start, k // group, group)
        amax = np.maximum(w.max(axis=-1, initial=0.0), -w.min(axis=-1, initial=0.0))
        if not np.isfinite(amax).all():
            raise QuantizeError(f"cannot quantize a weight of shape {weight.shape} with {scheme.name}: it holds inf or NaN")
        with np.errstate(over="ignore"):  # a scale past scale_dtype's range is refused just below
            scale = (amax / np.float32(max_code)).astype(scale_dtype)
        stored = scale.astype(np.float32)
        if not np.isfinite(stored).all():
            raise QuantizeError(
                f"cannot quantize a weight of shape {weight.shape} with {scheme.name}: max|w| = {amax.max()}"
                f" gives a scale past the range of {scheme.scale_dtype}"
            )
        q_scale[start:stop] = scale
        codes = np.divide(w, np.where(stored > 0, stored, np.float32(1))[..., None], dtype=np.float32)
        np.rint(codes, out=codes)
        codes += np.float32(max_code)
        np.clip(codes, 0, 2 * max_code, out=codes)
        q_weight[start:stop] = _pack(codes.astype(np.uint8).reshape(stop - start, k // per_word, per_word), scheme.bits)
    return q_weight, q_scale


def dequantize(q_weight: np.ndarray, q_scale: np.ndarray, scheme: Scheme) -> np.ndarray:
    """-> float32 [out, K]: (code - max_code) * scale, with scale as stored (scale_dtype) converted to float32."""
    q_weight, q_scale = np.asarray(q_weight), np.asarray(q_scale)
    what = f"dequantize q_weight {q_weight.shape} {q_weight.dtype} with q_scale {q_scale.shape} {q_scale.dtype}"
    _check_scheme(scheme, what)
    per_word, group, bits, max_code = scheme.codes_per_word, scheme.group_size, scheme.bits, scheme.max_code
    if q_weight.dtype != np.uint32 or q_scale.dtype != _dtype(scheme.scale_dtype):
        raise QuantizeError(f"cannot {what} with {scheme.name}: it stores uint32 codes and {scheme.scale_dtype} scales")
    if (
        q_weight.ndim != 2
        or q_scale.ndim != 2
        or q_weight.shape[0] != q_scale.shape[0]
        or q_weight.shape[1] * per_word != q_scale.shape[1] * group
    ):
        raise QuantizeError(
            f"cannot {what} with {scheme.name}: they must be [out, K // {per_word}] and [out, K // {group}] of one [out, K]"
        )
    rows, k = q_weight.shape[0], q_weight.shape[1] * per_word
    out = np.empty((rows, k), np.float32)
    shifts = np.arange(per_word, dtype=np.uint32) * np.uint32(bits)
    for start, stop in _blocks(rows, k):
        codes = (q_weight[start:stop, :, None] >> shifts) & np.uint32((1 << bits) - 1)
        values = codes.astype(np.float32).reshape(stop - start, k // group, group)
        values -= np.float32(max_code)
        values *= q_scale[start:stop].astype(np.float32)[..., None]
        out[start:stop] = values.reshape(stop - start, k)
    return out


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """codes uint8 [rows, words, codes_per_word] -> uint32 [rows, words], code j at bits [j*bits, (j+1)*bits)."""
    words = codes[..., 0].astype(np.uint32)
    for j in range(1, codes.shape[-1]):
        words |= codes[..., j].astype(np.uint32) << np.uint32(j * bits)
    return words


def _blocks(rows: int, k: int):
    step = max(1, _BLOCK_ELEMENTS // max(k, 1))
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


def _check_scheme(scheme: Scheme, what: str) -> None:
    if not scheme.quantized:
        raise QuantizeError(f"cannot {what} with {scheme.name}: it stores weights unquantized in {scheme.model_dtype}")


def _check_k(k: int, scheme: Scheme, what: str) -> None:
    for name, size in (("group_size", scheme.group_size), ("codes per word", scheme.codes_per_word)):
        if k % size:
            raise QuantizeError(f"cannot {what} with {scheme.name}: K = {k} is not a multiple of its {name} {size}")


def _is_float(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
