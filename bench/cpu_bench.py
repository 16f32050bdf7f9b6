"""CPU speed of a compiled model against transformers eager, measured side by side in one run.

Both sides get the same random weights (one transformers model, saved and converted), the same
prompt and decode tokens, and the same number of threads. Repetitions interleave the two sides so
that load from other processes on the machine hits both alike. Peak memory is measured per side in
a fresh subprocess (its resident-set high-water mark after loading and running prefill + decode once).

    .venv/bin/python bench/cpu_bench.py [--preset tiny_starcoder] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Pause before each timed block: after a parallel region torch's OpenMP threads and TVM's pool spin
# for a while, and whatever runs next on the two cores would be timed against them.
SETTLE_SECONDS = 0.5


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", default="gpt_bigcode", help="architecture name or spec path")
    parser.add_argument("--preset", default="tiny_starcoder", help="size preset of the spec")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repetitions per side (after one warm-up)"
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="threads for both sides"
    )
    parser.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    parser.add_argument(
        "--quantization", default="q0f32", help="weight scheme of the compiled side (q0f32, q0bf16, q4f32_1, q8f32_1, ...)"
    )
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument(
        "--json",
        type=Path,
        default=REPO_ROOT / "build" / "bench.json",
        help="where to write results",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the checkpoint and artifact here (default: a temp dir)"
    )
    # Internal: run one side alone in a subprocess and print its peak memory.
    parser.add_argument("--memory-probe", choices=("compiled", "eager"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- the two sides


class CompiledSide:
    name = "compiled"

    def __init__(self, artifact: Path, max_total_seq_len: int):
        from codegen.runtime import Model

        self.model = Model(artifact, max_batch_size=1, max_total_seq_len=max_total_seq_len)

    def prefill(self, prompt: list[int]):
        return self.model.prefill(prompt)

    def decode(self, tokens: list[int]) -> None:
        for token in tokens:
            self.model.decode(token)


class EagerSide:
    name = "eager"

    def __init__(self, model_dir: Path):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
        self.cache = None

    def prefill(self, prompt: list[int]):
        import torch

        # logits_to_keep=1: only the last position's logits, as generate() asks and as ours computes.
        with torch.inference_mode():
            out = self.model(torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
        self.cache = out.cache
        return out.logits[0, -1].numpy()

    def decode(self, tokens: list[int]) -> None:
        import torch

        with torch.inference_mode():
            for token in tokens:
                out = self.model(torch.tensor([[token]]), cache=self.cache, use_cache=True)
                self.cache = out.cache


# ---------------------------------------------------------------------------- setup


def _hf_config(model, preset: str, layers: int | None = None):
    from transformers import AutoConfig

    from codegen.paths import specs_dir
    from codegen.spec import load_spec

    values = dict(model.package.PRESETS[preset])
    if layers is not None:  # a preset's width and vocabulary with fewer blocks: "small size"
        values[load_spec(specs_dir() / f"{model.name}.yaml").field("num_hidden_layers").hf] = layers
    # Token ids 0: the library defaults (GPT-2's 50256) fall outside smaller vocabularies.
    return AutoConfig.for_model(model.package.model.HF_MODEL_TYPE, bos_token_id=0, eos_token_id=0, **values)


def _save_random_checkpoint(model, preset: str, layers: int | None, model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf_model = AutoModelForCausalLM.from_config(_hf_config(model, preset, layers), dtype=torch.float32)
    hf_model.save_pretrained(model_dir)


def _build_artifact(model, model_dir: Path, artifact: Path, threads: int, quantization: str) -> float:
    """Compile + convert through the project's own path; returns the compile seconds."""
    from codegen.build.compile import BuildOptions, compile_to_dir
    from codegen.convert.weights import convert

    config = model.package.Config.from_file(model_dir / "config.json")
    started = time.perf_counter()
    options = BuildOptions(target="llvm", num_threads=threads, quantization=quantization)
    compile_to_dir(model, config, options, artifact)
    compile_seconds = time.perf_counter() - started
    convert(model, model_dir, artifact, quantization=quantization, progress=False)
    return compile_seconds


def _tokens(vocab_size: int, count: int, seed: int) -> list[int]:
    import numpy as np

    return [int(t) for t in np.random.default_rng(seed).integers(0, vocab_size, count)]


# ---------------------------------------------------------------------------- measurement


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _measure(
    sides, prompt: list[int], decode: list[int], repeats: int, bandwidth
) -> dict[str, dict[str, list[float]]]:
    """Seconds per prefill and per decoded token, and the read bandwidth, measured in every round;
    the first round is a warm-up and is dropped.

    The machine's memory bandwidth moves between rounds (35-64 GB/s on the shared 2-core machine),
    so each round's decode is set against the bandwidth measured in that same round.
    """
    times = {side.name: {"prefill": [], "decode": []} for side in sides}
    times["bandwidth"] = {"bytes_per_second": []}
    for round_ in range(repeats + 1):
        for side in sides:
            time.sleep(SETTLE_SECONDS)
            prefill = _timed(lambda: side.prefill(prompt))
            time.sleep(SETTLE_SECONDS)
            step = _timed(lambda: side.decode(decode)) / len(decode)
            if round_:
                times[side.name]["prefill"].append(prefill)
                times[side.name]["decode"].append(step)
        time.sleep(SETTLE_SECONDS)
        read = bandwidth()
        if round_:
            times["bandwidth"]["bytes_per_second"].append(read)
    return times


class ReadBandwidth:
    """Bytes per second torch's threads read from memory: the best of a few sums of a large array."""

    def __init__(self, megabytes: int = 512, repeats: int = 3):
        import torch

        self.data = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
        self.repeats = repeats

    def __call__(self) -> float:
        import torch

        best = min(_timed(lambda: torch.sum(self.data)) for _ in range(self.repeats))
        return self.data.numel() * 4 / best


def _decode_bytes(artifact: Path, config) -> int:
    """Parameter bytes a decode step reads: all of them except the rows of a learned-position table,
    which are gathered one at a time."""
    import numpy as np

    from codegen.artifact.tensor_cache import numpy_dtype

    metadata = json.loads((artifact / "metadata.json").read_text())
    total = sum(int(np.prod(p["shape"])) * numpy_dtype(p["dtype"]).itemsize for p in metadata["params"])
    position_rows = getattr(config, "position_table_size", 0)  # never quantized: the model's dtype
    return total - position_rows * config.hidden_size * numpy_dtype(metadata["codegen"]["dtype"]).itemsize


def _memory_mb(
    side: str, model_dir: Path, artifact: Path, args: argparse.Namespace
) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--memory-probe",
        side,
        "--model-dir",
        str(model_dir),
        "--artifact",
        str(artifact),
        "--threads",
        str(args.threads),
        "--prompt-tokens",
        str(args.prompt_tokens),
        "--decode-tokens",
        str(args.decode_tokens),
        "--spec",
        args.spec,
        "--preset",
        args.preset,
        *(["--layers", str(args.layers)] if args.layers else []),
    ]
    output = subprocess.run(
        command, check=True, capture_output=True, text=True, env=os.environ
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def _memory_probe(args: argparse.Namespace) -> None:
    """Run one side once (prefill + decode) and print its peak and final resident set in MB."""
    from codegen.models import load_model

    vocab_size = _hf_config(load_model(args.spec), args.preset, args.layers).vocab_size
    prompt = _tokens(vocab_size, args.prompt_tokens, seed=1)
    decode = _tokens(vocab_size, args.decode_tokens, seed=2)
    if args.memory_probe == "compiled":
        side = CompiledSide(args.artifact, args.prompt_tokens + args.decode_tokens)
    else:
        side = EagerSide(args.model_dir)
    side.prefill(prompt)
    side.decode(decode)
    print(json.dumps({"peak_rss_mb": _status_mb("VmHWM"), "final_rss_mb": _status_mb("VmRSS")}))


def _status_mb(field: str) -> float:
    """A memory line of /proc/self/status. Not ru_maxrss: Linux carries that over from the parent
    across exec, so a child would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} line; memory figures need Linux")


# ---------------------------------------------------------------------------- report


def _report(results: dict) -> str:
    c, e = results["compiled"], results["eager"]
    low, high = results["read_bandwidth_range_gbs"]
    layers = f" with {results['layers']} layers" if results["layers"] else ""
    lines = [
        f"model: {results['spec']} preset {results['preset']}{layers}, compiled {results['quantization']}"
        f" against eager float32, {results['threads']} threads,"
        f" prompt {results['prompt_tokens']} tokens, decode {results['decode_tokens']} tokens, {results['repeats']} repeats",
        f"compile (llvm): {results['compile_seconds']:.1f} s",
        f"{'':10} {'prefill ms':>11} {'decode ms/token':>16} {'peak RSS MB':>12} {'final RSS MB':>13}",
        *(
            f"{name:10} {s['prefill_ms']:11.1f} {s['decode_ms']:16.2f} {s['peak_rss_mb']:12.0f} {s['final_rss_mb']:13.0f}"
            for name, s in (("compiled", c), ("eager", e))
        ),
        f"compiled/eager: prefill {results['prefill_ratio']:.2f}, decode {results['decode_ratio']:.2f}",
        f"decode roofline: {results['decode_bytes'] / 1e6:.0f} MB / {results['read_bandwidth_gbs']:.1f} GB/s"
        f" (median; rounds {low:.1f}-{high:.1f}) = {results['roofline_ms']:.2f} ms;"
        f" compiled decode / same-round roofline = {results['roofline_ratio']:.2f} (median),"
        f" {results['best_roofline_ratio']:.2f} (best round)",
        f"best repeats: prefill {c['prefill_best_ms']:.1f} / {e['prefill_best_ms']:.1f} ms,"
        f" decode {c['decode_best_ms']:.2f} / {e['decode_best_ms']:.2f} ms/token (compiled / eager)",
        f"max |logit difference| after prefill: {results['prefill_max_abs_diff']:.2e}",
    ]
    return "\n".join(lines)


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def run(args: argparse.Namespace, workdir: Path) -> dict:
    import numpy as np
    import torch

    from codegen.models import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.spec)
    model_dir, artifact = workdir / "hf", workdir / "artifact"
    _save_random_checkpoint(model, args.preset, args.layers, model_dir)
    compile_seconds = _build_artifact(model, model_dir, artifact, args.threads, args.quantization)
    config = model.package.Config.from_file(model_dir / "config.json")

    prompt = _tokens(config.vocab_size, args.prompt_tokens, seed=1)
    decode = _tokens(config.vocab_size, args.decode_tokens, seed=2)
    compiled = CompiledSide(artifact, args.prompt_tokens + args.decode_tokens)
    eager = EagerSide(model_dir)
    difference = float(np.max(np.abs(compiled.prefill(prompt) - eager.prefill(prompt))))
    times = _measure([compiled, eager], prompt, decode, args.repeats, ReadBandwidth())
    del compiled, eager

    bandwidth = statistics.median(times["bandwidth"]["bytes_per_second"])
    decode_bytes = _decode_bytes(artifact, config)
    # Each round's compiled decode against that round's roofline.
    roofline_ratios = [
        step * read / decode_bytes
        for step, read in zip(times["compiled"]["decode"], times["bandwidth"]["bytes_per_second"])
    ]
    results = {
        "spec": model.name,
        "preset": args.preset,
        "quantization": args.quantization,
        "layers": args.layers,
        "threads": args.threads,
        "repeats": args.repeats,
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "compile_seconds": compile_seconds,
        "prefill_max_abs_diff": difference,
        "read_bandwidth_gbs": bandwidth / 1e9,
        "decode_bytes": decode_bytes,
        "roofline_ms": decode_bytes / bandwidth * 1e3,
        "raw_seconds": times,
    }
    for side in ("compiled", "eager"):
        results[side] = {
            "prefill_ms": _median_ms(times[side]["prefill"]),
            "decode_ms": _median_ms(times[side]["decode"]),
            "prefill_best_ms": min(times[side]["prefill"]) * 1e3,
            "decode_best_ms": min(times[side]["decode"]) * 1e3,
            **_memory_mb(side, model_dir, artifact, args),
        }
    results["prefill_ratio"] = results["compiled"]["prefill_ms"] / results["eager"]["prefill_ms"]
    results["decode_ratio"] = results["compiled"]["decode_ms"] / results["eager"]["decode_ms"]
    results["roofline_ratio"] = statistics.median(roofline_ratios)
    results["best_roofline_ratio"] = min(roofline_ratios)
    results["read_bandwidth_range_gbs"] = [
        min(times["bandwidth"]["bytes_per_second"]) / 1e9,
        max(times["bandwidth"]["bytes_per_second"]) / 1e9,
    ]
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # Read by TVM's thread pool when it starts, so it must be set before the first TVM call.
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    sys.path.insert(0, str(REPO_ROOT))
    if args.memory_probe:
        _memory_probe(args)
        return 0
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="cpu-bench-") as workdir:
            results = run(args, Path(workdir))
    print(_report(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
