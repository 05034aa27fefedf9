"""The same app on Ray Serve: a thin ingress in front of model replicas, each with its own model and batcher.

``finch-rag serve --ray --replicas N`` calls `run_ray`; ``serve run deploy/serve_config.yaml`` calls `build_app`.
Each model replica (`FinchServer`, deployment ``finch-rag``) builds the FastAPI app of `create_app` when it starts
(the app is not pickled with a loaded model), runs its lifespan (which loads the model), and batches its own
requests: batching is done once, by the app, and ``@serve.batch`` is not used on top. A replica asks Ray for one
GPU when the cluster has one.

Ray's HTTP proxy is not the app's ingress: `FinchIngress` (deployment ``finch-rag-ingress``, no model) is, and
relays each request to a model replica through a `DeploymentHandle`. When a replica's process dies while it holds
a request, Ray raises the error in the caller; with the app as the proxy's own ingress that caller is the proxy,
which answers a plain-text ``500 Internal Server Error`` (its uvicorn's reply to an app that returned without a
response). The ingress turns it into a 503 in OpenAI's shape with ``Retry-After``, or, once a stream has begun,
into the stream's error event and ``data: [DONE]``; retried, the request reaches a live replica. (Serve itself
retries a request on another replica only while it is being assigned, not once the replica has it.)

Needs the ``ray`` extra: ``pip install 'finch-rag[ray]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from .app import create_app
from .errors import error_body
from .settings import ServerSettings

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "finch-rag"
INGRESS_NAME = "finch-rag-ingress"
APPLICATION_NAME = "finch-rag"

RETRY_AFTER_SECONDS = 1
"""Suggested wait before retrying a request whose replica was lost: the other replicas are usually up."""

_SCOPE_KEYS = (
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "root_path",
    "query_string",
    "headers",
    "client",
    "server",
)


class FinchServer:
    """A Ray Serve model replica: finch-rag's OpenAI-compatible app, fed the requests `FinchIngress` relays.

    Parameters
    ----------
    settings : ServerSettings
        What the app serves.
    """

    async def __init__(self, settings: ServerSettings) -> None:  # type: ignore[misc]  # Serve awaits it
        self.app = create_app(settings)
        self._lifespan: contextlib.AbstractAsyncContextManager[Any] | None = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()  # loads the model before the replica takes traffic

    async def __del__(self) -> None:  # Serve awaits it when it stops the replica, after the drain
        lifespan, self._lifespan = getattr(self, "_lifespan", None), None
        if lifespan is not None:
            await lifespan.__aexit__(None, None, None)

    async def forward(self, request: dict[str, Any], body: bytes) -> AsyncIterator[list[Message]]:
        """Run one HTTP request through the app; yield its ASGI send messages as they come.

        ``request`` holds the HTTP scope's fields (`_SCOPE_KEYS`). The status line is held back and sent with the
        first body part, so that a JSON answer is one message. An error in the app answers a 500 in OpenAI's
        shape if nothing was sent yet (as uvicorn would, in plain text).
        """
        scope: Scope = {"type": "http", "asgi": {"version": "3.0"}, "root_path": "", **request}
        outbox: asyncio.Queue[Message | None] = asyncio.Queue()
        disconnected = asyncio.Event()
        body_sent = False
        started = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await outbox.put(message)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception:
                logger.exception("Unhandled error on %s %s", scope["method"], scope["path"])
                if not started:
                    for message in _json_messages(500, error_body(500, "Internal server error; see the server log.")):
                        await outbox.put(message)
            finally:
                await outbox.put(None)

        task = asyncio.create_task(run())
        try:
            held: list[Message] = []
            while (message := await outbox.get()) is not None:
                held.append(message)
                if message["type"] != "http.response.start":
                    yield held
                    held = []
            if held:
                yield held
        finally:
            # The caller went away (client disconnect) or the answer is complete: let the app see the disconnect.
            disconnected.set()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


class FinchIngress:
    """Ray Serve's HTTP ingress: relays each request to a `FinchServer` replica and answers for a lost one.

    Parameters
    ----------
    server : DeploymentHandle
        The model deployment.
    max_request_bytes : int
        At most this many bytes (plus one) of a body are read and relayed; the replica's gate answers the 413.
    """

    def __init__(self, server: Any, max_request_bytes: int) -> None:
        self.server = server.options(stream=True)
        self.max_request_bytes = max_request_bytes

    async def __call__(self, request: Request) -> Response:
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > self.max_request_bytes:
                break
        relayed = {key: request.scope[key] for key in _SCOPE_KEYS if key in request.scope}
        if isinstance(relayed.get("client"), tuple | list):
            relayed["client"] = tuple(relayed["client"])
        return _Relay(self.server.forward.remote(relayed, bytes(body)))


class _Relay(Response):
    """Sends a replica's ASGI messages on; maps a lost replica to a 503 (or a stream's error event)."""

    def __init__(self, messages: Any) -> None:  # a DeploymentResponseGenerator of message lists
        self.messages = messages
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = streaming = finished = False
        try:
            async for batch in self.messages:
                for message in batch:
                    if message["type"] == "http.response.start":
                        started = True
                        streaming = any(
                            name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                            for name, value in message.get("headers", [])
                        )
                    elif message["type"] == "http.response.body" and not message.get("more_body", False):
                        finished = True
                    await send(message)
        except Exception as error:  # noqa: BLE001 - every failure of the hop gets an answer in OpenAI's shape
            if finished:
                return
            status, body = _lost_replica(error)
            if not started:
                retry = {"retry-after": str(RETRY_AFTER_SECONDS)} if status in (429, 503) else {}
                for message in _json_messages(status, body, retry):
                    await send(message)
            elif streaming:
                events = f"data: {json.dumps(body, ensure_ascii=False)}\n\ndata: [DONE]\n\n".encode()
                await send({"type": "http.response.body", "body": events, "more_body": False})
            else:  # a status line was sent: all that is left is to end the body (the client sees it cut)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if not finished:
                self.messages.cancel()


def _lost_replica(error: Exception) -> tuple[int, dict[str, Any]]:
    """Status and OpenAI error body for a failed relay."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    if isinstance(error, RayActorError | ReplicaUnavailableError):
        message = (
            f"The server replica handling this request was lost ({type(error).__name__}); retry the request, "
            "another replica will answer it."
        )
        return 503, error_body(503, message, code="replica_unavailable")
    if isinstance(error, DeploymentUnavailableError):
        message = "No server replica is running (the deployment is starting or failed); retry shortly."
        return 503, error_body(503, message, code="replica_unavailable")
    if isinstance(error, BackPressureError):
        message = "The server is full; retry after the 'Retry-After' seconds."
        return 429, error_body(429, message, code="server_full")
    logger.error("Relaying a request to a replica failed", exc_info=error)
    message = f"Internal server error ({type(error).__name__}); the server log has the details."
    return 500, error_body(500, message, code="internal_error")


def _json_messages(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> list[Message]:
    response = JSONResponse(body, status_code=status, headers=dict(headers or {}))
    return [
        {"type": "http.response.start", "status": status, "headers": response.raw_headers},
        {"type": "http.response.body", "body": response.body, "more_body": False},
    ]


def deployment(
    settings: ServerSettings,
    *,
    replicas: int = 1,
    max_replicas: int | None = None,
    num_gpus: float | None = None,
    num_cpus: float = 1.0,
) -> Any:
    """A bound Ray Serve application of ``settings``' app: `FinchIngress` in front of `FinchServer` replicas.

    Parameters
    ----------
    settings : ServerSettings
        What each replica serves; ``host`` and ``port`` are Ray's HTTP proxy's business (see `run_ray`).
    replicas : int
        Model replicas to run; with ``max_replicas``, the least the autoscaler keeps.
    max_replicas : int, optional
        Turns autoscaling on, between ``replicas`` and ``max_replicas``, aiming at ``max_batch_size`` requests
        in flight per replica.
    num_gpus : float, optional
        GPUs per model replica; default 1 when the Ray cluster has a GPU, else 0.
    num_cpus : float
        CPUs per model replica (the ingress asks for none: it only relays).
    """
    from ray import serve

    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be an int >= 1, got {replicas!r}.")
    if max_replicas is not None and max_replicas < replicas:
        raise ValueError(f"max_replicas ({max_replicas}) must be >= replicas ({replicas}).")
    if num_gpus is None:
        num_gpus = 1.0 if _cluster_gpus() > 0 else 0.0

    # Serve's own drain: a stopping replica gets no new requests and waits for its ongoing ones (checked every
    # wait loop) for up to the drain timeout before it is killed. The ingress drains the same way, so that the
    # streams it relays are not cut before the model replica's.
    drain: dict[str, Any] = {
        "graceful_shutdown_timeout_s": settings.drain_timeout,
        "graceful_shutdown_wait_loop_s": min(2.0, max(settings.drain_timeout, 0.1)),
    }
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
        # Let requests through to the replica: its own admission answers 429 past max_queue.
        "max_ongoing_requests": 2 * settings.max_queue,
        "health_check_period_s": 10,
        **drain,
    }
    if max_replicas is None:
        options["num_replicas"] = replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": settings.max_batch_size,
        }
    server = serve.deployment(FinchServer, **options).bind(settings)  # type: ignore[attr-defined]
    ingress = serve.deployment(
        FinchIngress,
        name=INGRESS_NAME,
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        # The ingress only relays; the model replicas' admission is the limit that answers.
        max_ongoing_requests=10_000,
        **drain,
    )
    return ingress.bind(server, settings.max_request_bytes)  # type: ignore[attr-defined]


def build_app(args: Mapping[str, Any]) -> Any:
    """Application builder for ``serve run``: ``args`` are `ServerSettings.from_options` options.

    ``replicas``, ``max_replicas``, ``num_gpus`` and ``num_cpus`` go to `deployment`; a config file's
    ``deployments`` section may override them as usual.
    """
    args = dict(args)
    placement = {name: args.pop(name) for name in ("replicas", "max_replicas", "num_gpus", "num_cpus") if name in args}
    return deployment(ServerSettings.from_options(args), **placement)


def _cluster_gpus() -> float:
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.cluster_resources().get("GPU", 0))


class RayServer:
    """Ray Serve running `deployment` of ``settings``, as a context manager (tests, benchmarks, the CLI).

    Starts a local Ray instance unless one is already running (or ``address`` names a cluster), serves the app on
    ``settings.host``/``settings.port``, waits until every replica is healthy, and on exit deletes the application,
    shuts Serve down and, if it started Ray, Ray too.

    Parameters
    ----------
    settings : ServerSettings
        What to serve, and where (``host``, ``port``).
    replicas, max_replicas, num_gpus, num_cpus
        See `deployment`.
    address : str, optional
        A Ray cluster to join (``"auto"``, ``"ray://..."``); default: start a local one.
    ray_cpus : int, optional
        CPUs the local Ray instance offers (default: all).
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        replicas: int = 1,
        max_replicas: int | None = None,
        num_gpus: float | None = None,
        num_cpus: float = 1.0,
        address: str | None = None,
        ray_cpus: int | None = None,
        startup_timeout: float = 300.0,
    ) -> None:
        self.settings = settings
        self.replicas = replicas
        self.max_replicas = max_replicas
        self.num_gpus = num_gpus
        self.num_cpus = num_cpus
        self.address = address
        self.ray_cpus = ray_cpus
        self.startup_timeout = startup_timeout
        self._started_ray = False

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def start(self) -> RayServer:
        import ray
        from ray import serve

        if not ray.is_initialized():
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address is not None:
                options["address"] = self.address
            elif self.ray_cpus is not None:
                options["num_cpus"] = self.ray_cpus
            ray.init(**options)
            self._started_ray = self.address is None
        try:
            serve.start(http_options={"host": self.settings.host, "port": self.settings.port})
            app = deployment(
                self.settings,
                replicas=self.replicas,
                max_replicas=self.max_replicas,
                num_gpus=self.num_gpus,
                num_cpus=self.num_cpus,
            )
            serve.run(app, name=APPLICATION_NAME, route_prefix="/", blocking=False)
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        from ray import serve

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            status = serve.status().applications.get(APPLICATION_NAME)
            if status is not None and str(status.status).endswith("RUNNING"):
                return
            if status is not None and str(status.status).endswith(("DEPLOY_FAILED", "UNHEALTHY")):
                raise RuntimeError(f"Ray Serve could not deploy finch-rag: {status.message}")
            time.sleep(0.5)
        raise TimeoutError(f"Ray Serve's replicas were not running within {self.startup_timeout} s.")

    def stop(self) -> None:
        import ray
        from ray import serve

        if ray.is_initialized():
            try:
                serve.shutdown()
            finally:
                if self._started_ray:
                    ray.shutdown()
                    self._started_ray = False

    def __enter__(self) -> RayServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run_ray(settings: ServerSettings, **options: Any) -> None:
    """Serve on Ray Serve until interrupted (``finch-rag serve --ray``): Ctrl-C or SIGTERM shut it down cleanly."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # A process started in the background may inherit SIGINT ignored, and SIGTERM would otherwise end it without
    # shutting Ray down: both stop the server through the same path.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with RayServer(settings, **options) as server:
        logger.info("finch-rag on Ray Serve at %s (Ctrl-C stops it)", server.url)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            logger.info("Stopping Ray Serve")
