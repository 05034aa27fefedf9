"""llama-index-finch with real LlamaIndex objects and the real embedded models (no mock LLMs or embeddings)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from pydantic import ValidationError

from llama_index.llms.finch import FinchLLM, split_qa_prompt
from llama_index.postprocessor.finch import CACHE_KEY, STATS_KEYS, FinchNodePostprocessor

from .counting import count_compressions
from .island_corpus import ISLAND, QUESTIONS

RATIO = 0.5
TOP_K = 6


def query_engine(index: Any, compressor: Any, **kwargs: Any) -> Any:
    return index.as_query_engine(
        llm=FinchLLM(compressor=compressor, compression_ratio=RATIO, max_new_tokens=12),
        node_postprocessors=[FinchNodePostprocessor(compressor=compressor, compression_ratio=RATIO)],
        similarity_top_k=TOP_K,
        **kwargs,
    )


# ------------------------------------------------------------------ fast
def test_namespace_packaging() -> None:
    for module in ("llama_index.postprocessor.finch", "llama_index.llms.finch"):
        package = Path(importlib.util.find_spec(module).origin).parent
        assert (package / "py.typed").exists()
        parent = importlib.import_module(module.rsplit(".", 1)[0])
        assert getattr(parent, "__file__", None) is None  # a namespace package, shared with llama-index-core
    ours = Path(__file__).resolve().parents[1] / "llama_index"
    assert not any((ours / sub / "__init__.py").exists() for sub in ("", "postprocessor", "llms"))
    import llama_index.core  # noqa: F401 - the namespace still resolves llama-index-core next to us


def test_options_are_validated() -> None:
    with pytest.raises(ValidationError, match="max_new_tokens"):
        FinchLLM(max_new_tokens=0)
    with pytest.raises(ValidationError, match="compression_ratio"):
        FinchLLM(compression_ratio=1.0)
    with pytest.raises(ValidationError, match="extra"):
        FinchLLM(max_tokens=5)
    with pytest.raises(ValidationError, match="threshold"):
        FinchNodePostprocessor(threshold=0)
    with pytest.raises(ValidationError, match="chunk_size"):
        FinchNodePostprocessor(chunk_size=0)
    with pytest.raises(ValidationError, match="extra"):
        FinchNodePostprocessor(budget=3)
    with pytest.raises(ValueError, match="not both"):
        FinchNodePostprocessor(target_tokens=10, compression_ratio=0.5)
    with pytest.raises(TypeError, match="FinchCompressor"):
        FinchLLM(compressor="smollm")
    with pytest.raises(ValueError, match="qa_template"):
        FinchLLM(qa_template="Answer {query_str}")


def test_options_reach_the_config_without_loading_a_model() -> None:
    processor = FinchNodePostprocessor(target_tokens=32, chunk_size=64)
    assert processor._compressor is None
    assert (processor.config.target_tokens, processor.config.compression_ratio, processor.config.chunk_size) == (
        32,
        None,
        64,
    )
    assert FinchNodePostprocessor.class_name() == "FinchNodePostprocessor"
    assert FinchLLM(compression_ratio=0.25).config.compression_ratio == 0.25
    assert FinchLLM.class_name() == "FinchLLM"


def test_split_qa_prompt() -> None:
    context = "a\n---------------------\nQuery: inside the context"
    prompt = DEFAULT_TEXT_QA_PROMPT.format(context_str=context, query_str="Why?")
    assert split_qa_prompt(prompt) == (context, "Why?")
    assert split_qa_prompt("What is 2 + 2?") is None
    custom = "Facts:\n{context_str}\nQ: {query_str}\nA:"
    assert split_qa_prompt("Facts:\nx\ny\nQ: z?\nA:", custom) == ("x\ny", "z?")


def test_postprocessor_needs_a_query_and_loads_nothing_without_text() -> None:
    processor = FinchNodePostprocessor()
    nodes = [NodeWithScore(node=TextNode(text=" ", metadata={"a": 1}, id_="x"), score=0.3)]
    with pytest.raises(ValueError, match="query_bundle"):
        processor.postprocess_nodes(nodes)
    assert processor.postprocess_nodes([], query_str="q") == []
    out = processor.postprocess_nodes(nodes, query_bundle=QueryBundle("q"))
    assert [(n.node.node_id, n.node.get_content(), n.score) for n in out] == [("x", "", 0.3)]
    assert out[0].node.metadata == {
        "a": 1,
        "finch_kept_fraction": 0.0,
        "finch_tokens_before": 0,
        "finch_tokens_after": 0,
    }
    assert nodes[0].node.metadata == {"a": 1}
    assert processor._compressor is None


# ------------------------------------------------------------------ real models
@pytest.mark.slow
def test_postprocessor_one_output_per_input(compressor: Any, index: Any) -> None:
    question = QUESTIONS[0][0]
    retrieved = index.as_retriever(similarity_top_k=len(ISLAND)).retrieve(question)
    before = [(n.node.node_id, n.score, dict(n.node.metadata), n.node.get_content()) for n in retrieved]
    out = FinchNodePostprocessor(compressor=compressor, compression_ratio=RATIO).postprocess_nodes(
        retrieved, query_str=question
    )
    assert [(n.node.node_id, n.score) for n in out] == [(node_id, score) for node_id, score, _, _ in before]
    assert [(n.node.node_id, n.score, dict(n.node.metadata), n.node.get_content()) for n in retrieved] == before
    for item, (_, _, metadata, text) in zip(out, before, strict=True):
        assert {k: v for k, v in item.node.metadata.items() if not k.startswith("finch_")} == metadata
        assert 0 <= item.node.metadata["finch_kept_fraction"] <= 1
        assert len(item.node.get_content()) <= len(text)
        llm_view = item.node.get_content(metadata_mode=MetadataMode.LLM)
        assert f"{CACHE_KEY}: finch-" in llm_view and not any(key in llm_view for key in STATS_KEYS)
        assert "finch_" not in item.node.get_content(metadata_mode=MetadataMode.EMBED)
    keys = {n.node.metadata[CACHE_KEY] for n in out}
    assert len(keys) == 1
    stored = compressor.store.get(keys.pop())
    assert stored is not None and stored.question == question and len(stored.passages) == len(ISLAND)
    after = sum(n.node.metadata["finch_tokens_after"] for n in out)
    assert 0 < after <= stored.kept_tokens < sum(n.node.metadata["finch_tokens_before"] for n in out)


@pytest.fixture(scope="module")
def answered(compressor: Any, index: Any) -> dict[str, Any]:
    """One query through the engine, with the number of compressions it ran."""
    question, _ = QUESTIONS[0]
    with pytest.MonkeyPatch.context() as monkeypatch:
        calls = count_compressions(monkeypatch, compressor)
        response = query_engine(index, compressor).query(question)
    return {"response": response, "calls": calls}


@pytest.mark.slow
def test_query_engine_answers_and_compresses_once(answered: dict[str, Any]) -> None:
    question, answer = QUESTIONS[0]
    response = answered["response"]
    assert answer in str(response)
    assert answered["calls"] == [question]  # the postprocessor's compression only: the LLM reused it
    assert len(response.source_nodes) == TOP_K
    assert all(CACHE_KEY in n.node.metadata and n.score is not None for n in response.source_nodes)


@pytest.mark.slow
def test_streaming_query_engine(compressor: Any, index: Any, answered: dict[str, Any]) -> None:
    response = query_engine(index, compressor, streaming=True).query(QUESTIONS[0][0])
    pieces = list(response.response_gen)
    assert len(pieces) > 1
    assert "".join(pieces).strip() == str(answered["response"]).strip()


@pytest.mark.slow
def test_aquery_compresses_once(compressor: Any, index: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    question, answer = QUESTIONS[1]
    calls = count_compressions(monkeypatch, compressor)
    response = asyncio.run(query_engine(index, compressor).aquery(question))
    assert answer in str(response)
    assert calls == [question]


@pytest.mark.slow
def test_llm_compresses_a_qa_prompt_and_chats_plainly(compressor: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = FinchLLM(compressor=compressor, compression_ratio=RATIO, max_new_tokens=8)
    assert llm.metadata.context_window == compressor.context_window > 0
    assert llm.metadata.is_chat_model and llm.metadata.num_output == 8
    calls = count_compressions(monkeypatch, compressor)
    context = "\n\n".join(f"{title}\n{text}" for title, text in ISLAND)
    question = QUESTIONS[2][0]
    result = llm.complete(DEFAULT_TEXT_QA_PROMPT.format(context_str=context, query_str=question))
    assert calls == [question] and not result.additional_kwargs["finch_reused"]
    stored = compressor.store.get(result.additional_kwargs[CACHE_KEY])
    assert stored is not None and stored.kept_tokens == stored.original_tokens // 2
    hello = [ChatMessage(role=MessageRole.USER, content="Say hello.")]
    reply = llm.chat(hello, max_new_tokens=4)
    assert calls == [question]  # plain chat: nothing compressed for a question, the whole prompt is kept
    assert reply.message.content.strip()
    assert reply.additional_kwargs["kept_tokens"] == reply.additional_kwargs["original_tokens"]

    async def astream() -> list[str]:
        return [r.delta async for r in await llm.astream_chat(hello, max_new_tokens=4)]

    deltas = asyncio.run(astream())
    assert len(deltas) > 1 and "".join(deltas) == reply.message.content
