"""`FinchRetriever`: any LangChain retriever, its documents compressed together for the query with FINCH."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from finch_rag.frontends import FinchOptions
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from ._utils import compressed_documents


class FinchRetriever(FinchOptions, BaseRetriever):
    """Retrieve with ``base_retriever``, then compress the documents together for the query with FINCH.

    The LangChain 1.x replacement for ``ContextualCompressionRetriever(base_compressor=FinchDocumentCompressor(...))``
    that needs no ``langchain_classic``. The first ``k`` documents of the base retriever (all of them when ``k`` is
    ``None``) are packed as passages (title from metadata ``"title"``, else ``"source"``) and compressed in one pass
    for the query: the model reads them chunk by chunk with the query appended and keeps the key/value entries the
    query attends to most. They share the budget as in `finch_rag.FinchRAG`'s default allocation (best-ranked
    passage next to the question, whole sentences competing). Each output document is a copy of its input (same
    order, same ``id``, metadata kept) whose ``page_content`` is the extractive view of what survived in that
    passage, and whose metadata gains, as with `FinchDocumentCompressor`:

    - ``finch_kept_fraction``: fraction of the passage's KV entries kept (over its tokens, layers and KV heads);
    - ``finch_tokens_before``: the tokens of the passage's own text in the packed context (not its title);
    - ``finch_tokens_after``: ``round(kept_fraction * tokens_before)``;
    - ``finch_cache_key``: the key of the compressed context in ``compressor.store``. `ChatFinch` (and `FinchLLM`)
      on the same model answer from that compressed KV cache without compressing again.

    A document that keeps nothing is still returned, with empty ``page_content``, so outputs stay aligned with
    the base retriever's ranking. Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167).

    Parameters
    ----------
    base_retriever : BaseRetriever
        Any LangChain retriever; its ranking (best first) is the input order.
    k : int, optional
        Compress and return only the first ``k`` documents; also per call, ``retriever.invoke(query, k=3)``.
        Retrieve more than you would without compression (e.g. ``search_kwargs={"k": 20}`` on the base retriever)
        and let FINCH keep what the query needs.
    threshold : float
        A token is in ``page_content`` when at least this fraction of (layer, KV head) pairs kept it.
    model_name, compressor, target_tokens, compression_ratio, chunk_size, progress, allocation, weighting,
    attention_mass, max_target_tokens, min_target_tokens, embedding_model
        The compressor and the compression (`finch_rag.frontends.FinchOptions`); unset budget and chunking come
        from the compressor's config. Give `ChatFinch` the same ones (or the same ``compressor=``) to reuse the
        compression.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    base_retriever: BaseRetriever = Field(description="The retriever whose documents are compressed.")
    k: int | None = Field(None, ge=1, description="Compress and return only the first k retrieved documents.")
    threshold: float = Field(0.5, gt=0, le=1, description="Fraction of (layer, KV head) pairs that must keep a token.")

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k = self._k(kwargs)
        documents = self.base_retriever.invoke(query, config={"callbacks": run_manager.get_child()})
        return self._compress(documents, query, k)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k = self._k(kwargs)
        documents = await self.base_retriever.ainvoke(query, config={"callbacks": run_manager.get_child()})
        return await asyncio.to_thread(self._compress, documents, query, k)

    def _k(self, kwargs: dict[str, Any]) -> int | None:
        unknown = set(kwargs) - {"k"}
        if unknown:
            raise TypeError(f"Unknown options {sorted(unknown)} for FinchRetriever; per call it takes only k.")
        k = kwargs.get("k", self.k)
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"k is the number of documents to return and must be an int >= 1, got {k!r}.")
        return k

    def _compress(self, documents: Sequence[Any], query: str, k: int | None) -> list[Document]:
        documents = list(documents)[:k]
        for index, document in enumerate(documents):
            if not isinstance(document, Document):
                raise TypeError(
                    f"The base retriever returned a {type(document).__name__} at position {index}; "
                    "FinchRetriever compresses langchain_core.documents.Document objects."
                )
        return compressed_documents(self, documents, query, self.threshold)
