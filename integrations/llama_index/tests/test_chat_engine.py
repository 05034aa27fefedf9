"""A multi-turn LlamaIndex chat engine on FinchLLM and FinchNodePostprocessor, as LlamaIndex 0.14 users build it.

``index.as_chat_engine(chat_mode="condense_plus_context", ...)``: each turn condenses the conversation into a
question (plain generation by FinchLLM), retrieves with real all-MiniLM-L6-v2 embeddings, compresses the nodes for
that question with FINCH (the postprocessor), and answers with the compressed nodes in the system message and the
earlier turns as chat history. The second turn runs through the async path (``achat``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_index.core.base.llms.types import MessageRole
from llama_index.core.instrumentation.events.llm import LLMChatStartEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler

from llama_index.llms.finch import FinchLLM
from llama_index.postprocessor.finch import FinchNodePostprocessor

from .conftest import Recorder
from .island_corpus import QUESTIONS

RATIO = 0.5


@pytest.mark.slow
def test_condense_plus_context_two_turns(
    compressor: Any, index: Any, handlers: tuple[Recorder, SimpleSpanHandler]
) -> None:
    recorder, _ = handlers
    engine = index.as_chat_engine(
        chat_mode="condense_plus_context",
        llm=FinchLLM(compression_ratio=RATIO, max_new_tokens=24, compressor=compressor),
        node_postprocessors=[FinchNodePostprocessor(compression_ratio=RATIO, compressor=compressor)],
        similarity_top_k=4,
    )
    question, answer = QUESTIONS[0]
    first = engine.chat(question)
    assert answer in first.response
    [compression] = recorder.finch()
    assert compression.query == question and compression.kept_tokens < compression.original_tokens
    assert all("finch_cache_key" in node.node.metadata for node in first.source_nodes)

    follow_up = "And who is the governor of the island?"
    second = asyncio.run(engine.achat(follow_up))
    assert second.response
    assert len(recorder.finch()) == 2  # the second turn's nodes were compressed too (through apostprocess_nodes)
    history = [(message.role, message.content) for message in engine.chat_history]
    assert history == [
        (MessageRole.USER, question),
        (MessageRole.ASSISTANT, first.response),
        (MessageRole.USER, follow_up),
        (MessageRole.ASSISTANT, second.response),
    ]
    # The answering call of turn two saw the first turn, then the new question, after the compressed nodes.
    chats = [event for event in recorder.events if isinstance(event, LLMChatStartEvent)]
    system, *turns = chats[-1].messages
    assert system.role == MessageRole.SYSTEM and "finch_cache_key" in system.content
    assert [(m.role, m.content) for m in turns] == history[:3]
