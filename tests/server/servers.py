"""Helpers for the server tests: real uvicorn servers on 127.0.0.1 (a free port each), real HTTP clients.

Test modules build their servers in module-scoped fixtures with `serving`, so each module starts its servers
once. The compressor is passed in, so every server of the session shares one loaded model: the embedded default
(``real_compressor``, for ``slow`` tests) or a tiny random Llama (``tiny_compressor``, for fast tests of the HTTP
layer, whose answers are noise).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from conftest import build_tiny_model, build_tiny_tokenizer

from finch_rag import FinchCompressor, FinchConfig
from finch_rag.server import ServerSettings, ServerThread

# Facts the embedded 135M model answers reliably when they are in its context.
DOCUMENTS = [
    "Tarrowen is an island in the northern sea. Its capital is Velmora, a harbour town.",
    "The Tarrowen lighthouse was built in 1887 by the engineer Ada Quill.",
    "Bananas are yellow fruits that grow in bunches in warm places.",
]
QUESTION = "Which town is the capital of Tarrowen?"
ANSWER = "Velmora"
OPTIONS = {"target_tokens": 24}  # the `finch` field: 24 of the 60 context tokens kept
TIMEOUT = 120.0  # seconds per HTTP call: every wait in these tests is bounded


@contextlib.contextmanager
def serving(compressor: FinchCompressor, **settings: Any) -> Iterator[ServerThread]:
    """A server on ``127.0.0.1`` and a free port, stopped on exit."""
    options = {"host": "127.0.0.1", "port": 0, **settings}
    with ServerThread(ServerSettings(**options), compressor=compressor, startup_timeout=TIMEOUT) as server:
        yield server


def make_real_compressor(real_model: tuple[Any, Any]) -> FinchCompressor:
    model, tokenizer = real_model
    return FinchCompressor(model, tokenizer, FinchConfig(progress=False))


def make_tiny_compressor() -> FinchCompressor:
    return FinchCompressor(build_tiny_model("llama"), build_tiny_tokenizer(), FinchConfig(progress=False))


def chat_body(**extra: Any) -> dict[str, Any]:
    """A chat request on `DOCUMENTS`: short, greedy."""
    return {
        "messages": [{"role": "user", "content": QUESTION}],
        "documents": DOCUMENTS,
        "finch": OPTIONS,
        "max_tokens": 10,
        "temperature": 0,
        **extra,
    }


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition`` every 20 ms until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        time.sleep(0.02)


def assert_error(response: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    """``response`` is an OpenAI-shaped error with ``status`` (and ``code``/``param`` when given)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error
