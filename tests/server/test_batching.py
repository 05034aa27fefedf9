"""Requests that arrive together are compressed and decoded as padded batches, with the answers they get alone.

A tiny model serves (fast); ``/metrics`` shows the batch sizes, the tokens and the queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from conftest import PASSAGES
from prometheus_client.parser import text_string_to_metric_families
from servers import TIMEOUT, assert_error, make_tiny_compressor, serving

from finch_rag import FinchCompressor, Passage
from finch_rag.prompts import build_prompt
from finch_rag.server import ServerThread

QUESTIONS = [
    "What is the secret code?",
    "Where does the fox live?",
    "Who wrote the letter to the king of Spain?",
    "What is the capital of France?",
    "What colour are bananas?",
    "Where do rivers flow?",
]


def request(index: int, **extra: Any) -> dict[str, Any]:
    """A distinct request per index: its own question and its own order of documents."""
    documents = PASSAGES[index % 4 :] + PASSAGES[: index % 4]
    return {
        "messages": [{"role": "user", "content": QUESTIONS[index % len(QUESTIONS)]}],
        "documents": documents,
        "finch": {"target_tokens": 12, "chunk_size": 16},
        "max_tokens": 6,
        **extra,
    }


@pytest.fixture(scope="module")
def tiny() -> FinchCompressor:
    return make_tiny_compressor()


@pytest.fixture(scope="module")
def server(tiny: FinchCompressor) -> Iterator[ServerThread]:
    # A long window, so that requests sent together certainly meet.
    with serving(tiny, batch_window_ms=1000, max_batch_size=8) as server:
        yield server


def post_all(url: str, bodies: list[dict[str, Any]], path: str = "/v1/chat/completions") -> list[httpx.Response]:
    """Send ``bodies`` at once, one thread each."""
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client, ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: client.post(path, json=body), bodies))


def metrics(url: str) -> dict[str, float]:
    """``/metrics`` as ``{"name{label=value,...}": value}``."""
    text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


def test_concurrent_requests_are_batched_and_answered_as_alone(server: ServerThread, tiny: FinchCompressor) -> None:
    bodies = [request(index) for index in range(6)]
    with serving(tiny, max_batch_size=1) as alone:  # batching off
        expected = [response.json() for response in post_all(alone.url, bodies)]
        assert metrics(alone.url)["finch_batch_size_count{stage=compress}"] == 6
    before = metrics(server.url)
    responses = post_all(server.url, bodies)
    assert all(response.status_code == 200 for response in responses), [response.text for response in responses]
    answers = [response.json()["choices"][0]["message"]["content"] for response in responses]
    assert answers == [body["choices"][0]["message"]["content"] for body in expected]
    kept = [response.json()["finch"]["documents"] for response in responses]
    assert kept == [body["finch"]["documents"] for body in expected]
    after = metrics(server.url)
    batches = after["finch_batch_size_count{stage=compress}"] - before.get("finch_batch_size_count{stage=compress}", 0)
    requests = after["finch_batch_size_sum{stage=compress}"] - before.get("finch_batch_size_sum{stage=compress}", 0)
    assert requests == 6 and batches < 6  # at least two requests shared a padded batch
    assert after["finch_batch_size_sum{stage=generate}"] - before.get("finch_batch_size_sum{stage=generate}", 0) == 6


def test_requests_with_different_options_run_in_their_own_batches(server: ServerThread) -> None:
    bodies = [request(0), request(1, finch={"target_tokens": 20}), request(2, temperature=0.7, seed=3), request(3)]
    responses = post_all(server.url, bodies)
    assert [response.status_code for response in responses] == [200] * 4
    assert [response.json()["usage"]["context_tokens_kept"] for response in responses] == [12, 20, 12, 12]


def test_a_request_s_answer_cache_reaches_its_compression_and_its_own_batch(server: ServerThread) -> None:
    """``answer_cache``, in ``finch`` or at top level, decides the request's answer cache.

    The tiny Llama has no sliding layers, so "auto" keeps the compressed cache, and a request asking for a re-read
    gets one, batched apart from the others.
    """
    finch = {"target_tokens": 12, "chunk_size": 16}
    bodies = [
        request(0),
        request(1, finch={**finch, "answer_cache": "reread"}),
        request(2, answer_cache="reread"),
        request(3, finch={**finch, "answer_cache": "compressed"}),
    ]
    responses = post_all(server.url, bodies)
    assert [response.status_code for response in responses] == [200] * 4
    caches = [response.json()["finch"]["answer_cache"] for response in responses]
    assert caches == ["compressed", "reread", "reread", "compressed"]
    refused = httpx.post(f"{server.url}/v1/chat/completions", json=request(0, answer_cache="text"), timeout=TIMEOUT)
    assert refused.status_code in (400, 422) and "answer_cache" in refused.text


def test_one_bad_request_does_not_fail_its_batch(server: ServerThread) -> None:
    too_long = "the sea is salty and wide " * 120  # longer than the tiny model's window of 512 positions
    bodies = [request(0), request(1, messages=[{"role": "user", "content": too_long}]), request(2)]
    responses = post_all(server.url, bodies)
    assert responses[0].status_code == responses[2].status_code == 200
    error = assert_error(responses[1], 400)
    assert "window" in error["message"]


def test_compress_requests_are_batched_too(server: ServerThread) -> None:
    bodies = [{"question": QUESTIONS[index], "documents": PASSAGES, "target_tokens": 12} for index in range(4)]
    before = metrics(server.url)
    responses = post_all(server.url, bodies, "/v1/compress")
    assert [response.status_code for response in responses] == [200] * 4
    for response in responses:
        body = response.json()
        assert body["object"] == "finch.compression" and body["usage"]["kept_tokens"] == 12
        assert [document["index"] for document in body["documents"]] == [0, 1, 2, 3]
    after = metrics(server.url)
    batches = "finch_batch_size_count{stage=compress}"
    assert after[batches] - before.get(batches, 0) < 4  # absent before when this test runs alone


def test_compress_usage_counts_the_whole_prompt(server: ServerThread, tiny: FinchCompressor) -> None:
    """``/v1/compress`` counts the prompt the chat endpoint counts for the same question and documents.

    Both cover prefix, context, question and the answer cue (the assistant-turn start fed after the question);
    ``/v1/compress`` once left the cue out.
    """
    question = QUESTIONS[0]
    given = {"documents": PASSAGES, "finch": {"target_tokens": 12, "chunk_size": 16}}
    messages = [{"role": "user", "content": question}]
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        compressed = client.post("/v1/compress", json={"question": question, **given})
        chat = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1, **given})
    assert compressed.status_code == chat.status_code == 200, (compressed.text, chat.text)
    stats, usage = compressed.json()["stats"], compressed.json()["usage"]
    cue = len(build_prompt(tiny.tokenizer, [Passage("x")], question).suffix_ids)
    assert cue > 0
    assert usage["prompt_tokens"] == stats["prefix_tokens"] + usage["context_tokens"] + stats["question_tokens"] + cue
    assert usage["prompt_tokens"] == chat.json()["usage"]["prompt_tokens"]


def test_metrics_count_requests_latency_tokens_and_queue(server: ServerThread) -> None:
    httpx.post(f"{server.url}/v1/chat/completions", json={"messages": []}, timeout=TIMEOUT)  # one 422
    values = metrics(server.url)
    assert values["finch_requests_total{endpoint=/v1/chat/completions,status=200}"] >= 6
    assert values["finch_requests_total{endpoint=/v1/chat/completions,status=422}"] >= 1
    assert values["finch_requests_total{endpoint=/v1/compress,status=200}"] >= 4
    assert values["finch_request_seconds_count{endpoint=/v1/chat/completions}"] >= 7
    assert values["finch_request_seconds_bucket{endpoint=/v1/chat/completions,le=+Inf}"] >= 7
    assert values["finch_prompt_tokens_total{}"] > values["finch_kept_tokens_total{}"] > 0
    assert values["finch_context_tokens_total{}"] > values["finch_kept_tokens_total{}"]
    assert values["finch_completion_tokens_total{}"] > 0
    assert values["finch_queue_depth{}"] == 0 and values["finch_queue_waiting{}"] == 0
    assert values["finch_store_entries{}"] >= 1 and values["finch_store_bytes{}"] > 0  # every compression is kept
    httpx.get(f"{server.url}/no/such/path", timeout=TIMEOUT)
    assert metrics(server.url)["finch_requests_total{endpoint=other,status=404}"] >= 1  # bounded label values
