"""mlc-chat-config.json and the tokenizer files beside the converted weights, as MLC LLM expects them.

MLC LLM's engine reads mlc-chat-config.json next to the tensor cache for the tokenizer, the stop
tokens, the sampling defaults and the conversation template; `codegen run` reads its eos_token_id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from codegen.artifact.contract import CHAT_CONFIG_NAME, engine_limits
from codegen.errors import CodegenError
from codegen.files import read_json_object, write_atomic

CHAT_CONFIG_VERSION = "0.1.0"
# The tokenizer files MLC LLM copies, in its order.
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer_config.json",
)
# MLC LLM's sampling defaults, used where the checkpoint's generation_config.json says nothing.
SAMPLING_DEFAULTS = {
    "temperature": 1.0,
    "top_p": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
}


class ChatConfigError(CodegenError):
    """A file of the model folder cannot go into the artifact; says which and why."""


def write(model_dir: Path, output: Path, config: Any, quantization: str) -> dict[str, Any]:
    """Copy the tokenizer files of model_dir into output and write its mlc-chat-config.json there."""
    model_dir, output = Path(model_dir), Path(output)
    hf_config = read_json_object(model_dir / "config.json", ChatConfigError)
    generation = (
        read_json_object(model_dir / "generation_config.json", ChatConfigError)
        if (model_dir / "generation_config.json").is_file()
        else {}
    )
    copied = [name for name in TOKENIZER_FILES if _copy_if_present(model_dir, name, output)]
    chat_config = chat_config_fields(hf_config, generation, config, quantization, copied)
    write_atomic(
        output / CHAT_CONFIG_NAME, json.dumps(chat_config, indent=2, sort_keys=True) + "\n"
    )
    return chat_config


def chat_config_fields(
    hf_config: dict, generation: dict, config: Any, quantization: str, tokenizer_files: list[str]
) -> dict[str, Any]:
    # generation_config.json is what transformers' generate() reads, so it wins over config.json.
    def token_id(key: str):
        return generation.get(key, hf_config.get(key))

    eos, pad = token_id("eos_token_id"), token_id("pad_token_id")
    fields: dict[str, Any] = {
        "version": CHAT_CONFIG_VERSION,
        "model_type": hf_config.get("model_type"),
        "quantization": quantization,
        "model_config": hf_config,
        "vocab_size": config.vocab_size,
        **engine_limits(config),
        "tokenizer_files": tokenizer_files,
        "bos_token_id": token_id("bos_token_id"),
        "eos_token_id": eos,
        "pad_token_id": 0 if pad is None else pad,
        "conv_template": lm_template(eos),
    }
    fields.update({key: generation.get(key, default) for key, default in SAMPLING_DEFAULTS.items()})
    return fields


def lm_template(eos: int | list[int] | None) -> dict[str, Any]:
    """MLC's plain "LM" conversation: the prompt is the text, no roles, no system prompt, stop at eos."""
    stop_ids = [] if eos is None else (list(eos) if isinstance(eos, list) else [eos])
    return {
        "name": "LM",
        "system_template": "{system_message}",
        "system_message": "",
        "system_prefix_token_ids": None,  # code models like StarCoder start without a BOS token
        "add_role_after_system_message": False,
        "roles": {"user": "", "assistant": ""},
        "role_templates": {
            "user": "{user_message}",
            "assistant": "{assistant_message}",
            "tool": "{tool_message}",
        },
        "messages": [],
        "seps": [""],
        "role_content_sep": "",
        "role_empty_sep": "",
        "stop_str": [],
        "stop_token_ids": stop_ids,
        "function_string": "",
        "use_function_calling": False,
    }


def _copy_if_present(model_dir: Path, name: str, output: Path) -> bool:
    source = model_dir / name
    if not source.is_file():
        return False
    # A symlinked file could otherwise pull anything readable on this machine into the artifact.
    if not source.resolve().is_relative_to(model_dir.resolve()):
        raise ChatConfigError(f"{source} points outside {model_dir}; refusing to copy it")
    write_atomic(output / name, source.read_bytes())
    return True

