"""What the routes of one app share: settings, engine, metrics, admission, and the replica id."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from .. import FinchCompressor
from ..config import FinchConfig
from ..deadline import Deadline
from ..frontends import BudgetOptions
from .batching import Admission, Overloaded
from .engine import Engine
from .errors import APIError
from .metrics import ServerMetrics
from .settings import ServerSettings


def default_replica_id() -> str:
    """``<hostname>-<pid>``: distinct for each process, so each Ray Serve replica reports its own."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ServerState:
    """The shared parts of one app; the engine starts in the app's lifespan.

    Parameters
    ----------
    settings : ServerSettings
        The server's settings.
    compressor : FinchCompressor, optional
        An already loaded compressor to serve instead of loading ``settings.model``.
    """

    def __init__(self, settings: ServerSettings, compressor: FinchCompressor | None) -> None:
        self.settings = settings
        self.metrics = ServerMetrics()
        self.engine = Engine(settings, self.metrics, compressor)
        self.admission = Admission(settings.max_queue, on_change=self.metrics.queue_depth.set)
        self.replica_id = settings.replica_id or ""
        self.started = int(time.time())
        self.ready = False
        self._mean_seconds = 1.0
        self._lock = threading.Lock()

    def replica(self) -> str:
        return self.replica_id or default_replica_id()

    def observe(self, seconds: float) -> None:
        """Record a finished model request (for `retry_after`)."""
        with self._lock:
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds

    def retry_after(self) -> str:
        """Seconds a refused client should wait: the recent mean latency, at least one."""
        return str(max(1, round(self._mean_seconds)))

    def admit(self) -> Callable[[], None]:
        """Take one place in the server, or answer 429 with ``Retry-After``; returns the (idempotent) release."""
        try:
            self.admission.acquire()
        except Overloaded as error:
            raise APIError(
                429,
                f"{error} Retry after the time in the Retry-After header.",
                code="server_overloaded",
                headers={"Retry-After": self.retry_after()},
            ) from error
        started = time.perf_counter()
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self.admission.release()
                self.observe(time.perf_counter() - started)

        return release

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """`admit` for the body of a ``with``."""
        release = self.admit()
        try:
            yield
        finally:
            release()

    def deadline(self, timeout: float | None) -> Deadline | None:
        """The request's deadline, from now: its own ``timeout``, else the server's ``default_timeout``, else none."""
        seconds = timeout if timeout is not None else self.settings.default_timeout
        return None if seconds is None else Deadline(seconds)

    def resolve_options(self, options: BudgetOptions) -> tuple[FinchConfig, str]:
        """A request's `FinchConfig` and allocation: its explicit options over the server's defaults.

        Invalid values and combinations (both budgets, automatic-budget options with a fixed budget) are
        `FinchConfig`'s errors, answered as a 422 that quotes them.
        """
        explicit = options.explicit()
        try:
            config = self.engine.config(explicit)
        except (TypeError, ValueError) as error:
            raise APIError(422, f"Invalid compression options: {error}", code="invalid_value", param="finch") from error
        return config, explicit.get("allocation") or self.settings.allocation

    def check_model(self, name: str | None) -> None:
        """404 unless ``name`` is this server's model (or left out)."""
        if not self.settings.accepts_model(name):
            raise unknown_model(self.settings, name or "")

    def check_size(self, texts: Iterable[str]) -> None:
        """413 when the request's text is longer than ``max_input_chars``."""
        total = sum(len(text) for text in texts)
        limit = self.settings.max_input_chars
        if total > limit:
            raise APIError(
                413,
                f"The request holds {total} characters of text, over this server's limit of {limit}. Send fewer or "
                "shorter documents, or raise --max-input-chars.",
                code="input_too_large",
            )


def unknown_model(settings: ServerSettings, name: str) -> APIError:
    return APIError(
        404,
        f"The model {name!r} is not served here; this server serves {settings.model_id!r} (see /v1/models).",
        code="model_not_found",
        param="model",
    )
