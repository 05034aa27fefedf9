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

# Eight short passages about a fictional town; the questions below are answered by exactly one of them.
TOWN = [
    ("Founding", "The town of Marrowby was founded in 1742 by a ferryman named Osric Vell."),
    ("Bakery", "The bakery on Lantern Street is famous for its blue plum tarts, baked every Tuesday."),
    ("Clock", "The clock tower of Marrowby has a bell called Old Hannah that rings at noon."),
    ("River", "The river Sallow runs east of the town and freezes over almost every winter."),
    ("Mayor", "The current mayor of Marrowby is Ada Fenwick, a retired lighthouse keeper."),
    ("Market", "Every Saturday a cheese market fills the square in front of the town hall."),
    ("School", "Marrowby's only school has forty pupils and a library of old sea charts."),
    ("Festival", "Each autumn the town holds a lantern festival on the banks of the river Sallow."),
]
QUESTIONS = [
    ("What is the name of the bell in the clock tower?", "Old Hannah"),
    ("What fills the town square every Saturday?", "cheese"),
]


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


@pytest.fixture(scope="session")
def town_documents() -> list[Document]:
    return [
        Document(page_content=text, metadata={"title": title, "n": i}, id=str(i))
        for i, (title, text) in enumerate(TOWN)
    ]


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
