"""Steps several langchain-finch classes share (private: the public names live in their own modules)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from finch_rag.frontends import FinchOptions
from finch_rag.retrieval import as_passage
from finch_rag.store import CACHE_KEY
from langchain_core.documents import Document


def compressed_documents(
    options: FinchOptions, documents: list[Document], query: str, threshold: float
) -> list[Document]:
    """`FinchDocumentCompressor`'s and `FinchRetriever`'s step: one compressed copy per document, in order.

    The documents are compressed together for ``query`` with ``options``; each copy keeps its ``id`` and metadata,
    its ``page_content`` is the text kept at ``threshold``, and its metadata gains the ``finch_*`` statistics and
    the cache key of the compressed context.
    """
    passages = [as_passage(document.page_content, document.metadata) for document in documents]
    compressed, outputs = options._handle.compress_for_query(
        passages, query, options.config, threshold, options.passage_allocation
    )
    key = compressed.cache_key if compressed is not None else None
    return [_with_stats(document, text, stats, key) for document, (text, stats) in zip(documents, outputs, strict=True)]


def _with_stats(document: Document, text: str, stats: dict[str, Any], key: str | None) -> Document:
    metadata = dict(document.metadata) | stats
    if key is not None:
        metadata[CACHE_KEY] = key
    return Document(page_content=text, metadata=metadata, id=document.id)


def child_callbacks(run_manager: Any, manager_class: Callable[..., Any]) -> Any:
    """Callbacks for a retriever run nested under ``run_manager``'s run (what a chain's ``get_child()`` gives)."""
    if run_manager is None:
        return None
    manager = manager_class(handlers=[], parent_run_id=run_manager.run_id)
    manager.set_handlers(run_manager.inheritable_handlers)
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_metadata(run_manager.inheritable_metadata)
    return manager
