"""The artifact folder's contract: file names, metadata fields and limits.

`codegen compile` writes the library and its metadata, `codegen convert` the weights and the chat
config, and the runtime reads them all; each of the three takes these names from here. The folder
follows the MLC LLM model-library contract, so its engine can load it too.
"""

from __future__ import annotations

from typing import Any

from codegen.errors import CodegenError

LIBRARY_NAME = "model.so"
METADATA_NAME = "metadata.json"
CHAT_CONFIG_NAME = "mlc-chat-config.json"
# Relax functions every model library exports (MLC LLM's names), besides `_metadata`.
MODEL_FUNCTIONS = ("embed", "prefill", "decode", "batch_prefill", "batch_decode", "batch_verify", "create_paged_kv_cache")
# The most sequences the runtime's KV cache holds at once, as `_metadata` announces it.
MAX_BATCH_SIZE = 80


class ArtifactError(CodegenError):
    """An artifact folder is incomplete or its parts do not belong together."""


def engine_limits(config: Any) -> dict[str, Any]:
    """The window and parallelism fields that both `_metadata` and mlc-chat-config.json carry."""
    return {
        "context_window_size": config.context_window_size,
        # MLC's field makes its engine evict pages past the window; a library with a sliding window
        # masks inside its own kernels over the whole cache instead (codegen.attention_window).
        "sliding_window_size": -1,
        "attention_sink_size": -1,
        "prefill_chunk_size": config.prefill_chunk_size,
        "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
    }
