"""Fixtures for langchain-finch: the real embedded models (loaded once), a small corpus, a vector store."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from .town_corpus import TOWN


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: runs the real embedded models (deselect with -m 'not slow')")


class SentenceEmbeddings(Embeddings):
    """LangChain `Embeddings` over finch-rag's embedded all-MiniLM-L6-v2 (offline)."""

    def __init__(self) -> None:
        from finch_rag.retrieval import load_embedding_model

        self.model = load_embedding_model()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


def town_documents_list() -> list[Document]:
    """The town corpus as documents (title and index in metadata, ids "0".."7")."""
    return [
        Document(page_content=text, metadata={"title": title, "n": i}, id=str(i))
        for i, (title, text) in enumerate(TOWN)
    ]


@pytest.fixture(scope="session")
def town_documents() -> list[Document]:
    return town_documents_list()


@pytest.fixture(scope="session")
def vector_store(town_documents: list[Document]) -> Any:
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore(SentenceEmbeddings())
    store.add_documents(town_documents)
    return store


@pytest.fixture(scope="session")
def compressor() -> Any:
    """The embedded SmolLM2-135M-Instruct, through langchain-finch's shared loader (so it is loaded once)."""
    from langchain_finch import FinchLLM

    return FinchLLM().compressor
