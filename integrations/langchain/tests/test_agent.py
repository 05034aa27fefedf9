"""LangChain 1.x's two-step RAG agent on ChatFinch: create_agent + a dynamic-prompt middleware, real models throughout.

The middleware is the one LangChain's RAG tutorial writes: it searches a vector store (real all-MiniLM-L6-v2
embeddings) with the last user message and puts the documents into the system message after an instruction. ChatFinch
keeps the instruction whole as the protected prefix, compresses the documents for the question, and answers.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from langchain_finch import ChatFinch

from .town_corpus import QUESTIONS

logger = logging.getLogger(__name__)

INSTRUCTION = "You are a helpful assistant. Use the following context in your response:"


def rag_agent(chat: ChatFinch, vector_store: Any, searches: list[str]) -> Any:
    from langchain.agents import create_agent
    from langchain.agents.middleware import ModelRequest, dynamic_prompt

    @dynamic_prompt
    def prompt_with_context(request: ModelRequest) -> str:
        """Inject the documents retrieved for the last message into the system message."""
        last_query = request.state["messages"][-1].text
        searches.append(last_query)
        documents = vector_store.similarity_search(last_query, k=6)
        context = "\n\n".join(document.page_content for document in documents)
        return f"{INSTRUCTION}\n\n{context}"

    return create_agent(chat, tools=[], middleware=[prompt_with_context])


@pytest.mark.slow
def test_create_agent_answers_from_the_compressed_context(compressor: Any, vector_store: Any) -> None:
    question, answer = QUESTIONS[0]
    chat = ChatFinch(compressor=compressor, compression_ratio=0.5, max_tokens=24)
    searches: list[str] = []
    agent = rag_agent(chat, vector_store, searches)
    result = agent.invoke({"messages": [{"role": "user", "content": question}]})
    reply = result["messages"][-1]
    logger.info("agent: %r -> %r %s", question, reply.content, reply.response_metadata)
    assert searches == [question]
    assert isinstance(reply, AIMessage) and reply.content
    meta = reply.response_metadata
    assert meta["finch_context_source"] == "system"
    assert 0 < meta["kept_tokens"] < meta["original_tokens"]
    stored = compressor.store.get(meta["finch_cache_key"])
    assert stored.config.system_prompt == INSTRUCTION and stored.question == question
    assert reply.usage_metadata["input_token_details"]["finch_kept_tokens"] == meta["kept_tokens"]
    assert answer in stored.kept_text()  # the evidence survived compression
    assert answer in reply.content


@pytest.mark.slow
def test_agent_second_turn_keeps_the_first_in_the_prefix(compressor: Any, vector_store: Any) -> None:
    chat = ChatFinch(compressor=compressor, compression_ratio=0.5, max_tokens=16)
    searches: list[str] = []
    agent = rag_agent(chat, vector_store, searches)
    first = agent.invoke({"messages": [HumanMessage(QUESTIONS[0][0])]})
    follow_up = "And what fills the town square every Saturday?"
    second = agent.invoke({"messages": [*first["messages"], HumanMessage(follow_up)]})
    reply = second["messages"][-1]
    stored = compressor.store.get(reply.response_metadata["finch_cache_key"])
    assert [turn["content"] for turn in stored.history] == [QUESTIONS[0][0], first["messages"][-1].content]
    assert searches == [QUESTIONS[0][0], follow_up] and reply.content
    assert stored.question == follow_up and QUESTIONS[1][1] in stored.kept_text()
