"""Convert a Hugging Face checkpoint into the tensor cache, through the generated weight map."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from codegen.artifact import tensor_cache
from codegen.convert import chat_config
from codegen.convert.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from codegen.files import read_json_object, staging_dir
from codegen.models import GeneratedModel

__all__ = ["CheckpointError", "convert", "apply_transforms"]


def apply_transforms(array: np.ndarray, transforms: tuple[str, ...], config: Any) -> np.ndarray:
    for transform in transforms:
        if transform == "transpose":
            array = array.T
        elif transform == "deinterleave_qkv":
            # Rows are [head][q|k|v][head_dim]; the KV cache wants [q|k|v][head][head_dim].
            heads, head_dim = config.num_attention_heads, config.head_dim
            rest = array.shape[1:]
            array = array.reshape(heads, 3, head_dim, *rest).swapaxes(0, 1).reshape(3 * heads * head_dim, *rest)
        else:
            raise AssertionError(f"unknown weight transform {transform!r}")  # the schema allows no other
    return array


def parameter_specs(model: GeneratedModel, config: Any, dtype: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Parameter name -> (shape, dtype) exactly as the exported model declares them."""
    module = model.package.ForCausalLM(config)
    module.to(dtype)
    return {name: (tuple(int(d) for d in p.shape), p.dtype) for name, p in module.named_parameters()}


def _mapped_tensors(
    model: GeneratedModel, config: Any, checkpoint: Checkpoint, dtype: str
) -> Iterator[tuple[str, np.ndarray, str]]:
    specs = parameter_specs(model, config, dtype)
    sources = model.package.weight_map(config)
    if set(sources) != set(specs):  # a template bug, never the user's input
        raise AssertionError(f"generated weight map and model disagree on {sorted(set(sources) ^ set(specs))}")
    needed = {name for source in sources.values() for name in source.hf_names}
    ignored = model.package.ignored_tensors(config)
    stored_as = _stored_names(checkpoint.names(), needed | ignored, model.package.BACKBONE_PREFIX)
    available = set(stored_as)
    missing = sorted(needed - available)
    unexpected = sorted(available - needed - ignored)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {checkpoint.location} does not match {model.name} for this config.json:"
            + (f"\n  missing tensors: {', '.join(missing)}" if missing else "")
            + (f"\n  unexpected tensors: {', '.join(unexpected)}" if unexpected else "")
        )
    target_dtype = tensor_cache.numpy_dtype(dtype)
    for name, source in sources.items():
        parts = [
            apply_transforms(_float_tensor(checkpoint, stored_as[hf_name]), source.transforms, config)
            for hf_name in source.hf_names
        ]
        array = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        shape, _ = specs[name]
        if tuple(array.shape) != shape:
            names = " + ".join(source.hf_names)
            raise CheckpointError(f"{names}: shape {list(array.shape)} does not fit parameter {name} {list(shape)}")
        yield name, array.astype(target_dtype), dtype


def _stored_names(names: list[str], known: set[str], backbone_prefix: str) -> dict[str, str]:
    """Name the weight map uses -> name in the checkpoint.

    A bare-backbone checkpoint (e.g. GPT2Model, as the original gpt2 release is stored) lacks the
    backbone prefix: h.0.attn.c_attn.weight stands for transformer.h.0.attn.c_attn.weight.
    """
    return {
        backbone_prefix + name if name not in known and backbone_prefix + name in known else name: name
        for name in names
    }


_FLOAT_DTYPES = {"float16", "float32", "float64", "bfloat16"}


def _float_tensor(checkpoint: Checkpoint, name: str) -> np.ndarray:
    """Weights are floating point; an integer or bool tensor is a damaged or foreign checkpoint."""
    array = checkpoint.get(name)
    if str(array.dtype) not in _FLOAT_DTYPES:
        raise CheckpointError(
            f"{checkpoint.location}: tensor {name!r} has dtype {array.dtype}; weights must be floating-point"
            f" ({', '.join(sorted(_FLOAT_DTYPES))})"
        )
    return array


def _read_config(model: GeneratedModel, model_dir: Path) -> Any:
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir} has no config.json (the Hugging Face model config)")
    return model.config(hf_config=read_json_object(path, CheckpointError))


def convert(
    model: GeneratedModel,
    model_dir: Path,
    output: Path,
    dtype: str = "float32",
    progress: bool = True,
) -> dict[str, Any]:
    """Write the tensor cache for model_dir into output (temporary folder first, renamed when complete)."""
    model_dir, output = Path(model_dir), Path(output)
    config = _read_config(model, model_dir)
    checkpoint = open_checkpoint(model_dir)
    try:
        with staging_dir(output, prefix=".weights-") as staging:
            tensors = _mapped_tensors(model, config, checkpoint, dtype)
            if progress:
                tensors = _with_progress(tensors, len(model.package.weight_map(config)))
            metadata = {"architecture": model.name, "dtype": dtype, "source": str(model_dir)}
            tensor_cache.write(tensors, staging, metadata)
            _replace_weights(staging, output)
    finally:
        checkpoint.close()
    chat_config.write(model_dir, output, config, dtype)
    return {"config": config, "index": tensor_cache.read_index(output)}


def _with_progress(tensors, total: int):
    from tqdm import tqdm

    return tqdm(tensors, total=total, unit="tensor", desc="convert", leave=False)


def _replace_weights(staging: Path, output: Path) -> None:
    """Swap the new shards in. The old index goes first and the new one comes last, so at every
    moment tensor-cache.json is either the old index with all its shards, or absent, or the new one
    with all its shards: never an index next to shards it does not describe."""
    (output / tensor_cache.INDEX_NAME).unlink(missing_ok=True)
    for old in output.glob(f"{tensor_cache.SHARD_PREFIX}*.bin"):
        old.unlink()
    for shard in sorted(staging.glob(f"{tensor_cache.SHARD_PREFIX}*.bin")):
        os.replace(shard, output / shard.name)
    os.replace(staging / tensor_cache.INDEX_NAME, output / tensor_cache.INDEX_NAME)
