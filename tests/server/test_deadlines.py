"""Per-request deadlines over HTTP: 504 with code "timeout", a stream's error event, the batch's others unharmed.

A real server on a local port serves a tiny Llama slowed to about 40 ms per forward pass (a forward pre-hook that
sleeps: the model is real, only slower), so a deadline of two seconds passes during decoding whatever the machine's
load, while compression (two or three passes) finishes well before it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import PASSAGES
from servers import TIMEOUT, assert_error, make_tiny_compressor, serving, wait_until

from finch_rag import FinchCompressor
from finch_rag.compression.cache import decoder_of
from finch_rag.server import ServerSettings, ServerThread

PASS_SECONDS = 0.04
QUESTION = "Where does the fox jump?"  # the tiny Llama answers it with a long greedy run, no end token
LONG_RUN = {"compression_ratio": 0.75}  # that budget (B = 43 of 172) gives the long run; kept whole it stops early


@pytest.fixture(scope="module")
def slow() -> Iterator[FinchCompressor]:
    compressor = make_tiny_compressor()
    handle = decoder_of(compressor.model).register_forward_pre_hook(lambda *args: time.sleep(PASS_SECONDS))
    yield compressor
    handle.remove()


@pytest.fixture(scope="module")
def server(slow: FinchCompressor) -> Iterator[ServerThread]:
    with serving(slow, served_model_name="tiny", batch_window_ms=300, max_batch_size=8) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


def chat(**extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": QUESTION}], "documents": PASSAGES, "max_tokens": 200, **extra}


def assert_timeout(response: httpx.Response) -> dict:
    error = assert_error(response, 504, "timeout", "timeout")
    assert error["type"] == "server_error"
    assert "past its deadline" in error["message"] and "Raise the timeout" in error["message"]
    return error


def test_a_request_past_its_timeout_is_504_and_the_next_one_succeeds(client: httpx.Client, slow) -> None:
    slow.store.clear()
    assert_timeout(client.post("/v1/chat/completions", json=chat(timeout=1e-6)))
    assert_timeout(client.post("/v1/compress", json={"question": QUESTION, "documents": PASSAGES, "timeout": 1e-6}))
    plain = {"messages": [{"role": "user", "content": "Hi"}], "timeout": 1e-6}  # nothing to compress
    assert_timeout(client.post("/v1/chat/completions", json=plain))
    # Past compression, into decoding: the context was compressed, then dropped with the failed request.
    error = assert_timeout(client.post("/v1/chat/completions", json=chat(timeout=2.0, **LONG_RUN)))
    assert "decoding, before token" in error["message"]
    assert len(slow.store) == 0 and slow.store.bytes == 0
    wait_until(lambda: client.get("/health").json()["queue_depth"] == 0, what="the failed requests' places freed")
    answer = client.post("/v1/chat/completions", json=chat(max_tokens=4))
    assert answer.status_code == 200, answer.text
    within = client.post("/v1/chat/completions", json=chat(max_tokens=4, timeout=60))
    assert within.json()["choices"] == answer.json()["choices"]


def test_a_stream_past_its_timeout_ends_with_an_error_event(client: httpx.Client, slow) -> None:
    slow.store.clear()
    with client.stream("POST", "/v1/chat/completions", json=chat(stream=True, timeout=2.0, **LONG_RUN)) as response:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert (error["code"], error["type"], error["param"]) == ("timeout", "server_error", "timeout")
    assert "decoding, before token" in error["message"]
    pieces = [json.loads(event)["choices"][0]["delta"].get("content") for event in events[:-2]]
    assert len(pieces) > 1  # the role chunk, then some of the answer before the deadline
    assert len(slow.store) == 0 and slow.store.bytes == 0
    wait_until(lambda: client.get("/health").json()["queue_depth"] == 0, what="the stream's place freed")
    assert client.post("/v1/chat/completions", json=chat(max_tokens=4)).status_code == 200


def test_an_expired_request_leaves_its_batch_and_the_others_are_unchanged(client: httpx.Client) -> None:
    options = {"max_tokens": 6, "finch": {"target_tokens": 12, "chunk_size": 16}}  # four chunks each
    bodies = [
        chat(**options),
        # Its deadline passes after the batch window, in the batch's compression or decoding.
        chat(**options, timeout=0.5, messages=[{"role": "user", "content": "Where does the fox live?"}]),
        chat(**options, messages=[{"role": "user", "content": "What is the secret code?"}]),
    ]
    alone = [client.post("/v1/chat/completions", json=body) for body in (bodies[0], bodies[2])]
    # Sent together they fall in one batch window: one padded batch of three. On a loaded machine a thread may
    # post after the 300 ms window closes; that round shows nothing about a shared batch, so it is sent again.
    for _ in range(3):
        before = _batches(client)
        with ThreadPoolExecutor(len(bodies)) as pool:
            together = list(pool.map(lambda body: client.post("/v1/chat/completions", json=body), bodies))
        if _batches(client) == before + 1:
            break
    else:
        pytest.fail("The three concurrent requests never shared one batch in three rounds.")
    assert_timeout(together[1])
    for solo, batched in zip(alone, (together[0], together[2]), strict=True):
        assert solo.status_code == batched.status_code == 200
        assert batched.json()["choices"] == solo.json()["choices"]
        timed = {"compression_seconds"}
        assert {key: value for key, value in batched.json()["finch"].items() if key not in timed} == {
            key: value for key, value in solo.json()["finch"].items() if key not in timed
        }


def _batches(client: httpx.Client) -> int:
    """Compression batches run so far (the count of the batch-size histogram)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("finch_batch_size_count") and 'stage="compress"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


@pytest.mark.parametrize("bad", [0, -2, "5", True, [1], {"s": 1}])
def test_bad_timeouts_are_422(client: httpx.Client, bad: object) -> None:
    assert_error(client.post("/v1/chat/completions", json=chat(timeout=bad)), 422, "invalid_value", "timeout")
    body = {"question": QUESTION, "documents": PASSAGES, "timeout": bad}
    assert_error(client.post("/v1/compress", json=body), 422, "invalid_value", "timeout")


def test_the_server_default_applies_and_a_request_may_raise_it(slow: FinchCompressor) -> None:
    with (
        serving(slow, default_timeout=1e-6) as server,
        httpx.Client(base_url=server.url, timeout=TIMEOUT) as client,
    ):
        assert_timeout(client.post("/v1/chat/completions", json=chat(max_tokens=2)))
        assert client.post("/v1/chat/completions", json=chat(max_tokens=2, timeout=60)).status_code == 200


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "1"])
def test_bad_default_timeouts_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="default_timeout"):
        ServerSettings(default_timeout=bad)  # type: ignore[arg-type]
