"""`FinchDocumentCompressor`: FINCH as a LangChain document compressor (e.g. in a ContextualCompressionRetriever)."""

from __future__ import annotations

from collections.abc import Sequence

from finch_rag.frontends import FinchOptions
from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field

from ._utils import compressed_documents


class FinchDocumentCompressor(FinchOptions, BaseDocumentCompressor):
    """Compress retrieved documents together for the query with FINCH, one output document per input.

    All documents are packed as passages (title from metadata ``"title"``, else ``"source"``) and compressed in
    one pass for the query: the model reads them chunk by chunk with the query appended and keeps the key/value
    entries the query attends to most. The documents come best first, as retrievers return them, and share the
    budget as ``allocation`` and ``weighting`` say (`finch_rag.PassageAllocation`, `FinchRAG`'s default). Each
    output document is a copy of its input (same order, same ``id``, metadata kept) whose ``page_content`` is
    the extractive view of what survived in that passage (`CompressedContext.kept_text`), and whose metadata
    gains:

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
    model_name, compressor, target_tokens, compression_ratio, chunk_size, progress, allocation, weighting,
    attention_mass, max_target_tokens, min_target_tokens, embedding_model
        The compressor and the compression (`finch_rag.frontends.FinchOptions`); unset budget and chunking come
        from the compressor's config.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    threshold: float = Field(0.5, gt=0, le=1, description="Fraction of (layer, KV head) pairs that must keep a token.")

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """One document per input, in order, with the kept text and ``finch_*`` metadata (see the class)."""
        documents = list(documents)
        for index, document in enumerate(documents):
            if not isinstance(document, Document):
                raise TypeError(f"documents[{index}] is a {type(document).__name__}; give LangChain Documents.")
        return compressed_documents(self, documents, query, self.threshold)
