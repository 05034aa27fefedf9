"""The automatic budget (``target_tokens: "auto"``) through the server: per request and as its default. Tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import PASSAGES, QUESTION
from servers import TIMEOUT, assert_error, make_tiny_compressor, serving

from finch_rag import FinchCompressor, FinchConfig

AUTO = {"target_tokens": "auto", "attention_mass": 0.2, "max_target_tokens": 64}
# Titled, so several documents: pieces of one document would get sentence fusion's prior, which moves the shares.
DOCUMENTS = [{"text": text, "title": f"Document {number}"} for number, text in enumerate(PASSAGES, start=1)]


@pytest.fixture(scope="module")
def tiny() -> FinchCompressor:
    return make_tiny_compressor()


@pytest.fixture(scope="module")
def client(tiny: FinchCompressor) -> Iterator[httpx.Client]:
    """A server whose default budget is fixed (a ratio), as ``finch-rag serve`` with no arguments."""
    with serving(tiny) as server, httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


def kept(client: httpx.Client, **options: Any) -> int:
    """``kept_tokens`` of a ``/v1/compress`` request with these compression options in its ``finch`` field."""
    response = client.post("/v1/compress", json={"question": QUESTION, "documents": DOCUMENTS, "finch": options})
    assert response.status_code == 200, response.text
    return int(response.json()["usage"]["kept_tokens"])


def test_a_request_picks_the_automatic_budget(client: httpx.Client) -> None:
    auto = kept(client, **AUTO)
    assert 0 < auto < kept(client, target_tokens=64) == 64  # the cap, which a fixed B of 64 fills
    assert kept(client, **(AUTO | {"attention_mass": 0.1})) < auto  # a smaller share keeps fewer
    assert kept(client, **(AUTO | {"attention_mass": 1.0})) == 64  # all of the attention: the cap
    # The same options at top level, and in a chat completion.
    body = {"question": QUESTION, "documents": DOCUMENTS, **AUTO}
    assert client.post("/v1/compress", json=body).json()["usage"]["kept_tokens"] == auto
    chat = {"messages": [{"role": "user", "content": QUESTION}], "documents": DOCUMENTS, "max_tokens": 2}
    response = client.post("/v1/chat/completions", json={**chat, "finch": AUTO})
    assert response.status_code == 200, response.text
    assert 0 < response.json()["finch"]["kept_tokens"] < 64


def test_automatic_options_without_auto_are_refused(client: httpx.Client) -> None:
    """They would be ignored; the 422 says to set target_tokens "auto"."""
    body = {"question": QUESTION, "documents": DOCUMENTS, "finch": {"attention_mass": 0.5}}
    error = assert_error(client.post("/v1/compress", json=body), 422, "invalid_value", param="finch")
    assert 'set target_tokens="auto"' in error["message"] and "compression_ratio=0.75" in error["message"]
    error = assert_error(client.post("/v1/compress", json={**body, "finch": {"target_tokens": "many"}}), 422)
    assert error["param"] == "finch.target_tokens" and 'or "auto"' in error["message"]


def test_a_server_whose_default_is_automatic(tiny: FinchCompressor) -> None:
    """``finch-rag serve --target-tokens auto``: requests may then give the share or the cap alone."""
    config = FinchConfig(target_tokens="auto", attention_mass=0.2, max_target_tokens=64, progress=False)
    with serving(tiny, config=config) as server, httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        default = kept(client)
        assert default == kept(client, **AUTO) < 64
        assert kept(client, attention_mass=0.1) < default and kept(client, max_target_tokens=8) == 8
        assert kept(client, target_tokens=40) == 40  # a fixed budget per request still works
