"""FinchLLM's ``timeout``: a per-call deadline over compression and decoding, `finch_rag.DeadlineExceeded` past it.

The streaming test slows the real model's one-token steps with a forward pre-hook that sleeps (the model is real,
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
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT
from pydantic import ValidationError

from llama_index.llms.finch import FinchLLM

from .island_corpus import ISLAND

STEP_SECONDS = 1.0  # with a 10 s timeout: compression has ample time, even on a loaded machine
LONG_QUESTION = "Describe everything the context says about Tessaly, in detail and at length."


def qa_prompt(question: str) -> str:
    context = "\n\n".join(f"{title}\n{text}" for title, text in ISLAND)
    return DEFAULT_TEXT_QA_PROMPT.format(context_str=context, query_str=question)


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


def test_timeout_is_validated_without_loading_a_model() -> None:
    assert FinchLLM(timeout=3).timeout == 3 and FinchLLM().timeout is None
    for bad in (0, -2, "5", float("inf"), False):
        with pytest.raises(ValidationError, match="timeout"):
            FinchLLM(timeout=bad)


@pytest.mark.slow
def test_a_tiny_timeout_stops_compression_and_decoding(compressor: Any) -> None:
    llm = FinchLLM(compressor=compressor, compression_ratio=0.5, timeout=1e-6)
    with pytest.raises(DeadlineExceeded, match="stopped in compression.*Raise the timeout") as raised:
        llm.complete(qa_prompt("What colour is the lighthouse of Tessaly?"))
    assert isinstance(raised.value, TimeoutError)
    with pytest.raises(DeadlineExceeded, match="decoding, before token 1"):
        llm.chat([ChatMessage(role=MessageRole.USER, content="Hello")])  # plain chat: nothing to compress
    with pytest.raises(DeadlineExceeded, match="compression"):
        asyncio.run(llm.acomplete(qa_prompt("What colour is the lighthouse of Tessaly?")))
    per_call = FinchLLM(compressor=compressor, compression_ratio=0.5, max_new_tokens=2)
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds > 0"):
        per_call.complete("Hello", timeout=0)
    with pytest.raises(DeadlineExceeded):
        per_call.complete("Hello", timeout=1e-6)
    assert per_call.complete("Hello", timeout=120).text == per_call.complete("Hello").text


@pytest.mark.slow
def test_a_stream_stops_at_the_next_token_and_nothing_is_kept(compressor: Any) -> None:
    llm = FinchLLM(compressor=compressor, compression_ratio=0.5, max_new_tokens=60, timeout=10.0)
    compressor.store.clear()
    responses = []
    with slow_decoding(compressor), pytest.raises(DeadlineExceeded, match="decoding, before token") as raised:
        for response in llm.stream_complete(qa_prompt(LONG_QUESTION)):
            responses.append(response)
    assert responses and responses[-1].text, "some of the answer came before the deadline"
    assert raised.value.timeout == 10.0 and raised.value.elapsed >= 10.0
    assert len(compressor.store) == 0  # the failed call's compression was dropped
