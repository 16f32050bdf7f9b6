"""Helpers for tests: random-weight Hugging Face models and the real compile/convert path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
FLOAT32_TOLERANCE = 1e-4
# HF's usual 0.02 leaves a 2-layer model's attention almost uniform: a wrong rope_theta then moved the
# logits by only 3e-4. At 0.15 it moves them by ~5 while float32 rounding stays near 1e-6.
INITIALIZER_RANGE = 0.15


def save_hf_model(hf_model, directory: Path, **save_kwargs) -> Path:
    """save_pretrained a transformers model (config.json + safetensors) into directory."""
    directory = Path(directory)
    hf_model.save_pretrained(directory, **save_kwargs)
    return directory


def random_hf_model(config_class, model_class, seed: int = 0, **config_kwargs):
    """A transformers causal LM with random weights in eval mode, biases and norms included."""
    import torch

    torch.manual_seed(seed)
    config_kwargs.setdefault("bos_token_id", 0)
    config_kwargs.setdefault("eos_token_id", 0)
    config_kwargs.setdefault("initializer_range", INITIALIZER_RANGE)
    model = model_class(config_class(**config_kwargs)).eval()
    # HF initialises biases to zero and norms to one, which would hide a missing bias or a swapped
    # norm: perturb them.
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias") or "ln" in name or "norm" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def hf_logits(hf_model, token_ids: list[int]) -> np.ndarray:
    """transformers logits for every position of one sequence, float32 numpy [seq, vocab]."""
    import torch

    with torch.no_grad():
        return hf_model(torch.tensor([token_ids])).logits[0].float().numpy()


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


class ArtifactFactory:
    """Builds artifacts through the real path (convert + compile) and caches them by content."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._built: dict[str, Path] = {}

    def build(
        self,
        spec: str,
        model_dir: Path,
        dtype: str = "float32",
        target: str = "llvm",
        cuda_arch: str | None = None,
        quantization: str | None = None,
        **overrides: Any,
    ) -> Path:
        from codegen.build.compile import BuildOptions, compile_to_dir
        from codegen.models import load_model
        from codegen.convert.weights import convert

        config_text = (Path(model_dir) / "config.json").read_text()
        key_source = json.dumps([spec, config_text, str(model_dir), dtype, target, cuda_arch, quantization, overrides], sort_keys=True)
        key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
        if key not in self._built:
            output = self.root / f"{Path(spec).stem}-{key}"
            model = load_model(spec)
            config = model.package.Config.from_dict(json.loads(config_text), **overrides)
            options = BuildOptions(
                target=target,
                dtype=None if quantization else dtype,
                quantization=quantization,
                **({"cuda_arch": cuda_arch} if cuda_arch else {}),
            )
            compile_to_dir(model, config, options, output)
            convert(model, model_dir, output, quantization=options.quantization, progress=False)
            self._built[key] = output
        return self._built[key]


def tiny_preset(spec, values: dict[str, Any]) -> dict[str, Any]:
    """A small config.json with a preset's options and shape ratios, in the spec's own HF field names.

    Booleans, activation and checks are kept; widths shrink to head_dim 8 (rotary_dim in proportion),
    two layers, 64 positions and an odd vocabulary, so every preset compiles in seconds and still
    exercises its layout.
    """

    def hf_name(field: str) -> str | None:
        """The HF name the field reads first (specs may list fallbacks); None for nested fields."""
        config_field = spec.field(field)
        if config_field is None or config_field.hf is None:
            return None
        name = config_field.hf if isinstance(config_field.hf, str) else config_field.hf[0]
        return None if "." in name else name

    def read(field: str, default=None):
        name = hf_name(field)
        return values.get(name, default) if name else default

    heads = read("num_attention_heads")
    kv_heads = read("num_key_value_heads")
    if kv_heads:
        tiny_kv = min(kv_heads, 2)
        tiny_heads = tiny_kv * min(heads // kv_heads, 3)
    else:
        tiny_heads = max(2, min(heads // 4, 6))
    hidden = tiny_heads * 8
    tiny = dict(values)
    tiny["model_type"] = spec.hf_model_type
    updates = {
        "num_attention_heads": tiny_heads,
        "num_key_value_heads": tiny_kv if kv_heads else None,
        "hidden_size": hidden,
        "num_hidden_layers": 2,
        "vocab_size": 128 + read("vocab_size", 0) % 61,
        "context_window_size": 64,
        "head_dim": 8 if read("head_dim") else None,
    }
    intermediate = read("intermediate_size")
    if intermediate:
        updates["intermediate_size"] = max(8, round(intermediate / read("hidden_size") * hidden))
    rotary_dim = read("rotary_dim")
    if rotary_dim:  # keep the rotated share of each head (GPT-J rotates 64 of 256)
        head_dim = read("head_dim") or read("hidden_size") // heads
        updates["rotary_dim"] = max(2, 2 * round(rotary_dim / head_dim * 4))
    for field, value in updates.items():
        if value is not None and hf_name(field):
            tiny[hf_name(field)] = value
    return tiny


def hf_model_from_config_dict(config: dict[str, Any], seed: int = 0):
    """A random-weight transformers model for a config.json dict (model_type picks the class)."""
    import transformers

    values = dict(config)
    model_type = values.pop("model_type")
    config_class = type(transformers.AutoConfig.for_model(model_type))
    model_class = transformers.AutoModelForCausalLM._model_mapping[config_class]
    return random_hf_model(config_class, model_class, seed=seed, **values)


def write_santacoder_legacy(source: Path, target: Path, hf_model) -> None:
    """The original SantaCoder layout: GPT-2 Conv1D ([in, out]) layers, attention split into q_attn + kv_attn."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(source / "model.safetensors"))
    width = hf_model.config.n_embd
    out = {}
    for name, array in tensors.items():
        if name.endswith("attn.c_attn.weight"):  # Linear [n_embd + 2 * head_dim, n_embd]
            prefix = name[: -len("c_attn.weight")]
            out[prefix + "q_attn.weight"] = np.ascontiguousarray(array[:width].T)
            out[prefix + "kv_attn.weight"] = np.ascontiguousarray(array[width:].T)
        elif name.endswith("attn.c_attn.bias"):
            prefix = name[: -len("c_attn.bias")]
            out[prefix + "q_attn.bias"] = array[:width].copy()
            out[prefix + "kv_attn.bias"] = array[width:].copy()
        elif name.endswith(("attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")):
            out[name] = np.ascontiguousarray(array.T)
        else:
            out[name] = array
    target.mkdir(parents=True, exist_ok=True)
    save_file(out, str(target / "model.safetensors"), metadata={"format": "pt"})
    # The released config.json: GPT-2 model type with the remote code's attention_head_type field.
    config = json.loads((source / "config.json").read_text())
    del config["multi_query"]
    config.update(model_type="gpt2", attention_head_type="multiquery", architectures=["GPT2LMHeadCustomModel"])
    (target / "config.json").write_text(json.dumps(config, indent=2))
