"""The server's default budget: ratio 0.75 with a floor of 128, for ``finch-rag serve`` and requests with no budget.

An explicit ``compression_ratio`` (a flag or a request's option) is kvpress's exact rule, with no floor unless
``min_target_tokens`` is given too. Tiny model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import PASSAGES, QUESTION
from servers import TIMEOUT, assert_error, make_tiny_compressor, serving

from finch_rag import FinchConfig
from finch_rag.cli import build_parser
from finch_rag.config import DEFAULT_MIN_TARGET_TOKENS
from finch_rag.server import ServerSettings
from finch_rag.server.command import settings_from_args

SHORT = PASSAGES[:2]  # fewer context tokens than the floor


def settings(*argv: str) -> ServerSettings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_serve_flags_set_the_default_budget_and_its_floor() -> None:
    assert settings().config.min_target_tokens == DEFAULT_MIN_TARGET_TOKENS
    assert settings("--ratio", "0.75").config == FinchConfig(compression_ratio=0.75, progress=False)
    assert settings("--ratio", "0.5", "--min-target-tokens", "64").config.min_target_tokens == 64
    floored = settings("--min-target-tokens", "32").config
    assert (floored.compression_ratio, floored.min_target_tokens) == (0.75, 32)
    with pytest.raises(ValueError, match="leave --min-target-tokens out, or give --ratio instead"):
        settings("--target-tokens", "32", "--min-target-tokens", "64")
    assert ServerSettings.from_options({"min_target_tokens": 64}).config.min_target_tokens == 64
    assert ServerSettings.from_options({"compression_ratio": 0.5}).config.min_target_tokens is None


def test_serve_help_states_the_floor(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 0.75, with --min-target-tokens 128)" in text and "--min-target-tokens N" in text


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """A server with the default budget, as ``finch-rag serve`` with no arguments."""
    with serving(make_tiny_compressor()) as server, httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
        yield client


def usage(client: httpx.Client, **options: Any) -> dict[str, int]:
    response = client.post("/v1/compress", json={"question": QUESTION, "documents": SHORT, **options})
    assert response.status_code == 200, response.text
    return response.json()["usage"]


def test_a_request_with_no_budget_keeps_a_short_context_whole(client: httpx.Client) -> None:
    default = usage(client)
    assert default["context_tokens"] < DEFAULT_MIN_TARGET_TOKENS
    assert default["kept_tokens"] == default["context_tokens"]
    n = default["context_tokens"]
    assert usage(client, finch={"compression_ratio": 0.75})["kept_tokens"] == n // 4  # explicit: no floor
    assert usage(client, compression_ratio=0.75)["kept_tokens"] == n // 4
    assert usage(client, finch={"compression_ratio": 0.75, "min_target_tokens": 16})["kept_tokens"] == max(16, n // 4)
    assert usage(client, finch={"min_target_tokens": 8})["kept_tokens"] == max(8, n // 4)
    body = {"question": QUESTION, "documents": SHORT, "finch": {"target_tokens": 8, "min_target_tokens": 16}}
    error = assert_error(client.post("/v1/compress", json=body), 422, "invalid_value", param="finch")
    assert "leave min_target_tokens out" in error["message"]
    error = assert_error(client.post("/v1/compress", json={**body, "finch": {"min_target_tokens": 0}}), 422)
    assert error["param"] == "finch.min_target_tokens"
