"""The default budget (ratio 0.75 with a floor of 128) through langchain-finch, on the repository's tiny model.

A short context is kept whole by default; an explicit ``compression_ratio`` is kvpress's exact rule, with no floor.
"""

from __future__ import annotations

import pytest
from finch_rag import FinchCompressor, FinchConfig
from finch_rag.config import DEFAULT_MIN_TARGET_TOKENS
from langchain_core.documents import Document
from pydantic import ValidationError

from langchain_finch import ChatFinch, FinchDocumentCompressor

from .tiny_models import TINY

SHORT = [Document(page_content=text, metadata={"title": f"T{i}"}) for i, text in enumerate(TINY.PASSAGES[:2])]


@pytest.fixture(scope="module")
def tiny() -> FinchCompressor:
    """A compressor with the default config, as one loaded by model name has."""
    return FinchCompressor(TINY.build_tiny_model("llama"), TINY.build_tiny_tokenizer(), FinchConfig(progress=False))


def test_the_default_budget_has_the_floor_without_loading_a_model() -> None:
    chat = ChatFinch()
    assert (chat.config.compression_ratio, chat.config.min_target_tokens) == (0.75, DEFAULT_MIN_TARGET_TOKENS)
    assert ChatFinch()._identifying_params["min_target_tokens"] == DEFAULT_MIN_TARGET_TOKENS
    assert ChatFinch(compression_ratio=0.75).config.min_target_tokens is None  # explicit: kvpress's rule
    assert ChatFinch(target_tokens=32).config.min_target_tokens is None
    floored = ChatFinch(compression_ratio=0.5, min_target_tokens=32).config
    assert (floored.compression_ratio, floored.min_target_tokens) == (0.5, 32)
    assert FinchDocumentCompressor(min_target_tokens=16).config.min_target_tokens == 16
    with pytest.raises(ValidationError, match="min_target_tokens"):
        ChatFinch(min_target_tokens=0)
    with pytest.raises(ValueError, match="leave min_target_tokens out"):
        ChatFinch(target_tokens=8, min_target_tokens=16)


def test_chat_finch_keeps_a_short_context_whole_by_default(tiny: FinchCompressor) -> None:
    default = ChatFinch(compressor=tiny, max_tokens=1).invoke(TINY.QUESTION, documents=SHORT)
    original = default.response_metadata["original_tokens"]
    assert original < DEFAULT_MIN_TARGET_TOKENS
    assert default.response_metadata["kept_tokens"] == original
    assert default.usage_metadata["input_token_details"]["finch_kept_tokens"] == original
    ratio = ChatFinch(compressor=tiny, compression_ratio=0.75, max_tokens=1).invoke(TINY.QUESTION, documents=SHORT)
    assert ratio.response_metadata["original_tokens"] == original
    assert ratio.response_metadata["kept_tokens"] == original // 4
