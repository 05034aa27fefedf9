"""The default budget (ratio 0.75 with a floor of 128) through llama-index-finch, on the repository's tiny model.

A short context is kept whole by default; an explicit ``compression_ratio`` is kvpress's exact rule, with no floor.
"""

from __future__ import annotations

import pytest
from finch_rag import FinchCompressor, FinchConfig
from finch_rag.config import DEFAULT_MIN_TARGET_TOKENS
from llama_index.core.schema import NodeWithScore, TextNode
from pydantic import ValidationError

from llama_index.llms.finch import FinchLLM
from llama_index.postprocessor.finch import CACHE_KEY, FinchNodePostprocessor

from .tiny_models import TINY


@pytest.fixture(scope="module")
def tiny() -> FinchCompressor:
    """A compressor with the default config, as one loaded by model name has."""
    return FinchCompressor(TINY.build_tiny_model("llama"), TINY.build_tiny_tokenizer(), FinchConfig(progress=False))


def short_nodes() -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(text=text, metadata={"title": f"T{i}"}), score=1.0 - i / 10)
        for i, text in enumerate(TINY.PASSAGES[:2])
    ]


def test_the_default_budget_has_the_floor_without_loading_a_model() -> None:
    for front_end in (FinchLLM(), FinchNodePostprocessor()):
        config = front_end.config
        assert (config.compression_ratio, config.min_target_tokens) == (0.75, DEFAULT_MIN_TARGET_TOKENS)
    assert FinchLLM(compression_ratio=0.75).config.min_target_tokens is None  # explicit: kvpress's rule
    assert FinchNodePostprocessor(target_tokens=32).config.min_target_tokens is None
    floored = FinchNodePostprocessor(compression_ratio=0.5, min_target_tokens=32).config
    assert (floored.compression_ratio, floored.min_target_tokens) == (0.5, 32)
    with pytest.raises(ValidationError, match="min_target_tokens"):
        FinchLLM(min_target_tokens=0)
    with pytest.raises(ValueError, match="leave min_target_tokens out"):
        FinchNodePostprocessor(target_tokens=8, min_target_tokens=16)


def test_the_postprocessor_keeps_a_short_context_whole_by_default(tiny: FinchCompressor) -> None:
    out = FinchNodePostprocessor(compressor=tiny).postprocess_nodes(short_nodes(), query_str=TINY.QUESTION)
    assert [n.node.metadata["finch_kept_fraction"] for n in out] == [1.0, 1.0]
    stored = tiny.store.get(out[0].node.metadata[CACHE_KEY])
    assert stored is not None and stored.original_tokens < DEFAULT_MIN_TARGET_TOKENS
    assert stored.kept_tokens == stored.original_tokens
    ratio = FinchNodePostprocessor(compressor=tiny, compression_ratio=0.75).postprocess_nodes(
        short_nodes(), query_str=TINY.QUESTION
    )
    stored_ratio = tiny.store.get(ratio[0].node.metadata[CACHE_KEY])
    assert stored_ratio is not None and stored_ratio.kept_tokens == stored.original_tokens // 4
