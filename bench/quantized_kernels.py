"""CPU matmul kernels side by side: float32 NT_matmul against q4 and q8 dequantize_matmul (qNi8: on int8 activations).

Each kernel is built alone from the TE the generated models emit (generated/gpt_bigcode/model.py's
`_dequantize_matmul` for the quantized ones), scheduled by the CPU pipeline's rules
(`codegen.build.pipeline.build_cpu_kernels`: one-row quantized kernels factored, then scheduled) and compiled for this machine. Decode multiplies one activation
row, prefill `--rows` rows through a symbolic sequence length, as in the exported model. Repetitions
interleave all kernels of a shape, so load from other processes hits them alike; medians are
printed.

Decode is read as effective bandwidth: the bytes of the weight operands (float32 weights, or
packed codes + scales) over the time. It is timed twice: warm (called back to back, so a weight
smaller than the last-level cache is read from cache) and cold (the caches flushed before each
call, as in a model step, whose weights together far exceed the cache). Prefill is read as GFLOP/s
(2 * rows * in * out).

    .venv/bin/python bench/quantized_kernels.py [--repeats 9] [--threads N] [--rows 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# (in, out) of each weight: tiny_starcoder's projections and its LM head (vocab 49152).
SHAPES = ((768, 768), (768, 3072), (3072, 768), (768, 49152))
BITS = (4, 8)
# Relative error a float32 kernel may show against the float64 reference; an int8-activation one
# (build/cpu/int8_dot.py) also rounds each activation to 1/254 of its group's largest.
TOLERANCE = 1e-5
INT8_TOLERANCE = 0.02
# Each timed round calls a kernel until this long has passed (and reports the mean call).
MIN_ROUND_MS = 20
# Cold decode: calls per round, each after writing this many bytes. That evicts the weights from
# L1/L2; an L3 as large as some servers' (480 MiB) may still hold them, so there it is L3-warm.
COLD_CALLS = 10
FLUSH_BYTES = 64 << 20


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeats", type=int, default=9, help="timed rounds per kernel (after one warm-up)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--rows", type=int, default=128, help="activation rows of the prefill kernels"
    )
    return parser.parse_args(argv)


def _scheme(bits: int):
    from generated.gpt_bigcode.model import GroupQuantization

    return GroupQuantization(f"q{bits}f32_1", bits, 32, "float32", False, False)


def kernel(k: int, n: int, rows, bits: int | None):
    """The PrimFunc of one linear layer: [1, rows, k] x [n, k]^T, float32 or group-quantized."""
    from tvm import te, tirx

    from generated.gpt_bigcode.model import _dequantize_matmul

    def i64(value):
        return tirx.IntImm("int64", value) if isinstance(value, int) else value

    x = te.placeholder((i64(1), i64(rows), i64(k)), "float32", name="x")
    if bits is None:
        weight = te.placeholder((i64(n), i64(k)), "float32", name="weight")
        r = te.reduce_axis((i64(0), i64(k)), name="k")
        out = te.compute(
            (i64(1), i64(rows), i64(n)),
            lambda b, i, j: te.sum(x[b, i, r] * weight[j, r], axis=r),
            name="NT_matmul",
        )
        return te.create_prim_func([x, weight, out], index_dtype_override="int64")
    scheme = _scheme(bits)
    word_shape, scale_shape = scheme.packed_shapes(n, k)
    words = te.placeholder([i64(d) for d in word_shape], "uint32", name="q_weight")
    scales = te.placeholder([i64(d) for d in scale_shape], "float32", name="q_scale")
    out = _dequantize_matmul(x, words, scales, scheme)
    return te.create_prim_func([x, words, scales, out], index_dtype_override="int64")


def build(func, target, int8_activations: bool = False):
    """Schedule with the CPU pipeline's rules and compile; the runtime module."""
    import tvm

    from codegen.build.pipeline import build_cpu_kernels

    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    with target:
        mod = build_cpu_kernels(target, int8_activations)(mod)
        if not mod["main"].attrs.get("tirx.is_scheduled"):
            raise SystemExit("a kernel was left unscheduled")
        return tvm.compile(mod, target=target).mod


def random_weights(k: int, n: int, bits: int | None, rng):
    """(operands, dense float64 weight): float32 weights, or their codes and scales as convert writes them."""
    import numpy as np

    from codegen.convert.quantize import dequantize, quantize
    from codegen.spec.quantization import scheme

    weight = rng.standard_normal((n, k), dtype=np.float32)
    if bits is None:
        return [weight], weight.astype(np.float64)
    group_scheme = scheme(f"q{bits}f32_1")
    words, scales = quantize(weight, group_scheme)
    return [words, scales], dequantize(words, scales, group_scheme).astype(np.float64)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM starts its thread pool
    sys.path.insert(0, str(REPO_ROOT))
    import numpy as np
    import tvm
    from tvm import tirx

    from codegen.build.compile import BuildOptions
    from codegen.build.cpu import int8_dot

    target = BuildOptions(target="llvm", num_threads=args.threads).tvm_target()
    seq_len = tirx.Var("seq_len", "int64")
    rng = np.random.default_rng(0)
    # qNi8: the kernels of a scheme with cpu_activations: int8, where the CPU has VNNI.
    variants = [(None, False), *((bits, False) for bits in BITS)]
    if int8_dot.target_supports(target):
        variants += [(bits, True) for bits in BITS]
    print(f"{args.threads} threads, {args.repeats} rounds, prefill {args.rows} rows; medians")
    print(f"{'':>18}{'decode warm':>15}{'decode cold':>17}{'prefill':>18}")
    print(
        f"{'in x out':>12} {'':>4}  {'ms':>8} {'GB/s':>6}  {'ms':>8} {'GB/s':>6}  {'ms':>8} {'GFLOP/s':>7}"
    )
    for k, n in SHAPES:
        cases, weight_bytes = {}, {}
        for bits, int8 in variants:
            operands, dense = random_weights(k, n, bits, rng)
            for phase, rows in (("decode", 1), ("prefill", args.rows)):
                lib = build(kernel(k, n, 1 if phase == "decode" else seq_len, bits), target, int8)
                x = rng.standard_normal((1, rows, k), dtype=np.float32)
                out = tvm.runtime.tensor(np.zeros((1, rows, n), np.float32))
                tensors = [tvm.runtime.tensor(a) for a in (x, *operands)] + [out]
                lib["main"](*tensors)
                expected = x.astype(np.float64) @ dense.T
                error = np.abs(out.numpy() - expected).max() / np.abs(expected).max()
                name = "f32" if bits is None else f"q{bits}" + ("i8" if int8 else "")
                if error > (INT8_TOLERANCE if int8 else TOLERANCE):
                    raise SystemExit(f"{k}x{n} {name} {phase}: relative error {error:.2e}")
                warm = lib.time_evaluator("main", tvm.cpu(), repeat=1, min_repeat_ms=MIN_ROUND_MS)
                cases[(name, phase)] = (warm, tensors)
                if phase == "decode":
                    cold = lib.time_evaluator(
                        "main",
                        tvm.cpu(),
                        number=1,
                        repeat=COLD_CALLS,
                        cache_flush_bytes=FLUSH_BYTES,
                    )
                    cases[(name, "cold")] = (cold, tensors)
                    weight_bytes[name] = sum(a.nbytes for a in operands)
        times = {case: [] for case in cases}
        for evaluator, tensors in cases.values():
            evaluator(*tensors)  # warm-up
        for _ in range(args.repeats):
            for case, (evaluator, tensors) in cases.items():
                times[case].append(statistics.median(evaluator(*tensors).results))
        for name in weight_bytes:
            decode, cold, prefill = (
                statistics.median(times[(name, phase)]) for phase in ("decode", "cold", "prefill")
            )
            gb = weight_bytes[name] / 1e9
            print(
                f"{k:>5} x {n:<5} {name:>4}  {decode * 1e3:8.4f} {gb / decode:6.1f}  {cold * 1e3:8.4f} {gb / cold:6.1f}"
                f"  {prefill * 1e3:8.3f} {2 * args.rows * k * n / prefill / 1e9:7.1f}"
            )


if __name__ == "__main__":
    main()
