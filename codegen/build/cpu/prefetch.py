"""Software prefetch for the single-row matmuls that stream weight rows from memory (decode).

A decode step reads every weight once, from DRAM or the last-level cache, and the row-dot kernels
spend enough instructions per cache line (unpacking 4-bit codes most of all) that the out-of-order
window covers only a few lines in flight: the kernel runs at a fraction of the bandwidth it gets
when the weight is already in L1/L2. Prefetching the same position ROWS_AHEAD rows further on
keeps lines in flight regardless of the work per line: caches flushed, 2 threads, a q4 768x3072
kernel took 0.129 ms without and 0.080 ms with it (0.076 ms with the weight in cache).

Which prefetch depends on the CPU, and the wrong one costs a lot. Same checkpoint, both builds
timed interleaved in one process, 2 threads, 2026-12-08:
- AMD EPYC (Zen 4): non-temporal (`prefetchnta`) made decode 3-5% faster than `prefetcht0` in
  every format (q4f16_1, q8f16_1, q0f16, q0f32), prefill unchanged within 2%. A weight line is used
  once per step; kept like other data it pushes out what the VM and the Python loop reuse.
- Intel Xeon (Ice Lake): non-temporal made decode 1.6x (q4f16_1), 1.9x (q8f16_1), 2.1x (q0f16)
  and 2.5x (q0f32) slower; prefill moved within 10%. Likely because there it fills L1, not L2,
  and 8 rows ahead (96 KB for float32 rows 3072 wide) is more than L1 holds: lines are gone
  before use. `prefetcht0` is fastest; t1 and t2 measured 0-6% slower.
So AMD Zen CPUs get `prefetchnta` and every other CPU (including a target with no -mcpu) t0.

A schedule rule marks a loop with `mark`; `insert_prefetches`, run after the rules, writes the
prefetch instructions at the top of each marked loop's body and drops the mark.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.target import Target

# How far ahead, in weight rows (the first axis), each iteration prefetches what it reads; 4 to 32
# measured alike.
ROWS_AHEAD = 8
LINE_BYTES = 64
_MARK = "codegen.prefetch_rows_ahead"


def mark(sch: s_tir.Schedule, loop, weight: tirx.Buffer, elements_per_iteration: int) -> None:
    """Each iteration of `loop` reads `elements_per_iteration` consecutive elements of one row of
    `weight`: have it prefetch those of the row ROWS_AHEAD rows on."""
    sch.annotate(loop, _MARK, [weight.name, elements_per_iteration])


@tvm.transform.module_pass(opt_level=0, name="CodegenInsertPrefetches")
def insert_prefetches(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    for global_var, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc):
            body = tvm_ffi.structural_map(func.body, (tirx.For, _prefetch_if_marked))
            if not body.same_as(func.body):
                mod[global_var] = func.with_body(body)
    return mod


def _prefetch_if_marked(loop: tirx.For) -> tirx.For:
    if _MARK not in loop.annotations:
        return loop
    name, elements = loop.annotations[_MARK]
    buffer, first_index = _first_read(loop, str(name))
    row = tirx.min(first_index[0] + ROWS_AHEAD, buffer.shape[0] - 1)
    element_bytes = buffer.dtype.bits // 8
    per_line = LINE_BYTES // element_bytes
    lines = -(-int(elements) * element_bytes // LINE_BYTES)
    prefetches = [
        tirx.Evaluate(line_read(buffer, [row, *first_index[1:-1], first_index[-1] + line * per_line]))
        for line in range(lines)
    ]
    annotations = {key: value for key, value in loop.annotations.items() if key != _MARK}
    return tirx.For(
        loop.loop_var,
        loop.min,
        loop.extent,
        loop.kind,
        tirx.SeqStmt([*prefetches, loop.body]),
        loop.thread_binding,
        annotations,
    )


def line_read(buffer: tirx.Buffer, index: list[tirx.PrimExpr]) -> tirx.PrimExpr:
    """The prefetch, for reading, of the cache line holding buffer[index], with the locality hint
    of the current target's CPU."""
    return tirx.call_intrin(
        "void",
        "tirx.prefetch",
        tirx.address_of(tirx.BufferLoad(buffer, index)),
        0,  # a read
        locality(Target.current(allow_none=True)),
        1,  # data, not instructions
    )


def locality(target: Target | None) -> int:
    """LLVM's prefetch locality for weight streams: 0 (non-temporal) on AMD Zen, 3 (every cache
    level) elsewhere; see the module docstring for the measurements."""
    cpu = str(target.attrs.get("mcpu", "")) if target is not None else ""
    return 0 if cpu.startswith("znver") else 3


def _first_read(loop: tirx.For, name: str) -> tuple[tirx.Buffer, list[tirx.PrimExpr]]:
    """The buffer called `name` read in the loop's body, and the index its first iteration reads
    first, in the variables of the loops around `loop` (the loops inside it at their start)."""
    realizes, inner_loops = [], []
    tvm_ffi.structural_walk(
        loop.body, [(s_tir.stmt.SBlockRealize, realizes.append), (tirx.For, inner_loops.append)]
    )
    for realize in realizes:
        for region in realize.block.reads:
            if region.source.name == name:
                values = [
                    (iv.var, value)
                    for iv, value in zip(realize.block.iter_vars, realize.iter_values)
                ]
                values += [(inner.loop_var, inner.min) for inner in inner_loops]
                return region.source, [_substitute(r.min, values) for r in region.region]
    raise ValueError(f"a loop marked for prefetch reads no buffer {name!r}")


def _substitute(expr: tirx.PrimExpr, values: list[tuple[tirx.Var, tirx.PrimExpr]]) -> tirx.PrimExpr:
    def value_of(var: tirx.Var) -> tirx.PrimExpr:
        return next((value for bound, value in values if bound.same_as(var)), var)

    # Block values refer to loop variables, which may in turn be inner loops set to their start.
    return tvm_ffi.structural_map(
        tvm_ffi.structural_map(expr, (tirx.Var, value_of)), (tirx.Var, value_of)
    )
