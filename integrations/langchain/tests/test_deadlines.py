"""ChatFinch's ``timeout`` (LangChain's standard parameter) is a per-call deadline: `finch_rag.DeadlineExceeded`.

The decoding tests slow the real model's one-token steps with a forward pre-hook that sleeps (the model is real,
only slower), so the deadline passes during decoding, after a compression that runs at full speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from finch_rag import DeadlineExceeded
from finch_rag.compression.cache import decoder_of
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage
from pydantic import ValidationError

from langchain_finch import ChatFinch, FinchLLM

from .town_corpus import TOWN

STEP_SECONDS = 1.0  # with a 10 s timeout: compression has ample time, even on a loaded machine
LONG_QUESTION = "Describe everything the documents say about the town, in detail and at length."


@contextlib.contextmanager
def slow_decoding(compressor: Any) -> Iterator[None]:
    """Every one-token decoding step of ``compressor``'s model sleeps `STEP_SECONDS` first."""

    def sleep(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[-1] == 1:
            time.sleep(STEP_SECONDS)

    handle = decoder_of(compressor.model).register_forward_pre_hook(sleep, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def documents() -> list[Document]:
    return [Document(page_content=text, metadata={"title": title}) for title, text in TOWN]


def test_timeout_is_validated_without_loading_a_model() -> None:
    assert ChatFinch(timeout=5).timeout == 5 and ChatFinch().timeout is None
    assert FinchLLM(timeout=2.5).timeout == 2.5
    for bad in (0, -1, "5", float("nan"), True):
        with pytest.raises(ValidationError, match="timeout"):
            ChatFinch(timeout=bad)
    chat = ChatFinch()
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds > 0"):
        chat.invoke("Hello", timeout=-1)
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        chat.invoke("Hello", timeout="soon")
    assert chat._compressor is None


@pytest.mark.slow
def test_a_tiny_timeout_stops_compression_and_decoding(compressor: Any) -> None:
    chat = ChatFinch(compressor=compressor, compression_ratio=0.5, timeout=1e-6)
    with pytest.raises(DeadlineExceeded, match="stopped in compression.*Raise the timeout") as raised:
        chat.invoke([HumanMessage("Where is the bell?")], documents=documents())
    assert isinstance(raised.value, TimeoutError)
    with pytest.raises(DeadlineExceeded, match="decoding, before token 1"):
        chat.invoke("Hello")  # a plain chat: nothing to compress
    with pytest.raises(DeadlineExceeded, match="compression"):
        asyncio.run(chat.ainvoke([HumanMessage("Where is the bell?")], documents=documents()))
    per_call = ChatFinch(compressor=compressor, compression_ratio=0.5, max_tokens=2)
    with pytest.raises(DeadlineExceeded):
        per_call.invoke("Hello", timeout=1e-6)
    assert per_call.invoke("Hello", timeout=120).content == per_call.invoke("Hello").content


@pytest.mark.slow
def test_a_stream_stops_at_the_next_token_and_nothing_is_kept(compressor: Any) -> None:
    chat = ChatFinch(compressor=compressor, compression_ratio=0.5, max_tokens=60, timeout=10.0)
    compressor.store.clear()
    chunks = []
    with slow_decoding(compressor), pytest.raises(DeadlineExceeded, match="decoding, before token") as raised:
        for chunk in chat.stream([HumanMessage(LONG_QUESTION)], documents=documents()):
            chunks.append(chunk.content)
    assert "".join(chunks), "some of the answer came before the deadline"
    assert raised.value.timeout == 10.0 and raised.value.elapsed >= 10.0
    assert len(compressor.store) == 0  # the failed call's compression was dropped


@pytest.mark.slow
def test_the_classic_llm_honours_its_timeout(compressor: Any) -> None:
    llm = FinchLLM(compressor=compressor, compression_ratio=0.5, timeout=1e-6)
    context = "\n\n".join(text for _, text in TOWN)
    with pytest.raises(DeadlineExceeded, match="compression"):
        llm.invoke(f"{context}\nQuestion: Where is the bell?")
