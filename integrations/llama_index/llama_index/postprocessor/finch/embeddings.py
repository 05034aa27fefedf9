"""A LlamaIndex ``BaseEmbedding`` as the embedder of finch-rag's sentence fusion."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding


class LlamaIndexEmbedder:
    """``embed_model`` behind the two methods sentence fusion calls (`finch_rag.allocation.check_embedder`).

    The question goes through ``get_query_embedding``, so a model with a query instruction gets it; the sentences
    through ``get_text_embedding_batch``.
    """

    def __init__(self, embed_model: BaseEmbedding) -> None:
        self.embed_model = embed_model

    def embed_query(self, text: str) -> list[float]:
        return self.embed_model.get_query_embedding(text)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_model.get_text_embedding_batch(texts)


def fusion_embedder(embedding_model: Any) -> Any:
    """What the LlamaIndex classes hand finch-rag as ``embedding_model``: a ``BaseEmbedding`` wrapped, else as is."""
    return LlamaIndexEmbedder(embedding_model) if isinstance(embedding_model, BaseEmbedding) else embedding_model
