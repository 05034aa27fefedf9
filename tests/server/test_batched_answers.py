"""The benchmark's request on the embedded model: sent alone or many at once, the server answers as the library does.

``python -m benchmarks.serve`` sends 2 demo passages, B=64 and 6 answer tokens, greedily; concurrent requests
are compressed and decoded as padded batches whose requests share their template prefix. Each answer and each
document's statistics must be those of the request answered alone in process.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from servers import TIMEOUT, make_real_compressor, serving

from benchmarks.serve import demo_requests
from finch_rag import FinchCompressor, FinchConfig, Passage, PassageAllocation, SamplingParams
from finch_rag.frontends import CompressorHandle, chat_context
from finch_rag.server import ServerThread

pytestmark = pytest.mark.slow

BODIES = demo_requests(8, documents=2, max_tokens=6, target_tokens=64)


@pytest.fixture(scope="module")
def compressor(real_model: tuple[Any, Any]) -> FinchCompressor:
    return make_real_compressor(real_model)


@pytest.fixture(scope="module")
def server(compressor: FinchCompressor) -> Iterator[ServerThread]:
    # A long window, so that the requests sent together certainly meet in one batch.
    with serving(compressor, batch_window_ms=1000, max_batch_size=8) as server:
        yield server


def in_process(compressor: FinchCompressor, body: dict[str, Any]) -> str:
    """The answer the library gives: the chat-context rule and allocation the server applies, no HTTP."""
    documents = [Passage(document["text"], document["title"]) for document in body["documents"]]
    plan = chat_context(body["messages"], documents=documents)
    config = FinchConfig(progress=False, target_tokens=body["finch"]["target_tokens"])
    prepared = CompressorHandle(compressor).chat_context(plan, config, PassageAllocation())
    return prepared.text(compressor, SamplingParams(max_new_tokens=body["max_tokens"]))


def post(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client, ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: client.post("/v1/chat/completions", json=body), bodies))


def batch_sizes(url: str) -> tuple[float, float]:
    """(batches, requests) compressed so far, from ``/metrics``."""
    lines = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text.splitlines()

    def value(name: str) -> float:
        return sum(float(line.split()[-1]) for line in lines if line.startswith(f'{name}{{stage="compress"}}'))

    return value("finch_batch_size_count"), value("finch_batch_size_sum")


def test_one_request_alone_equals_in_process(server: ServerThread, compressor: FinchCompressor) -> None:
    (response,) = post(server.url, BODIES[:1])
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == in_process(compressor, BODIES[0])


def test_concurrent_requests_share_a_batch_and_answer_as_alone(
    server: ServerThread, compressor: FinchCompressor
) -> None:
    expected = [in_process(compressor, body) for body in BODIES]
    alone = [post(server.url, [body])[0].json() for body in BODIES[:2]]
    batches_before, requests_before = batch_sizes(server.url)
    responses = post(server.url, BODIES)
    batches, requests = batch_sizes(server.url)
    assert [response.status_code for response in responses] == [200] * len(BODIES), [r.text for r in responses]
    answers = [response.json()["choices"][0]["message"]["content"] for response in responses]
    assert answers == expected
    stats = ("documents", "original_tokens", "kept_tokens", "peak_kv_entries", "prefix_tokens")
    together = [{key: response.json()["finch"][key] for key in stats} for response in responses[:2]]
    assert together == [{key: body["finch"][key] for key in stats} for body in alone]
    assert requests - requests_before == len(BODIES)
    assert batches - batches_before < len(BODIES)  # requests shared padded batches
