"""Lever screen: passage links, the default's boost of the passages that the best-ranked passage names by title.

`FinchRAG`'s default allocation multiplies the scores of every passage that the best-ranked passage names by
title by ``link_boost`` (4), so the bridge passage of a multi-hop question survives a small budget
(`finch_rag.linking`). Links are a passage prior and change only the selection, not the question's
attention, so one recorded single pass per question gives the default (``finch_rag``), the default without
links (``no_links``, ``link_boost=1``) and each other ``--boosts`` value, against top-k truncation.

    python -m benchmarks.links --limit 30 --seed 6 --boosts 2 10
    # a run split in two parts, then one report over both parts' records
    python -m benchmarks.links --seed 0 --start 200 --limit 350 --out part_a
    python -m benchmarks.links --seed 0 --start 350 --limit 500 --out part_b
    python -m benchmarks.links --merge part_a.json part_b.json --out docs/results/links
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finch_rag import PassageAllocation, RankWeighting

from .screen import (
    Kept,
    ScreenQuestion,
    budget_records,
    per_question,
    screen_model,
    screen_parser,
    screen_questions,
    write_screen,
)

TITLE = "passage links"


def with_boost(question: ScreenQuestion, boost: float) -> Kept:
    """What the recorded pass keeps at each budget when the allocation's ``link_boost`` is ``boost``."""
    recorded = question.recorded
    plan = PassageAllocation(weighting=RankWeighting(link_boost=boost)).plan(
        question.example.passages, recorded.plan.config
    )
    if plan.order != recorded.plan.order:
        raise RuntimeError("link_boost must not change the packing order")
    candidates = recorded.reweighted(plan.passage_weights)
    return lambda budget: recorded.kept(budget, candidates)


def links_cost(question: ScreenQuestion, repeats: int = 20) -> float:
    """Seconds that planning with links takes more than planning without them, for one question (median)."""
    config = question.recorded.plan.config
    timings = []
    for weighting in (RankWeighting(), RankWeighting(link_boost=1)):
        allocation = PassageAllocation(weighting=weighting)
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            allocation.plan(question.example.passages, config)
            runs.append(time.perf_counter() - started)
        timings.append(statistics.median(runs))
    return max(timings[0] - timings[1], 0.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = screen_parser("links", __doc__, seed=6)
    parser.add_argument("--boosts", type=float, nargs="*", default=[], help="other link_boost values to screen")
    parser.add_argument("--merge", nargs="+", help="report over these parts' .json records; runs nothing")
    args = parser.parse_args(argv)
    levers = ["no_links"] + [f"boost={boost:g}" for boost in args.boosts]
    if args.merge:
        parts = [json.loads(Path(path).read_text()) for path in args.merge]
        records = [record for part in parts for record in part["records"]]
        budgets = sorted({int(record["budget"]) for record in records})
        extra = {
            "parts": "; ".join(f"`{part['meta']['command']}`" for part in parts),
            "seconds": sum(part["meta"]["seconds"] for part in parts),
            "questions with a link": sum(part["meta"]["questions with a link"] for part in parts),
        }
        levers = [lever for lever in levers if any(record["method"] == lever for record in records)]
        write_screen("links", TITLE, argv, args.out, records, budgets, levers, extra, suite=args.suite)
        return 0
    model, tokenizer, started = screen_model(args)
    records: list[dict[str, Any]] = []
    model_seconds, link_seconds, linked = 0.0, 0.0, 0
    for question in screen_questions(args, model, tokenizer):
        model_seconds += question.recorded.seconds
        link_seconds += links_cost(question)
        linked += question.recorded.plan.passage_weights is not None
        variants: dict[str, Kept] = {"finch_rag": question.recorded.kept, "no_links": with_boost(question, 1.0)}
        variants |= {f"boost={boost:g}": with_boost(question, boost) for boost in args.boosts}
        records += budget_records(question.example.qid, args.budgets, question.truncation, question.masks, variants)
    extra = {
        "seconds": round(time.perf_counter() - started),
        "single-pass compression seconds per question": per_question(records, model_seconds),
        "link seconds per question (the lever's cost: finding the links while planning)": per_question(
            records, link_seconds, 6
        ),
        "questions with a link": linked,
    }
    write_screen("links", TITLE, argv, args.out, records, args.budgets, levers, extra, suite=args.suite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
