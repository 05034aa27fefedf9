"""`benchmarks.truncation_audit`: what top-k truncation keeps of each hop, counted on the ranked prompt."""

from __future__ import annotations

from benchmarks.datasets import Example
from benchmarks.truncation_audit import _groups, audit_question
from finch_rag import Passage


def _example(first: str, second: str, evidence: list[tuple[int, int, int]]) -> Example:
    passages = [Passage(first, "A"), Passage(second, "B"), Passage("filler words " * 40, "C")]
    return Example("hotpotqa", "q", "what?", passages, ["x"], evidence, info={"type": "bridge", "gold_ranks": [1, 2]})


def test_truncation_keeps_both_hops_only_when_the_budget_reaches_the_second(tiny_tokenizer) -> None:
    first, second = "alpha beta gamma.", "delta epsilon."
    example = _example(first, second, [(0, 0, len(first)), (1, 0, len(second))])
    record = audit_question(tiny_tokenizer, example, [4, 2000])
    assert record["all_hops_4"] == 0.0  # the second passage lies past 4 tokens
    assert record["all_hops_2000"] == 1.0
    assert record["first_passage_tokens"] > 0 and record["context_tokens"] > record["first_passage_tokens"]


def test_groups_split_by_type_and_gold_ranks() -> None:
    records = [
        {"type": "bridge", "gold_ranks": [1, 2], "first_passage_tokens": 10, "all_hops_8": 1.0},
        {"type": "comparison", "gold_ranks": [1, 3], "first_passage_tokens": 30, "all_hops_8": 0.0},
    ]
    groups = {row["group"]: row for row in _groups(records, [8])}
    assert groups["all questions"]["B=8"] == 0.5
    assert groups["golds ranked 1 and 2"]["n"] == 1 and groups["golds ranked 1 and 2"]["B=8"] == 1.0
    assert groups["comparison"]["B=8"] == 0.0
