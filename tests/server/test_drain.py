"""Graceful drain: SIGTERM during a streamed answer lets the stream finish, refuses new connections, exits 0.

A real ``finch-rag serve`` process (tiny model on disk), a real signal, a real HTTP client reading the stream.
"""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest
from processes import ServerProcess, save_tiny_model

pytestmark = pytest.mark.timeout(300)

# The tiny model never ends an answer by itself (`save_tiny_model(endless=True)`), so the stream runs to max_tokens,
# about 2 s here: long enough to be stopped in the middle.
STREAM = {
    "messages": [{"role": "user", "content": "Rivers flow"}],
    "documents": ["The capital of France is Paris."],
    "max_tokens": 1500,
    "stream": True,
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), endless=True, max_position_embeddings=4096)


def read_stream_with_sigterm(server: ServerProcess) -> tuple[list[dict], bool, float]:
    """Read a streamed answer, with SIGTERM after its first content; returns (chunks, saw [DONE], signal time)."""
    chunks: list[dict] = []
    done = False
    signalled = 0.0
    try:
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=STREAM, timeout=120) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                chunk = json.loads(line[len("data: ") :])
                chunks.append(chunk)
                if not signalled and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    server.signal(signal.SIGTERM)
                    signalled = time.monotonic()
    except httpx.HTTPError:  # a stream cut short by a server that did not drain
        pass
    return chunks, done, signalled


def test_sigterm_during_a_stream_lets_it_finish_then_exits_0(model_dir):
    with ServerProcess(model_dir, "--drain-timeout", "60") as server:
        chunks, done, signalled = read_stream_with_sigterm(server)
        assert signalled, "the stream never produced content"
        finished = time.monotonic()
        assert done, "the stream did not end with [DONE]"
        final = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
        assert final, "no chunk gave a finish_reason"
        content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
        assert len(content) > STREAM["max_tokens"] // 2  # the answer ran on after the signal, nearly to max_tokens
        assert finished - signalled > 0.2
        assert server.wait(60) == 0, server.output()
        with pytest.raises(httpx.ConnectError):  # nothing listens any more
            httpx.get(server.url + "/health", timeout=5)


def test_new_connections_are_refused_while_draining(model_dir):
    with ServerProcess(model_dir, "--drain-timeout", "60") as server:
        refused = False
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=STREAM, timeout=120) as response:
            lines = response.iter_lines()
            for line in lines:
                if '"content": "' in line and '"content": ""' not in line:
                    break
            server.signal(signal.SIGTERM)
            time.sleep(0.5)
            try:
                httpx.get(server.url + "/health", timeout=5)
            except httpx.ConnectError:
                refused = True
            rest = [line for line in lines if line]
        assert refused, "a new connection was accepted during the drain"
        assert rest[-1] == "data: [DONE]"
        assert server.wait(60) == 0, server.output()


def test_a_zero_grace_period_cuts_the_stream_and_still_exits_0(model_dir):
    """The control: without a grace period the same stream is cancelled, so the test above measures the drain."""
    with ServerProcess(model_dir, "--drain-timeout", "0") as server:
        _, done, signalled = read_stream_with_sigterm(server)
        assert signalled and not done
        assert server.wait(60) == 0, server.output()


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), True, "30"])
def test_drain_timeout_is_validated(bad):
    from finch_rag.server import ServerSettings

    with pytest.raises(ValueError, match="drain_timeout"):
        ServerSettings(drain_timeout=bad)


def test_ray_replicas_drain_through_serve_graceful_shutdown():
    """On Ray Serve the same setting is each replica's graceful_shutdown_timeout_s (Serve's own drain)."""
    pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra finch-rag[ray]")
    from finch_rag.server import ServerSettings
    from finch_rag.server.ray_serve import deployment

    config = deployment(ServerSettings(drain_timeout=7))._bound_deployment._deployment_config
    assert config.graceful_shutdown_timeout_s == 7.0
    assert 0 < config.graceful_shutdown_wait_loop_s <= 2.0
