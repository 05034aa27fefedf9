"""A real ``finch-rag serve`` process on a tiny model saved to disk, for tests that send it signals.

`ServerProcess` runs ``python -m finch_rag.cli serve --model DIR`` in a subprocess on a free port of 127.0.0.1 and
waits for ``/health``; it kills the process on exit if a test left it running. `save_tiny_model` writes the tiny
random Llama and tokenizer of ``conftest`` where ``--model`` can load them.
"""

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
import torch
from conftest import EOS_ID, build_tiny_model, build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]


def save_tiny_model(directory: Path, *, endless: bool = False, **overrides: Any) -> Path:
    """The tiny Llama (``overrides`` change its config) and the tiny tokenizer, saved in ``directory``.

    ``endless``: the end-of-sequence token's output row is zeroed, so its logit is 0 while the max of the 127 other
    random logits is positive (all negative has odds of 2^-127): greedy answers always run to ``max_tokens``.
    """
    model = build_tiny_model("llama", **overrides)
    if endless:
        with torch.no_grad():
            model.get_output_embeddings().weight[EOS_ID] = 0.0
    model.save_pretrained(directory)
    build_tiny_tokenizer().save_pretrained(directory)
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``finch-rag serve --model MODEL ARGS...`` as a child process on 127.0.0.1 and a free port."""

    def __init__(self, model: Path, *args: str, startup_timeout: float = 120.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "finch_rag.cli", "serve", "--model", str(model), "--port", str(self.port)]
        self.command += ["--log-level", "warning", *args]
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> ServerProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            self.command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited during startup:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).json().get("status") == "ok":
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the server did not start within {self.startup_timeout} s:\n{self.output()}")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def output(self) -> str:
        if self.process is None or self.process.stdout is None or self.process.poll() is None:
            return ""
        return self.process.stdout.read()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
