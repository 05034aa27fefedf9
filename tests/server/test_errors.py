"""Bad requests get OpenAI-shaped 4xx errors that say what to fix; auth; 429 under load. A tiny model serves."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from conftest import PASSAGES, QUESTION
from servers import TIMEOUT, assert_error, make_tiny_compressor, serving, wait_until

from finch_rag import FinchCompressor
from finch_rag.server import ServerThread

KEY = "test-key-123"


@pytest.fixture(scope="module")
def tiny() -> FinchCompressor:
    return make_tiny_compressor()


@pytest.fixture(scope="module")
def server(tiny: FinchCompressor) -> Iterator[ServerThread]:
    with serving(tiny, served_model_name="tiny", max_request_bytes=20_000, max_input_chars=2_000) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


def chat(**extra: object) -> dict[str, object]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": QUESTION}],
        "documents": PASSAGES,
        "max_tokens": 2,
        **extra,
    }


def test_a_valid_request_is_answered(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200, response.text
    assert response.json()["finch"]["context_source"] == "documents"


def test_malformed_json_is_400(client: httpx.Client) -> None:
    headers = {"content-type": "application/json"}
    error = assert_error(
        client.post("/v1/chat/completions", content=b'{"messages": [', headers=headers), 400, "invalid_json"
    )
    assert "not valid JSON" in error["message"]
    assert_error(client.post("/v1/chat/completions", content=b"[1, 2]", headers=headers), 400, "invalid_json")
    assert_error(client.post("/v1/compress", content=b"question=x"), 400, "invalid_json")  # form-encoded, not JSON


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "assistant", "content": "Hello."}],
        [{"role": "user", "content": "   "}],
        [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "4817"}],
    ],
    ids=["no-user-message", "blank-question", "assistant-last"],
)
def test_a_chat_without_a_question_is_400(client: httpx.Client, messages: list[dict[str, str]]) -> None:
    error = assert_error(client.post("/v1/chat/completions", json=chat(messages=messages)), 400, param="messages")
    assert "user message" in error["message"]


def test_compress_without_a_question_or_documents_is_an_error(client: httpx.Client) -> None:
    assert_error(client.post("/v1/compress", json={"question": " ", "documents": PASSAGES}), 400, param="question")
    assert_error(
        client.post("/v1/compress", json={"question": QUESTION, "documents": ["", " "]}), 400, param="documents"
    )
    assert_error(client.post("/v1/compress", json={"question": QUESTION}), 422, param="documents")
    assert_error(client.post("/v1/compress", json={"documents": PASSAGES}), 422, param="question")


def test_an_unknown_model_is_404(client: httpx.Client, server: ServerThread) -> None:
    error = assert_error(
        client.post("/v1/chat/completions", json=chat(model="gpt-4o")), 404, "model_not_found", "model"
    )
    assert "'tiny'" in error["message"]  # names the model that is served
    assert_error(
        client.post("/v1/compress", json={"model": "gpt-4o", "question": QUESTION, "documents": PASSAGES}),
        404,
        "model_not_found",
    )
    assert_error(client.get("/v1/models/gpt-4o"), 404, "model_not_found")
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": QUESTION}], max_tokens=2
        )


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"finch": {"compression_ratio": 1.5}}, "finch.compression_ratio"),
        ({"finch": {"target_tokens": 0}}, "finch.target_tokens"),
        ({"finch": {"target_tokens": 8, "compression_ratio": 0.5}}, "finch"),
        ({"finch": {"chunk_sise": 8}}, "finch.chunk_sise"),
        ({"finch": {"target_tokens": 8}, "target_tokens": 4}, "target_tokens"),
        ({"compression_ratio": -0.1}, "compression_ratio"),
        ({"finch": {"allocation": "best"}}, "finch.allocation"),
        ({"finch": {"target_tokens": "lots"}}, "finch.target_tokens"),
        ({"target_tokens": "lots"}, "target_tokens"),
        ({"finch": {"target_tokens": "auto", "attention_mass": 1.5}}, "finch.attention_mass"),
        ({"finch": {"target_tokens": "auto", "max_target_tokens": 0}}, "finch.max_target_tokens"),
        ({"finch": {"target_tokens": 8, "attention_mass": 0.5}}, "finch"),  # ignored with a fixed budget: refused
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": [""]}, "stop"),
        ({"documents": [{"txt": "a"}]}, None),
    ],
)
def test_bad_options_are_422(client: httpx.Client, extra: dict[str, object], param: str | None) -> None:
    error = assert_error(client.post("/v1/chat/completions", json=chat(**extra)), 422)
    if param is not None:
        assert error["param"] == param, error


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content",
        ),
    ],
)
def test_unsupported_features_are_400(client: httpx.Client, extra: dict[str, object], param: str) -> None:
    assert_error(client.post("/v1/chat/completions", json=chat(**extra)), 400, param=param)


def test_text_content_parts_and_ignorable_fields_are_accepted(client: httpx.Client) -> None:
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is the "}, {"type": "text", "text": "secret code?"}],
        }
    ]
    body = chat(messages=messages, user="someone", presence_penalty=0, metadata={"a": "b"}, store=False)
    assert client.post("/v1/chat/completions", json=body).status_code == 200


def test_too_large_inputs_are_413(client: httpx.Client) -> None:
    big = ["The secret code is 4817. " * 1000]  # 25,000 bytes: over max_request_bytes
    error = assert_error(client.post("/v1/chat/completions", json=chat(documents=big)), 413, "request_too_large")
    assert "max-request-bytes" in error["message"]
    long_text = ["The secret code is 4817. " * 100]  # 2,500 characters: over max_input_chars, under the bytes
    assert_error(client.post("/v1/chat/completions", json=chat(documents=long_text)), 413, "input_too_large")
    assert_error(
        client.post("/v1/compress", json={"question": QUESTION, "documents": long_text}), 413, "input_too_large"
    )

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(30):
            yield b"x" * 1000
        yield b'"}]}'

    headers = {"content-type": "application/json"}
    assert_error(client.post("/v1/chat/completions", content=chunked(), headers=headers), 413, "request_too_large")


def test_unknown_paths_and_methods_answer_in_the_same_shape(client: httpx.Client) -> None:
    assert_error(client.get("/v1/completions-nope"), 404)
    assert_error(client.get("/v1/chat/completions"), 405)


def test_an_api_key_guards_every_endpoint_but_health(tiny: FinchCompressor) -> None:
    with (
        serving(tiny, served_model_name="tiny", api_key=KEY) as server,
        httpx.Client(base_url=server.url, timeout=TIMEOUT) as client,
    ):
        assert client.get("/health").status_code == 200
        for method, path in (
            ("GET", "/v1/models"),
            ("GET", "/metrics"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/compress"),
        ):
            error = assert_error(client.request(method, path, json=chat()), 401, "invalid_api_key")
            assert "Authorization: Bearer" in error["message"]
            wrong = client.request(method, path, json=chat(), headers={"Authorization": "Bearer nope"})
            assert_error(wrong, 401, "invalid_api_key")
            assert wrong.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": f"Bearer {KEY}"}
        assert client.get("/v1/models", headers=good).json()["data"][0]["id"] == "tiny"
        assert client.post("/v1/chat/completions", json=chat(), headers=good).status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0).models.list()
        assert openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY).models.list().data[0].id == "tiny"


def test_a_full_queue_answers_429_with_retry_after(tiny: FinchCompressor) -> None:
    # One place in the server; the first request holds it for the whole batching window (8 s: time enough for the
    # refused requests below on a busy machine).
    with (
        serving(tiny, served_model_name="tiny", max_queue=1, batch_window_ms=8000) as server,
        httpx.Client(base_url=server.url, timeout=TIMEOUT) as client,
    ):
        first: dict[str, httpx.Response] = {}
        thread = threading.Thread(target=lambda: first.update(r=client.post("/v1/chat/completions", json=chat())))
        thread.start()
        try:
            wait_until(lambda: client.get("/health").json()["queue_depth"] == 1, what="the first request is admitted")
            refused = client.post("/v1/chat/completions", json=chat())
            assert_error(refused, 429, "server_overloaded")
            assert int(refused.headers["retry-after"]) >= 1
            assert_error(client.post("/v1/compress", json={"question": QUESTION, "documents": PASSAGES}), 429)
            with pytest.raises(openai.RateLimitError):
                openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0).chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": QUESTION}], max_tokens=2
                )
            assert client.get("/health").status_code == 200  # cheap endpoints are never refused
        finally:
            thread.join(TIMEOUT)
        assert first["r"].status_code == 200
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200  # the place is free again


def test_a_client_leaving_a_stream_frees_its_place(client: httpx.Client) -> None:
    body = chat(max_tokens=300, stream=True, messages=[{"role": "user", "content": QUESTION}])
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert next(response.iter_lines()).startswith("data: {")
    wait_until(lambda: client.get("/health").json()["queue_depth"] == 0, what="the stream's place is freed")


def test_a_stream_whose_reader_leaves_stops_decoding() -> None:
    """The server's streams run the decoder on a thread of their own; leaving closes it at its next token."""
    from finch_rag.frontends import in_thread

    closed = threading.Event()

    def endless() -> Iterator[str]:
        try:
            while True:
                time.sleep(0.01)
                yield "token"
        finally:
            closed.set()

    async def read_two() -> list[str]:
        pieces = []
        stream = in_thread(endless())
        async for piece in stream:
            pieces.append(piece)
            if len(pieces) == 2:
                break
        await stream.aclose()
        return pieces

    assert asyncio.run(read_two()) == ["token", "token"]
    assert closed.wait(10), "the decoder was not closed after its reader left"
