"""Run the app: `serve` (one process, uvicorn) and `ServerThread` (a server in a background thread)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import uvicorn

from .. import FinchCompressor
from .app import create_app
from .settings import ServerSettings

logger = logging.getLogger(__name__)


def serve(settings: ServerSettings, *, log_level: str = "info") -> None:
    """Serve ``settings`` with uvicorn until interrupted (Ctrl-C, SIGTERM)."""
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level)


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
        config = uvicorn.Config(self.app, host=settings.host, port=settings.port, log_level=log_level)
        self._server = uvicorn.Server(config)
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
