"""Count the compressions a frontend runs on one compressor instance."""

from __future__ import annotations

from typing import Any

import pytest


def count_compressions(monkeypatch: pytest.MonkeyPatch, compressor: Any) -> list[str]:
    """Record the question of every compression ``compressor`` runs, through `compress` or `compress_batch`.

    Frontends may take either entry point (a batch of one is still one compression), so both are counted.
    """
    calls: list[str] = []
    single, batch = compressor.compress, compressor.compress_batch

    def counting_single(context: Any, question: str, **kwargs: Any) -> Any:
        calls.append(question)
        return single(context, question, **kwargs)

    def counting_batch(contexts: Any, questions: Any, **kwargs: Any) -> Any:
        calls.extend(questions)
        return batch(contexts, questions, **kwargs)

    monkeypatch.setattr(compressor, "compress", counting_single)
    monkeypatch.setattr(compressor, "compress_batch", counting_batch)
    return calls
