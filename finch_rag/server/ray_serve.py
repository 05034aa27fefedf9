"""The same app on Ray Serve: one deployment class around it, each replica with its own model and batcher.

``finch-rag serve --ray --replicas N`` calls `run_ray`; ``serve run deploy/serve_config.yaml`` calls `build_app`.
Each replica builds the FastAPI app of `create_app` when it starts (the app is not pickled with a loaded model),
runs its lifespan (which loads the model), and batches its own requests: batching is done once, by the app, and
``@serve.batch`` is not used on top. A replica asks Ray for one GPU when the cluster has one.

Needs the ``ray`` extra: ``pip install 'finch-rag[ray]'``.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Mapping
from typing import Any

from .app import create_app
from .settings import ServerSettings

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "finch-rag"
APPLICATION_NAME = "finch-rag"


class FinchServer:
    """A Ray Serve replica serving finch-rag's OpenAI-compatible app (the app is its ASGI ingress)."""


def deployment(
    settings: ServerSettings,
    *,
    replicas: int = 1,
    max_replicas: int | None = None,
    num_gpus: float | None = None,
    num_cpus: float = 1.0,
) -> Any:
    """A bound Ray Serve application of ``settings``' app.

    Parameters
    ----------
    settings : ServerSettings
        What each replica serves; ``host`` and ``port`` are Ray's HTTP proxy's business (see `run_ray`).
    replicas : int
        Replicas to run; with ``max_replicas``, the least the autoscaler keeps.
    max_replicas : int, optional
        Turns autoscaling on, between ``replicas`` and ``max_replicas``, aiming at ``max_batch_size`` requests
        in flight per replica.
    num_gpus : float, optional
        GPUs per replica; default 1 when the Ray cluster has a GPU, else 0.
    num_cpus : float
        CPUs per replica.
    """
    from ray import serve

    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas must be an int >= 1, got {replicas!r}.")
    if max_replicas is not None and max_replicas < replicas:
        raise ValueError(f"max_replicas ({max_replicas}) must be >= replicas ({replicas}).")
    if num_gpus is None:
        num_gpus = 1.0 if _cluster_gpus() > 0 else 0.0

    def build() -> Any:  # runs on each replica, at its start
        return create_app(settings)

    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": num_cpus, "num_gpus": num_gpus},
        # Let requests through to the replica: its own admission answers 429 past max_queue.
        "max_ongoing_requests": 2 * settings.max_queue,
        "health_check_period_s": 10,
        # Serve's own drain: a stopping replica gets no new requests and waits for its ongoing ones (checked every
        # wait loop) for up to the drain timeout before it is killed.
        "graceful_shutdown_timeout_s": settings.drain_timeout,
        "graceful_shutdown_wait_loop_s": min(2.0, max(settings.drain_timeout, 0.1)),
    }
    if max_replicas is None:
        options["num_replicas"] = replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": settings.max_batch_size,
        }
    ingress = serve.ingress(build)(FinchServer)
    return serve.deployment(ingress, **options).bind()  # type: ignore[attr-defined]


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
