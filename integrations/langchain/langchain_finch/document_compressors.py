"""`FinchDocumentCompressor`: FINCH as a LangChain document compressor (e.g. in a ContextualCompressionRetriever)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finch_rag import FinchCompressor, FinchConfig, Passage
from finch_rag.retrieval import title_of
from finch_rag.shared import CompressorHandle
from finch_rag.store import CACHE_KEY
from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PrivateAttr


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

    _handle: CompressorHandle = PrivateAttr()

    def __init__(self, *, compressor: FinchCompressor | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._handle = CompressorHandle(compressor, self.model_name)
        self.config  # noqa: B018 - validate the option combination now, not on first use

    @property
    def _compressor(self) -> FinchCompressor | None:
        """The compressor if given or already loaded (``None`` before the first use of a model given by name)."""
        return self._handle.loaded

    @property
    def compressor(self) -> FinchCompressor:
        """The `FinchCompressor`, loaded from ``model_name`` on first use unless one was given."""
        return self._handle.get()

    @property
    def config(self) -> FinchConfig:
        """The compressor's config (or `FinchConfig`'s defaults) with this object's options applied."""
        explicit = {name: getattr(self, name) for name in self.model_fields_set} | {"progress": self.progress}
        return self._handle.config(explicit)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """One document per input, in order, with the kept text and ``finch_*`` metadata (see the class)."""
        documents = list(documents)
        passages = [Passage(d.page_content, title_of(d.metadata), dict(d.metadata)) for d in documents]
        compressed, outputs = self._handle.compress_for_query(passages, query, self.config, self.threshold)
        key = compressed.cache_key if compressed is not None else None
        return [_with_stats(document, text, stats, key) for document, (text, stats) in zip(documents, outputs)]


def _with_stats(document: Document, text: str, stats: dict[str, Any], key: str | None) -> Document:
    metadata = dict(document.metadata) | stats
    if key is not None:
        metadata[CACHE_KEY] = key
    return Document(page_content=text, metadata=metadata, id=document.id)
