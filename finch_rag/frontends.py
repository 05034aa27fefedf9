"""Helpers for front ends (LangChain, LlamaIndex, CLI) that build compressors from a model name.

One compressor per model name and process: besides memory, this is what lets a document compressor and
an LLM wrapper built from the same name share their compressed contexts (`FinchCompressor.store` is per
model).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .allocation import RankWeighting
from .compressor import FinchCompressor
from .config import FinchConfig
from .context import STATS_KEYS, CompressedContext
from .prompts import Passage

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


class CompressorHandle:
    """A front end's compressor: the one it was given, or one loaded by model name on first use.

    The four integration classes (LangChain and LlamaIndex LLMs, document compressor, node postprocessor) each hold
    one as a private attribute. Loading is lazy and thread-safe (double-checked lock), so building a front end and
    reading its `config` never loads a model.

    Parameters
    ----------
    compressor : FinchCompressor, optional
        An already built compressor; not with ``model_name`` (see `check_compressor`).
    model_name : str, optional
        Model for `shared_compressor` when no compressor is given (``None``: the embedded default).
    """

    def __init__(self, compressor: Any = None, model_name: str | None = None) -> None:
        self._compressor = check_compressor(compressor, model_name)
        self.model_name = model_name
        self._lock = threading.Lock()

    @property
    def loaded(self) -> FinchCompressor | None:
        """The compressor if it was given or already loaded, else ``None`` (never loads)."""
        return self._compressor

    def get(self) -> FinchCompressor:
        """The compressor, loaded from ``model_name`` on first use unless one was given."""
        if self._compressor is None:
            with self._lock:
                if self._compressor is None:
                    self._compressor = shared_compressor(self.model_name)
        return self._compressor

    def config(self, explicit: Mapping[str, Any]) -> FinchConfig:
        """The compressor's config (or `FinchConfig`'s defaults, without loading) with ``explicit`` applied."""
        base = self._compressor.config if self._compressor is not None else FinchConfig()
        return merged_config(base, dict(explicit))

    def compress_for_query(
        self, passages: Sequence[Passage], query: str, config: FinchConfig, threshold: float
    ) -> tuple[CompressedContext | None, list[tuple[str, dict[str, Any]]]]:
        """Compress ``passages`` together for ``query``: the common step of the document compressors.

        ``passages`` come best first, as retrievers return them, and share the budget as in `FinchRAG`'s
        default allocation (`RankWeighting`): packed best last, next to the question, whole sentences
        competing.
        Returns the compressed context, put in the compressor's store (``None`` when nothing was compressed), and
        per passage, in the given order, its kept text (`CompressedContext.kept_text` at ``threshold``) and its
        `CompressedContext.passage_stats`. No passages give ``(None, [])``; passages that are all blank give
        ``""`` and zero statistics each, without loading a model.
        """
        if not passages:
            return None, []
        if not any(passage.text.strip() for passage in passages):
            return None, [("", dict(zip(STATS_KEYS, (0.0, 0, 0), strict=True))) for _ in passages]
        compressor = self.get()
        allocation = RankWeighting()
        compressed = compressor.compress(allocation.pack(passages), query, config=allocation.configure(config))
        compressor.store.put(compressed)
        texts = [compressed.kept_text(threshold, passage=index) for index in range(len(passages))]
        packed = list(zip(texts, compressed.passage_stats(), strict=True))
        return compressed, allocation.pack(packed)  # packing again restores the given order
