"""The harness's statistics: means per group, evidence metrics, paired differences and ratio intervals.

Intervals are percentile bootstraps (1,000 resamples, the 26th and 975th of the sorted means) from a seeded
`random.Random`, so a report is the same on every run of the same records.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from .common import markdown_table

RESAMPLES = 1000


def mean(values: Iterable[float]) -> float:
    """The mean of ``values``; NaN when there are none."""
    items = list(values)
    return sum(items) / len(items) if items else float("nan")


def group_means(
    records: Sequence[Mapping[str, Any]], keys: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Average ``metrics`` over records grouped by ``keys`` (first-seen order); adds ``n``."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(record.get(key) for key in keys), []).append(record)
    rows = []
    for group_key, members in groups.items():
        row: dict[str, Any] = dict(zip(keys, group_key, strict=True))
        row["n"] = len(members)
        for metric in metrics:
            values = [member[metric] for member in members if member.get(metric) is not None]
            row[metric] = mean(values) if values else None
        rows.append(row)
    return rows


def evidence_metrics(
    kept: torch.Tensor,
    per_layer: torch.Tensor | None,
    evidence_masks: Sequence[torch.Tensor],
    unretrieved_tokens: int = 0,
) -> dict[str, Any]:
    """Retention, all-hops and per-layer retention of the gold evidence.

    Parameters
    ----------
    kept : torch.Tensor
        ``[n]``: the fraction of (layer, KV head) pairs that keep each context token (0/1 for a fixed cut).
    per_layer : torch.Tensor, optional
        ``[layers, n]``: the same per layer; gives ``retention_per_layer``.
    evidence_masks : sequence of torch.Tensor
        One ``[n]`` boolean mask per piece of evidence (an answer occurrence, a supporting sentence).
    unretrieved_tokens : int
        Evidence tokens that retrieval never handed over: they count as not kept, and fail all-hops.

    ``retention`` is the kept share of the evidence's tokens; ``all_hops`` is 1 when every piece keeps at
    least half of its tokens and nothing went unretrieved.
    """
    if not evidence_masks:
        return {"retention": 0.0, "all_hops": 0.0}
    union = torch.stack(list(evidence_masks)).any(0)
    share = int(union.sum()) / (int(union.sum()) + unretrieved_tokens)
    result: dict[str, Any] = {
        "retention": float(kept[union].mean()) * share,
        "all_hops": float(not unretrieved_tokens and all(float(kept[mask].mean()) >= 0.5 for mask in evidence_masks)),
    }
    if per_layer is not None:
        result["retention_per_layer"] = [round(float(v) * share, 4) for v in per_layer[:, union].mean(1)]
    return result


def bootstrap_difference(differences: Sequence[float], generator: random.Random) -> str:
    """``"+mean [low, high]"``: the mean of paired ``differences`` and its 95% bootstrap interval.

    ``generator`` is shared by the caller across the rows of one table, so each table draws as it always did.
    """
    means = sorted(sum(generator.choices(differences, k=len(differences))) / len(differences) for _ in range(RESAMPLES))
    return f"{mean(differences):+.3f} [{means[25]:+.3f}, {means[974]:+.3f}]"


def won_lost(differences: Sequence[float]) -> str:
    """``"won / lost"``: how many paired differences are above and below zero."""
    return f"{sum(d > 0 for d in differences)} / {sum(d < 0 for d in differences)}"


def ratio_interval(pairs: Sequence[tuple[float, float]]) -> str:
    """``mean(a) / mean(b)`` of paired values with a 95% bootstrap interval over the pairs; "-" when ``b`` is all 0."""
    if not sum(b for _, b in pairs):
        return "-"
    generator = random.Random(1)
    ratios = []
    for _ in range(RESAMPLES):
        sample = generator.choices(pairs, k=len(pairs))
        denominator = sum(b for _, b in sample)
        ratios.append(sum(a for a, _ in sample) / denominator if denominator else math.inf)
    ratios.sort()
    estimate = sum(a for a, _ in pairs) / sum(b for _, b in pairs)
    return f"{estimate:.2f}x [{ratios[25]:.2f}, {ratios[974]:.2f}]"


PAIRED_METRICS = ("retention", "all_hops", "contains", "f1", "score")
"""The per-question fields a paired comparison reports, where the records have them (``score``: RULER's)."""


def paired_comparison(
    records: Sequence[Mapping[str, Any]], budgets: Sequence[str], method: str = "finch", baseline: str = "truncation"
) -> list[str]:
    """Markdown lines: ``method`` minus ``baseline`` per question, mean with a 95% bootstrap interval.

    Records pair by ``(qid, budget)``; each budget label in ``budgets`` is one row, and ``all_hops`` also gets
    its wins and losses and the ratio of the two means.
    """
    by_key = {(r["qid"], r["method"], str(r["budget"])): r for r in records if "skipped" not in r}
    metrics = [m for m in PAIRED_METRICS if any(m in r for r in by_key.values())]
    rows = []
    generator = random.Random(0)
    for budget in budgets:
        pairs = [
            (by_key[(qid, method, budget)], by_key[(qid, baseline, budget)])
            for qid, name, label in by_key
            if name == method and label == budget and (qid, baseline, budget) in by_key
        ]
        if not pairs:
            continue
        row: dict[str, Any] = {"budget": budget, "questions": len(pairs)}
        for metric in metrics:
            differences = [a[metric] - b[metric] for a, b in pairs if metric in a and metric in b]
            if not differences:
                continue
            row[metric] = bootstrap_difference(differences, generator)
            if metric == "all_hops":
                row["all_hops won / lost"] = won_lost(differences)
                row["all_hops ratio"] = ratio_interval([(a[metric], b[metric]) for a, b in pairs])
        rows.append(row)
    if not rows:
        return []
    hops_columns = ["all_hops won / lost", "all_hops ratio"] if "all_hops" in metrics else []
    columns = ["budget", "questions", *metrics, *hops_columns]
    return [
        f"## Paired: {method} minus {baseline}",
        "",
        "Per question, then the mean and a 95% bootstrap interval (1,000 resamples, seed 0); all_hops ratio = "
        f"{method}'s mean over {baseline}'s, resampling the same questions (seed 1).",
        "",
        markdown_table(rows, columns),
        "",
    ]
