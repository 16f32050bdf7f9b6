"""The `codegen` command line: generate, check, diff, import-hf, compile, convert, run, eval.

A refused input (a CodegenError) prints as one line and exits 1, and so does an operating-system
failure on a named file (permission, disk full). Anything else is a bug: it keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from codegen.errors import CodegenError

EXAMPLES = """\
examples:
  codegen generate                                   render every specs/*.yaml into generated/
  codegen check                                      exit 1 if generated/ is stale
  codegen diff specs/gpt_bigcode.yaml specs/gpt_bigcode_mha.yaml
  codegen import-hf HF_DIR/config.json --into specs/starcoder2.yaml --preset my_size
  codegen compile --spec specs/gpt_bigcode.yaml --preset tiny_starcoder --output build/tiny
  codegen convert --spec specs/gpt_bigcode.yaml --model-dir HF_DIR --output build/tiny
  codegen run --artifact build/tiny --tokenizer HF_DIR --prompt "def fib("
  codegen eval --artifact build/tiny --tokenizer HF_DIR --text heldout.txt --context 512
"""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except CodegenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.filename is None:
            raise
        print(f"error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codegen",
        description="Declarative YAML -> Apache TVM Relax code generator for decoder-only transformers.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="render every spec into generated/ (atomic, idempotent)")
    generate.add_argument("--specs", type=Path, default=None, help="folder of spec files (default: specs/)")
    generate.add_argument("--output", type=Path, default=None, help="output folder (default: generated/)")
    generate.set_defaults(handler=_generate)

    check = commands.add_parser("check", help="exit 1 when generated/ differs from a fresh render")
    check.set_defaults(handler=_check)

    diff = commands.add_parser("diff", help="unified diff of the code two specs generate")
    diff.add_argument("first", type=Path)
    diff.add_argument("second", type=Path)
    diff.set_defaults(handler=_diff)

    import_hf = commands.add_parser("import-hf", help="add a size preset to a spec from a Hugging Face config.json")
    import_hf.add_argument("config_json", type=Path, metavar="CONFIG_JSON")
    import_hf.add_argument("--into", type=Path, required=True, help="spec file to edit (comments and layout are kept)")
    import_hf.add_argument("--preset", required=True, help="name of the new preset (snake_case)")
    import_hf.add_argument("--force", action="store_true", help="replace a preset of that name in the file")
    import_hf.set_defaults(handler=_import_hf)

    compile_ = commands.add_parser("compile", help="build the model library and metadata for a target")
    _add_model_arguments(compile_)
    size = compile_.add_mutually_exclusive_group(required=True)
    size.add_argument("--preset", help="a size preset named in the spec (e.g. tiny_starcoder)")
    size.add_argument("--config", type=Path, help="a Hugging Face config.json")
    compile_.add_argument("--target", default="llvm", help="llvm (CPU, default) or cuda")
    compile_.add_argument("--arch", default="sm_80", help="CUDA architecture: sm_80, sm_86, sm_89 or sm_90")
    _add_quantization_arguments(compile_)
    compile_.add_argument("--context-window", type=int, default=None, help="override the context window size")
    compile_.add_argument("--prefill-chunk", type=int, default=None, help="override the prefill chunk size")
    compile_.add_argument("--output", type=Path, required=True, help="artifact folder to write")
    compile_.set_defaults(handler=_compile)

    convert = commands.add_parser("convert", help="convert an HF checkpoint into the artifact's tensor cache")
    _add_model_arguments(convert)
    convert.add_argument("--model-dir", type=Path, required=True, help="HF folder: config.json + safetensors or .bin")
    _add_quantization_arguments(convert)
    convert.add_argument("--output", type=Path, required=True, help="artifact folder to write the weights into")
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    convert.add_argument(
        "--allow-non-finite", action="store_true", help="convert tensors with NaN, infinity or values that overflow the model's dtype"
    )
    convert.set_defaults(handler=_convert)

    run = commands.add_parser("run", help="generate text from a compiled, converted artifact")
    run.add_argument("--artifact", type=Path, required=True)
    run.add_argument("--tokenizer", type=Path, required=True, help="folder with tokenizer.json")
    run.add_argument("--prompt", required=True)
    run.add_argument("--max-new-tokens", type=int, default=64)
    run.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    run.add_argument("--top-p", type=float, default=1.0)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--device", default=None, help="cpu or cuda (default: from the artifact's target)")
    run.set_defaults(handler=_run)

    eval_ = commands.add_parser("eval", help="perplexity of an artifact on a text file (llama-perplexity's protocol)")
    eval_.add_argument("--artifact", type=Path, required=True)
    eval_.add_argument("--tokenizer", type=Path, required=True, help="folder with tokenizer.json")
    eval_.add_argument("--text", type=Path, required=True, help="UTF-8 text file to score")
    eval_.add_argument(
        "--context", type=int, default=None, help="tokens per chunk; the second half of each is scored (default: 512 or the window)"
    )
    eval_.set_defaults(handler=_eval)
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", required=True, help="spec path (specs/gpt_bigcode.yaml) or generated name")


def _add_quantization_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quantization",
        default=None,
        metavar="NAME",
        help="weight scheme of specs/quantization/schemes.yaml: q0f32 (default), q0f16, q0bf16, q4f16_1, q4f32_1,"
        " q4f16_2, q8f16_1, q8f32_1; compile and convert must use the same one",
    )
    parser.add_argument("--dtype", default=None, help="float32, float16 or bfloat16: the same as q0f32, q0f16, q0bf16")


def _generate(args) -> int:
    from codegen import render

    spec_files = render.spec_paths(args.specs) if args.specs else None
    written = render.generate(args.output, spec_files)
    print(f"generated {len(written)} files in {args.output or 'generated/'}")
    return 0


def _check(args) -> int:
    from codegen import render

    stale = render.stale_files()
    if stale:
        print("generated/ is stale; run `make generate` and commit the result. Differs:", file=sys.stderr)
        for name in stale:
            print(f"  generated/{name}", file=sys.stderr)
        return 1
    print("generated/ is current")
    return 0


def _diff(args) -> int:
    from codegen import render

    sys.stdout.write(render.diff_specs(args.first, args.second))
    return 0


def _import_hf(args) -> int:
    from codegen.import_hf import import_preset

    values = import_preset(args.config_json, args.into, args.preset, force=args.force)
    print(f"added preset {args.preset} ({len(values)} fields) to {args.into}; run `codegen generate` to update generated/")
    return 0


def _compile(args) -> int:
    from codegen.build.compile import BuildOptions, compile_to_dir
    from codegen.files import read_json_object
    from codegen.models import load_model

    options = BuildOptions(target=args.target, dtype=args.dtype, cuda_arch=args.arch, quantization=args.quantization)
    model = load_model(args.spec)
    overrides = {}
    if args.context_window:
        overrides["context_window_size"] = args.context_window
    if args.prefill_chunk:
        overrides["prefill_chunk_size"] = args.prefill_chunk
    if args.preset:
        config = model.config(preset=args.preset, **overrides)
    else:
        config = model.config(hf_config=read_json_object(args.config), **overrides)
    print(f"compiling {model.name} for {args.target} ({options.quantization}) into {args.output} ...", flush=True)
    fields = compile_to_dir(model, config, options, args.output)
    print(f"wrote {args.output}/model.so in {fields['codegen']['compile_seconds']} s")
    return 0


def _convert(args) -> int:
    from codegen.models import load_model
    from codegen.convert.weights import convert

    model = load_model(args.spec)
    result = convert(
        model,
        args.model_dir,
        args.output,
        dtype=args.dtype,
        quantization=args.quantization,
        progress=not args.quiet,
        allow_non_finite=args.allow_non_finite,
    )
    shards = result["index"]["records"]
    count = sum(len(shard["records"]) for shard in shards)
    print(f"wrote {count} tensors in {len(shards)} shards to {args.output}")
    return 0


def _run(args) -> int:
    from codegen.runtime.generation import run_prompt

    return run_prompt(args)


def _eval(args) -> int:
    from codegen.runtime.evaluate import run_eval

    return run_eval(args)


if __name__ == "__main__":
    sys.exit(main())
