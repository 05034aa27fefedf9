"""`FinchDocumentCompressor`: FINCH as a LangChain document compressor (e.g. in a ContextualCompressionRetriever)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from finch_rag import CompressedContext, FinchCompressor, FinchConfig, Passage
from finch_rag.retrieval import title_of
from finch_rag.shared import check_compressor, merged_config, shared_compressor
from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PrivateAttr

CACHE_KEY = "finch_cache_key"
"""Metadata key of the compressed context's `CompressedContext.cache_key` on every output document."""


class FinchDocumentCompressor(BaseDocumentCompressor):
    """Compress retrieved documents together for the query with FINCH, one output document per input.

    All documents are packed as passages (title from metadata ``"title"``, else ``"source"``) and compressed in
    one pass for the query: the model reads them chunk by chunk with the query appended and keeps the key/value
    entries the query attends to most. Each output document is a copy of its input (same order, same ``id``,
    metadata kept) whose ``page_content`` is the extractive view of what survived in that passage
    (`CompressedContext.kept_text`), and whose metadata gains:

    - ``finch_kept_fraction``: fraction of the passage's KV entries kept (over its tokens, layers and KV heads);
    - ``finch_tokens_before``: the tokens of the passage's own text in the packed context (not its title);
    - ``finch_tokens_after``: ``round(kept_fraction * tokens_before)``, the entries kept per layer and KV head
      on average;
    - ``finch_cache_key``: the key of the compressed context in ``compressor.store``, where `FinchLLM` finds it
      to answer from the compressed cache without compressing again.

    A document that keeps nothing is still returned, with empty ``page_content`` and ``finch_kept_fraction``
    0, so outputs stay aligned with inputs (filter on ``page_content`` if you prefer to drop them). Based on
    FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167).

    Parameters
    ----------
    threshold : float
        A token is in ``page_content`` when at least this fraction of (layer, KV head) pairs kept it.
    target_tokens, compression_ratio, chunk_size : optional
        Budget and chunking (see `finch_rag.FinchConfig`); unset ones come from the compressor's config.
    model_name : str, optional
        Model to load when no ``compressor=`` is given: a hub id, a local path or a ``.gguf`` file; ``None``
        is the embedded SmolLM2-135M-Instruct. Models loaded by name are shared within the process.
    compressor : FinchCompressor, optional
        An already built compressor (keyword only); not with ``model_name``.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    threshold: float = Field(0.5, gt=0, le=1, description="Fraction of (layer, KV head) pairs that must keep a token.")
    target_tokens: int | None = Field(None, ge=1, description="Budget B: context KV entries kept per layer/KV head.")
    compression_ratio: float | None = Field(None, ge=0, lt=1, description="Fraction of the context removed.")
    chunk_size: int | None = Field(512, ge=1, description="Context tokens read per step; None for a single pass.")
    model_name: str | None = Field(None, description="Model to load (None: the embedded default).")
    progress: bool = Field(False, description="Show a tqdm bar over chunks.")

    _compressor: FinchCompressor | None = PrivateAttr(default=None)
    _build_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, *, compressor: FinchCompressor | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._compressor = check_compressor(compressor, self.model_name)
        self.config  # noqa: B018 - validate the option combination now, not on first use

    @property
    def compressor(self) -> FinchCompressor:
        """The `FinchCompressor`, loaded from ``model_name`` on first use unless one was given."""
        if self._compressor is None:
            with self._build_lock:
                if self._compressor is None:
                    self._compressor = shared_compressor(self.model_name)
        return self._compressor

    @property
    def config(self) -> FinchConfig:
        """The compressor's config (or `FinchConfig`'s defaults) with this object's options applied."""
        base = self._compressor.config if self._compressor is not None else FinchConfig()
        explicit = {name: getattr(self, name) for name in self.model_fields_set} | {"progress": self.progress}
        return merged_config(base, explicit)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """One document per input, in order, with the kept text and ``finch_*`` metadata (see the class)."""
        documents = list(documents)
        if not documents:
            return []
        if not any(document.page_content.strip() for document in documents):
            return [_with_stats(document, "", 0.0, 0, None) for document in documents]
        passages = [Passage(d.page_content, title_of(d.metadata), dict(d.metadata)) for d in documents]
        compressor = self.compressor
        compressed = compressor.compress(passages, query, config=self.config)
        key = compressor.store.put(compressed)
        return [
            _with_stats(document, compressed.kept_text(self.threshold, passage=index), fraction, before, key)
            for index, (document, fraction, before) in enumerate(
                zip(documents, compressed.passage_kept_fractions(), _passage_lengths(compressed), strict=True)
            )
        ]


def _passage_lengths(compressed: CompressedContext) -> list[int]:
    return [int(compressed.passage_tokens(index).sum()) for index in range(len(compressed.passages or ()))]


def _with_stats(document: Document, text: str, fraction: float, before: int, key: str | None) -> Document:
    metadata = dict(document.metadata)
    metadata.update(
        finch_kept_fraction=fraction, finch_tokens_before=before, finch_tokens_after=round(fraction * before)
    )
    if key is not None:
        metadata[CACHE_KEY] = key
    return Document(page_content=text, metadata=metadata, id=document.id)
