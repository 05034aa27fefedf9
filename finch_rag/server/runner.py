"""Run the app: `serve` (one process, uvicorn) and `ServerThread` (a server in a background thread)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import uvicorn

from .. import FinchCompressor
from .app import create_app
from .settings import ServerSettings

logger = logging.getLogger(__name__)


def serve(settings: ServerSettings, *, log_level: str = "info") -> None:
    """Serve ``settings`` with uvicorn until interrupted (Ctrl-C, SIGTERM), then drain and return.

    On the signal uvicorn closes the listening socket, lets requests in flight finish for up to
    ``settings.drain_timeout`` seconds (cancelling what is left), and runs the app's shutdown. Returning, rather
    than dying of the signal, is what makes a drained process exit 0, as process managers expect.
    """
    app = create_app(settings)
    server = uvicorn.Server(uvicorn_config(app, settings, log_level=log_level))
    # uvicorn handles the signal while it serves, then re-raises it once it has shut down, to give the process the
    # signal's default outcome (death by SIGTERM, KeyboardInterrupt). Handlers that only note the signal make that
    # re-raise a no-op, so a clean drain ends as a normal exit.
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in _STOP_SIGNALS}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        logger.info("Drained and stopped on %s.", signal.Signals(received[0]).name)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def uvicorn_config(app: Any, settings: ServerSettings, *, log_level: str = "info") -> uvicorn.Config:
    """The uvicorn configuration of ``app``: where ``settings`` listen, and their drain period."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        # Typed int, but uvicorn only hands it to asyncio.timeout, which takes any number of seconds.
        timeout_graceful_shutdown=settings.drain_timeout,  # type: ignore[arg-type]
    )


class ServerThread:
    """A uvicorn server on a background thread, for notebooks, tests and benchmarks.

    ``with ServerThread(settings) as server: ...`` starts it, waits until the model is loaded, and stops it on
    exit. ``port=0`` picks a free port; `url` then has the real one.

    Parameters
    ----------
    settings : ServerSettings
        What to serve; its ``host`` and ``port`` are where to listen.
    compressor : FinchCompressor, optional
        Serve an already loaded compressor.
    startup_timeout : float
        Seconds to wait for the model to load and the socket to listen.
    """

    def __init__(
        self,
        settings: ServerSettings,
        *,
        compressor: FinchCompressor | None = None,
        startup_timeout: float = 300.0,
        log_level: str = "warning",
    ) -> None:
        self.settings = settings
        self.app = create_app(settings, compressor=compressor)
        self._server = uvicorn.Server(uvicorn_config(self.app, settings, log_level=log_level))
        self._thread: threading.Thread | None = None
        self.startup_timeout = startup_timeout

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        servers = getattr(self._server, "servers", None) or []
        for server in servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                return f"http://{host}:{port}"
        return f"http://{self.settings.host}:{self.settings.port}"

    def start(self) -> ServerThread:
        self._thread = threading.Thread(target=self._server.run, name="finch-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("The server stopped during startup; its log says why.")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"The server did not start within {self.startup_timeout} s.")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
