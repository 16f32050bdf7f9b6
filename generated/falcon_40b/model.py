# Generated from specs/falcon_40b.yaml by `codegen generate`. DO NOT EDIT: change the spec or templates/ and regenerate.
# spec-sha256: f5a0c758a1f57f968acedd83f5ce51276445013a02532482489e30434a1dbe5e
"""Falcon new_decoder_architecture (40B): grouped-query attention, rotary positions, parallel attention and MLP with one LayerNorm each, no biases.

Relax model for TVM, following the MLC LLM model-library contract: embed, prefill, decode,
batch_prefill, batch_decode, batch_verify and create_paged_kv_cache (TIRPagedKVCache).
"""

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping

from tvm import relax, te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache
from tvm.target import Target

ARCHITECTURE = "falcon_40b"
HF_MODEL_TYPE = "falcon"
DEFAULT_PREFILL_CHUNK_SIZE = 2048
# Hugging Face activation name -> the activation the model computes.
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
}


class ConfigError(ValueError):
    """A config.json does not describe a model this module can build."""


_MISSING = object()


def _lookup(hf_config: Mapping[str, Any], key: str | tuple[str, ...]) -> tuple[str, Any]:
    """(name, value) of the first of key's names that config.json sets, not null; a.b reads a nested field."""
    names = (key,) if isinstance(key, str) else key
    for name in names:
        value: Any = hf_config
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is not None:
            return name, value
    return " or ".join(names), None


def _read(
    hf_config: Mapping[str, Any], key: str | tuple[str, ...], kind: type, default: Any = _MISSING
) -> Any:
    name, value = _lookup(hf_config, key)
    if value is None:
        if default is _MISSING:
            raise ConfigError(f"config.json lacks the required field {name!r}")
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"config.json field {name!r} must be {kind.__name__}, got {value!r}")
    # Every integer field is a size or a count; the bound keeps TVM's int32 shapes valid.
    if kind is int and not 0 < value < 2**31:
        raise ConfigError(
            f"config.json field {name!r} must be a positive integer below 2**31, got {value!r}"
        )
    # Every float field is an epsilon, a base or a fraction: zero or less is never meant.
    if kind is float and not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"config.json field {name!r} must be a positive finite number, got {value!r}"
        )
    return value


def _expect(
    hf_config: Mapping[str, Any], key: str | tuple[str, ...], expected: Any, default: Any
) -> None:
    name, value = _lookup(hf_config, key)
    if value is None:
        value = default
    if value != expected:
        raise ConfigError(
            f"config.json has {name}={value!r}, but spec {ARCHITECTURE!r} is for {name}={expected!r}"
        )


def _activation_name(hf_name: str, key: str, names: Mapping[str, str]) -> str:
    if hf_name not in names:
        raise ConfigError(
            f"config.json {key}={hf_name!r} is not supported; supported: {', '.join(names)}"
        )
    return names[hf_name]


@dataclasses.dataclass(frozen=True)
class GroupQuantization:
    """Weight-only group quantization of the weight matrices (a scheme of specs/quantization/).

    Each run of ``group_size`` weights along the input dimension K shares one scale; a weight w is
    stored as the unsigned code round(w / scale) + max_code, ``bits`` wide, packed along K into
    uint32 words (code j of a word at bits [j * bits, (j + 1) * bits)), and read back as
    (code - max_code) * scale.
    """

    name: str
    bits: int
    group_size: int
    scale_dtype: str
    quantize_embedding: bool
    quantize_lm_head: bool

    @property
    def codes_per_word(self) -> int:
        return 32 // self.bits

    @property
    def max_code(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def packed_shapes(self, rows: int, k: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Shapes of (q_weight, q_scale) for a [rows, k] weight."""
        if k % self.group_size or k % self.codes_per_word:
            raise ConfigError(
                f"{self.name}: a weight with {k} inputs cannot be quantized in groups of {self.group_size}"
            )
        return (rows, k // self.codes_per_word), (rows, k // self.group_size)


def _dequantize(
    q_weight: te.Tensor,
    q_scale: te.Tensor,
    quantization: GroupQuantization,
    k: int,
    dtype: str,
    rows=None,
) -> te.Tensor:
    """The [rows, k] weight in ``dtype``; ``rows`` (token ids) picks rows of the table, else all of them."""
    per_word, bits = quantization.codes_per_word, quantization.bits
    mask = tirx.const((1 << bits) - 1, "uint32")

    def weight(row, col):
        stored = rows[row] if rows is not None else row
        shift = ((col % per_word) * bits).astype("uint32")
        code = (q_weight[stored, col // per_word] >> shift) & mask
        scale = q_scale[stored, col // quantization.group_size].astype(dtype)
        return (code.astype(dtype) - tirx.const(quantization.max_code, dtype)) * scale

    count = rows.shape[0] if rows is not None else q_weight.shape[0]
    return te.compute((count, k), weight, name="dequantize")


def _dequantize_matmul(
    x: te.Tensor, q_weight: te.Tensor, q_scale: te.Tensor, quantization: GroupQuantization
) -> te.Tensor:
    """x @ dequantize(q_weight, q_scale)^T in one kernel: the weight is unpacked where it is read."""
    *batch, k = x.shape
    weight = _dequantize(q_weight, q_scale, quantization, int(k), x.dtype)
    reduce = te.reduce_axis((0, k), name="k")
    return te.compute(
        (*batch, q_weight.shape[0]),
        lambda *index: te.sum(x[(*index[:-1], reduce)] * weight[index[-1], reduce], axis=reduce),
        name="matmul",
    )


def _quantized_matmul(
    x: Tensor, q_weight: nn.Parameter, q_scale: nn.Parameter, quantization: GroupQuantization
) -> Tensor:
    def matmul(x: te.Tensor, q_weight: te.Tensor, q_scale: te.Tensor) -> te.Tensor:
        return _dequantize_matmul(x, q_weight, q_scale, quantization)

    return op.tensor_expr_op(matmul, "dequantize_matmul", [x, q_weight, q_scale])


class QuantizedLinear(nn.Module):
    """nn.Linear with a group-quantized weight: y = x @ dequantize(q_weight, q_scale)^T + bias."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, quantization: GroupQuantization
    ):
        super().__init__()
        self.quantization = quantization
        weight_shape, scale_shape = quantization.packed_shapes(out_features, in_features)
        self.q_weight = nn.Parameter(weight_shape, "uint32")
        self.q_scale = nn.Parameter(scale_shape, quantization.scale_dtype)
        self.bias = nn.Parameter((out_features,)) if bias else None

    def to(self, dtype: str | None = None) -> None:
        # Codes and scales keep their stored types; only the bias follows the model's dtype.
        if self.bias is not None:
            self.bias.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        y = _quantized_matmul(x, self.q_weight, self.q_scale, self.quantization)
        return y + self.bias if self.bias is not None else y


class QuantizedEmbedding(nn.Module):
    """nn.Embedding with a group-quantized table; as a tied LM head it multiplies by the same codes."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        quantization: GroupQuantization,
        dtype: str = "float32",
    ):
        super().__init__()
        self.quantization = quantization
        self.embedding_dim = embedding_dim
        self.dtype = dtype
        weight_shape, scale_shape = quantization.packed_shapes(num_embeddings, embedding_dim)
        self.q_weight = nn.Parameter(weight_shape, "uint32")
        self.q_scale = nn.Parameter(scale_shape, quantization.scale_dtype)

    def to(self, dtype: str | None = None) -> None:
        if dtype is not None:
            self.dtype = dtype

    def forward(self, input_ids: Tensor) -> Tensor:
        def lookup(ids: te.Tensor, q_weight: te.Tensor, q_scale: te.Tensor) -> te.Tensor:
            return _dequantize(
                q_weight, q_scale, self.quantization, self.embedding_dim, self.dtype, rows=ids
            )

        return op.tensor_expr_op(
            lookup, "dequantize_take", [input_ids, self.q_weight, self.q_scale]
        )

    def lm_head(self, x: Tensor) -> Tensor:
        return _quantized_matmul(x, self.q_weight, self.q_scale, self.quantization)


def _linear(
    config: "Falcon40BConfig",
    in_features: int,
    out_features: int,
    bias: bool,
    lm_head: bool = False,
) -> nn.Module:
    quantization = config.quantization
    if quantization is None or (lm_head and not quantization.quantize_lm_head):
        return nn.Linear(in_features, out_features, bias=bias)
    return QuantizedLinear(in_features, out_features, bias, quantization)


def _embedding(config: "Falcon40BConfig", num_embeddings: int, embedding_dim: int) -> nn.Module:
    quantization = config.quantization
    if quantization is None or not quantization.quantize_embedding:
        return nn.Embedding(num_embeddings, embedding_dim)
    return QuantizedEmbedding(num_embeddings, embedding_dim, quantization)


@dataclasses.dataclass(frozen=True)
class Falcon40BConfig:
    """Model dimensions and options, read from a Hugging Face config.json."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    context_window_size: int
    norm_eps: float
    rope_theta: float
    rotary_fraction: float
    tie_word_embeddings: bool
    scale_attention: bool
    activation: str
    prefill_chunk_size: int = DEFAULT_PREFILL_CHUNK_SIZE
    # None: weights in the model's dtype; set at compile time from a quantization scheme.
    quantization: GroupQuantization | None = None

    @classmethod
    def from_dict(cls, hf_config: Mapping[str, Any], **overrides: Any) -> "Falcon40BConfig":
        """Build from a config.json dict; ``overrides`` (e.g. context_window_size) replace fields after."""
        model_type = hf_config.get("model_type", HF_MODEL_TYPE)
        if model_type != HF_MODEL_TYPE:
            raise ConfigError(f"config.json model_type {model_type!r} is not {HF_MODEL_TYPE!r}")
        _expect(hf_config, "new_decoder_architecture", True, default=False)
        _expect(hf_config, "num_ln_in_parallel_attn", 2, default=2)
        _expect(hf_config, "alibi", False, default=False)
        _expect(hf_config, "bias", False, default=False)
        _expect(
            hf_config,
            ("rope_parameters.rope_type", "rope_scaling.rope_type", "rope_scaling.type"),
            "default",
            default="default",
        )
        vocab_size = _read(hf_config, "vocab_size", int)
        hidden_size = _read(hf_config, "hidden_size", int)
        intermediate_size = _read(hf_config, "ffn_hidden_size", int, default=None)
        if intermediate_size is None:
            intermediate_size = 4 * hidden_size
        num_hidden_layers = _read(hf_config, "num_hidden_layers", int)
        num_attention_heads = _read(hf_config, "num_attention_heads", int)
        num_key_value_heads = _read(hf_config, "num_kv_heads", int, default=None)
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        head_dim = hidden_size // num_attention_heads
        context_window_size = _read(hf_config, "max_position_embeddings", int, default=2048)
        norm_eps = _read(hf_config, "layer_norm_epsilon", float, default=1e-05)
        rope_theta = _read(
            hf_config, ("rope_theta", "rope_parameters.rope_theta"), float, default=10000.0
        )
        rotary_fraction = 1.0
        tie_word_embeddings = _read(hf_config, "tie_word_embeddings", bool, default=True)
        scale_attention = True
        activation = _activation_name(
            _read(hf_config, "activation", str, "gelu"),
            "activation",
            HF_ACTIVATIONS,
        )
        config = cls(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads,
            head_dim=head_dim,
            context_window_size=context_window_size,
            norm_eps=norm_eps,
            rope_theta=rope_theta,
            rotary_fraction=rotary_fraction,
            tie_word_embeddings=tie_word_embeddings,
            scale_attention=scale_attention,
            activation=activation,
            prefill_chunk_size=min(DEFAULT_PREFILL_CHUNK_SIZE, context_window_size),
        )
        return dataclasses.replace(config, **overrides) if overrides else config

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "Falcon40BConfig":
        return cls.from_dict(json.loads(Path(path).read_text()), **overrides)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type is int and (
                not isinstance(value, int) or isinstance(value, bool) or value <= 0
            ):
                raise ConfigError(f"{field.name} must be a positive integer, got {value!r}")
            if field.type is float and (
                not isinstance(value, float) or not math.isfinite(value) or value <= 0
            ):
                raise ConfigError(f"{field.name} must be a positive finite number, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must divide hidden_size ({self.hidden_size})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_key_value_heads ({self.num_key_value_heads}) must divide"
                f" num_attention_heads ({self.num_attention_heads})"
            )
        if not 0 < self.rotary_fraction <= 1 or self.rotary_dim % 2:
            raise ConfigError(
                f"rotary_fraction {self.rotary_fraction} must give an even rotary dim in (0, head_dim]"
            )
        if self.prefill_chunk_size > self.context_window_size:
            raise ConfigError("prefill_chunk_size must not exceed context_window_size")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_fraction)

    @property
    def attention_window(self) -> int | None:
        """Keys a query attends to, itself included, where that is fewer than the context; else None."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Falcon40BNorm(nn.Module):
    """LayerNorm, computed in float32 for 16-bit models (TVM's kernel has no bfloat16 form).

    Its parameters are stored in float32 whatever the model's dtype (exact for 16-bit checkpoints):
    cast on every call instead, each would cost one more kernel per norm in every decode step."""

    def __init__(self, config: Falcon40BConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.eps = config.norm_eps
        self.weight = nn.Parameter((config.hidden_size,), "float32")
        self.bias = nn.Parameter((config.hidden_size,), "float32")

    def to(self, dtype: str | None = None) -> None:
        """The parameters keep float32 (see the class docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        if dtype != "float32":
            x = x.astype("float32")
        out = op.layer_norm(
            x, normalized_shape=self.hidden_size, weight=self.weight, bias=self.bias, eps=self.eps
        )
        return out if dtype == "float32" else out.astype(dtype)


def _activate(x: Tensor, activation: str) -> Tensor:
    if activation == "gelu":
        return op.gelu(x)
    if activation == "gelu_tanh":
        return op.gelu(x, approximate="tanh")
    if activation == "relu":
        return op.relu(x)
    if activation == "silu":
        return op.silu(x)
    raise ConfigError(f"unknown activation {activation!r}")


class Falcon40BMLP(nn.Module):
    def __init__(self, config: Falcon40BConfig):
        super().__init__()
        self.dense_h_to_4h = _linear(
            config, config.hidden_size, config.intermediate_size, bias=False
        )
        self.dense_4h_to_h = _linear(
            config, config.intermediate_size, config.hidden_size, bias=False
        )
        self.activation = config.activation

    def forward(self, x: Tensor) -> Tensor:
        hidden = _activate(self.dense_h_to_4h(x), self.activation)
        return self.dense_4h_to_h(hidden)


class Falcon40BAttention(nn.Module):
    def __init__(self, config: Falcon40BConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.sm_scale = 1.0 / math.sqrt(self.head_dim) if config.scale_attention else 1.0
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.query_key_value = _linear(config, config.hidden_size, q_size + 2 * kv_size, bias=False)
        self.dense = _linear(config, q_size, config.hidden_size, bias=False)

    def forward(self, hidden_states: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        batch_size, seq_len, _ = hidden_states.shape
        qkv = self.query_key_value(hidden_states)
        qkv = op.reshape(
            qkv, (batch_size, seq_len, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        )
        output = paged_kv_cache.attention_with_fused_qkv(
            layer_id, qkv, self.num_heads, sm_scale=self.sm_scale
        )
        output = op.reshape(output, (batch_size, seq_len, self.num_heads * self.head_dim))
        return self.dense(output)


class Falcon40BBlock(nn.Module):
    def __init__(self, config: Falcon40BConfig):
        super().__init__()
        self.ln_attn = Falcon40BNorm(config)
        self.self_attention = Falcon40BAttention(config)
        self.ln_mlp = Falcon40BNorm(config)
        self.mlp = Falcon40BMLP(config)

    def forward(self, hidden_states: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        attention = self.self_attention(self.ln_attn(hidden_states), paged_kv_cache, layer_id)
        mlp = self.mlp(self.ln_mlp(hidden_states))
        return hidden_states + attention + mlp


class Falcon40BModel(nn.Module):
    def __init__(self, config: Falcon40BConfig):
        super().__init__()
        self.word_embeddings = _embedding(config, config.vocab_size, config.hidden_size)
        self.h = nn.ModuleList([Falcon40BBlock(config) for _ in range(config.num_hidden_layers)])
        self.ln_f = Falcon40BNorm(config)

    def forward(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache) -> Tensor:
        hidden_states = input_embeds
        for layer_id, layer in enumerate(self.h):
            hidden_states = layer(hidden_states, paged_kv_cache, layer_id)
        return self.ln_f(hidden_states)


def _last_position(hidden_states: te.Tensor) -> te.Tensor:
    batch_size, seq_len, hidden_size = hidden_states.shape
    return te.compute(
        (batch_size, 1, hidden_size),
        lambda b, _, h: hidden_states[b, seq_len - 1, h],
        name="last_position",
    )


class Falcon40BForCausalLM(nn.Module):
    def __init__(self, config: Falcon40BConfig):
        super().__init__()
        self.config = config
        self.transformer = Falcon40BModel(config)
        if not config.tie_word_embeddings:
            self.lm_head = _linear(
                config, config.hidden_size, config.vocab_size, bias=False, lm_head=True
            )
        self.dtype = "float32"

    def to(self, dtype: str | None = None) -> None:
        super().to(dtype=dtype)
        if dtype is not None:
            self.dtype = dtype

    def get_logits(self, hidden_states: Tensor) -> Tensor:
        embedding = self.transformer.word_embeddings
        if self.config.tie_word_embeddings and isinstance(embedding, QuantizedEmbedding):
            logits = embedding.lm_head(hidden_states)
        elif self.config.tie_word_embeddings:
            logits = op.matmul(hidden_states, op.permute_dims(embedding.weight))
        else:
            logits = self.lm_head(hidden_states)
        return logits if logits.dtype == "float32" else logits.astype("float32")

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.transformer.word_embeddings(input_ids)

    def prefill(
        self, input_embed: Tensor, paged_kv_cache: PagedKVCache
    ) -> tuple[Tensor, PagedKVCache]:
        hidden_states = self.transformer(input_embed, paged_kv_cache)
        hidden_states = op.tensor_expr_op(
            _last_position, name_hint="last_position", args=[hidden_states]
        )
        return self.get_logits(hidden_states), paged_kv_cache

    def decode(
        self, input_embed: Tensor, paged_kv_cache: PagedKVCache
    ) -> tuple[Tensor, PagedKVCache]:
        return self.get_logits(self.transformer(input_embed, paged_kv_cache)), paged_kv_cache

    def batch_prefill(
        self, input_embeds: Tensor, logit_positions: Tensor, paged_kv_cache: PagedKVCache
    ) -> tuple[Tensor, PagedKVCache]:
        hidden_states = self.transformer(input_embeds, paged_kv_cache)
        hidden_states = op.take(hidden_states, logit_positions, axis=1)
        return self.get_logits(hidden_states), paged_kv_cache

    def batch_decode(
        self, input_embeds: Tensor, paged_kv_cache: PagedKVCache
    ) -> tuple[Tensor, PagedKVCache]:
        return self.get_logits(self.transformer(input_embeds, paged_kv_cache)), paged_kv_cache

    def batch_verify(
        self, input_embeds: Tensor, paged_kv_cache: PagedKVCache
    ) -> tuple[Tensor, PagedKVCache]:
        return self.get_logits(self.transformer(input_embeds, paged_kv_cache)), paged_kv_cache

    def create_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        config = self.config
        return TIRPagedKVCache(
            attn_kind="mha",
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=relax.ShapeExpr([0, config.num_hidden_layers]),
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads,
            qk_head_dim=config.head_dim,
            v_head_dim=config.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=RopeMode.NORMAL,
            rope_scale=1,
            rope_theta=config.rope_theta,
            rope_scaling={},
            rope_ext_factors=relax.prim_value(0),
            rotary_dim=config.rotary_dim,
            enable_disaggregation=False,
            dtype=self.dtype,
            # Export under `with target:`; the cache builds its kernels for that target.
            target=Target.current(allow_none=False),
        )

    def get_default_spec(self) -> nn.spec.ModuleSpec:
        hidden_size, dtype = self.config.hidden_size, self.dtype
        cache = nn.spec.Object(object_type=PagedKVCache)
        packed = {"param_mode": "packed", "effect_mode": "none"}
        return nn.spec.ModuleSpec.from_raw(
            {
                "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
                "prefill": {
                    "input_embed": nn.spec.Tensor([1, "seq_len", hidden_size], dtype),
                    "paged_kv_cache": cache,
                    "$": packed,
                },
                "decode": {
                    "input_embed": nn.spec.Tensor([1, 1, hidden_size], dtype),
                    "paged_kv_cache": cache,
                    "$": packed,
                },
                "batch_prefill": {
                    "input_embeds": nn.spec.Tensor([1, "seq_len", hidden_size], dtype),
                    "logit_positions": nn.spec.Tensor(["batch_size"], "int32"),
                    "paged_kv_cache": cache,
                    "$": packed,
                },
                "batch_decode": {
                    "input_embeds": nn.spec.Tensor(["batch_size", 1, hidden_size], dtype),
                    "paged_kv_cache": cache,
                    "$": packed,
                },
                "batch_verify": {
                    "input_embeds": nn.spec.Tensor([1, "seq_len", hidden_size], dtype),
                    "paged_kv_cache": cache,
                    "$": packed,
                },
                "create_paged_kv_cache": {
                    "max_batch_size": int,
                    "max_total_seq_len": int,
                    "prefill_chunk_size": int,
                    "page_size": int,
                    "support_sliding_window": int,
                    "$": {"param_mode": "none", "effect_mode": "none"},
                },
            },
            self,
        )
