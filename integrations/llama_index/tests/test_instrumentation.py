"""LlamaIndex instrumentation: each compression runs in a span and emits a FinchCompressionEvent with its stats."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.schema import NodeWithScore, TextNode

from llama_index.llms.finch import FinchLLM
from llama_index.postprocessor.finch import FinchNodePostprocessor

from .conftest import Recorder
from .island_corpus import ISLAND, QUESTIONS

RATIO = 0.5


def island_nodes() -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(text=text, metadata={"title": title}, id_=f"n{i}"), score=1.0 - i / 10)
        for i, (title, text) in enumerate(ISLAND)
    ]


def test_no_text_no_event(handlers: tuple[Recorder, SimpleSpanHandler]) -> None:
    recorder, _ = handlers
    blank = [NodeWithScore(node=TextNode(text=" ", id_="b"), score=1.0)]
    assert FinchNodePostprocessor().postprocess_nodes(blank, query_str="q")[0].node.get_content() == ""
    assert recorder.finch() == []


@pytest.mark.slow
def test_postprocessor_compression_is_a_span_with_an_event(
    compressor: Any, handlers: tuple[Recorder, SimpleSpanHandler]
) -> None:
    recorder, spans = handlers
    question = QUESTIONS[0][0]
    out = FinchNodePostprocessor(compression_ratio=RATIO, compressor=compressor).postprocess_nodes(
        island_nodes(), query_str=question
    )
    [event] = recorder.finch()
    stored = compressor.store.get(event.cache_key)
    assert event.cache_key == out[0].node.metadata["finch_cache_key"]
    assert (event.query, event.reused, event.num_passages) == (question, False, len(ISLAND))
    assert (event.original_tokens, event.kept_tokens) == (stored.original_tokens, stored.kept_tokens)
    assert event.kept_tokens < event.original_tokens and event.compression_factor == stored.compression_factor
    assert event.stats == stored.stats and event.model_dump()["class_name"] == "FinchCompressionEvent"
    compress_spans = [span for span in spans.completed_spans if span.id_.startswith("FinchNodePostprocessor._compress")]
    [span] = compress_spans
    assert event.span_id == span.id_
    parent = next(s for s in spans.completed_spans if s.id_ == span.parent_id)
    assert parent.id_.startswith("FinchNodePostprocessor._postprocess_nodes")


@pytest.mark.slow
def test_llm_reports_its_compression_and_a_reuse(
    compressor: Any, index: Any, handlers: tuple[Recorder, SimpleSpanHandler]
) -> None:
    recorder, spans = handlers
    question, answer = QUESTIONS[0]
    engine = index.as_query_engine(
        llm=FinchLLM(compression_ratio=RATIO, max_new_tokens=16, compressor=compressor),
        node_postprocessors=[FinchNodePostprocessor(compression_ratio=RATIO, compressor=compressor)],
        similarity_top_k=4,
    )
    response = engine.query(question)
    made, reused = recorder.finch()
    assert (made.reused, reused.reused) == (False, True) and made.cache_key == reused.cache_key
    assert reused.span_id.startswith("FinchLLM._prepare_qa")
    assert any(span.id_ == reused.span_id for span in spans.completed_spans)
    assert answer in str(response)
