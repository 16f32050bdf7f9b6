"""CPU speed of a compiled model in several weight formats against transformers eager, side by side.

Every side gets the same random weights (one transformers model, saved, and converted once per
format), the same prompt and decode tokens, and the same number of threads. Each round times every
format and eager float32 in turn, then the read bandwidth, so that load from other processes on the
machine hits all alike and each format's decode is set against its own roofline (the bytes its
decode step reads / that round's bandwidth). Peak memory is measured per side in a fresh
subprocess (its resident-set high-water mark after loading and running prefill + decode once).

    .venv/bin/python bench/cpu_bench.py [--formats f32=q0f32,q4=q4f32_1] [--repeats 5] [--threads N]

Other scripts (bench/quality.py, bench/llamacpp.py) import the pieces: save_random_checkpoint,
build_artifact, CompiledSide, measure, timed, random_tokens, SETTLE_SECONDS.
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
DEFAULT_FORMATS = "f32=q0f32,f16=q0f16,bf16=q0bf16,q8=q8f16_1,q4=q4f16_1"


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
        "--formats",
        default=DEFAULT_FORMATS,
        help="comma-separated LABEL=SCHEME (or bare SCHEME) to compile and time, in this order"
        f" (default {DEFAULT_FORMATS})",
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
    def __init__(self, artifact: Path, max_total_seq_len: int, name: str = "compiled"):
        from codegen.runtime import Model

        self.name = name
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


def save_random_checkpoint(model, preset: str, layers: int | None, model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf_model = AutoModelForCausalLM.from_config(_hf_config(model, preset, layers), dtype=torch.float32)
    hf_model.save_pretrained(model_dir)


def build_artifact(model, model_dir: Path, artifact: Path, threads: int, quantization: str) -> float:
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


def parse_formats(text: str) -> dict[str, str]:
    """"f32=q0f32,q4=q4f32_1" -> {"f32": "q0f32", "q4": "q4f32_1"}; a bare scheme is its own label."""
    from codegen.spec.quantization import UnknownScheme, scheme

    formats = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        label, _, name = item.rpartition("=")
        label = label or name
        if label in formats or label in (EagerSide.name, "bandwidth"):
            raise SystemExit(f"--formats: label {label!r} is given twice or is reserved")
        try:
            formats[label] = scheme(name).name  # refused before any build
        except UnknownScheme as exc:
            raise SystemExit(f"--formats: {exc}") from None
    if not formats:
        raise SystemExit("--formats: give at least one LABEL=SCHEME")
    return formats


def _weight_bytes(artifact: Path) -> int:
    """Bytes of the converted weights on disk (the tensor-cache shards)."""
    from codegen.artifact.tensor_cache import SHARD_PREFIX

    return sum(path.stat().st_size for path in artifact.glob(f"{SHARD_PREFIX}*.bin"))


def random_tokens(vocab_size: int, count: int, seed: int) -> list[int]:
    import numpy as np

    return [int(t) for t in np.random.default_rng(seed).integers(0, vocab_size, count)]


# ---------------------------------------------------------------------------- measurement


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(
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
            prefill = timed(lambda: side.prefill(prompt))
            time.sleep(SETTLE_SECONDS)
            step = timed(lambda: side.decode(decode)) / len(decode)
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

        best = min(timed(lambda: torch.sum(self.data)) for _ in range(self.repeats))
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
    prompt = random_tokens(vocab_size, args.prompt_tokens, seed=1)
    decode = random_tokens(vocab_size, args.decode_tokens, seed=2)
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
    e = results["eager"]
    low, high = results["read_bandwidth_range_gbs"]
    layers = f" with {results['layers']} layers" if results["layers"] else ""
    header = (
        f"{'format':7} {'scheme':8} {'prefill ms':>10} {'/eager':>6} {'decode ms':>9} {'/eager':>6}"
        f" {'roofline ms':>11} {'/roofline':>9} {'(best)':>6} {'weights MB':>10} {'peak RSS MB':>11}"
        f" {'|dlogit|':>8} {'compile s':>9}"
    )
    rows = [
        f"{label:7} {f['quantization']:8} {f['prefill_ms']:10.1f} {f['prefill_ratio']:6.2f} {f['decode_ms']:9.2f}"
        f" {f['decode_ratio']:6.2f} {f['roofline_ms']:11.2f} {f['roofline_ratio']:9.2f} {f['best_roofline_ratio']:6.2f}"
        f" {f['weight_bytes'] / 1e6:10.0f} {f['peak_rss_mb']:11.0f} {f['prefill_max_abs_diff']:8.1e} {f['compile_seconds']:9.1f}"
        for label, f in results["formats"].items()
    ]
    lines = [
        f"model: {results['spec']} preset {results['preset']}{layers}, {results['threads']} threads,"
        f" prompt {results['prompt_tokens']} tokens, decode {results['decode_tokens']} tokens,"
        f" {results['repeats']} interleaved rounds (medians)",
        header,
        *rows,
        f"{'eager':7} {'float32':8} {e['prefill_ms']:10.1f} {'':6} {e['decode_ms']:9.2f} {'':6} {'':11} {'':9} {'':6}"
        f" {e['weight_bytes'] / 1e6:10.0f} {e['peak_rss_mb']:11.0f}",
        f"read bandwidth: {results['read_bandwidth_gbs']:.1f} GB/s (median; rounds {low:.1f}-{high:.1f});"
        " roofline = bytes one decode step reads / that round's bandwidth; /roofline: median and best round",
        "|dlogit|: max |logit difference| to eager float32 after prefill (quantized formats differ by design)",
    ]
    return "\n".join(lines)


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def _summary(seconds: dict[str, list[float]]) -> dict[str, float]:
    return {
        "prefill_ms": _median_ms(seconds["prefill"]),
        "decode_ms": _median_ms(seconds["decode"]),
        "prefill_best_ms": min(seconds["prefill"]) * 1e3,
        "decode_best_ms": min(seconds["decode"]) * 1e3,
    }


def _format_results(artifact: Path, config, seconds: dict, bandwidths: list[float], eager: dict) -> dict:
    """One format's medians, ratios to eager and its decode against each round's own roofline."""
    decode_bytes = _decode_bytes(artifact, config)
    ratios = [step * read / decode_bytes for step, read in zip(seconds["decode"], bandwidths)]
    summary = _summary(seconds)
    return {
        **summary,
        "prefill_ratio": summary["prefill_ms"] / eager["prefill_ms"],
        "decode_ratio": summary["decode_ms"] / eager["decode_ms"],
        "decode_bytes": decode_bytes,
        "roofline_ms": decode_bytes / statistics.median(bandwidths) * 1e3,
        "roofline_ratio": statistics.median(ratios),
        "best_roofline_ratio": min(ratios),
        "weight_bytes": _weight_bytes(artifact),
    }


def run(args: argparse.Namespace, workdir: Path) -> dict:
    import numpy as np
    import torch

    from codegen.models import load_model

    torch.set_num_threads(args.threads)
    formats = parse_formats(args.formats)
    model = load_model(args.spec)
    model_dir = workdir / "hf"
    artifacts = {label: workdir / f"artifact-{scheme}" for label, scheme in formats.items()}
    save_random_checkpoint(model, args.preset, args.layers, model_dir)
    compile_seconds = {
        label: build_artifact(model, model_dir, artifacts[label], args.threads, scheme)
        for label, scheme in formats.items()
    }
    config = model.package.Config.from_file(model_dir / "config.json")

    prompt = random_tokens(config.vocab_size, args.prompt_tokens, seed=1)
    decode = random_tokens(config.vocab_size, args.decode_tokens, seed=2)
    eager = EagerSide(model_dir)
    compiled = [CompiledSide(path, args.prompt_tokens + args.decode_tokens, name=label) for label, path in artifacts.items()]
    reference = eager.prefill(prompt)
    differences = {side.name: float(np.max(np.abs(side.prefill(prompt) - reference))) for side in compiled}
    times = measure([*compiled, eager], prompt, decode, args.repeats, ReadBandwidth())
    del compiled, eager

    bandwidths = times["bandwidth"]["bytes_per_second"]
    eager_results = {
        **_summary(times["eager"]),
        "weight_bytes": sum(path.stat().st_size for path in model_dir.glob("*.safetensors")),
        **_memory_mb("eager", model_dir, artifacts[next(iter(formats))], args),
    }
    results = {
        "spec": model.name,
        "preset": args.preset,
        "layers": args.layers,
        "threads": args.threads,
        "repeats": args.repeats,
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "read_bandwidth_gbs": statistics.median(bandwidths) / 1e9,
        "read_bandwidth_range_gbs": [min(bandwidths) / 1e9, max(bandwidths) / 1e9],
        "eager": eager_results,
        "formats": {},
        "raw_seconds": times,
    }
    for label, scheme in formats.items():
        results["formats"][label] = {
            "quantization": scheme,
            "compile_seconds": compile_seconds[label],
            "prefill_max_abs_diff": differences[label],
            **_format_results(artifacts[label], config, times[label], bandwidths, eager_results),
            **_memory_mb("compiled", model_dir, artifacts[label], args),
        }
    return results


def write_results(results: dict, path: Path) -> None:
    """All raw figures as JSON, for the reader who wants more than the table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"results: {path}")


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
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
