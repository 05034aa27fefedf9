"""The reliability harness's parts against a real single-process server (no Ray here).

The server runs the harness's own tiny model (`benchmarks.reliability.models.tiny_model`: random weights, the
embedded tokenizer, a window long enough for the soak's requests). Checked: the soak's request kinds, the
replica-kill clients and replica discovery.
"""

from __future__ import annotations

import os
import random
import time

import httpx
import pytest

from benchmarks.reliability import build_parser
from benchmarks.reliability.models import compressor_for
from benchmarks.reliability.replica_kill import Tally, client_loop, replica_pids
from benchmarks.reliability.soak import make_request, p95, send, store_bytes
from finch_rag.server import ServerSettings, ServerThread

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server():
    settings = ServerSettings(host="127.0.0.1", port=0)
    with ServerThread(settings, compressor=compressor_for("tiny")) as running:
        yield running


def test_soak_requests_are_reproducible_and_mixed():
    first = [make_request(i, random.Random(3)) for i in range(1)]
    assert first == [make_request(i, random.Random(3)) for i in range(1)]
    rng = random.Random(0)
    kinds = {make_request(i, rng)[0] for i in range(200)}
    assert kinds == {"chat", "stream", "cancel", "compress"}
    assert p95([1.0] * 19 + [100.0]) > 1.0


def test_every_soak_request_kind_succeeds_and_a_cancelled_stream_frees_its_place(server):
    rng = random.Random(1)
    seen = set()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for index in range(60):
            kind, body = make_request(index, rng)
            outcome = send(client, index, kind, body)
            assert outcome.ok, (kind, outcome.detail)
            seen.add(kind)
        assert seen == {"chat", "stream", "cancel", "compress"}
        deadline = time.monotonic() + 10
        while client.get("/health").json()["queue_depth"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health").json()["queue_depth"] == 0
        assert store_bytes(client) > 0  # the soak reads the store's size beside RSS


def test_a_failed_request_is_not_counted_ok(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        outcome = send(client, 0, "chat", {"messages": []})
    assert not outcome.ok and "error" in outcome.detail


def test_replica_kill_clients_count_successes_and_find_the_replica(server):
    assert replica_pids(server.url, 1) == {server.app.state.finch.replica(): os.getpid()}
    tally = Tally()
    client_loop(server.url, time.monotonic() + 1.5, tally, retries=2, deadline=30)
    assert tally.ok_first_try > 0 and tally.failed == 0 and not tally.unclear_failures
    assert len(tally.completions) == tally.ok_first_try + tally.retried_ok


def test_replica_kill_clients_retry_then_count_a_failure_and_its_reason():
    tally = Tally()
    client_loop("http://127.0.0.1:9", time.monotonic() + 1.0, tally, retries=1, deadline=2)  # nothing listens
    assert tally.failed >= 1 and tally.ok_first_try == 0
    assert any(reason.startswith("connection") for reason in tally.failed_attempts)


def test_the_command_lists_its_runs():
    assert build_parser().parse_args(["soak", "--requests", "5"]).command == "soak"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bogus"])
