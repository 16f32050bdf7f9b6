"""GPU speed of a compiled starcoderbase-1b-shaped model against transformers eager, side by side.

One random-weight transformers GPTBigCodeForCausalLM (the starcoderbase_1b preset: 24 layers, width
2048, vocab 49152) in float16 on the GPU is saved with save_pretrained; codegen converts it under
each weight scheme of --schemes (default q0f16: float16; q8f16_1 and q4f16_1 are group-quantized
with float16 compute) and compiles it for cuda at the GPU's arch, so every side holds the same
weights. The context window is reduced (default 2048) so that the runtime's KV cache for 16
sequences stays small.

Parity, per scheme, on the first batch-16 prefill: q0f16 against transformers float16 on the same
weights; a quantized scheme against transformers float16 on those weights fake-quantized (each
weight the scheme quantizes replaced by dequantize(quantize(W)), the values the artifact stores), so
only the float16 arithmetic differs.

Measured, interleaved (one warm-up round, then --repeats rounds of: each batch size, each side):
prefill of a 128-token prompt per sequence, then --decode-tokens decode steps, at batch 1 and 16
(batch_prefill/batch_decode over 16 sequences; transformers: one [16, 128] forward then [16, 1]
forwards with its KV cache, use_cache=True, logits_to_keep=1); every scheme and eager float16 in
each round. Both sides get the same token ids and
bring the last-position logits back to the host each step (as a generation loop must), and CUDA is
synchronised before and after each timed region. Prints medians, compiled/eager ratios, memory and
the compile time, and writes JSON.

    python3 bench/gpu_bench.py [--schemes q0f16,q8f16_1,q4f16_1] [--layers 24] [--repeats 5] [--json build/gpu-bench.json]
    python3 bench/gpu_bench.py --build-only     # the CUDA compiles alone (no GPU use): time and size
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

PRESET = "starcoderbase_1b"
BATCH_SIZES = (1, 16)
# --smoke-cpu (hidden): the same code on the CPU (llvm build, torch on CPU) with a small model, to
# check this script without spending GPU time. Its numbers mean nothing.
DEVICE = "cuda"


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--layers", type=int, default=None, help="override n_layer (default: the preset's 24)"
    )
    parser.add_argument(
        "--context", type=int, default=2048, help="context window compiled in (KV cache size)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed rounds after one warm-up round"
    )
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument(
        "--decode-tokens", type=int, default=32, help="decode steps timed per round"
    )
    parser.add_argument(
        "--arch", help="CUDA arch (default: the GPU's compute capability; sm_90 without a GPU)"
    )
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "build" / "gpu-bench.json")
    parser.add_argument(
        "--workdir", type=Path, help="keep checkpoint and artifact here (default: a temp dir)"
    )
    parser.add_argument(
        "--schemes", default="q0f16", help="comma-separated weight schemes of the compiled sides (float16 compute)"
    )
    parser.add_argument(
        "--build-only", action="store_true", help="compile for cuda and stop before any GPU use"
    )
    parser.add_argument(
        "--reuse-artifact",
        action="store_true",
        help="skip the compile when --workdir holds this build already",
    )
    parser.add_argument("--preset", default=PRESET, help=argparse.SUPPRESS)
    parser.add_argument("--smoke-cpu", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _configs(args: argparse.Namespace):
    from codegen.models import load_model

    model = load_model("gpt_bigcode")
    hf_config = dict(model.package.PRESETS[args.preset])
    if args.layers:
        hf_config["n_layer"] = args.layers
    # Only the context window shrinks: the checkpoint keeps the preset's 8192 learned positions.
    base = model.config(hf_config=hf_config)
    config = model.config(
        hf_config=hf_config,
        context_window_size=args.context,
        prefill_chunk_size=min(base.prefill_chunk_size, args.context),
    )
    return model, hf_config, config


def _arch(requested: str | None) -> str:
    import tvm

    if DEVICE == "cpu":
        return "sm_90"  # unused by an llvm build
    if requested:
        return requested
    if tvm.cuda(0).exist:
        major, minor = str(tvm.cuda(0).compute_version).split(".")
        return f"sm_{major}{minor}"
    return "sm_90"


def artifact_dir(workdir: Path, scheme: str) -> Path:
    return workdir / f"artifact-{scheme}"


def _compile(model, config, arch: str, artifact: Path, reuse: bool, scheme: str) -> dict[str, Any]:
    from codegen.build.compile import LIBRARY_NAME, METADATA_NAME, BuildOptions, compile_to_dir

    metadata = artifact / METADATA_NAME
    if reuse and (artifact / LIBRARY_NAME).is_file() and metadata.is_file():
        fields = json.loads(metadata.read_text())
        build = fields["codegen"]
        if (
            build["config"] == json.loads(json.dumps(config.to_dict()))
            and build["cuda_arch"] == arch
            and fields.get("quantization") == scheme
        ):
            # compile_to_dir timed it when it built (gpu_check.sh builds in its CPU phase).
            return {
                "compile_seconds": build["compile_seconds"],
                "library_bytes": (artifact / LIBRARY_NAME).stat().st_size,
                "arch": arch,
                "reused": True,
            }
    started = time.perf_counter()
    target = "cuda" if DEVICE == "cuda" else "llvm"
    compile_to_dir(
        model, config, BuildOptions(target=target, quantization=scheme, cuda_arch=arch), artifact
    )
    return {
        "compile_seconds": round(time.perf_counter() - started, 1),
        "library_bytes": (artifact / LIBRARY_NAME).stat().st_size,
        "arch": arch,
    }


# ---------------------------------------------------------------------------- the two sides


class CompiledSide:
    def __init__(self, artifact: Path, max_batch_size: int, name: str):
        import tvm

        from codegen.runtime import Model

        self.name = name
        self.device = tvm.cuda(0) if DEVICE == "cuda" else tvm.cpu(0)
        self.model = Model(artifact, device=DEVICE, max_batch_size=max_batch_size)

    def prefill(self, prompts: list[list[int]]):
        self.model.reset()
        self.seq_ids = [self.model.add_sequence() for _ in prompts]
        logits = self.model.batch_prefill(dict(zip(self.seq_ids, prompts)))
        self.device.sync()
        return [logits[s] for s in self.seq_ids]

    def decode(self, steps: list[list[int]]) -> None:
        for tokens in steps:
            self.model.batch_decode(
                dict(zip(self.seq_ids, tokens))
            )  # numpy logits: a host copy, a sync
        self.device.sync()


class EagerSide:
    name = "eager"

    def __init__(self, hf_model):
        self.model = hf_model
        self.cache = None

    def prefill(self, prompts: list[list[int]]):
        import torch

        with torch.inference_mode():
            out = self.model(torch.tensor(prompts, device=DEVICE), use_cache=True, logits_to_keep=1)
            self.cache = out.past_key_values
            logits = out.logits[:, -1].float().cpu().numpy()
        _sync()
        return list(logits)

    def decode(self, steps: list[list[int]]) -> None:
        import torch

        with torch.inference_mode():
            for tokens in steps:
                ids = torch.tensor(tokens, device=DEVICE).unsqueeze(1)
                out = self.model(ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
                self.cache = out.past_key_values
                out.logits[:, -1].float().cpu()  # the host copy a generation loop makes; syncs
        _sync()


def _timed(fn, *args) -> tuple[float, Any]:
    _sync()
    started = time.perf_counter()
    result = fn(*args)
    _sync()
    return time.perf_counter() - started, result


def _round(side, prompts, steps, samples: dict | None) -> None:
    prefill_s, _ = _timed(side.prefill, prompts)
    decode_s, _ = _timed(side.decode, steps)
    if samples is not None:
        samples["prefill_s"].append(prefill_s)
        samples["decode_s"].append(decode_s)


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    global DEVICE
    args = _parse_args(argv)
    if args.smoke_cpu:
        DEVICE = "cpu"
    started = time.perf_counter()
    schemes = _schemes(args.schemes)
    model, hf_config, config = _configs(args)
    arch = _arch(args.arch)
    result: dict[str, Any] = {
        "model": f"gpt_bigcode {args.preset} shape, random weights, float16 compute",
        "device": DEVICE,
        "schemes": schemes,
        "config": {
            **{k: hf_config[k] for k in ("n_embd", "n_head", "n_layer", "n_inner", "vocab_size")},
            "context_window_size": args.context,
        },
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "repeats": args.repeats,
        "compile": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        for scheme in schemes:
            print(
                f"compiling {result['config']} {scheme} for {'cuda ' + arch if DEVICE == 'cuda' else 'llvm'} ...",
                flush=True,
            )
            built = _compile(model, config, arch, artifact_dir(workdir, scheme), args.reuse_artifact, scheme)
            result["compile"][scheme] = built
            reused = " (built earlier in this run, reused)" if built.get("reused") else ""
            print(
                f"compile {scheme}: {built['compile_seconds']} s{reused}, library {built['library_bytes'] / 1e6:.1f} MB",
                flush=True,
            )
        if args.build_only:
            result["build_only"] = True
            _write(args.json, result)
            print(
                f"--build-only: stopped before the first GPU use ({time.perf_counter() - started:.1f} s in all)"
            )
            return 0
        result.update(_measure(args, model, hf_config, workdir, schemes))
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    _write(args.json, result)
    print(f"benchmark done in {result['total_seconds']} s; JSON: {args.json}")
    return 0


def _schemes(text: str) -> list[str]:
    """Names of --schemes, each a shipped scheme with float16 compute (the eager side's dtype)."""
    from codegen.spec.quantization import scheme

    names = [name for name in (part.strip() for part in text.split(",")) if name]
    for name in names:
        if scheme(name).model_dtype != "float16":
            raise SystemExit(f"--schemes: {name} does not compute in float16; the GPU benchmark compares float16 sides")
    if not names or len(set(names)) != len(names):
        raise SystemExit(f"--schemes: give distinct scheme names, got {text!r}")
    return names


def _fake_quantized(hf, scheme_name: str):
    """A copy of the transformers model whose weights are those the scheme stores, dequantized:
    every nn.Linear weight and the token embedding unless the scheme keeps its role (a head tied
    to the embedding follows it). The codes come from codegen's numpy quantizer, as convert's do."""
    import copy

    import torch

    from codegen.convert.quantize import dequantize, quantize
    from codegen.spec.quantization import scheme as find_scheme

    scheme = find_scheme(scheme_name)
    twin = copy.deepcopy(hf)
    embedding, head = twin.get_input_embeddings(), twin.get_output_embeddings()
    weights = [m.weight for m in twin.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    if "embedding" not in scheme.keep:
        weights.append(embedding.weight)
    if head is not None and head.weight is not embedding.weight and "lm_head" not in scheme.keep:
        weights.append(head.weight)
    with torch.no_grad():
        for weight in weights:
            codes, scales = quantize(weight.detach().cpu().numpy(), scheme)
            weight.copy_(torch.from_numpy(dequantize(codes, scales, scheme)).to(weight.dtype))
    return twin


def _parity(compiled: CompiledSide, reference, prompts: list[list[int]]) -> dict[str, float]:
    """Both sides compute the same function on the same weights (float16 both, so only roughly equal)."""
    import numpy as np

    ours, theirs = compiled.prefill(prompts), EagerSide(reference).prefill(prompts)
    return {
        "max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs)),
        "max_abs_logit": max(float(np.max(np.abs(b))) for b in theirs),
        "argmax_agreement": float(np.mean([int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(ours, theirs)])),
    }


def _measure(args, model, hf_config: dict, workdir: Path, schemes: list[str]) -> dict[str, Any]:
    import numpy as np
    import torch
    import transformers

    from codegen.convert.weights import convert

    cuda = DEVICE == "cuda"
    out: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0) if cuda else "cpu (smoke run)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    timings: dict[str, float] = {}

    t = time.perf_counter()
    torch.manual_seed(0)
    hf_cfg = transformers.GPTBigCodeConfig(**hf_config, bos_token_id=0, eos_token_id=0)
    with torch.device(DEVICE):
        hf = transformers.GPTBigCodeForCausalLM(hf_cfg).to(torch.float16).eval()
    out["eager_attention"] = hf.config._attn_implementation
    timings["init_hf_gpu"] = time.perf_counter() - t

    t = time.perf_counter()
    hf_dir = workdir / "hf"
    hf.save_pretrained(hf_dir)
    timings["save_pretrained"] = time.perf_counter() - t

    for scheme in schemes:
        t = time.perf_counter()
        convert(model, hf_dir, artifact_dir(workdir, scheme), quantization=scheme, progress=False)
        timings[f"convert_{scheme}"] = time.perf_counter() - t

    _sync()
    if cuda:
        torch.cuda.empty_cache()
    free_before = torch.cuda.mem_get_info()[0] if cuda else 0
    t = time.perf_counter()
    compiled = [CompiledSide(artifact_dir(workdir, s), max(BATCH_SIZES), name=s) for s in schemes]
    timings["load_compiled"] = time.perf_counter() - t
    eager = EagerSide(hf)
    print("setup: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()), flush=True)

    rng = np.random.default_rng(0)
    vocab = hf_config["vocab_size"]
    inputs = {
        b: (
            [[int(x) for x in rng.integers(0, vocab, args.prompt_tokens)] for _ in range(b)],
            [[int(x) for x in rng.integers(0, vocab, b)] for _ in range(args.decode_tokens)],
        )
        for b in BATCH_SIZES
    }

    prompts = inputs[BATCH_SIZES[-1]][0]
    out["parity_prefill_batch16"] = {}
    for side in compiled:
        reference = hf if side.name == "q0f16" else _fake_quantized(hf, side.name)
        parity = out["parity_prefill_batch16"][side.name] = _parity(side, reference, prompts)
        del reference
        print(
            f"parity {side.name}: max |dlogit| {parity['max_abs_diff']:.3e} (max |logit| {parity['max_abs_logit']:.3e}),"
            f" argmax agreement {parity['argmax_agreement']:.2f}",
            flush=True,
        )
    if cuda:
        torch.cuda.empty_cache()

    sides = [*compiled, eager]
    # Warm-up round (kernels load, cuBLAS picks algorithms, the caches reach full size).
    for b in BATCH_SIZES:
        for side in sides:
            _round(side, *inputs[b], None)
    free_after = (
        torch.cuda.mem_get_info()[0] if cuda else 0
    )  # torch allocated nothing since free_before: TVM's
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    samples = {(side.name, b): {"prefill_s": [], "decode_s": []} for side in sides for b in BATCH_SIZES}
    for _ in range(args.repeats):
        for b in BATCH_SIZES:
            for side in sides:
                _round(side, *inputs[b], samples[(side.name, b)])

    out["results"] = {}
    for b in BATCH_SIZES:
        row = {side.name: _side_summary(samples[(side.name, b)], b, args) for side in sides}
        row["over_eager"] = {s: _ratios(row[s], row[eager.name]) for s in schemes}
        out["results"][f"batch_{b}"] = row

    kv = compiled[0].model.metadata["kv_cache"]
    kv_bytes = 2 * kv["num_hidden_layers"] * kv["num_key_value_heads"] * kv["head_dim"] * compiled[0].model.max_total_seq_len * 2
    out["memory"] = {
        "eager_max_memory_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else 0,
        "eager_params_bytes": sum(p.numel() * p.element_size() for p in hf.parameters()),
        "compiled_params_bytes": {side.name: _params_bytes(side.model.metadata) for side in compiled},
        "compiled_kv_cache_estimate_bytes_each": kv_bytes,
        "compiled_kv_cache_tokens": compiled[0].model.max_total_seq_len,
        "compiled_device_bytes_measured_all": free_before - free_after,
    }
    out["setup_seconds"] = {k: round(v, 1) for k, v in timings.items()}
    _print_table(out, args, [side.name for side in sides])
    return out


def _side_summary(s: dict[str, list[float]], batch: int, args) -> dict[str, Any]:
    prefill, decode = statistics.median(s["prefill_s"]), statistics.median(s["decode_s"])
    return {
        "prefill_ms": prefill * 1e3,
        "prefill_tokens_per_s": batch * args.prompt_tokens / prefill,
        "decode_ms_per_step": decode * 1e3 / args.decode_tokens,
        "decode_tokens_per_s": batch * args.decode_tokens / decode,
        "prefill_ms_all": [x * 1e3 for x in s["prefill_s"]],
        "decode_ms_per_step_all": [x * 1e3 / args.decode_tokens for x in s["decode_s"]],
    }


def _ratios(side: dict[str, Any], eager: dict[str, Any]) -> dict[str, float]:
    return {
        "prefill_time_ratio": side["prefill_ms"] / eager["prefill_ms"],
        "prefill_throughput_ratio": side["prefill_tokens_per_s"] / eager["prefill_tokens_per_s"],
        "decode_time_ratio": side["decode_ms_per_step"] / eager["decode_ms_per_step"],
        "decode_throughput_ratio": side["decode_tokens_per_s"] / eager["decode_tokens_per_s"],
    }


def _params_bytes(metadata: dict) -> int:
    import numpy as np

    return sum(int(np.prod(p["shape"])) * np.dtype(p["dtype"]).itemsize for p in metadata["params"])


def _print_table(out: dict[str, Any], args, names: list[str]) -> None:
    print(
        f"\n{out['gpu']}: medians of {args.repeats} interleaved rounds; prompt {args.prompt_tokens}, {args.decode_tokens} decode steps"
    )
    print(
        f"{'':10s}{'side':10s}{'prefill ms':>12s}{'prefill tok/s':>15s}{'decode ms/step':>16s}{'decode tok/s':>14s}"
        f"{'prefill /eager':>16s}{'decode /eager':>15s}"
    )
    for key, row in out["results"].items():
        for name in names:
            r = row[name]
            ratio = row["over_eager"].get(name)
            shown = f"{ratio['prefill_time_ratio']:16.2f}{ratio['decode_time_ratio']:15.2f}" if ratio else ""
            print(
                f"{key:10s}{name:10s}{r['prefill_ms']:12.2f}{r['prefill_tokens_per_s']:15.0f}{r['decode_ms_per_step']:16.3f}"
                f"{r['decode_tokens_per_s']:14.0f}{shown}"
            )
    m = out["memory"]
    gib = 1 << 30
    params = ", ".join(f"{name} {size / gib:.2f}" for name, size in m["compiled_params_bytes"].items())
    print(
        f"memory: eager max_memory_allocated {m['eager_max_memory_allocated_bytes'] / gib:.2f} GiB "
        f"(params {m['eager_params_bytes'] / gib:.2f}); compiled params GiB: {params}; "
        f"KV cache {m['compiled_kv_cache_estimate_bytes_each'] / gib:.2f} GiB each ({m['compiled_kv_cache_tokens']} tokens), "
        f"device memory taken by all compiled sides {m['compiled_device_bytes_measured_all'] / gib:.2f} GiB"
    )
    print("time ratios are compiled / eager float16 (below 1: compiled faster)")


def _write(path: Path, result: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
