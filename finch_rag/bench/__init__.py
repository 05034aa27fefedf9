"""Benchmarks: commands that write JSON, Markdown tables and PNG plots under ``docs/results/``.

Nothing here runs at import time. `SUITES` names every suite `finch-rag bench` knows and `run_suite` runs one;
each suite module also has a ``main()`` for ``python -m``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .common import answer_scores, contains_gold, data_dir, exact_match, f1_score, normalize_answer


@dataclass(frozen=True)
class Suite:
    """A module under ``finch_rag.bench`` whose ``main(argv, **options)`` runs the suite."""

    module: str
    description: str
    options: Mapping[str, Any] = field(default_factory=dict)


SUITES: dict[str, Suite] = {
    "squad": Suite(
        "qa", "single-paragraph SQuAD QA (the paper's setting), every method at equal budget", {"suite": "squad"}
    ),
    "rag-squad": Suite(
        "qa", "retrieval over all SQuAD paragraphs, then compression vs top-k truncation", {"suite": "rag-squad"}
    ),
    "hotpotqa": Suite(
        "qa",
        "multi-hop HotpotQA over 10 ranked paragraphs: evidence, all-hops coverage, answers",
        {"suite": "hotpotqa"},
    ),
    "niah": Suite("niah", "needle in a haystack over the essays, depth x length"),
    "cost": Suite("cost", "time, decode speed and memory against context length, Finch vs full prefill"),
    "batch": Suite("batch", "throughput of padded batches (1, 4, 8) against a sequential loop"),
    "quick": Suite("quick", "every suite at a small size (about 10 minutes on 2 CPU cores); --smoke is ~1 minute"),
}


def run_suite(name: str, argv: Sequence[str]) -> int:
    """Run suite ``name`` with its command-line options ``argv``; returns its exit status."""
    if name not in SUITES:
        raise ValueError(f"Unknown benchmark suite {name!r}; use one of {sorted(SUITES)}.")
    suite = SUITES[name]
    module = importlib.import_module(f"{__name__}.{suite.module}")
    return int(module.main(list(argv), **suite.options) or 0)


__all__ = [
    "SUITES",
    "Suite",
    "answer_scores",
    "contains_gold",
    "data_dir",
    "exact_match",
    "f1_score",
    "normalize_answer",
    "run_suite",
]
