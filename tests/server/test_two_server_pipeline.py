"""Compress here, answer anywhere: ``/v1/compress`` on one server feeds its kept text to another OpenAI endpoint.

The second endpoint is a finch-rag server with compression off, standing in for vLLM or llama.cpp: it answers the
messages it is sent as any chat server would. This is the recipe of ``docs/serving.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from servers import ANSWER, DOCUMENTS, OPTIONS, QUESTION, TIMEOUT, make_real_compressor, serving

from finch_rag import FinchCompressor, SamplingParams
from finch_rag.frontends import Prepared
from finch_rag.prompts import chat_prompt_ids
from finch_rag.server import ServerThread

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def compressor(real_model: tuple[Any, Any]) -> FinchCompressor:
    return make_real_compressor(real_model)


@pytest.fixture(scope="module")
def servers(compressor: FinchCompressor) -> Iterator[tuple[ServerThread, ServerThread]]:
    with (
        serving(compressor) as compressing,
        serving(compressor, compression=False, served_model_name="answerer") as plain,
    ):
        yield compressing, plain


def test_kept_text_from_one_server_is_answered_by_another(
    servers: tuple[ServerThread, ServerThread], compressor: FinchCompressor
) -> None:
    compressing, plain = servers
    documents = [
        {"text": text, "title": f"doc{index}", "metadata": {"id": index}} for index, text in enumerate(DOCUMENTS)
    ]
    body = {"question": QUESTION, "documents": documents, **OPTIONS}
    compressed = httpx.post(f"{compressing.url}/v1/compress", json=body, timeout=TIMEOUT).json()
    kept = compressed["documents"]
    assert [document["metadata"] for document in kept] == [{"id": 0}, {"id": 1}, {"id": 2}]
    assert [document["title"] for document in kept] == ["doc0", "doc1", "doc2"]
    assert compressed["usage"]["kept_tokens"] == OPTIONS["target_tokens"] < compressed["usage"]["context_tokens"]
    assert sum(len(document["text"]) for document in kept) < sum(len(text) for text in DOCUMENTS)
    assert ANSWER in kept[0]["text"]  # the compression kept what the question needs

    context = "\n\n".join(document["text"] for document in kept if document["text"])
    messages = [
        {"role": "system", "content": f"Answer using this context.\n\nContext:\n{context}"},
        {"role": "user", "content": QUESTION},
    ]
    answerer = openai.OpenAI(base_url=f"{plain.url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
    answer = answerer.chat.completions.create(model="answerer", messages=messages, max_tokens=10, temperature=0)
    assert answer.model_extra["finch"] == {"context_source": "none"}  # the answering server compressed nothing
    assert answer.usage.model_extra["context_tokens"] == 0
    # It answered the messages as a plain chat server does: the whole conversation through the chat template.
    expected = Prepared(prompt_ids=chat_prompt_ids(compressor.tokenizer, messages)).text(
        compressor, SamplingParams(max_new_tokens=10)
    )
    assert answer.choices[0].message.content == expected and expected


def test_a_server_with_compression_off_keeps_everything(servers: tuple[ServerThread, ServerThread]) -> None:
    _, plain = servers
    body = {"question": QUESTION, "documents": DOCUMENTS, "target_tokens": 4}  # no budget applies: nothing dropped
    compressed = httpx.post(f"{plain.url}/v1/compress", json=body, timeout=TIMEOUT).json()
    assert [document["text"] for document in compressed["documents"]] == DOCUMENTS
    assert all(document["kept_fraction"] == 1.0 for document in compressed["documents"])
    assert compressed["usage"]["kept_tokens"] == compressed["usage"]["context_tokens"]
