"""Perplexity per weight format on held-out text: what quantization costs in quality (`make eval`).

For each scheme the Hugging Face checkpoint is compiled and converted (the path of `codegen compile`
and `codegen convert`), and scored by codegen.runtime.evaluate.perplexity, llama-perplexity's
protocol, on a text the model was not trained on (the demo model's heldout.txt by default). The
table sets each perplexity against float32's and against the issue's targets: 8-bit within +0.5%,
4-bit within +5%. Exits 1 when a target is missed.

    .venv/bin/python bench/quality.py [--model-dir build/demo-model] [--text MODEL_DIR/heldout.txt] \
        [--schemes q0f32,q0f16,...] [--context 512] [--workdir build/eval]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCHEMES = ("q0f32", "q0f16", "q0bf16", "q8f32_1", "q8f16_1", "q4f32_1", "q4f16_1")
REFERENCE = "q0f32"
# Largest perplexity ratio to float32 the issue accepts, by bits of the scheme.
TARGETS = {8: 1.005, 4: 1.05}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="gpt_bigcode", help="architecture name or spec path")
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "build" / "demo-model", help="HF checkpoint folder with tokenizer.json")
    parser.add_argument("--text", type=Path, default=None, help="held-out text (default: MODEL_DIR/heldout.txt)")
    parser.add_argument("--schemes", default=",".join(DEFAULT_SCHEMES), help=f"comma-separated schemes; {REFERENCE} is always added")
    parser.add_argument("--context", type=int, default=512, help="tokens per chunk (llama-perplexity's -c)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "build" / "eval", help="where the artifacts go")
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "build" / "eval.json", help="where to write results")
    return parser.parse_args(argv)


def target(scheme) -> float | None:
    """The largest accepted perplexity ratio to float32 for a scheme; None where the issue sets none."""
    return TARGETS.get(scheme.bits) if scheme.quantized else None


def evaluate_scheme(model, args: argparse.Namespace, name: str, tokens: list[int]) -> dict:
    from cpu_bench import build_artifact

    from codegen.runtime import Model
    from codegen.runtime.evaluate import EVAL_BATCH, perplexity

    artifact = args.workdir / f"{model.name}-{name}"
    compile_seconds = build_artifact(model, args.model_dir, artifact, args.threads, name)
    started = time.perf_counter()
    value = perplexity(Model(artifact, max_batch_size=EVAL_BATCH), tokens, args.context)
    seconds = time.perf_counter() - started
    print(f"{name}: perplexity {value:.4f} (compile {compile_seconds:.0f} s, eval {seconds:.0f} s)", file=sys.stderr, flush=True)
    return {"perplexity": value, "compile_seconds": compile_seconds, "eval_seconds": seconds}


def report(results: dict[str, dict], schemes: dict) -> tuple[str, bool]:
    """The table and whether every scheme with a target met it."""
    reference = results[REFERENCE]["perplexity"]
    lines = [f"{'format':10} {'perplexity':>11} {'vs f32':>8} {'target':>8}  result"]
    passed = True
    for name, result in results.items():
        ratio = result["perplexity"] / reference
        limit = target(schemes[name])
        verdict = "-" if limit is None else ("pass" if ratio <= limit else "FAIL")
        passed &= verdict != "FAIL"
        shown = "-" if limit is None else f"<= {limit:.3f}"
        lines.append(f"{name:10} {result['perplexity']:11.4f} {ratio:8.4f} {shown:>8}  {verdict}")
    return "\n".join(lines), passed


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's pool starts
    sys.path.insert(0, str(REPO_ROOT))
    from codegen.models import load_model
    from codegen.runtime.evaluate import read_text_file, tokenize_text, scored_count
    from codegen.spec.quantization import scheme

    text = args.text or args.model_dir / "heldout.txt"
    if args.text is None and not text.is_file():
        print(
            f"error: {text} does not exist: the demo model writes it since `make eval` came;"
            f" rebuild it (rm -r {args.model_dir} && make eval) or pass --text a held-out text file",
            file=sys.stderr,
        )
        return 1
    tokens = tokenize_text(args.model_dir, read_text_file(text))
    names = [REFERENCE] + [n for n in args.schemes.split(",") if n and n != REFERENCE]
    schemes = {name: scheme(name) for name in names}  # unknown names fail here, before any compile
    model = load_model(args.spec)
    chunks = len(tokens) // args.context
    print(
        f"{text}: {len(tokens)} tokens, {chunks} chunks of {args.context},"
        f" {scored_count(chunks, args.context)} scored", file=sys.stderr, flush=True,
    )
    results = {name: evaluate_scheme(model, args, name, tokens) for name in names}
    table, passed = report(results, schemes)
    print(f"perplexity on {text} ({scored_count(chunks, args.context)} tokens scored, chunks of {args.context}):")
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"text": str(text), "context": args.context, "results": results}, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
