"""ChatFinch with real LangChain objects and the real embedded models: context sources, turns, streaming, options."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, ValidationError

from langchain_finch import ChatFinch, FinchDocumentCompressor

from .counting import count_compressions
from .town_corpus import QUESTIONS, TOWN

RATIO = 0.5
BELL, BELL_ANSWER = QUESTIONS[0]
MAYOR = "Who is the mayor of Marrowby?"
RAG_INSTRUCTION = "You are a helpful assistant. Use the following context in your response:"


def town_text() -> str:
    return "\n\n".join(text for _, text in TOWN)


def rag_system_message() -> SystemMessage:
    """The system message as LangChain 1.x's RAG tutorial middleware writes it."""
    return SystemMessage(f"{RAG_INSTRUCTION}\n\n{town_text()}")


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


# ------------------------------------------------------------------ fast: no model is loaded
def test_options_are_validated_without_loading_a_model() -> None:
    with pytest.raises(ValidationError, match="max_tokens"):
        ChatFinch(max_tokens=0)
    with pytest.raises(ValidationError, match="extra"):
        ChatFinch(max_retries=2)
    with pytest.raises(ValueError, match="not both"):
        ChatFinch(target_tokens=10, compression_ratio=0.5)
    chat = ChatFinch(max_tokens=12, target_tokens=32, chunk_size=None, stop=["\n"])
    assert chat.max_new_tokens == 12 and ChatFinch(max_new_tokens=7).max_new_tokens == 7
    assert (chat.config.target_tokens, chat.config.chunk_size) == (32, None)
    params = chat._get_ls_params()
    assert params == {
        "ls_provider": "finch",
        "ls_model_name": "SmolLM2-135M-Instruct",
        "ls_model_type": "chat",
        "ls_temperature": 0.0,
        "ls_max_tokens": 12,
        "ls_stop": ["\n"],
    }
    assert chat._compressor is None


def test_tools_and_structured_output_are_refused_with_the_reason() -> None:
    class Person(BaseModel):
        name: str

    chat = ChatFinch()
    with pytest.raises(NotImplementedError, match="does not support tool calling.*tools=\\[\\]"):
        chat.bind_tools([Person])
    with pytest.raises(NotImplementedError, match="does not support structured output"):
        chat.with_structured_output(Person)


@pytest.mark.parametrize(
    "messages",
    [
        [SystemMessage("You are terse.")],
        [HumanMessage("   ")],
        [HumanMessage("Hello"), AIMessage("Hi! What would you like to know?")],
        [],
    ],
    ids=["system-only", "blank", "ends-with-ai", "empty"],
)
def test_a_request_without_a_question_says_what_to_send(messages: list[Any]) -> None:
    chat = ChatFinch()
    with pytest.raises(ValueError, match="end the messages with a user message"):
        chat.invoke(messages)
    assert chat._compressor is None


def test_bad_documents_and_options_are_type_errors() -> None:
    chat = ChatFinch()
    with pytest.raises(TypeError, match=r"documents\[1\] is a str.*Document\(page_content=text\)"):
        chat.invoke(BELL, documents=[Document(page_content="x"), "plain text"])
    with pytest.raises(TypeError, match="list of langchain_core.documents.Document"):
        chat.invoke(BELL, documents=Document(page_content="one document, not a list"))
    with pytest.raises(TypeError, match="cannot switch per call"):
        chat.invoke(BELL, model="gpt-4o")
    with pytest.raises(TypeError, match="Unknown options"):
        chat.invoke(BELL, top_k=3)
    with pytest.raises(ValueError, match="tool calls are not supported"):
        chat.invoke([HumanMessage(BELL), AIMessage(""), ToolMessage("42", tool_call_id="1"), HumanMessage(BELL)])
    assert chat._compressor is None


# ------------------------------------------------------------------ real models
@pytest.fixture(scope="module")
def chat(compressor: Any) -> ChatFinch:
    return ChatFinch(compressor=compressor, compression_ratio=RATIO, max_tokens=20)


@pytest.mark.slow
def test_documents_per_call_are_compressed(chat: ChatFinch, town_documents: list[Document]) -> None:
    result = chat.invoke(BELL, documents=town_documents)
    meta, usage = result.response_metadata, result.usage_metadata
    assert BELL_ANSWER in result.content
    assert meta["finch_context_source"] == "documents" and meta["model_name"] == chat.compressor.model_name
    assert not meta["finch_reused"] and meta["kept_tokens"] < meta["original_tokens"]
    stored = chat.compressor.store.get(meta["finch_cache_key"])
    assert stored is not None and stored.question == BELL and len(stored.passages) == len(TOWN)
    parts = (stored.prefix_ids, stored.context_ids, stored.question_ids, stored.suffix_ids)
    assert usage["input_tokens"] == sum(part.numel() for part in parts)
    assert usage["input_token_details"] == {"finch_kept_tokens": stored.kept_tokens}
    assert 0 < usage["output_tokens"] <= 20
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


@pytest.mark.slow
def test_rag_system_message_keeps_the_instruction_and_compresses_the_rest(chat: ChatFinch) -> None:
    result = chat.invoke([rag_system_message(), HumanMessage(MAYOR)])
    meta = result.response_metadata
    assert meta["finch_context_source"] == "system"
    stored = chat.compressor.store.get(meta["finch_cache_key"])
    assert stored.config.system_prompt == RAG_INSTRUCTION  # protected whole, never compressed
    assert sorted(passage.text for passage in stored.passages) == sorted(text for _, text in TOWN)
    assert stored.kept_tokens < stored.original_tokens
    assert "Ada Fenwick" in result.content


@pytest.mark.slow
def test_delimiter_in_the_last_message(chat: ChatFinch) -> None:
    result = chat.invoke(f"Context:\n{town_text()}\n\nQuestion: {BELL}\nAnswer:")
    assert result.response_metadata["finch_context_source"] == "delimiter"
    assert chat.compressor.store.get(result.response_metadata["finch_cache_key"]).question == BELL
    assert BELL_ANSWER in result.content


@pytest.mark.slow
def test_plain_chat_compresses_nothing(chat: ChatFinch, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_compressions(monkeypatch, chat.compressor)
    result = chat.invoke([SystemMessage("You are a friendly assistant."), HumanMessage("Say hello.")])
    assert result.content and calls == []
    meta = result.response_metadata
    assert (meta["finch_context_source"], meta["finch_cache_key"], meta["compression_factor"]) == ("none", None, 1.0)
    assert "input_token_details" not in result.usage_metadata
    assert result.usage_metadata["input_tokens"] == meta["original_tokens"]


@pytest.mark.slow
def test_source_order_retriever_then_documents_then_system(
    compressor: Any, vector_store: Any, town_documents: list[Document]
) -> None:
    retriever = vector_store.as_retriever(search_kwargs={"k": 3})
    chat = ChatFinch(compressor=compressor, retriever=retriever, compression_ratio=RATIO, max_tokens=4)
    one = [Document(page_content=TOWN[5][1])]
    result = chat.invoke([rag_system_message(), HumanMessage(BELL)], documents=one)
    assert result.response_metadata["finch_context_source"] == "retriever"
    stored = compressor.store.get(result.response_metadata["finch_cache_key"])
    assert len(stored.passages) == 3 and any("Old Hannah" in passage.text for passage in stored.passages)
    plain = ChatFinch(compressor=compressor, compression_ratio=RATIO, max_tokens=4)
    assert (
        plain.invoke([rag_system_message(), HumanMessage(BELL)], documents=one).response_metadata[
            "finch_context_source"
        ]
        == "documents"
    )


@pytest.mark.slow
def test_earlier_turns_go_into_the_protected_prefix(chat: ChatFinch) -> None:
    single = chat.invoke([rag_system_message(), HumanMessage(MAYOR)])
    history = [HumanMessage(MAYOR), AIMessage(single.content)]
    result = chat.invoke([rag_system_message(), *history, HumanMessage("What was her job before?")])
    stored = chat.compressor.store.get(result.response_metadata["finch_cache_key"])
    assert stored.history == [
        {"role": "user", "content": MAYOR},
        {"role": "assistant", "content": single.content},
    ]
    first = chat.compressor.store.get(single.response_metadata["finch_cache_key"])
    turns_text = chat.compressor.tokenizer.decode(stored.prefix_ids)
    assert single.content in turns_text and len(stored.prefix_ids) > len(first.prefix_ids)
    assert stored.question == "What was her job before?"
    assert "lighthouse" in result.content


@pytest.fixture(scope="module")
def bell_documents(compressor: Any, town_documents: list[Document]) -> list[Document]:
    """The town compressed for the bell question by the document compressor: they name the stored compression."""
    return FinchDocumentCompressor(compression_ratio=RATIO, compressor=compressor).compress_documents(
        town_documents, BELL
    )


@pytest.mark.slow
def test_stream_matches_invoke_and_ends_with_usage(chat: ChatFinch, bell_documents: list[Document]) -> None:
    result = chat.invoke(BELL, documents=bell_documents)
    assert result.response_metadata["finch_reused"]  # compressed once, by the document compressor
    recorder = TokenRecorder()
    chunks = list(chat.stream(BELL, documents=bell_documents, config={"callbacks": [recorder]}))
    assert len(chunks) > 2 and "".join(chunk.content for chunk in chunks) == result.content
    assert "".join(recorder.tokens) == result.content
    *pieces, last = chunks
    assert all(piece.usage_metadata is None for piece in pieces)
    assert last.content == "" and last.chunk_position == "last"
    assert last.usage_metadata == result.usage_metadata
    shared = ("model_name", "finch_context_source", "finch_cache_key", "finch_reused", "kept_tokens", "original_tokens")
    assert [last.response_metadata[key] for key in shared] == [result.response_metadata[key] for key in shared]


@pytest.mark.slow
def test_stop_max_tokens_and_sampling(chat: ChatFinch, bell_documents: list[Document]) -> None:
    full = chat.invoke(BELL, documents=bell_documents).content
    stop = "Old"
    assert stop in full
    assert chat.invoke(BELL, documents=bell_documents, stop=[stop]).content == full[: full.index(stop)]
    streamed = "".join(c.content for c in chat.stream(BELL, documents=bell_documents, stop=[stop]))
    assert streamed == full[: full.index(stop)]
    stopping = ChatFinch(compressor=chat.compressor, compression_ratio=RATIO, max_tokens=20, stop=[stop])
    assert stopping.invoke(BELL, documents=bell_documents).content == full[: full.index(stop)]

    pieces = list(chat.stream(BELL, documents=bell_documents, max_tokens=3))
    assert 1 <= len(pieces) - 1 <= 3  # one piece per decoded token at most, then the usage chunk
    sampled = [
        chat.invoke(BELL, documents=bell_documents, temperature=1.5, top_p=0.95, seed=7, max_tokens=8).content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]  # the same seed samples the same answer


@pytest.mark.slow
def test_astream_yields_as_tokens_arrive_without_blocking_the_loop(
    chat: ChatFinch, town_documents: list[Document], bell_documents: list[Document]
) -> None:
    async def run() -> tuple[list[str], list[int], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        pieces, seen = [], []
        async for chunk in chat.astream(BELL, documents=town_documents):  # compresses, then decodes
            pieces.append(chunk.content)
            seen.append(ticks)
        task.cancel()
        return pieces, seen, ticks

    pieces, seen, ticks = asyncio.run(run())
    # The loop kept ticking while the model compressed and decoded, and pieces came one by one in between.
    assert seen[0] > 10 and seen[-2] > seen[0] and len(set(seen)) > len(seen) // 2 and ticks >= seen[-1]
    result = asyncio.run(chat.ainvoke(BELL, documents=bell_documents))
    assert "".join(pieces) == result.content and BELL_ANSWER in result.content
    assert result.usage_metadata["output_tokens"] > 0
