"""FinchRetriever with real LangChain objects and the real embedded models."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ValidationError

from langchain_finch import CACHE_KEY, ChatFinch, FinchDocumentCompressor, FinchRetriever

from .counting import count_compressions
from .town_corpus import QUESTIONS, TOWN

RATIO = 0.5
BELL, BELL_ANSWER = QUESTIONS[0]


class ListRetriever(BaseRetriever):
    """Returns the given items as they are, whatever the query (to feed FinchRetriever bad or blank input)."""

    items: list[Any]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Any]:
        return list(self.items)


# ------------------------------------------------------------------ fast: no model is loaded
def test_options_are_validated() -> None:
    base = ListRetriever(items=[])
    with pytest.raises(ValidationError, match="k"):
        FinchRetriever(base_retriever=base, k=0)
    with pytest.raises(ValidationError, match="extra"):
        FinchRetriever(base_retriever=base, top_k=3)
    with pytest.raises(ValidationError, match="base_retriever"):
        FinchRetriever()
    with pytest.raises(ValueError, match="not both"):
        FinchRetriever(base_retriever=base, target_tokens=8, compression_ratio=0.5)
    retriever = FinchRetriever(base_retriever=base, target_tokens=16, chunk_size=None)
    assert (retriever.config.target_tokens, retriever.config.chunk_size) == (16, None)
    with pytest.raises(ValueError, match="k is the number of documents"):
        retriever.invoke("q", k=0)
    with pytest.raises(TypeError, match="per call it takes only k"):
        retriever.invoke("q", top_k=2)
    assert retriever._compressor is None


def test_non_documents_are_a_type_error() -> None:
    retriever = FinchRetriever(base_retriever=ListRetriever(items=[Document(page_content="a"), "plain text"]))
    with pytest.raises(TypeError, match="returned a str at position 1"):
        retriever.invoke("q")
    assert retriever._compressor is None


def test_nothing_or_blank_loads_no_model() -> None:
    assert FinchRetriever(base_retriever=ListRetriever(items=[])).invoke("q") == []
    blank = Document(page_content="  ", metadata={"a": 1}, id="x")
    retriever = FinchRetriever(base_retriever=ListRetriever(items=[blank, blank]), k=1)
    out = retriever.invoke("q")
    assert [(d.id, d.page_content, d.metadata) for d in out] == [
        ("x", "", {"a": 1, "finch_kept_fraction": 0.0, "finch_tokens_before": 0, "finch_tokens_after": 0})
    ]
    assert retriever._compressor is None


# ------------------------------------------------------------------ real models
@pytest.mark.slow
def test_same_documents_and_metadata_as_the_document_compressor(
    compressor: Any, vector_store: Any, town_documents: list[Document]
) -> None:
    base = vector_store.as_retriever(search_kwargs={"k": 8})
    retriever = FinchRetriever(base_retriever=base, k=5, compression_ratio=RATIO, compressor=compressor)
    docs = retriever.invoke(BELL)
    ranked = base.invoke(BELL)[:5]
    assert [d.id for d in docs] == [d.id for d in ranked]  # the base ranking, cut at k
    expected = FinchDocumentCompressor(compression_ratio=RATIO, compressor=compressor).compress_documents(ranked, BELL)
    assert [(d.page_content, d.metadata) for d in docs] == [(d.page_content, d.metadata) for d in expected]
    assert {"finch_kept_fraction", "finch_tokens_before", "finch_tokens_after", CACHE_KEY} <= set(docs[0].metadata)
    stored = compressor.store.get(docs[0].metadata[CACHE_KEY])
    assert stored.question == BELL and len(stored.passages) == 5 and stored.kept_tokens < stored.original_tokens
    clock = next(d for d in docs if d.metadata["title"] == "Clock")
    assert "Hannah" in clock.page_content
    assert [d.id for d in retriever.invoke(BELL, k=2)] == [d.id for d in ranked[:2]]
    assert [d.id for d in asyncio.run(retriever.ainvoke(BELL, k=3))] == [d.id for d in ranked[:3]]


@pytest.mark.slow
def test_chat_finch_reuses_the_retrievers_compression(
    compressor: Any, vector_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    retriever = FinchRetriever(
        base_retriever=vector_store.as_retriever(search_kwargs={"k": 6}), compression_ratio=RATIO, compressor=compressor
    )
    chat = ChatFinch(retriever=retriever, compression_ratio=RATIO, max_tokens=16, compressor=compressor)
    calls = count_compressions(monkeypatch, compressor)
    result = chat.invoke(BELL)
    assert calls == [BELL]  # the retriever's compression only: no second pass
    meta = result.response_metadata
    assert meta["finch_context_source"] == "retriever" and meta["finch_reused"]
    assert compressor.store.get(meta["finch_cache_key"]).kept_tokens == meta["kept_tokens"] < meta["original_tokens"]
    assert BELL_ANSWER in result.content

    async def astream() -> list[Any]:  # the async path queries the retriever with ainvoke
        return [chunk async for chunk in chat.astream(BELL)]

    chunks = asyncio.run(astream())
    assert "".join(chunk.content for chunk in chunks) == result.content
    assert chunks[-1].response_metadata["finch_reused"] and calls == [BELL, BELL]
    # Another budget must not reuse a compression made for this one.
    other = ChatFinch(retriever=retriever, target_tokens=40, max_tokens=4, compressor=compressor)
    assert not other.invoke(BELL).response_metadata["finch_reused"] and len(calls) == 4


_WITHOUT_CLASSIC = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoClassic(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "langchain_classic" or name.startswith("langchain_classic."):
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, NoClassic())
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from langchain_finch import FinchRetriever

    class Town(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager):
            return [Document(page_content=text, metadata={"title": title}) for title, text in json.loads(sys.argv[1])]

    docs = FinchRetriever(base_retriever=Town(), k=4, compression_ratio=0.5).invoke(sys.argv[2])
    print(json.dumps({
        "classic_loaded": any(name.startswith("langchain_classic") for name in sys.modules),
        "titles": [d.metadata["title"] for d in docs],
        "keys": sorted({d.metadata["finch_cache_key"] for d in docs}),
    }))
    """
)


@pytest.mark.slow
def test_works_without_langchain_classic() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_CLASSIC, json.dumps(TOWN), BELL],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["classic_loaded"] is False
    assert report["titles"] == [title for title, _ in TOWN[:4]] and len(report["keys"]) == 1
