"""langchain-finch with real LangChain objects and the real embedded models (no fake LLMs or embeddings)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate
from pydantic import ValidationError

from langchain_finch import CACHE_KEY, QUESTION_DELIMITER, FinchDocumentCompressor, FinchLLM, split_prompt

from .counting import count_compressions
from .town_corpus import QUESTIONS, TOWN

RATIO = 0.5
PROMPT = PromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}\nAnswer:")


def town_context() -> str:
    return "\n\n".join(f"{title}\n{text}" for title, text in TOWN)


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


# ------------------------------------------------------------------ fast
def test_options_are_validated() -> None:
    with pytest.raises(ValidationError, match="max_new_tokens"):
        FinchLLM(max_new_tokens=0)
    with pytest.raises(ValidationError, match="compression_ratio"):
        FinchLLM(compression_ratio=1.0)
    with pytest.raises(ValidationError, match="extra"):
        FinchLLM(max_tokens=5)
    with pytest.raises(ValidationError, match="threshold"):
        FinchDocumentCompressor(threshold=0)
    with pytest.raises(ValidationError, match="extra"):
        FinchDocumentCompressor(budget=3)
    with pytest.raises(ValueError, match="not both"):
        FinchLLM(target_tokens=10, compression_ratio=0.5)
    with pytest.raises(TypeError, match="FinchCompressor"):
        FinchLLM(compressor="smollm")


def test_options_reach_the_config_without_loading_a_model() -> None:
    llm = FinchLLM(target_tokens=32, chunk_size=64)
    assert llm._compressor is None
    assert (llm.config.target_tokens, llm.config.compression_ratio, llm.config.chunk_size) == (32, None, 64)
    assert llm._llm_type == "finch"
    assert llm._identifying_params["target_tokens"] == 32
    assert FinchDocumentCompressor(compression_ratio=0.25).config.compression_ratio == 0.25


def test_split_prompt() -> None:
    assert QUESTION_DELIMITER == "\nQuestion:"
    prompt = PROMPT.format(context="A\n\nQuestion: is in the context", question="Why?")
    assert split_prompt(prompt) == ("A\n\nQuestion: is in the context", "Why?")
    with pytest.raises(ValueError, match="separated by"):
        split_prompt("no delimiter here")
    with pytest.raises(ValueError, match="empty"):
        split_prompt("Context: x\nQuestion:   \nAnswer:")


def test_missing_delimiter_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="retriever"):
        FinchLLM().invoke("What is the capital of France?")


# ------------------------------------------------------------------ real models
@pytest.fixture(scope="module")
def full_answer(compressor: Any) -> str:
    """The greedy answer to the bell question over the whole town, from a plain ``invoke``."""
    llm = FinchLLM(compressor=compressor, compression_ratio=RATIO, max_new_tokens=20)
    return llm.invoke(PROMPT.format(context=town_context(), question=QUESTIONS[0][0]))


@pytest.mark.slow
def test_document_compressor_one_output_per_input(compressor: Any, town_documents: list[Document]) -> None:
    docs = FinchDocumentCompressor(compression_ratio=RATIO, compressor=compressor).compress_documents(
        town_documents, QUESTIONS[0][0]
    )
    assert [d.id for d in docs] == [d.id for d in town_documents]
    assert [d.metadata["n"] for d in docs] == list(range(len(TOWN)))
    keys = {d.metadata[CACHE_KEY] for d in docs}
    assert len(keys) == 1 and keys.pop() in compressor.store
    before = sum(d.metadata["finch_tokens_before"] for d in docs)
    after = sum(d.metadata["finch_tokens_after"] for d in docs)
    stored = compressor.store.get(docs[0].metadata[CACHE_KEY])
    assert 0 < after <= stored.kept_tokens < before  # titles and separators take part of the budget too
    assert all(0 <= d.metadata["finch_kept_fraction"] <= 1 for d in docs)
    assert all(len(out.page_content) <= len(inp.page_content) for out, inp in zip(docs, town_documents, strict=True))
    clock = docs[2]
    assert "Hannah" in clock.page_content
    assert (
        clock.metadata["finch_kept_fraction"] > sorted(d.metadata["finch_kept_fraction"] for d in docs)[len(docs) // 2]
    )
    assert set(town_documents[2].metadata) == {"title", "n"}  # inputs untouched


@pytest.mark.slow
def test_compression_retriever_then_llm_compresses_once(
    compressor: Any, vector_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    retriever = ContextualCompressionRetriever(
        base_compressor=FinchDocumentCompressor(compression_ratio=RATIO, compressor=compressor),
        base_retriever=vector_store.as_retriever(search_kwargs={"k": 6}),
    )
    question, answer = QUESTIONS[0]
    llm = FinchLLM(compressor=compressor, retriever=retriever, compression_ratio=RATIO, max_new_tokens=20)
    calls = count_compressions(monkeypatch, compressor)
    result = llm.generate([question])
    assert calls == [question]  # the retriever's compression only: the LLM reused it
    info = result.generations[0][0].generation_info
    assert info["finch_reused"]
    stored = compressor.store.get(info["finch_cache_key"])
    assert stored is not None and stored.question == question and len(stored.passages) == 6
    assert answer in result.generations[0][0].text


@pytest.mark.slow
def test_plain_retriever_compresses_in_the_llm(
    compressor: Any, vector_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm = FinchLLM(
        compressor=compressor,
        retriever=vector_store.as_retriever(search_kwargs={"k": 8}),
        top_k=6,
        compression_ratio=RATIO,
        max_new_tokens=20,
    )
    calls = count_compressions(monkeypatch, compressor)
    question, answer = QUESTIONS[0]
    assert answer in llm.invoke(question)
    assert calls == [question]


@pytest.mark.slow
def test_lcel_chain_stream_and_callbacks(compressor: Any, full_answer: str) -> None:
    llm = FinchLLM(compressor=compressor, compression_ratio=RATIO, max_new_tokens=20)
    chain = PROMPT | llm | StrOutputParser()
    inputs = {"context": town_context(), "question": QUESTIONS[0][0]}
    text = chain.invoke(inputs)
    assert text == full_answer and QUESTIONS[0][1] in text

    recorder = TokenRecorder()
    chunks = list(chain.stream(inputs, config={"callbacks": [recorder]}))
    assert len(chunks) > 1
    assert "".join(chunks) == text
    assert "".join(recorder.tokens) == text and len(recorder.tokens) > 1


@pytest.mark.slow
def test_stop_cuts_in_both_paths(compressor: Any, full_answer: str) -> None:
    llm = FinchLLM(compressor=compressor, compression_ratio=RATIO, max_new_tokens=20)
    prompt = PROMPT.format(context=town_context(), question=QUESTIONS[0][0])
    full = full_answer
    stop = "Hannah"
    assert stop in full
    expected = full[: full.index(stop)]
    assert llm.invoke(prompt, stop=[stop]) == expected
    assert "".join(llm.stream(prompt, stop=[stop])) == expected


@pytest.mark.slow
def test_ainvoke_and_cache_key_in_prompt(
    compressor: Any, town_documents: list[Document], monkeypatch: pytest.MonkeyPatch
) -> None:
    question, answer = QUESTIONS[0]
    docs = FinchDocumentCompressor(compression_ratio=RATIO, compressor=compressor).compress_documents(
        town_documents, question
    )
    context = "\n\n".join(f"[{d.metadata[CACHE_KEY]}] {d.page_content}" for d in docs)
    llm = FinchLLM(compressor=compressor, compression_ratio=RATIO, max_new_tokens=20)
    calls = count_compressions(monkeypatch, compressor)
    text = asyncio.run(llm.ainvoke(PROMPT.format(context=context, question=question)))
    assert answer in text
    assert calls == []  # answered from the stored context named in the prompt


def test_document_compressor_without_text_loads_no_model() -> None:
    compressor = FinchDocumentCompressor()
    assert compressor.compress_documents([], "q") == []
    out = compressor.compress_documents([Document(page_content=" ", metadata={"a": 1}, id="x")], "q")
    assert [(d.id, d.page_content, d.metadata) for d in out] == [
        ("x", "", {"a": 1, "finch_kept_fraction": 0.0, "finch_tokens_before": 0, "finch_tokens_after": 0})
    ]
    assert compressor._compressor is None
