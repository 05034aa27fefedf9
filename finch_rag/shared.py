"""Helpers for front ends (LangChain, LlamaIndex, CLI) that build compressors from a model name.

One compressor per model name and process: besides memory, this is what lets a document compressor and
an LLM wrapper built from the same name share their compressed contexts (`FinchCompressor.store` is per
model).
"""

from __future__ import annotations

import threading
from typing import Any

from .compressor import FinchCompressor
from .config import FinchConfig

_lock = threading.Lock()
_compressors: dict[str | None, FinchCompressor] = {}

# Front-end options that map one to one onto `FinchConfig` fields.
CONFIG_FIELDS = ("target_tokens", "compression_ratio", "chunk_size", "progress")


def shared_compressor(model_name: str | None = None) -> FinchCompressor:
    """A `FinchCompressor` on ``model_name`` (``None``: the embedded default), loaded once per process."""
    with _lock:
        compressor = _compressors.get(model_name)
        if compressor is None:
            from .models import load_model

            model, tokenizer = load_model(model_name)
            compressor = FinchCompressor(model, tokenizer)
            _compressors[model_name] = compressor
        return compressor


def check_compressor(compressor: Any, model_name: str | None) -> FinchCompressor | None:
    """Validate a front end's ``compressor=`` / ``model_name=`` pair; ``None`` means "load lazily by name"."""
    if compressor is None:
        return None
    if not isinstance(compressor, FinchCompressor):
        raise TypeError(f"compressor must be a finch_rag.FinchCompressor, got {type(compressor).__name__}.")
    if model_name is not None:
        raise ValueError("Give compressor= (an already built FinchCompressor) or model_name=, not both.")
    return compressor


def merged_config(base: FinchConfig, explicit: dict[str, Any]) -> FinchConfig:
    """``base`` with the options the user set explicitly (a budget given in one mode clears the other)."""
    changes = {name: value for name, value in explicit.items() if name in CONFIG_FIELDS and value is not None}
    if "target_tokens" in changes and "compression_ratio" in changes:
        raise ValueError(
            "Give target_tokens or compression_ratio, not both "
            f"(got target_tokens={changes['target_tokens']}, compression_ratio={changes['compression_ratio']})."
        )
    return base.replace(**changes) if changes else base
