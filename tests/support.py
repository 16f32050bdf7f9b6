"""Helpers for tests: random-weight Hugging Face models and the real compile/convert path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
FLOAT32_TOLERANCE = 1e-4


def save_hf_model(hf_model, directory: Path, **save_kwargs) -> Path:
    """save_pretrained a transformers model (config.json + safetensors) into directory."""
    directory = Path(directory)
    hf_model.save_pretrained(directory, **save_kwargs)
    return directory


def random_hf_model(config_class, model_class, seed: int = 0, **config_kwargs):
    """A transformers causal LM with random weights in eval mode."""
    import torch

    torch.manual_seed(seed)
    config_kwargs.setdefault("bos_token_id", 0)
    config_kwargs.setdefault("eos_token_id", 0)
    config = config_class(**config_kwargs)
    model = model_class(config).eval()
    # Random LayerNorm parameters too, so a missing bias or swapped weight cannot hide.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "ln" in name or "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
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

    def build(self, spec: str, model_dir: Path, dtype: str = "float32", target: str = "llvm", **overrides: Any) -> Path:
        from codegen.compile import BuildOptions, compile_to_dir
        from codegen.models import load_model
        from codegen.weights import convert

        config_text = (Path(model_dir) / "config.json").read_text()
        key_source = json.dumps([spec, config_text, str(model_dir), dtype, target, overrides], sort_keys=True)
        key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
        if key not in self._built:
            output = self.root / f"{Path(spec).stem}-{key}"
            model = load_model(spec)
            config = model.package.Config.from_dict(json.loads(config_text), **overrides)
            compile_to_dir(model, config, BuildOptions(target=target, dtype=dtype), output)
            if target == "llvm":
                convert(model, model_dir, output, dtype=dtype, progress=False)
            self._built[key] = output
        return self._built[key]
