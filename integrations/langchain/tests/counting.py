"""Count the compressions a frontend runs on one compressor instance."""

from __future__ import annotations

from typing import Any

import pytest


def count_compressions(monkeypatch: pytest.MonkeyPatch, compressor: Any) -> list[str]:
    """Record the question of every compression ``compressor`` runs: `compress`, `compress_batch`, `compress_plans`.

    Frontends may take any entry point (a batch of one is still one compression); each runs its own forward
    passes (none calls another), so each is counted once.
    """
    calls: list[str] = []
    single, batch, plans = compressor.compress, compressor.compress_batch, compressor.compress_plans

    def counting_single(context: Any, question: str, **kwargs: Any) -> Any:
        calls.append(question)
        return single(context, question, **kwargs)

    def counting_batch(contexts: Any, questions: Any, **kwargs: Any) -> Any:
        calls.extend(questions)
        return batch(contexts, questions, **kwargs)

    def counting_plans(planned: Any, questions: Any, **kwargs: Any) -> Any:
        calls.extend(questions)
        return plans(planned, questions, **kwargs)

    monkeypatch.setattr(compressor, "compress", counting_single)
    monkeypatch.setattr(compressor, "compress_plans", counting_plans)
    monkeypatch.setattr(compressor, "compress_batch", counting_batch)
    return calls
