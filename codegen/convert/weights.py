"""Convert a Hugging Face checkpoint into the tensor cache, through the generated weight map.

Cheap checks come before heavy work: the checkpoint's tensor count and names against the config
before the model is built, each tensor's values right after its cast.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import ml_dtypes
import numpy as np

from codegen.artifact import tensor_cache
from codegen.convert import chat_config
from codegen.convert.checkpoint import Checkpoint, CheckpointError, open_checkpoint, shown
from codegen.files import read_json_object, staging_dir
from codegen.convert.quantize import quantize
from codegen.models import GeneratedModel
from codegen.spec.quantization import Scheme
from codegen.spec.quantization import resolve as resolve_scheme

__all__ = ["CheckpointError", "convert", "apply_transforms"]

STAGING_PREFIX = ".weights-"
_STAGING_NAME = re.compile(rf"{re.escape(STAGING_PREFIX)}(\d{{1,9}})-[^-]*")  # + the PID + mkdtemp's suffix
_COUNT_ONLY_BEYOND = 2  # a config needing more than twice the checkpoint's tensors is refused by count
_SHOWN_NAMES = 5  # an error lists this many tensor names and a count, not 200,000 names


def apply_transforms(array: np.ndarray, transforms: tuple[str, ...], config: Any) -> np.ndarray:
    for transform in transforms:
        if transform == "transpose":
            array = array.T
        elif transform == "deinterleave_qkv":
            array = _deinterleave_qkv(array, config)
        elif transform == "unshard_qvk":
            array = _unshard_qvk(array)
        else:
            raise AssertionError(f"unknown weight transform {transform!r}")  # the schema allows no other
    return array


def _deinterleave_qkv(array: np.ndarray, config: Any) -> np.ndarray:
    """Rows stored per KV head as [its group of q heads | k | v] (per head [q k v] when every query
    head has its own KV head) -> all q, all k, all v rows, as the KV cache wants them."""
    heads, kv_heads, head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    group, rest = heads // kv_heads, array.shape[1:]
    grouped = array.reshape(kv_heads, group + 2, head_dim, *rest)
    return np.concatenate(
        [
            grouped[:, :group].reshape(heads * head_dim, *rest),
            grouped[:, group].reshape(kv_heads * head_dim, *rest),
            grouped[:, group + 1].reshape(kv_heads * head_dim, *rest),
        ]
    )


# CodeGen was trained on 4 model-parallel shards; transformers hard-codes the same count (mp_num).
_CODEGEN_SHARDS = 4


def _unshard_qvk(array: np.ndarray) -> np.ndarray:
    """Rows stored in CodeGen's 4 shards, each [its share of q | v | k] -> all q, all k, all v.

    Shard s holds query heads s * heads / 4 onwards, so concatenating the shards' q parts in order
    gives the q rows head by head (and likewise k and v)."""
    rows, rest = array.shape[0], array.shape[1:]
    if rows % (3 * _CODEGEN_SHARDS):
        raise CheckpointError(f"a fused q/v/k tensor of {rows} rows does not split into {_CODEGEN_SHARDS} shards of 3 equal parts")
    sharded = array.reshape(_CODEGEN_SHARDS, 3, rows // (3 * _CODEGEN_SHARDS), *rest)
    q, v, k = (sharded[:, part].reshape(rows // 3, *rest) for part in range(3))
    return np.concatenate([q, k, v])


def parameter_specs(model: GeneratedModel, config: Any, scheme: Scheme) -> dict[str, tuple[tuple[int, ...], str]]:
    """Parameter name -> (shape, dtype) exactly as the exported model declares them."""
    module = model.causal_lm(config, scheme)
    return {name: (tuple(int(d) for d in p.shape), str(p.dtype)) for name, p in module.named_parameters()}


def _float_shape(specs: dict[str, Any], name: str, pair: tuple[str, str] | None, scheme: Scheme) -> tuple[int, ...]:
    """The shape the checkpoint's tensor must have: the parameter's, or the one its codes pack."""
    if pair is None:
        return specs[name][0]
    rows, words = specs[pair[0]][0]
    return (rows, words * scheme.codes_per_word)


def _quantized_pair(name: str, specs: dict[str, Any]) -> tuple[str, str] | None:
    """(q_weight, q_scale) names that stand for the float parameter `name` in a quantized model."""
    if not name.endswith(".weight"):
        return None
    stem = name[: -len("weight")]
    pair = (stem + "q_weight", stem + "q_scale")
    return pair if pair[0] in specs else None


def _mapped_tensors(
    model: GeneratedModel, config: Any, checkpoint: Checkpoint, scheme: Scheme, allow_non_finite: bool
) -> tuple[int, Iterator[tuple[str, np.ndarray, str]]]:
    """Check the checkpoint's names against the model (before the model is built), then yield each
    parameter lazily, cast to the dtype the model declares for it (norms keep float32) and checked,
    or quantized: (count, tensors)."""
    sources, stored_as = _match(model, config, checkpoint)
    specs = parameter_specs(model, config, scheme)
    pairs = {name: _quantized_pair(name, specs) for name in sources}
    declared = {stored for name, pair in pairs.items() for stored in (pair or (name,))}
    if declared != set(specs):  # a template bug, never the user's input
        raise AssertionError(f"generated weight map and model disagree on {sorted(declared ^ set(specs))}")

    def tensors() -> Iterator[tuple[str, np.ndarray, str]]:
        for name, source in sources.items():
            parts = [
                apply_transforms(_float_tensor(checkpoint, stored_as[hf_name]), source.transforms, config)
                for hf_name in source.hf_names
            ]
            array = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
            shape = _float_shape(specs, name, pairs[name], scheme)
            names = " + ".join(source.hf_names)
            if tuple(array.shape) != shape:
                raise CheckpointError(f"{names}: shape {list(array.shape)} does not fit parameter {name} {list(shape)}")
            where = f"{checkpoint.location}: tensor {' + '.join(map(shown, source.hf_names))}"
            if pairs[name] is None:
                dtype = specs[name][1]
                yield name, _cast(array, dtype, where, allow_non_finite), dtype
                continue
            q_weight, q_scale = quantize(_cast(array, "float32", where, allow_non_finite), scheme)
            yield pairs[name][0], q_weight, specs[pairs[name][0]][1]
            yield pairs[name][1], q_scale, specs[pairs[name][1]][1]

    return len(specs), tensors()


def _match(model: GeneratedModel, config: Any, checkpoint: Checkpoint) -> tuple[dict[str, Any], dict[str, str]]:
    """The weight map and, per HF name it needs, the checkpoint's name; refuses missing or unknown
    tensors. The count comes first, from one- and two-layer weight maps: a config.json that needs far
    more tensors than the checkpoint holds (100,000 layers) is refused at once, before a weight map
    that large is built; a near miss gets the names compared and listed."""
    package, names = model.package, checkpoint.names()
    needed_count = _needed_count(package, config)
    if needed_count > _COUNT_ONLY_BEYOND * len(names) + 100:
        raise CheckpointError(
            f"checkpoint {checkpoint.location} holds {len(names):,} tensors, but {model.name} with this"
            f" config.json ({config.num_hidden_layers:,} layers) needs {needed_count:,}:"
            " the config.json does not describe this checkpoint"
        )
    sources = package.weight_map(config)
    needed = _hf_names(sources)
    ignored = package.ignored_tensors(config)
    stored_as = _stored_names(names, needed | ignored, package.BACKBONE_PREFIX)
    available = set(stored_as)
    missing, unexpected = needed - available, available - needed - ignored
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {checkpoint.location} does not match {model.name} for this config.json:"
            + (f"\n  missing {_some(missing)}" if missing else "")
            + (f"\n  unexpected {_some(unexpected)}" if unexpected else "")
        )
    return sources, stored_as


def _needed_count(package: Any, config: Any) -> int:
    """How many HF tensors the weight map needs for config: it grows by the same count per layer."""
    one, two = (len(_hf_names(package.weight_map(dataclasses.replace(config, num_hidden_layers=n)))) for n in (1, 2))
    return one + (two - one) * (config.num_hidden_layers - 1)


def _hf_names(sources: dict[str, Any]) -> set[str]:
    return {name for source in sources.values() for name in source.hf_names}


def _some(names: set[str]) -> str:
    """"2 tensors: 'a', 'b'" or "199,995 tensors, e.g. " and the first five by name."""
    first = heapq.nsmallest(_SHOWN_NAMES, names)
    noun = "tensor" if len(names) == 1 else "tensors"
    return f"{len(names):,} {noun}{', e.g. ' if len(names) > len(first) else ': '}{', '.join(map(shown, first))}"


def _cast(array: np.ndarray, dtype: str, where: str, allow_non_finite: bool) -> np.ndarray:
    """array as dtype; refuses NaN and infinity, and finite values that the cast turns into infinity."""
    target = tensor_cache.numpy_dtype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, with the tensor's name
        cast = array.astype(target)
    if allow_non_finite or np.isfinite(cast).all():
        return cast
    bad = array.size - np.count_nonzero(np.isfinite(array))
    if bad:
        raise CheckpointError(
            f"{where} has {bad:,} NaN or infinite values (of {array.size:,}): the model would compute garbage;"
            " use an undamaged checkpoint, or --allow-non-finite (allow_non_finite=True) to convert it anyway"
        )
    overflowed = cast.size - np.count_nonzero(np.isfinite(cast))
    raise CheckpointError(
        f"{where} has {overflowed:,} values (of {array.size:,}) beyond the range of {dtype}"
        f" (largest {float(ml_dtypes.finfo(target).max):g}): convert with a wider --dtype (float32, bfloat16),"
        " or --allow-non-finite (allow_non_finite=True) to store them as infinity"
    )


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
    dtype: str | None = None,
    progress: bool = True,
    allow_non_finite: bool = False,
    quantization: str | None = None,
) -> dict[str, Any]:
    """Write the tensor cache for model_dir into output (temporary folder first, renamed when complete).

    ``quantization`` names the weight scheme (``dtype`` alone: its unquantized one), which must be
    the one the library was compiled with. Every tensor is refused when it holds NaN or infinity, or
    values that overflow the model's dtype, unless allow_non_finite."""
    scheme = resolve_scheme(quantization, dtype)
    model_dir, output = Path(model_dir), Path(output)
    config = _read_config(model, model_dir)
    checkpoint = open_checkpoint(model_dir)
    try:
        count, tensors = _mapped_tensors(model, config, checkpoint, scheme, allow_non_finite)
        if progress:
            tensors = _with_progress(tensors, count)
        _remove_stale_staging(output)
        with staging_dir(output, prefix=f"{STAGING_PREFIX}{os.getpid()}-") as staging:
            metadata = {
                "architecture": model.name,
                "dtype": scheme.model_dtype,
                "quantization": scheme.name,
                "source": str(model_dir),
            }
            tensor_cache.write(tensors, staging, metadata)
            _replace_weights(staging, output)
    finally:
        checkpoint.close()
    chat_config.write(model_dir, output, config, scheme.name)
    return {"config": config, "index": tensor_cache.read_index(output)}


def _with_progress(tensors, total: int):
    from tqdm import tqdm

    return tqdm(tensors, total=total, unit="tensor", desc="convert", leave=False)


def _remove_stale_staging(output: Path) -> None:
    """Remove the staging folders of converts that were killed. The name holds the creator's PID, and
    a folder goes only once that process is gone: unlike an age limit, this never touches a slow live
    convert's folder (a reused PID merely delays the cleanup)."""
    for folder in output.glob(f"{STAGING_PREFIX}*") if output.is_dir() else ():
        match = _STAGING_NAME.fullmatch(folder.name)
        if match and folder.is_dir() and not folder.is_symlink() and not _alive(int(match[1])):
            shutil.rmtree(folder, ignore_errors=True)  # another convert may be removing it at the same time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


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
