"""A ``finch-rag serve`` child process on 127.0.0.1, and its resident memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class ServerProcess:
    """``python -m finch_rag.cli serve [--model MODEL] ARGS...`` on a free port; killed on exit if still running.

    ``capture_output`` keeps the server's stdout and stderr for `output` (the tests quote it when a check fails);
    otherwise they go to this process's own.
    """

    def __init__(
        self, model: str | None, *args: str, startup_timeout: float = 300.0, capture_output: bool = False
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "finch_rag.cli", "serve", "--port", str(self.port)]
        self.command += ["--log-level", "warning", *(["--model", model] if model else []), *args]
        self.startup_timeout = startup_timeout
        self.capture_output = capture_output
        self.process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ServerProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        pipe = subprocess.PIPE if self.capture_output else None
        self.process = subprocess.Popen(
            self.command, cwd=REPO, env=env, stdout=pipe, stderr=subprocess.STDOUT if pipe else None, text=True
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited during startup with status {self.process.returncode}\n{self.output()}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2).json().get("status") == "ok":
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise TimeoutError(f"the server did not start within {self.startup_timeout} s\n{self.output()}")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit status once it has drained."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def output(self) -> str:
        """What the server printed, once it has exited (with ``capture_output``; else empty)."""
        if self.process is None or self.process.stdout is None or self.process.poll() is None:
            return ""
        return self.process.stdout.read()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.kill()
