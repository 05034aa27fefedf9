"""LangChain's `ChatOpenAI` (in an LCEL chain) and LlamaIndex's `OpenAILike` against a real server, unchanged.

Both talk to the server as to any OpenAI-compatible endpoint; finch-rag's extensions travel in ``extra_body``.
Answers must equal the library's own (`finch_rag.frontends`, greedy).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from servers import DOCUMENTS, OPTIONS, QUESTION, TIMEOUT, make_real_compressor, serving

from finch_rag import FinchCompressor, FinchConfig, PassageAllocation, SamplingParams
from finch_rag.frontends import CompressorHandle, chat_context
from finch_rag.server import ServerThread

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
INSTRUCTION = "You are a helpful assistant. Use the following context in your response:"


@pytest.fixture(scope="module")
def compressor(real_model: tuple[Any, Any]) -> FinchCompressor:
    return make_real_compressor(real_model)


@pytest.fixture(scope="module")
def server(compressor: FinchCompressor) -> Iterator[ServerThread]:
    with serving(compressor) as server:
        yield server


def library_answer(compressor: FinchCompressor, messages: list[dict[str, str]], **chat: Any) -> str:
    plan = chat_context(messages, **chat)
    prepared = CompressorHandle(compressor).chat_context(
        plan, FinchConfig(progress=False, **OPTIONS), PassageAllocation()
    )
    return prepared.text(compressor, SamplingParams(max_new_tokens=10))


def test_langchain_chat_openai_in_an_lcel_chain(server: ServerThread, compressor: FinchCompressor) -> None:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    # LangChain's two-step RAG shape: the retrieved text in the system message, the question from the user.
    prompt = ChatPromptTemplate.from_messages([("system", INSTRUCTION + "\n\n{context}"), ("human", "{question}")])
    llm = ChatOpenAI(
        base_url=f"{server.url}/v1",
        api_key="unused",
        model=MODEL,
        max_tokens=10,
        temperature=0,
        timeout=TIMEOUT,
        max_retries=0,
        extra_body={"finch": OPTIONS},
    )
    inputs = {"context": "\n\n".join(DOCUMENTS), "question": QUESTION}
    message = (prompt | llm).invoke(inputs)
    system = INSTRUCTION + "\n\n" + "\n\n".join(DOCUMENTS)
    expected = library_answer(
        compressor, [{"role": "system", "content": system}, {"role": "user", "content": QUESTION}]
    )
    assert message.content == expected and expected
    assert message.usage_metadata["input_tokens"] > message.usage_metadata["output_tokens"] > 0
    assert message.response_metadata["model_name"] == MODEL
    assert "".join((prompt | llm | StrOutputParser()).stream(inputs)) == expected


def test_llama_index_openai_like(server: ServerThread, compressor: FinchCompressor) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(
        model=MODEL,
        api_base=f"{server.url}/v1",
        api_key="unused",
        is_chat_model=True,
        context_window=8192,
        max_tokens=10,
        temperature=0,
        timeout=TIMEOUT,
        max_retries=0,
        additional_kwargs={"extra_body": {"documents": DOCUMENTS, "finch": OPTIONS}},
    )
    response = llm.chat([ChatMessage(role="user", content=QUESTION)])
    expected = library_answer(compressor, [{"role": "user", "content": QUESTION}], documents=DOCUMENTS)
    assert response.message.content == expected
    streamed = "".join(chunk.delta or "" for chunk in llm.stream_chat([ChatMessage(role="user", content=QUESTION)]))
    assert streamed == expected
