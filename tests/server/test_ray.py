"""The same app on Ray Serve: 2 replicas, requests spread over both, the same answers, clear 503s when one dies.

A local Ray instance with 2 replicas; when a replica's process is killed mid-request, its requests get 503s in
OpenAI's shape (never a hang, never Ray's plain-text 500).

Starts and stops its own Ray instance (about a minute on 2 busy cores); skipped where Ray is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import DOCUMENTS, OPTIONS, QUESTION, TIMEOUT, chat_body, make_real_compressor, serving

from finch_rag.server import ServerSettings

pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra finch-rag[ray]")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CONFIG_FILE = Path(__file__).parents[2] / "deploy" / "serve_config.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def requests_to_compare() -> list[tuple[str, dict[str, Any]]]:
    compress = {"question": QUESTION, "documents": DOCUMENTS, **OPTIONS}
    return [("/v1/chat/completions", chat_body()), ("/v1/compress", compress)]


def answers(url: str) -> list[Any]:
    """The parts of each response that must not depend on where it ran (no ids, times or timings)."""
    results = []
    with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
        for path, body in requests_to_compare():
            response = client.post(path, json=body)
            assert response.status_code == 200, response.text
            data = response.json()
            if path == "/v1/compress":
                results.append(([document["text"] for document in data["documents"]], data["usage"]))
            else:
                results.append((data["choices"][0]["message"]["content"], data["usage"], data["finch"]["documents"]))
    return results


@pytest.fixture(scope="module")
def single_process_answers(real_model: tuple[Any, Any]) -> list[Any]:
    with serving(make_real_compressor(real_model)) as server:
        return answers(server.url)


@pytest.fixture(scope="module")
def ray_server() -> Iterator[Any]:
    from finch_rag.server.ray_serve import RayServer

    settings = ServerSettings(host="127.0.0.1", port=free_port())
    with RayServer(settings, replicas=2, num_cpus=1, ray_cpus=2, startup_timeout=600) as server:
        yield server


def test_two_replicas_share_the_requests(ray_server: Any) -> None:
    with httpx.Client(base_url=ray_server.url, timeout=TIMEOUT) as client, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: client.get("/v1/models"), range(32)))
        health = client.get("/health").json()
    assert all(response.status_code == 200 for response in responses)
    replicas = Counter(response.headers["x-finch-replica"] for response in responses)
    assert len(replicas) == 2, replicas
    assert health["status"] == "ok" and health["replica"] in replicas


def test_ray_answers_equal_the_single_process_server(ray_server: Any, single_process_answers: list[Any]) -> None:
    assert answers(ray_server.url) == single_process_answers


def test_the_serve_config_file_builds_the_same_deployment() -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from finch_rag.server.ray_serve import build_app

    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG_FILE.read_text(encoding="utf-8")))
    (application,) = config.applications
    assert application.import_path == "finch_rag.server.ray_serve:build_app"
    (deployment,) = application.deployments
    assert deployment.name == "finch-rag" and deployment.num_replicas == 2
    built = build_app(application.args)  # the builder accepts the file's args as they are
    assert built is not None


def replica_pids(client: httpx.Client, replicas: int = 2) -> dict[str, int]:
    """Replica id -> process id, from ``/health``, polled until every replica has answered."""
    found: dict[str, int] = {}
    deadline = time.monotonic() + TIMEOUT
    while len(found) < replicas and time.monotonic() < deadline:
        health = client.get("/health").json()
        found[health["replica"]] = int(health["pid"])
    assert len(found) == replicas, found
    return found


def lost_replica_error(text: str) -> bool:
    """Whether ``text`` is the OpenAI-shaped error body of a request whose replica was lost."""
    error = json.loads(text)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error["code"] == "replica_unavailable" and error["type"] == "server_error" and "retry" in error["message"]


def outcome(client: httpx.Client, stream: bool) -> str:
    """``ok``, or ``lost`` for the answer of a request whose replica died (asserting its shape), else fails."""
    body = chat_body(max_tokens=64, stream=stream)
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        text = response.read().decode()
    if response.status_code == 503:
        assert int(response.headers["retry-after"]) >= 0
        assert lost_replica_error(text), text
        return "lost"
    assert response.status_code == 200, (response.status_code, text)
    if not stream:
        return "ok"
    events = [line.removeprefix("data: ") for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]", text
    errors = [event for event in events[:-1] if "error" in json.loads(event)]
    if not errors:
        return "ok"
    assert len(errors) == 1 and errors[0] == events[-2] and lost_replica_error(errors[0]), text
    return "lost"


def test_a_killed_replica_gives_clear_503s_not_hangs(ray_server: Any) -> None:
    """Kills one of its two replicas (Serve replaces it) while requests are on both.

    The requests on the killed replica answer a 503 in OpenAI's shape with ``Retry-After`` (a stream already
    begun ends with that error as its last event, then ``[DONE]``); the others answer normally; a retry gets
    through. Every call is bounded by the client timeout, so a hang fails the test.
    """
    with httpx.Client(base_url=ray_server.url, timeout=TIMEOUT) as client, ThreadPoolExecutor(12) as pool:
        (victim, *_) = sorted(replica_pids(client).values())
        futures = [pool.submit(outcome, client, stream) for stream in [False, True] * 6]
        time.sleep(2.0)  # the requests are on both replicas (Serve balances them), compressing or decoding
        os.kill(victim, signal.SIGKILL)
        outcomes = Counter(future.result(timeout=2 * TIMEOUT) for future in futures)
        for _ in range(5):  # as a retrying client does, after Retry-After
            retried = client.post("/v1/chat/completions", json=chat_body())
            if retried.status_code != 503:
                break
            time.sleep(int(retried.headers["retry-after"]))
    assert set(outcomes) <= {"ok", "lost"} and outcomes["lost"] >= 1, outcomes
    assert retried.status_code == 200, retried.text


def test_deleting_the_application_drains_a_stream_in_flight(ray_server: Any) -> None:
    """Last in the module (it removes the app): Serve's own graceful shutdown lets a stream in flight finish.

    The deployment's ``graceful_shutdown_timeout_s`` is the server's drain timeout (30 s by default): deleting the
    application while a stream decodes stops new work, and the stream still runs to its last token and ``[DONE]``.
    """
    from ray import serve

    from finch_rag.server.ray_serve import APPLICATION_NAME

    body = chat_body(max_tokens=48, stream=True)
    with httpx.Client(base_url=ray_server.url, timeout=TIMEOUT) as client:
        replica_pids(client)  # both replicas are up again after the previous test's kill
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            events: list[str] = []
            for line in lines:
                if line.startswith("data: ") and '"content": "' in line and '"content": ""' not in line:
                    events.append(line.removeprefix("data: "))
                    break
            with ThreadPoolExecutor(1) as pool:
                deleting = pool.submit(serve.delete, APPLICATION_NAME)  # blocks until the replicas have drained
                events += [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
                deleting.result(timeout=2 * TIMEOUT)
    assert events[-1] == "[DONE]", events
    chunks = [json.loads(event) for event in events[:-1]]
    assert not [chunk for chunk in chunks if "error" in chunk], chunks
    finishes = [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk.get("choices")]
    assert finishes[-1] in {"stop", "length"}, chunks  # the answer ran to its end, not cut by the shutdown
    assert APPLICATION_NAME not in serve.status().applications
