"""The `openai` package against a real server on the embedded model: answers, streaming, usage, options.

The server's answer must equal what the library gives for the same request through `finch_rag.frontends` (the
path `ChatFinch` takes), so these tests check the HTTP layer adds nothing and loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from servers import ANSWER, DOCUMENTS, OPTIONS, QUESTION, TIMEOUT, make_real_compressor, serving

from finch_rag import FinchCompressor, FinchConfig, PassageAllocation, SamplingParams
from finch_rag.frontends import CompressorHandle, chat_context
from finch_rag.server import ServerThread

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
SYSTEM_RAG = "You are a helpful assistant. Use the following context in your response:\n\n" + "\n\n".join(DOCUMENTS)


@pytest.fixture(scope="module")
def compressor(real_model: tuple[Any, Any]) -> FinchCompressor:
    return make_real_compressor(real_model)


@pytest.fixture(scope="module")
def server(compressor: FinchCompressor) -> Iterator[ServerThread]:
    with serving(compressor) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


def ask(client: openai.OpenAI, **options: Any) -> Any:
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 10,
        "temperature": 0,
        "extra_body": {"documents": DOCUMENTS, "finch": OPTIONS},
    }
    return client.chat.completions.create(**(request | options))


@pytest.fixture(scope="module")
def answer(client: openai.OpenAI) -> Any:
    return ask(client)


def test_models_are_listed(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).owned_by == "finch-rag"


def test_an_answer_from_documents_equals_the_library_path(answer: Any, compressor: FinchCompressor) -> None:
    text = answer.choices[0].message.content
    assert ANSWER in text
    assert answer.choices[0].finish_reason in {"stop", "length"}
    assert answer.model == MODEL and answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    plan = chat_context([{"role": "user", "content": QUESTION}], documents=DOCUMENTS)
    config = FinchConfig(progress=False, **OPTIONS)
    prepared = CompressorHandle(compressor).chat_context(plan, config, PassageAllocation())
    assert text == prepared.text(compressor, SamplingParams(max_new_tokens=10))


def test_usage_and_compression_stats(answer: Any) -> None:
    usage = answer.usage
    assert usage.completion_tokens >= 1 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    extra = usage.model_extra
    assert extra["context_tokens_kept"] == OPTIONS["target_tokens"] < extra["context_tokens"]
    # The answer attended to fewer KV entries than the prompt has: the context lost context_tokens - kept.
    assert usage.prompt_tokens - extra["kept_kv_entries"] == extra["context_tokens"] - extra["context_tokens_kept"]
    finch = answer.model_extra["finch"]
    assert finch["context_source"] == "documents" and finch["allocation"] == "retrieval_weighted"
    assert finch["kept_tokens"] == OPTIONS["target_tokens"] and finch["compression_factor"] > 2
    assert [document["index"] for document in finch["documents"]] == [0, 1, 2]
    assert all(0 <= document["kept_fraction"] <= 1 for document in finch["documents"])
    assert sum(document["tokens_before"] for document in finch["documents"]) <= extra["context_tokens"]


def test_streaming_gives_the_same_answer_then_usage(client: openai.OpenAI, answer: Any) -> None:
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert "".join(pieces) == answer.choices[0].message.content
    finished = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finished == [answer.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == answer.usage.prompt_tokens
    assert len({chunk.id for chunk in chunks}) == 1


def test_stop_cuts_the_answer(client: openai.OpenAI, answer: Any) -> None:
    text = answer.choices[0].message.content
    stop = ANSWER[:4]
    cut = ask(client, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in ask(client, stop=stop, stream=True))
    assert streamed == cut.choices[0].message.content


def test_a_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    first, second = (ask(client, temperature=1.0, top_p=0.9, seed=11, max_tokens=6) for _ in range(2))
    assert first.choices[0].message.content == second.choices[0].message.content


def test_the_system_message_rule_and_plain_chat(client: openai.OpenAI, compressor: FinchCompressor) -> None:
    messages = [{"role": "system", "content": SYSTEM_RAG}, {"role": "user", "content": QUESTION}]
    rag = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=10, temperature=0, extra_body={"finch": OPTIONS}
    )
    finch = rag.model_extra["finch"]
    assert finch["context_source"] == "system" and len(finch["documents"]) == len(DOCUMENTS)
    plan = chat_context(messages)  # the instruction stays whole as the system prompt, the documents are compressed
    config = FinchConfig(progress=False, **OPTIONS)
    prepared = CompressorHandle(compressor).chat_context(plan, config, PassageAllocation())
    assert rag.choices[0].message.content == prepared.text(compressor, SamplingParams(max_new_tokens=10))
    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=4, temperature=0
    )
    assert plain.model_extra["finch"] == {"context_source": "none"}
    assert plain.usage.model_extra["context_tokens"] == 0 and plain.choices[0].message.content
