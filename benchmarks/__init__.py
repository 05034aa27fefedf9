"""The research harness of finch-rag: ``python -m benchmarks SUITE [options]``, outside the library's wheel.

Each suite writes JSON, Markdown tables and PNG plots (default ``docs/results/``) and reads the benchmark data
from ``--data`` (default ``../shared/data``); both are relative to the working directory, the repository root.
Nothing here runs at import time: `SUITES` names every suite and `run_suite` runs one (``benchmarks/__main__.py``
is the command line).

The harness's own library, which the suites share instead of keeping copies:

- `benchmarks.datasets`: the data loaders (SQuAD, HotpotQA, the essays and needles, L-Eval), seeded samples;
- `benchmarks.stats`: means per group, evidence retention and all-hops, paired bootstrap differences and ratios;
- `benchmarks.journal`: the resumable JSON-lines journal behind ``--journal`` and ``--report-only``;
- `benchmarks.plots`: the figures; `benchmarks.common`: paths, answer scoring, result files;
- `benchmarks.methods`: the methods every suite compares; `benchmarks.single_pass` and `benchmarks.screen`:
  one recorded single pass per question, and the lever screens built on it.

The suites (``qa``, ``niah``, ``leval``, ``retrieve_more``, ``cost``, ``batch``, ``serve``, the screens) keep
their runs, reports and command lines. They compress and answer through finch-rag's public API
(`FinchCompressor`, `FinchRAG`, `PassageAllocation`, `build_prompt`, ...). The controls, the recorded single
pass and the screens also reach under it on purpose: they run the library's chunk loop
(`finch_rag.compression.loop.compress_batch`) with its selection policies (`finch_rag.compression.selection`),
never a copy of the loop, and the L-Eval ablation swaps `PromptParts.sentence_ids` for one call.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .common import answer_scores, contains_gold, data_dir, exact_match, f1_score, normalize_answer


@dataclass(frozen=True)
class Suite:
    """A module under ``benchmarks`` whose ``main(argv, **options)`` runs the suite."""

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
    "reliability": Suite(
        "reliability", "the server under faults: schemathesis fuzz, soak, Ray replica kill (fuzz|soak|replica-kill)"
    ),
    "ruler": Suite("ruler", "RULER-style synthetic tasks at 4k tokens: generate and encode the cases"),
    "peers": Suite("peers", "kvpress's presses vs finch-rag on the RULER-style suite, all ratios, one capture each"),
    "reread": Suite("reread", "one selection answered from its compressed cache and from its re-read, paired"),
    "quick": Suite("quick", "every suite at a small size (under 3 minutes on 2 CPU cores); --smoke is ~1 minute"),
}


def _module(name: str) -> tuple[Any, Suite]:
    if name not in SUITES:
        raise ValueError(f"Unknown benchmark suite {name!r}; use one of {sorted(SUITES)}.")
    suite = SUITES[name]
    return importlib.import_module(f"{__name__}.{suite.module}"), suite


def run_suite(name: str, argv: Sequence[str]) -> int:
    """Run suite ``name`` with its command-line options ``argv``; returns its exit status."""
    module, suite = _module(name)
    return int(module.main(list(argv), **suite.options) or 0)


def suite_parser(name: str) -> argparse.ArgumentParser:
    """The command-line parser of suite ``name`` (what ``python -m benchmarks NAME --help`` shows)."""
    module, suite = _module(name)
    return module.build_parser(**suite.options)


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
    "suite_parser",
]
