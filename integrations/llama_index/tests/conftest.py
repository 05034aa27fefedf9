"""Fixtures for llama-index-finch: the real embedded models (loaded once), a small corpus, a vector index."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Iterator
from typing import Any

import pytest
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.schema import Document

from .island_corpus import ISLAND


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: runs the real embedded models (deselect with -m 'not slow')")


class MiniLMEmbedding(BaseEmbedding):
    """LlamaIndex embedding over finch-rag's embedded all-MiniLM-L6-v2 (sentence-transformers, offline)."""

    _model: Any = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(model_name="all-MiniLM-L6-v2", **kwargs)
        from finch_rag.retrieval import load_embedding_model

        self._model = load_embedding_model()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embedding(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


@pytest.fixture(scope="session")
def island_documents() -> list[Document]:
    return [
        Document(text=text, metadata={"title": title, "n": i}, id_=f"doc-{i}") for i, (title, text) in enumerate(ISLAND)
    ]


@pytest.fixture(scope="session")
def index(island_documents: list[Document]) -> Any:
    from llama_index.core import VectorStoreIndex

    return VectorStoreIndex.from_documents(island_documents, embed_model=MiniLMEmbedding())


@pytest.fixture(scope="session")
def compressor() -> Any:
    """The embedded SmolLM2-135M-Instruct, through finch-rag's shared loader (so it is loaded once)."""
    from llama_index.llms.finch import FinchLLM

    return FinchLLM().compressor


class Recorder(BaseEventHandler):
    """Keeps every event it is given."""

    events: list[BaseEvent] = []

    @classmethod
    def class_name(cls) -> str:
        return "Recorder"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)

    def finch(self) -> list[Any]:
        """The `FinchCompressionEvent`s, in order."""
        from llama_index.postprocessor.finch import FinchCompressionEvent

        return [event for event in self.events if isinstance(event, FinchCompressionEvent)]


@pytest.fixture
def handlers() -> Iterator[tuple[Recorder, SimpleSpanHandler]]:
    """An event and a span handler on the root dispatcher, as a user registers them; removed afterwards."""
    root = get_dispatcher()
    recorder, spans = Recorder(events=[]), SimpleSpanHandler()
    root.add_event_handler(recorder)
    root.add_span_handler(spans)
    try:
        yield recorder, spans
    finally:
        root.event_handlers.remove(recorder)
        root.span_handlers.remove(spans)
