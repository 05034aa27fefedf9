"""``finch-rag serve``: its arguments, and the real command serving the embedded model (slow)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from servers import TIMEOUT, chat_body, wait_until

from finch_rag import FinchConfig
from finch_rag.cli import build_parser
from finch_rag.server import ServerSettings
from finch_rag.server.command import settings_from_args


def settings(*argv: str) -> ServerSettings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_no_arguments_serve_the_embedded_default_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FINCH_RAG_API_KEY", raising=False)
    assert settings() == ServerSettings(config=FinchConfig(progress=False))
    assert settings().model is None and (settings().host, settings().port) == ("127.0.0.1", 8000)


def test_arguments_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINCH_RAG_API_KEY", "from-env")
    parsed = settings("--target-tokens", "64", "--chunk-size", "none", "--max-batch-size", "1", "--no-compression")
    assert parsed.config == FinchConfig(target_tokens=64, chunk_size=None, progress=False)
    assert parsed.max_batch_size == 1 and not parsed.compression and parsed.api_key == "from-env"
    assert settings("--api-key", "given").api_key == "given"
    assert settings("--timeout", "2.5").default_timeout == 2.5 and settings().default_timeout is None
    with pytest.raises(ValueError, match="default_timeout"):
        settings("--timeout", "0")
    with pytest.raises(ValueError, match="max_queue"):
        settings("--max-queue", "0")


def test_dtype_reaches_the_settings() -> None:
    assert settings().dtype is None and settings("--dtype", "bfloat16").dtype == "bfloat16"
    with pytest.raises(SystemExit):
        settings("--dtype", "int8")


def test_embedding_model_reaches_the_settings_and_the_handle(tiny_models, tiny_tokenizer) -> None:
    from finch_rag import FinchCompressor
    from finch_rag.server.engine import Engine
    from finch_rag.server.metrics import ServerMetrics

    assert settings().embedding_model is None
    named = settings("--embedding-model", "/models/my-minilm")
    assert named.embedding_model == "/models/my-minilm"
    engine = Engine(named, ServerMetrics(), FinchCompressor(tiny_models("llama"), tiny_tokenizer))
    assert engine.handle.embedding_model == "/models/my-minilm"  # what every request's plan embeds with


def test_dtype_is_for_a_model_loaded_by_name(tiny_models, tiny_tokenizer) -> None:
    from finch_rag import FinchCompressor
    from finch_rag.frontends import CompressorHandle

    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer)
    with pytest.raises(ValueError, match="a given compressor keeps its model's dtype"):
        CompressorHandle(compressor, dtype="bfloat16")
    assert CompressorHandle(model_name="somewhere", dtype="bfloat16").loaded is None  # lazy: nothing loads yet


def test_chunk_size_auto_is_the_default_and_accepted() -> None:
    assert settings().config.chunk_size == "auto"
    assert settings("--chunk-size", "AUTO").config.chunk_size == "auto"
    assert settings("--chunk-size", "64").config.chunk_size == 64
    with pytest.raises(SystemExit):
        settings("--chunk-size", "lots")


def test_the_automatic_budget_as_the_default() -> None:
    parsed = settings("--target-tokens", "auto", "--attention-mass", "0.6", "--max-target-tokens", "256")
    assert parsed.config == FinchConfig(target_tokens="auto", attention_mass=0.6, max_target_tokens=256, progress=False)
    assert settings("--target-tokens", "AUTO").config == FinchConfig(target_tokens="auto", progress=False)
    with pytest.raises(ValueError, match="--attention-mass only applies with --target-tokens auto"):
        settings("--target-tokens", "64", "--attention-mass", "0.6")
    with pytest.raises(ValueError, match="--max-target-tokens only applies"):
        settings("--max-target-tokens", "256")  # the default budget is a ratio
    with pytest.raises(ValueError, match="attention_mass"):
        settings("--target-tokens", "auto", "--attention-mass", "1.5")
    with pytest.raises(SystemExit):
        settings("--target-tokens", "lots")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_the_command_serves_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    command = [str(Path(sys.executable).parent / "finch-rag"), "serve", "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(f"{url}/health", timeout=2).json()["status"] == "ok"
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=TIMEOUT, what="finch-rag serve answering /health")
        response = httpx.post(f"{url}/v1/chat/completions", json=chat_body(max_tokens=4), timeout=TIMEOUT)
        assert response.status_code == 200 and response.json()["model"] == "SmolLM2-135M-Instruct"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            raise
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()
