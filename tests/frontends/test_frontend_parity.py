"""Every front end keeps what the core keeps: 20 fixed HotpotQA questions through each of them.

`FinchRAG.answer_from` is the reference. LangChain's `FinchRetriever` (over a retriever that returns the question's
paragraphs in their given order), LlamaIndex's `FinchNodePostprocessor` and the server's ``/v1/compress`` get the
same passages, question, budget and allocation, and must keep the same KV entries: any difference is a bug in a
front end's packing or allocation. The first 20 questions of the data file, in file order, are the sample; their
paragraph order is the ranking. Skipped where ``../shared/data`` is absent, as the benchmark smoke is.

Packing and allocation do not depend on the weights, so the 20 questions run on a tiny random Llama that reads
with the embedded model's real tokenizer and chat template (fast); the embedded model itself runs the first
`SLOW_QUESTIONS` of them (``slow``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from conftest import build_tiny_model

from finch_rag import FinchCompressor, FinchConfig, FinchRAG, Passage

HOTPOTQA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hotpotqa-dev-distractor-part.json"
QUESTIONS = 20
SLOW_QUESTIONS = 3
BUDGET = 128
CHUNK_SIZE = 512

pytestmark = pytest.mark.skipif(not HOTPOTQA.is_file(), reason=f"benchmark data not found at {HOTPOTQA}")


@pytest.fixture(scope="module", params=["tiny", pytest.param("embedded", marks=pytest.mark.slow)])
def compressor(request: pytest.FixtureRequest) -> FinchCompressor:
    """A tiny random Llama on the embedded model's tokenizer, or the embedded model itself."""
    model, tokenizer = request.getfixturevalue("real_model")
    if request.param == "tiny":
        model = build_tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=8192)
    return FinchCompressor(model, tokenizer, FinchConfig(progress=False))


@pytest.fixture(scope="module")
def questions(compressor: FinchCompressor) -> list[tuple[str, list[Passage]]]:
    count = QUESTIONS if compressor.model_name.startswith("tiny") else SLOW_QUESTIONS
    records = json.loads(HOTPOTQA.read_text(encoding="utf-8"))[:count]
    return [
        (record["question"], [Passage("".join(sentences), title) for title, sentences in record["context"]])
        for record in records
    ]


@pytest.fixture(scope="module")
def reference(compressor: FinchCompressor, questions: list[tuple[str, list[Passage]]]) -> list[Any]:
    """The core's compression of each question: `FinchRAG`'s default allocation."""
    config = FinchConfig(target_tokens=BUDGET, chunk_size=CHUNK_SIZE, progress=False)
    rag = FinchRAG(compressor=compressor, config=config, max_new_tokens=1)
    return [rag.answer_from(question, passages).compressed for question, passages in questions]


def assert_same_kept(stored: Any, expected: Any) -> None:
    assert stored is not None, "the front end's compression is not in the store"
    assert torch.equal(stored.context_ids, expected.context_ids), "the front end packed the passages differently"
    for layer, (got, want) in enumerate(zip(stored.kept_positions, expected.kept_positions, strict=True)):
        assert torch.equal(got, want), f"layer {layer} keeps other positions"


def test_langchain_finch_retriever_keeps_what_the_core_keeps(
    compressor: FinchCompressor, questions: list[tuple[str, list[Passage]]], reference: list[Any]
) -> None:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from langchain_finch import FinchRetriever

    class GivenOrder(BaseRetriever):
        documents: list[Document]

        def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
            return self.documents

    for (question, passages), expected in zip(questions, reference, strict=True):
        documents = [Document(page_content=p.text, metadata={"title": p.title}) for p in passages]
        retriever = FinchRetriever(
            base_retriever=GivenOrder(documents=documents),
            compressor=compressor,
            target_tokens=BUDGET,
            chunk_size=CHUNK_SIZE,
        )
        kept = retriever.invoke(question)
        assert [document.metadata["title"] for document in kept] == [p.title for p in passages]
        assert_same_kept(compressor.store.get(kept[0].metadata["finch_cache_key"]), expected)


def test_llama_index_postprocessor_keeps_what_the_core_keeps(
    compressor: FinchCompressor, questions: list[tuple[str, list[Passage]]], reference: list[Any]
) -> None:
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.finch import FinchNodePostprocessor

    postprocessor = FinchNodePostprocessor(compressor=compressor, target_tokens=BUDGET, chunk_size=CHUNK_SIZE)
    for (question, passages), expected in zip(questions, reference, strict=True):
        nodes = [
            NodeWithScore(node=TextNode(text=p.text, metadata={"title": p.title}), score=1.0 - rank / 10)
            for rank, p in enumerate(passages)
        ]
        kept = postprocessor.postprocess_nodes(nodes, query_str=question)
        assert [item.node.metadata["title"] for item in kept] == [p.title for p in passages]
        assert_same_kept(compressor.store.get(kept[0].node.metadata["finch_cache_key"]), expected)


@pytest.fixture(scope="module")
def server_url(compressor: FinchCompressor) -> Iterator[str]:
    from finch_rag.server import ServerSettings, ServerThread

    settings = ServerSettings(host="127.0.0.1", port=0)
    with ServerThread(settings, compressor=compressor, startup_timeout=120.0) as server:
        yield server.url


def test_server_compress_keeps_what_the_core_keeps(
    server_url: str, questions: list[tuple[str, list[Passage]]], reference: list[Any]
) -> None:
    """``/v1/compress`` returns kept text and fractions, not positions: both must equal the core's, per document."""
    with httpx.Client(base_url=server_url, timeout=120.0) as client:
        for (question, passages), expected in zip(questions, reference, strict=True):
            body = {
                "question": question,
                "documents": [{"text": p.text, "title": p.title} for p in passages],
                "finch": {"target_tokens": BUDGET, "chunk_size": CHUNK_SIZE},
            }
            response = client.post("/v1/compress", json=body)
            assert response.status_code == 200, response.text
            documents = response.json()["documents"]
            # The core packs best last; its passage index p of the packed context is rank len - 1 - p.
            fractions = expected.passage_kept_fractions()[::-1]
            texts = [expected.kept_text(0.5, passage=index) for index in range(len(passages))][::-1]
            assert [document["kept_fraction"] for document in documents] == pytest.approx(fractions, abs=1e-9)
            assert [document["text"] for document in documents] == texts
