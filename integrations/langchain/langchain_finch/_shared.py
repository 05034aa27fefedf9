"""Building blocks shared by `FinchLLM` and `FinchDocumentCompressor`: one model per name, config merging."""

from __future__ import annotations

import threading
from typing import Any

from finch_rag import FinchCompressor, FinchConfig

_lock = threading.Lock()
_compressors: dict[str | None, FinchCompressor] = {}

# Fields of the LangChain classes that map one to one onto `FinchConfig`.
CONFIG_FIELDS = ("target_tokens", "compression_ratio", "chunk_size", "progress")


def shared_compressor(model_name: str | None) -> FinchCompressor:
    """A `FinchCompressor` on ``model_name`` (``None``: the embedded default), loaded once per process.

    Sharing matters beyond memory: compressed contexts are stored per model (`FinchCompressor.store`), so a
    `FinchDocumentCompressor` and a `FinchLLM` built from the same name find each other's compressions.
    """
    with _lock:
        compressor = _compressors.get(model_name)
        if compressor is None:
            from finch_rag import load_model  # heavy: transformers, the model weights

            model, tokenizer = load_model(model_name)
            compressor = FinchCompressor(model, tokenizer)
            _compressors[model_name] = compressor
        return compressor


def merged_config(base: FinchConfig, explicit: dict[str, Any]) -> FinchConfig:
    """``base`` with the options the user set explicitly (budget mode switches as in `FinchConfig.replace`)."""
    changes = {name: value for name, value in explicit.items() if name in CONFIG_FIELDS}
    if changes.get("target_tokens") is not None and changes.get("compression_ratio") is not None:
        raise ValueError(
            "Give target_tokens or compression_ratio, not both "
            f"(got target_tokens={changes['target_tokens']}, compression_ratio={changes['compression_ratio']})."
        )
    if changes.get("target_tokens") is None:
        changes.pop("target_tokens", None)
    if changes.get("compression_ratio") is None:
        changes.pop("compression_ratio", None)
    return base.replace(**changes) if changes else base


def check_compressor(compressor: Any, model_name: str | None) -> FinchCompressor | None:
    if compressor is None:
        return None
    if not isinstance(compressor, FinchCompressor):
        raise TypeError(f"compressor must be a finch_rag.FinchCompressor, got {type(compressor).__name__}.")
    if model_name is not None:
        raise ValueError("Give compressor= (an already built FinchCompressor) or model_name=, not both.")
    return compressor
