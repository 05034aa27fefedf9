"""The ASGI middleware every request passes: authentication, body size, the replica header and metrics.

It is plain ASGI, not ``BaseHTTPMiddleware``, so it sees a streamed response to its last byte (the latency of
a stream is the time to its ``[DONE]``) and never buffers a body.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body
from .metrics import ServerMetrics

OPEN_PATHS = frozenset({"/health"})
"""Paths answered without an API key (load balancers and Ray probe them)."""

ENDPOINTS = frozenset({"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/compress"})
"""Metric labels; any other path is counted as ``other`` so that probing random paths cannot grow the series."""

REPLICA_HEADER = "x-finch-replica"


class RequestGate:
    """Checks the API key and body size, stamps the replica id, and counts every answer.

    Parameters
    ----------
    app : ASGI app
        The wrapped application.
    metrics : ServerMetrics
        Where requests and latencies are counted.
    api_key : str, optional
        Required as ``Authorization: Bearer <api_key>`` on every path but `OPEN_PATHS`.
    max_request_bytes : int
        Larger bodies get 413, by ``Content-Length`` before reading, or while reading a chunked body.
    replica_id : callable
        Returns the id put in the ``X-Finch-Replica`` header.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ServerMetrics,
        api_key: str | None,
        max_request_bytes: int,
        replica_id: Any,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.api_key = api_key
        self.max_request_bytes = max_request_bytes
        self.replica_id = replica_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        started = time.perf_counter()
        status = {"code": 500}
        replica = self.replica_id().encode()

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), (REPLICA_HEADER.encode(), replica)]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.metrics.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()
                self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)

        refusal = self._refusal(scope, path)
        if refusal is not None:
            code, body, headers = refusal
            await _send_json(observed_send, code, body, headers)
            return
        await self.app(scope, self._limited(receive), observed_send)

    def _refusal(self, scope: Scope, path: str) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        headers = dict(scope.get("headers", []))
        if self.api_key is not None and path not in OPEN_PATHS:
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), self.api_key):
                message = (
                    "Missing API key: send 'Authorization: Bearer <key>'."
                    if not given
                    else "Invalid API key: send the key the server was started with as 'Authorization: Bearer <key>'."
                )
                body = error_body(401, message, code="invalid_api_key")
                return 401, body, {"www-authenticate": "Bearer"}
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_request_bytes:
            return 413, self._too_large(), {}
        return None

    def _too_large(self) -> dict[str, Any]:
        message = (
            f"The request body is larger than this server's limit of {self.max_request_bytes} bytes. Send fewer or "
            "shorter documents, or raise --max-request-bytes."
        )
        return error_body(413, message, code="request_too_large")

    def _limited(self, receive: Receive) -> Receive:
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_request_bytes:
                    raise HTTPException(413, self._too_large()["error"]["message"])
            return message

        return limited_receive


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(name.encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
