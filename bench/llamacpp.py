"""The compiled model against llama.cpp on llama.cpp's own formats, side by side in one run.

Opt-in (it downloads and builds llama.cpp): `make bench-llamacpp`. What it does:

1. Builds llama.cpp from the llama-cpp-python sdist on the package registry (it vendors llama.cpp,
   its convert_hf_to_gguf.py and gguf-py) with CMake, -DGGML_NATIVE=ON but without AMX (see
   NO_AMX_FLAGS): llama-bench, llama-quantize and llama-perplexity. The build goes to a staging folder that is moved into
   build/llamacpp/ only once complete, and is reused from there.
2. Saves one random GPTBigCode of the preset's shape (bench/cpu_bench.py's checkpoint; default
   tiny_starcoder: 20 layers x 768, MQA, vocab 49152) with a small byte-level BPE tokenizer,
   converts it to GGUF f32 and f16 with the vendored converter and quantizes q8_0 and q4_0.
3. Compiles and converts the same checkpoint with this project in the matching schemes.
4. Times both sides round by round (llama.cpp format X, compiled format X, next format, ...),
   same threads: a prefill of --prompt-tokens tokens and --decode-tokens decode steps
   (llama-bench -p/-n; the compiled model through codegen.runtime.Model). Prints medians, the
   ratios and the issue's targets (compiled <= 1.0x llama.cpp's format); raw figures go to --json.
5. With --perplexity TEXT --model-dir DIR: llama-perplexity on each GGUF format of that trained
   model and `codegen eval` on each compiled format, over the same text and context.

    .venv/bin/python bench/llamacpp.py [--rounds 5] [--threads 2] [--schemes q0f32,q4f32_1,...]
    .venv/bin/python bench/llamacpp.py --perplexity build/demo-model/heldout.txt --model-dir build/demo-model
"""

from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from codegen.errors import CodegenError  # noqa: E402

# The checkpoint, compile/convert and timing of the compiled side are cpu_bench's, so both
# benchmarks measure the compiled model alike.
from cpu_bench import (  # noqa: E402
    SETTLE_SECONDS,
    CompiledSide,
    build_artifact,
    random_tokens,
    save_random_checkpoint,
    timed,
    write_results,
)

# One pinned release: its vendored llama.cpp is what the figures are measured against.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CACHE_DIR = REPO_ROOT / "build" / "llamacpp"
BINARIES = ("llama-bench", "llama-quantize", "llama-perplexity")
# ggml's AMX backend (chosen by -march=native on a Sapphire Rapids class Xeon) segfaults in
# llama-bench on this project's q8_0 and q4_0 GGUFs (exit -11 at its repack, with or without
# flash attention); its AVX-512 kernels, with llama.cpp's CPU repacking, are what runs. GCC's
# explicit -mno-* flags win over -march=native whatever their order, and are no-ops elsewhere.
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
BUILD_VARIANT = "noamx"  # in the cache folder's name, so an older AMX build is not reused


class LlamaCppError(CodegenError):
    """Building, converting for or running llama.cpp failed."""


# ---------------------------------------------------------------------------- building llama.cpp


@dataclass(frozen=True)
class LlamaCpp:
    """A complete build: the vendored source tree (converter, gguf-py) and the binaries."""

    root: Path

    @property
    def source(self) -> Path:
        return self.root / "llama.cpp"

    def binary(self, name: str) -> Path:
        return self.root / "bin" / name

    def is_complete(self) -> bool:
        return (self.source / "convert_hf_to_gguf.py").is_file() and all(
            os.access(self.binary(name), os.X_OK) for name in BINARIES
        )


def ensure_llamacpp(cache_dir: Path, version: str, jobs: int) -> LlamaCpp:
    """The cached build of this version, built first when absent.

    A build happens in a staging folder next to the cache and is renamed into place only when every
    binary exists, so an interrupted or failed build never leaves a folder that looks complete."""
    build = LlamaCpp(cache_dir / f"llama-cpp-python-{version}-{BUILD_VARIANT}")
    if build.is_complete():
        print(f"llama.cpp: reusing {build.root}", flush=True)
        return build
    if build.root.exists():
        raise LlamaCppError(
            f"{build.root} exists but lacks the converter or one of {', '.join(BINARIES)}; "
            "remove it and run again to rebuild"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"staging-{version}-", dir=cache_dir))
    try:
        _build_into(LlamaCpp(staging), cache_dir, version, jobs)
        staging.rename(build.root)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return build


def _build_into(build: LlamaCpp, cache_dir: Path, version: str, jobs: int) -> None:
    sdist = _download_sdist(cache_dir, version)
    _extract_vendored_llamacpp(sdist, build.source)
    objects = build.root / "cmake-build"
    log = cache_dir / f"build-{version}.log"  # outside the staging folder: it outlives a failure
    log.write_text("")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = [
        "cmake", "-S", str(build.source), "-B", str(objects), *generator,
        "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF",
        f"-DCMAKE_C_FLAGS={NO_AMX_FLAGS}", f"-DCMAKE_CXX_FLAGS={NO_AMX_FLAGS}",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
    ]  # fmt: skip
    started = time.perf_counter()
    print(
        f"llama.cpp: configuring ({'Ninja' if generator else 'default generator'}); log {log}",
        flush=True,
    )
    _run_logged(configure, log, "configuring llama.cpp with CMake")
    print(
        f"llama.cpp: building {', '.join(BINARIES)} with {jobs} jobs (several minutes on 2 cores)",
        flush=True,
    )
    _run_logged(
        ["cmake", "--build", str(objects), f"-j{jobs}", "--target", *BINARIES],
        log,
        "building llama.cpp",
        progress=True,
    )
    (build.root / "bin").mkdir()
    for name in BINARIES:
        shutil.copy2(objects / "bin" / name, build.binary(name))
    shutil.rmtree(objects)  # object files: ~1 GB, not needed once the static binaries exist
    if not build.is_complete():
        raise LlamaCppError(
            f"the llama.cpp build in {build.root} finished without {', '.join(BINARIES)}"
        )
    print(f"llama.cpp: built in {time.perf_counter() - started:.0f} s", flush=True)


def _download_sdist(cache_dir: Path, version: str) -> Path:
    sdist = cache_dir / f"llama_cpp_python-{version}.tar.gz"
    if sdist.is_file():
        return sdist
    print(f"llama.cpp: downloading the llama-cpp-python {version} sdist", flush=True)
    # --no-binary for this package only: its sdist, while pip takes the build backend as a wheel.
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
        "--no-binary", "llama-cpp-python", f"llama-cpp-python=={version}", "--dest", str(cache_dir),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode or not sdist.is_file():
        raise LlamaCppError(
            f"pip could not download the llama-cpp-python {version} sdist:\n{result.stderr.strip()}\n"
            "llama.cpp is built from it; check that the package registry is reachable"
        )
    return sdist


def _extract_vendored_llamacpp(sdist: Path, destination: Path) -> None:
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise LlamaCppError(f"{sdist} has no {prefix}; this sdist does not vendor llama.cpp")
        for member in members:
            member.name = member.name[len(prefix) :]
        archive.extractall(destination, members=[m for m in members if m.name], filter="data")


# Ninja announces "[12/345] Building ...", Make "[ 42%] Building ...".
_BUILD_STEP = re.compile(r"^\[\s*(\d+)(?:/(\d+)|%)\]")


def _build_fraction(line: str) -> float | None:
    step = _BUILD_STEP.match(line)
    if not step:
        return None
    return int(step[1]) / int(step[2] or 100)


def _run_logged(command: list[str], log: Path, what: str, progress: bool = False) -> None:
    """Run a command with its output appended to log; with progress, print each tenth of the
    build as it passes. A failure shows the log's tail."""
    shown = 0
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(command)}\n")
        sink.flush()
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in process.stdout:
            sink.write(line)
            fraction = _build_fraction(line) if progress else None
            if fraction is not None and int(fraction * 10) > shown:
                shown = int(fraction * 10)
                print(f"  {shown * 10}% built", flush=True)
        returncode = process.wait()
    if returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise LlamaCppError(f"{what} failed (exit {returncode}); the end of {log}:\n{tail}")


# ---------------------------------------------------------------------------- GGUF files

# The llama.cpp format each compiled scheme is set against: the same weight width.
LLAMACPP_FORMAT = {
    "q0f32": "f32",
    "q0f16": "f16",
    "q0bf16": "f16",
    "q8f32_1": "q8_0",
    "q8f16_1": "q8_0",
    "q4f32_1": "q4_0",
    "q4f16_1": "q4_0",
    "q4f16_2": "q4_0",
}
# q8f16_1 and q4f16_1 compile and run on the CPU but slowly (one layer of tiny_starcoder decoded in
# 66 and 107 ms/token, q4f32_1 in 39, q0f16 in 19), so they are left to --schemes.
DEFAULT_SCHEMES = "q0f32,q0f16,q0bf16,q8f16_1,q4f16_1"
CONVERTER_FORMATS = ("f32", "f16")  # written by convert_hf_to_gguf.py; the others by llama-quantize
QUANTIZE_SOURCE = "f32"
# The random checkpoint's tokenizer only has to satisfy the converter (the timed tokens are random
# ids): a small one, which the converter pads with [PAD] entries up to the model's vocabulary.
TOKENIZER_VOCAB = 2048
TOKENIZER_TEXT_BYTES = 2_000_000
# Internal: `python bench/llamacpp.py --run-converter SOURCE CONVERTER_ARGS...` (see _run_converter).
CONVERTER_MODE = "--run-converter"


def save_tokenizer(folder: Path) -> None:
    """A byte-level BPE tokenizer trained as the demo model's is, with its EOS as id 0 (the random
    checkpoint's bos/eos id)."""
    from transformers import PreTrainedTokenizerFast

    from codegen.demo_checkpoint import EOS_TOKEN, python_sources, train_tokenizer

    tokenizer = train_tokenizer(python_sources(TOKENIZER_TEXT_BYTES), TOKENIZER_VOCAB)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN
    )
    wrapped.save_pretrained(folder)


def make_ggufs(
    llamacpp: LlamaCpp, model_dir: Path, folder: Path, formats: list[str], threads: int
) -> dict[str, Path]:
    """The checkpoint in each llama.cpp format: float formats through the vendored converter, the
    quantized ones by llama-quantize from the float32 file."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "gguf.log"
    paths = {}
    for fmt in [QUANTIZE_SOURCE, *(f for f in formats if f != QUANTIZE_SOURCE)]:
        paths[fmt] = folder / f"model-{fmt}.gguf"
        print(f"GGUF {fmt}: {paths[fmt]}", flush=True)
        if fmt in CONVERTER_FORMATS:
            command = [
                sys.executable, __file__, CONVERTER_MODE, str(llamacpp.source),
                str(model_dir), "--outtype", fmt, "--outfile", str(paths[fmt]),
            ]  # fmt: skip
            _run_logged(command, log, f"converting {model_dir} to GGUF {fmt}")
        else:
            command = [
                str(llamacpp.binary("llama-quantize")),
                str(paths[QUANTIZE_SOURCE]),
                str(paths[fmt]),
                fmt,
                str(threads),
            ]
            _run_logged(command, log, f"quantizing to GGUF {fmt}")
    return {fmt: paths[fmt] for fmt in formats}


def _run_converter(source: Path, converter_args: list[str]) -> int:
    """Run the vendored convert_hf_to_gguf.py as it is, with its own gguf-py, except for one answer.

    The converter names a BPE tokenizer's pre-tokenizer by hashing how it splits a test string and
    refuses hashes it has not seen published. A freshly trained byte-level BPE with GPT-2's split
    regex (the demo model's, this benchmark's) splits exactly as GPT-2 does, so for that tokenizer
    the answer is "gpt-2"; any other unknown tokenizer is still refused."""
    sys.path[:0] = [str(source), str(source / "gguf-py")]
    import conversion.base

    known = conversion.base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            if not _splits_like_gpt2(Path(self.dir_model) / "tokenizer.json"):
                raise
            return "gpt-2"

    conversion.base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [str(source / "convert_hf_to_gguf.py"), *converter_args]
    runpy.run_path(sys.argv[0], run_name="__main__")
    return 0


def _splits_like_gpt2(tokenizer_json: Path) -> bool:
    """No normalizer, and a ByteLevel pre-tokenizer that applies its (GPT-2) regex."""
    if not tokenizer_json.is_file():
        return False
    data = json.loads(tokenizer_json.read_text())
    pre = data.get("pre_tokenizer") or {}
    return (
        not data.get("normalizer") and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
    )


def gguf_tensor_bytes(source: Path, path: Path) -> dict[str, int]:
    """Bytes of the file's tensors by storage type (llama-quantize keeps some tensors wider than
    the file's nominal format), read with the vendored gguf-py."""
    sys.path.insert(0, str(source / "gguf-py"))
    from gguf import GGUFReader

    by_type: dict[str, int] = {}
    for tensor in GGUFReader(path).tensors:
        name = tensor.tensor_type.name
        by_type[name] = by_type.get(name, 0) + int(tensor.n_bytes)
    return by_type


# ---------------------------------------------------------------------------- the two sides


class LlamaBenchSide:
    """llama-bench on one GGUF file: each call is one repetition (after llama-bench's warm-up run),
    flash attention on, its default float16 KV cache."""

    def __init__(self, llamacpp: LlamaCpp, gguf: Path, threads: int):
        self.binary = llamacpp.binary("llama-bench")
        self.gguf = gguf
        self.threads = threads

    def prefill_seconds(self, prompt_tokens: int) -> float:
        (test,) = self._bench("-p", str(prompt_tokens), "-n", "0")
        return test["avg_ns"] / 1e9

    def decode_seconds(self, prompt_tokens: int, decode_tokens: int) -> float:
        """Seconds per decoded token, decoding after a context of prompt_tokens (-d), as the
        compiled side decodes after its prefill."""
        (test,) = self._bench("-p", "0", "-n", str(decode_tokens), "-d", str(prompt_tokens))
        return test["avg_ns"] / 1e9 / decode_tokens

    def _bench(self, *test: str) -> list[dict]:
        command = [
            str(self.binary), "-m", str(self.gguf), "-t", str(self.threads),
            "-r", "1", "-fa", "on", "-o", "json", *test,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise LlamaCppError(
                f"{' '.join(command)} failed (exit {result.returncode}):\n{result.stderr[-3000:]}"
            )
        return json.loads(result.stdout)


# A timed block: (seconds, CPU share). The share is the CPU time the block's process got (children,
# i.e. llama-bench, included) over wall time x threads. On a machine that other work shares, it
# tells which blocks ran on cores of their own (~1.0) and which were crowded out.
Block = tuple[float, float]


def _with_cpu_share(fn, threads: int):
    """fn()'s result and the CPU share of the wall time it took."""
    before, started = os.times(), time.perf_counter()
    result = fn()
    wall, after = time.perf_counter() - started, os.times()
    cpu = sum(after[:4]) - sum(before[:4])  # user, system, children's user, children's system
    return result, cpu / (wall * threads)


def _time_llamacpp(
    side: LlamaBenchSide, prompt_tokens: int, decode_tokens: int
) -> tuple[Block, Block]:
    """Prefill seconds and decode seconds per token, as llama-bench reports them; the share is of
    the whole llama-bench process (load and its warm-up run included)."""
    time.sleep(SETTLE_SECONDS)
    prefill = _with_cpu_share(lambda: side.prefill_seconds(prompt_tokens), side.threads)
    time.sleep(SETTLE_SECONDS)
    return prefill, _with_cpu_share(
        lambda: side.decode_seconds(prompt_tokens, decode_tokens), side.threads
    )


# Decode steps the compiled side runs untimed before its timed decode (see _time_compiled).
WARM_UP_STEPS = 1


def _time_compiled(
    side: CompiledSide, prompt: list[int], decode: list[int], threads: int
) -> tuple[Block, Block]:
    """As llama-bench times: each timed block right after an untimed warm-up of the same work (a
    prefill; one decode step). Timed straight after the pause, a prefill ran ~12% slower (threads
    and caches cold), which llama-bench's own warm-up run spares llama.cpp."""
    time.sleep(SETTLE_SECONDS)
    side.prefill(prompt)
    prefill = _with_cpu_share(lambda: timed(lambda: side.prefill(prompt)), threads)
    time.sleep(SETTLE_SECONDS)
    side.decode(decode[:WARM_UP_STEPS])
    seconds, share = _with_cpu_share(lambda: timed(lambda: side.decode(decode)), threads)
    return prefill, (seconds / len(decode), share)


PHASES = ("prefill", "decode")


def measure(
    llamacpp_sides: dict[str, LlamaBenchSide],
    compiled_sides: dict[str, CompiledSide],
    prompt: list[int],
    decode: list[int],
    rounds: int,
    threads: int,
) -> dict[str, dict[str, list[float]]]:
    """Seconds per prefill and per decoded token of every side, and each block's CPU share, round
    by round: each llama.cpp format, then the compiled schemes set against it, then the next
    format. Round 0 is a warm-up."""
    names = [*(f"llama.cpp {fmt}" for fmt in llamacpp_sides), *compiled_sides]
    times = {
        name: {key: [] for phase in PHASES for key in (phase, f"{phase}_cpu_share")}
        for name in names
    }
    for round_ in range(rounds + 1):
        print(f"round {round_}/{rounds}{' (warm-up)' if round_ == 0 else ''}", flush=True)
        for fmt, llama in llamacpp_sides.items():
            timed = {f"llama.cpp {fmt}": _time_llamacpp(llama, len(prompt), len(decode))}
            for scheme, compiled in compiled_sides.items():
                if LLAMACPP_FORMAT[scheme] == fmt:
                    timed[scheme] = _time_compiled(compiled, prompt, decode, threads)
            if round_:
                for name, blocks in timed.items():
                    for phase, (seconds, share) in zip(PHASES, blocks):
                        times[name][phase].append(seconds)
                        times[name][f"{phase}_cpu_share"].append(share)
    return times


# ---------------------------------------------------------------------------- perplexity

_LLAMA_PPL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
_LLAMA_CHUNKS = re.compile(r"calculating perplexity over (\d+) chunks")
_CODEGEN_PPL = re.compile(r"perplexity: ([0-9.]+) over (\d+) tokens \((\d+) chunks of (\d+)\)")
DEFAULT_CONTEXT = 512  # llama-perplexity's default -c


def llamacpp_perplexity(
    llamacpp: LlamaCpp, gguf: Path, text: Path, context: int, threads: int
) -> dict:
    command = [
        str(llamacpp.binary("llama-perplexity")), "-m", str(gguf), "-f", str(text),
        "-c", str(context), "-t", str(threads),
    ]  # fmt: skip
    output = _checked_output(command, "llama-perplexity")
    estimate, chunks = _LLAMA_PPL.search(output), _LLAMA_CHUNKS.search(output)
    if not estimate or not chunks:
        raise LlamaCppError(
            f"{' '.join(command)} printed no 'Final estimate: PPL'; its output ends:\n{output[-2000:]}"
        )
    return {"perplexity": float(estimate[1]), "error": float(estimate[2]), "chunks": int(chunks[1])}


def codegen_perplexity(artifact: Path, tokenizer: Path, text: Path, context: int) -> dict:
    command = [
        str(_codegen_command()), "eval", "--artifact", str(artifact), "--tokenizer", str(tokenizer),
        "--text", str(text), "--context", str(context),
    ]  # fmt: skip
    output = _checked_output(command, "codegen eval")
    found = _CODEGEN_PPL.search(output)
    if not found:
        raise LlamaCppError(
            f"{' '.join(command)} printed no 'perplexity: ...' line; its output ends:\n{output[-2000:]}"
        )
    return {"perplexity": float(found[1]), "tokens": int(found[2]), "chunks": int(found[3])}


def _codegen_command() -> Path:
    return Path(sys.executable).parent / "codegen"


def has_codegen_eval() -> bool:
    """Whether this checkout's command line has `codegen eval` (added for this benchmark's
    perplexity half; without it only llama.cpp's perplexities are printed)."""
    command = [str(_codegen_command()), "eval", "--help"]
    return subprocess.run(command, capture_output=True, text=True).returncode == 0


def _checked_output(command: list[str], what: str) -> str:
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode:
        raise LlamaCppError(
            f"{what} failed (exit {result.returncode}): {' '.join(command)}\n{result.stdout[-3000:]}"
        )
    return result.stdout


def _model_window(model_dir: Path) -> int | None:
    config = json.loads((model_dir / "config.json").read_text())
    return config.get("n_positions") or config.get("max_position_embeddings")


def perplexities(args: argparse.Namespace, model, llamacpp: LlamaCpp, workdir: Path) -> dict:
    """Perplexity of the trained model in every llama.cpp format and every compiled scheme, over
    the same text with the same chunk length."""
    window = _model_window(args.model_dir)
    context = args.context or min(DEFAULT_CONTEXT, window or DEFAULT_CONTEXT)
    print(
        f"perplexity of {args.model_dir} on {args.perplexity}, chunks of {context} tokens",
        flush=True,
    )
    formats = sorted(
        {LLAMACPP_FORMAT[scheme] for scheme in args.schemes},
        key=list(LLAMACPP_FORMAT.values()).index,
    )
    ggufs = make_ggufs(llamacpp, args.model_dir, workdir / "perplexity-gguf", formats, args.threads)
    results: dict = {
        "text": str(args.perplexity),
        "model_dir": str(args.model_dir),
        "context": context,
    }
    results["llama.cpp"] = {
        fmt: llamacpp_perplexity(llamacpp, path, args.perplexity, context, args.threads)
        for fmt, path in ggufs.items()
    }
    if not has_codegen_eval():
        print(
            "codegen eval is not in this checkout's command line: only llama.cpp's perplexities are "
            "printed. Once `codegen eval` exists, this run prints the compiled side too.",
            flush=True,
        )
        return results
    results["compiled"] = {}
    for scheme in args.schemes:
        artifact = workdir / f"perplexity-artifact-{scheme}"
        build_artifact(model, args.model_dir, artifact, args.threads, scheme)
        results["compiled"][scheme] = codegen_perplexity(
            artifact, args.model_dir, args.perplexity, context
        )
    return results


# ---------------------------------------------------------------------------- report

TARGET_RATIO = (
    1.0  # issue 13: compiled <= 1.0x llama.cpp's format of the same width, decode and prefill
)


def summarize(times: dict[str, dict[str, list[float]]], schemes: list[str]) -> list[dict]:
    rows = []
    for scheme in schemes:
        fmt = LLAMACPP_FORMAT[scheme]
        theirs, ours = times[f"llama.cpp {fmt}"], times[scheme]
        row = {"scheme": scheme, "llamacpp_format": fmt}
        for phase in PHASES:
            # Each round's pair, then the median: a drift between rounds hits both sides.
            ratios = [o / t for o, t in zip(ours[phase], theirs[phase])]
            row[phase] = {
                "llamacpp_ms": statistics.median(theirs[phase]) * 1e3,
                "compiled_ms": statistics.median(ours[phase]) * 1e3,
                "ratio": statistics.median(ratios),
                "round_ratios": ratios,
                # Each side's least disturbed round: what it does when it has the cores.
                "best_ratio": min(ours[phase]) / min(theirs[phase]),
                "llamacpp_cpu_share": statistics.median(theirs[f"{phase}_cpu_share"]),
                "compiled_cpu_share": statistics.median(ours[f"{phase}_cpu_share"]),
                "target_met": statistics.median(ratios) <= TARGET_RATIO,
            }
        rows.append(row)
    return rows


def report(results: dict) -> str:
    lines = [
        f"model: {results['spec']} preset {results['preset']}"
        f"{' with ' + str(results['layers']) + ' layers' if results['layers'] else ''}, random weights,"
        f" {results['threads']} threads, prompt {results['prompt_tokens']} tokens,"
        f" decode {results['decode_tokens']} tokens after it, {results['rounds']} rounds (medians)",
        f"llama.cpp: vendored in llama-cpp-python {results['llama_cpp_python']}, llama-bench -fa on, f16 KV cache",
        "ratio = compiled / llama.cpp, median of the rounds' ratios (target <= 1.0x, issue 13);"
        " best = best round / best round; cpu = median share of its cores each side got",
        "",
        f"{'compiled':9} {'llama.cpp':9} | {'decode ms/token':^49} | {'prefill ms':^49}",
        f"{'':19} | "
        + " | ".join(
            f"{'llama.cpp':>9} {'here':>8} {'ratio':>5} {'target':>6} {'best':>5} {'cpu':>9}"
            for _ in PHASES
        ),
    ]
    for row in results["rows"]:
        cells = [
            f"{f['llamacpp_ms']:9.2f} {f['compiled_ms']:8.2f} {f['ratio']:5.2f} {'met' if f['target_met'] else 'missed':>6}"
            f" {f['best_ratio']:5.2f} {f['llamacpp_cpu_share']:.2f}/{f['compiled_cpu_share']:.2f}"
            for f in (row[phase] for phase in ("decode", "prefill"))
        ]
        lines.append(f"{row['scheme']:9} {row['llamacpp_format']:9} | {cells[0]} | {cells[1]}")
    lines += ["", "weights (MB): llama.cpp GGUF tensors by type | compiled artifact parameters"]
    for fmt, by_type in results["gguf_tensor_bytes"].items():
        types = ", ".join(
            f"{name} {size / 1e6:.1f}"
            for name, size in sorted(by_type.items(), key=lambda item: -item[1])
        )
        lines.append(f"  llama.cpp {fmt:6} {sum(by_type.values()) / 1e6:7.1f}  ({types})")
    for scheme, size in results["artifact_weight_bytes"].items():
        lines.append(f"  compiled  {scheme:8} {size / 1e6:5.1f}")
    if "perplexity" in results:
        lines += ["", _perplexity_report(results["perplexity"])]
    return "\n".join(lines)


def _perplexity_report(results: dict) -> str:
    lines = [
        f"perplexity of {results['model_dir']} on {results['text']}, chunks of {results['context']} tokens:"
    ]
    for fmt, figures in results["llama.cpp"].items():
        lines.append(
            f"  llama.cpp {fmt:8} {figures['perplexity']:9.4f} +/- {figures['error']:.4f} ({figures['chunks']} chunks)"
        )
    for scheme, figures in results.get("compiled", {}).items():
        lines.append(
            f"  compiled  {scheme:8} {figures['perplexity']:9.4f} ({figures['chunks']} chunks,"
            f" {figures['tokens']} tokens scored; vs llama.cpp {LLAMACPP_FORMAT[scheme]})"
        )
    if "compiled" not in results:
        lines.append("  compiled: not measured, this checkout has no `codegen eval`")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the run


def _artifact_weight_bytes(artifact: Path) -> int:
    import numpy as np

    from codegen.artifact.tensor_cache import numpy_dtype

    metadata = json.loads((artifact / "metadata.json").read_text())
    return sum(
        int(np.prod(p["shape"])) * numpy_dtype(p["dtype"]).itemsize for p in metadata["params"]
    )


def run(args: argparse.Namespace, workdir: Path) -> dict:
    from codegen.models import load_model

    llamacpp = ensure_llamacpp(CACHE_DIR, LLAMA_CPP_PYTHON_VERSION, args.build_jobs)
    model = load_model(args.spec)
    model_dir = workdir / "hf"
    print(f"checkpoint: random {args.spec} {args.preset} in {model_dir}", flush=True)
    save_random_checkpoint(model, args.preset, args.layers, model_dir)
    save_tokenizer(model_dir)
    formats = list(dict.fromkeys(LLAMACPP_FORMAT[scheme] for scheme in args.schemes))
    ggufs = make_ggufs(llamacpp, model_dir, workdir / "gguf", formats, args.threads)

    artifacts = {}
    for scheme in args.schemes:
        artifacts[scheme] = workdir / f"artifact-{scheme}"
        print(f"compiled {scheme}: {artifacts[scheme]}", flush=True)
        build_artifact(model, model_dir, artifacts[scheme], args.threads, scheme)

    config = model.package.Config.from_file(model_dir / "config.json")
    prompt = random_tokens(config.vocab_size, args.prompt_tokens, seed=1)
    decode = random_tokens(config.vocab_size, args.decode_tokens, seed=2)
    llamacpp_sides = {
        fmt: LlamaBenchSide(llamacpp, path, args.threads) for fmt, path in ggufs.items()
    }
    compiled_sides = {
        scheme: CompiledSide(path, args.prompt_tokens + WARM_UP_STEPS + args.decode_tokens)
        for scheme, path in artifacts.items()
    }
    times = measure(llamacpp_sides, compiled_sides, prompt, decode, args.rounds, args.threads)
    del compiled_sides

    results = {
        "spec": model.name,
        "preset": args.preset,
        "layers": args.layers,
        "threads": args.threads,
        "rounds": args.rounds,
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION,
        "rows": summarize(times, args.schemes),
        "raw_seconds": times,
        "gguf_tensor_bytes": {
            fmt: gguf_tensor_bytes(llamacpp.source, path) for fmt, path in ggufs.items()
        },
        "artifact_weight_bytes": {
            scheme: _artifact_weight_bytes(path) for scheme, path in artifacts.items()
        },
    }
    if args.perplexity:
        results["perplexity"] = perplexities(args, model, llamacpp, workdir)
    return results


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", default="gpt_bigcode", help="architecture name or spec path")
    parser.add_argument("--preset", default="tiny_starcoder", help="size preset of the spec")
    parser.add_argument(
        "--layers", type=int, default=None, help="override the preset's layer count"
    )
    parser.add_argument(
        "--schemes",
        default=DEFAULT_SCHEMES,
        help=f"compiled schemes, comma-separated; each is set against llama.cpp's format of its width"
        f" ({', '.join(f'{s}: {f}' for s, f in LLAMACPP_FORMAT.items())}); default {DEFAULT_SCHEMES}",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="timed rounds (after one warm-up round)"
    )
    parser.add_argument("--threads", type=int, default=2, help="threads of both sides")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument(
        "--build-jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="parallel jobs of the llama.cpp build",
    )
    parser.add_argument(
        "--build-only",
        action="store_true",
        help=f"build llama.cpp into {CACHE_DIR.relative_to(REPO_ROOT)}/ and stop",
    )
    parser.add_argument(
        "--perplexity",
        type=Path,
        metavar="TEXT_FILE",
        help="also measure perplexity on this text (needs --model-dir)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="trained Hugging Face model folder (with tokenizer.json) for --perplexity",
    )
    parser.add_argument(
        "--context",
        type=int,
        default=None,
        help="perplexity chunk length (default: 512 or the model's window)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=REPO_ROOT / "build" / "bench-llamacpp.json",
        help="where to write all figures",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep checkpoint, GGUF files and artifacts here (default: a temp dir)",
    )
    args = parser.parse_args(argv)
    args.schemes = [scheme for scheme in args.schemes.split(",") if scheme]
    unknown = [scheme for scheme in args.schemes if scheme not in LLAMACPP_FORMAT]
    if unknown:
        parser.error(
            f"--schemes: no llama.cpp format to compare {', '.join(unknown)} with; choose from {', '.join(LLAMACPP_FORMAT)}"
        )
    if bool(args.perplexity) != bool(args.model_dir):
        parser.error("--perplexity TEXT_FILE and --model-dir DIR go together")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [CONVERTER_MODE]:
        return _run_converter(Path(argv[1]), argv[2:])
    args = _parse_args(argv)
    # Read by TVM's thread pool when it starts, so it must be set before the first TVM call.
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    try:
        if args.build_only:
            ensure_llamacpp(CACHE_DIR, LLAMA_CPP_PYTHON_VERSION, args.build_jobs)
            return 0
        if args.workdir:
            args.workdir.mkdir(parents=True, exist_ok=True)
            results = run(args, args.workdir)
        else:
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="run-", dir=CACHE_DIR) as workdir:
                results = run(args, Path(workdir))
    except CodegenError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report(results))
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
