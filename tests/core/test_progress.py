"""Progress bars: shown on a terminal when asked, hidden by ``TQDM_DISABLE=1`` and when stderr is not a terminal."""

from __future__ import annotations

import io
import sys

import pytest
from conftest import PASSAGES, QUESTION

from finch_rag import FinchCompressor, FinchConfig
from finch_rag.progress import bars_allowed


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so tqdm writes to it as to a console."""

    def isatty(self) -> bool:
        return True


def compress_chunked(tiny_models, tiny_tokenizer, progress: bool = True) -> None:
    config = FinchConfig(target_tokens=8, chunk_size=8, progress=progress)
    FinchCompressor(tiny_models("llama"), tiny_tokenizer, config).compress(PASSAGES, QUESTION)


def stderr_is(monkeypatch, stream: io.StringIO) -> io.StringIO:
    # Inside the test body: pytest's own capture reinstalls sys.stderr after fixtures are set up.
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


@pytest.fixture(autouse=True)
def no_tqdm_disable(monkeypatch) -> None:
    monkeypatch.delenv("TQDM_DISABLE", raising=False)


def test_bar_shows_on_a_terminal(monkeypatch, tiny_models, tiny_tokenizer):
    terminal = stderr_is(monkeypatch, Terminal())
    compress_chunked(tiny_models, tiny_tokenizer)
    assert "finch: compressing" in terminal.getvalue()


@pytest.mark.parametrize("value", ["1", "true", "True"])
def test_tqdm_disable_hides_the_bar(monkeypatch, tiny_models, tiny_tokenizer, value):
    terminal = stderr_is(monkeypatch, Terminal())
    monkeypatch.setenv("TQDM_DISABLE", value)
    assert not bars_allowed()
    compress_chunked(tiny_models, tiny_tokenizer)
    assert terminal.getvalue() == ""


def test_tqdm_disable_zero_keeps_the_bar(monkeypatch, tiny_models, tiny_tokenizer):
    terminal = stderr_is(monkeypatch, Terminal())
    monkeypatch.setenv("TQDM_DISABLE", "0")
    compress_chunked(tiny_models, tiny_tokenizer)
    assert "finch: compressing" in terminal.getvalue()


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch, tiny_models, tiny_tokenizer):
    stream = stderr_is(monkeypatch, io.StringIO())
    assert not bars_allowed()
    compress_chunked(tiny_models, tiny_tokenizer)
    assert stream.getvalue() == ""


def test_progress_false_hides_the_bar_on_a_terminal(monkeypatch, tiny_models, tiny_tokenizer):
    terminal = stderr_is(monkeypatch, Terminal())
    compress_chunked(tiny_models, tiny_tokenizer, progress=False)
    assert terminal.getvalue() == ""


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_the_embedder_s_loading_bar_follows_the_same_rule(monkeypatch, terminal):
    # sentence-transformers loads through transformers, whose "Loading weights" bar also writes into a pipe.
    from finch_rag.retrieval import load_embedding_model

    stream = stderr_is(monkeypatch, Terminal() if terminal else io.StringIO())
    load_embedding_model()
    assert ("Loading weights" in stream.getvalue()) == terminal
