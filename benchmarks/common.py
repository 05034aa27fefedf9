"""Helpers shared by the benchmarks: where the data lives, answer scoring, result files and their headers.

Answer scoring follows the official SQuAD v1.1 evaluation script (lower-case, strip punctuation and
articles, collapse whitespace), so EM and F1 are comparable with published numbers.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import string
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DATA_ENV = "FINCH_RAG_DATA"
DEFAULT_DATA = Path("../shared/data")
"""The benchmark data folder, relative to the working directory (the repository root under ``make``)."""
RESULTS_DIR = Path("docs/results")
"""Where the suites write by default, relative to the working directory."""


# ------------------------------------------------------------------ data
def add_chunk_size_option(parser: argparse.ArgumentParser) -> None:
    """``--chunk-size``: finch-rag's ``FinchConfig.chunk_size``, an int, ``auto`` (the default) or ``none``."""
    from finch_rag.arguments import chunk_size

    parser.add_argument(
        "--chunk-size", type=chunk_size, default="auto", help="FinchConfig.chunk_size: an int, 'auto' (default), 'none'"
    )


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The benchmark data folder: ``path`` (``--data``), else ``$FINCH_RAG_DATA``, else ``../shared/data``.

    Relative paths are read from the working directory. The data never lives inside the repository.
    """
    if path is not None:
        resolved = Path(path).expanduser().resolve()
        if not resolved.is_dir():
            raise FileNotFoundError(f"Data folder {resolved} does not exist (from --data / data_dir={path!r}).")
        return resolved
    candidate = Path(os.environ[DATA_ENV]).expanduser() if os.environ.get(DATA_ENV) else DEFAULT_DATA
    if candidate.is_dir():
        return candidate.resolve()
    raise FileNotFoundError(
        f"No benchmark data folder at {candidate.resolve()}. Run from the repository root (the data lives in "
        f"../shared/data beside it), pass --data PATH or set ${DATA_ENV} to the folder that holds "
        "paul_graham_essays/, squad-v1.1-dev-part.json and hotpotqa-dev-distractor-part.json."
    )


# --------------------------------------------------------------- scoring
def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(char for char in text if char not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-level F1 between the normalised prediction and gold answer."""
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(gold).split()
    common = collections.Counter(predicted) & collections.Counter(expected)
    overlap = sum(common.values())
    if not predicted or not expected:
        return float(predicted == expected)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


def contains_gold(prediction: str, gold: str) -> float:
    """1 when the normalised gold answer occurs in the normalised prediction (whole words)."""
    expected = normalize_answer(gold)
    if not expected:
        return 0.0
    return float(f" {expected} " in f" {normalize_answer(prediction)} ")


def best_over_golds(metric: Any, prediction: str, golds: Sequence[str]) -> float:
    """The best score of ``metric(prediction, gold)`` over the gold answers (SQuAD's convention)."""
    if not golds:
        raise ValueError("At least one gold answer is needed to score a prediction.")
    return max(metric(prediction, gold) for gold in golds)


def answer_scores(prediction: str, golds: Sequence[str]) -> dict[str, float]:
    """``{"contains": ..., "em": ..., "f1": ...}`` for one prediction."""
    return {
        "contains": best_over_golds(contains_gold, prediction, golds),
        "em": best_over_golds(exact_match, prediction, golds),
        "f1": best_over_golds(f1_score, prediction, golds),
    }


# ------------------------------------------------------------- outputs
def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: int = 2) -> str:
    """A GitHub Markdown table of ``rows`` restricted to ``columns``; floats get ``digits`` decimals."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def meta_lines(meta: Mapping[str, Any]) -> list[str]:
    """A report's header: one Markdown bullet per ``meta`` item, the command in backticks."""
    return [f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}" for key, value in meta.items()]


def command_line(prog: str, argv: Sequence[str] | None) -> str:
    """The command a result file names: ``prog`` and its options (``argv``, else the process's own)."""
    return f"{prog} " + shlex.join(argv if argv is not None else sys.argv[1:])  # an argument with spaces stays one


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    return target


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def machine_description() -> str:
    """CPU, core count, torch threads and accelerator, for result files."""
    import torch

    accelerator = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    threads = torch.get_num_threads()
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{threads} thread{'s' if threads != 1 else ''}, {accelerator}"
    )
