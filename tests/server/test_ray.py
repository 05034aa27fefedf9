"""The same app on Ray Serve: a local Ray instance, 2 replicas, requests spread over both, the same answers.

Starts and stops its own Ray instance (about a minute on 2 busy cores); skipped where Ray is not installed.
"""

from __future__ import annotations

import socket
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
