"""Lever screen: second-hop re-query, scoring the context again with the best sentences added to the question.

Issue 13's "second-hop re-query" lever. A multi-hop question names its first entity but not the bridge
entity that leads to the second fact, so the question's attention finds the first hop and misses the
second. Here a first pass picks the sentences it would keep at ``--lead-tokens``; their text is put before
the question, and a second pass scores the context again with that longer question. Its attention is mixed
with the first pass's, ``(1 - mix) * first + mix * second``, before the same selection; ``mix = 0`` is
`FinchRAG`'s default.

As in `benchmarks.fusion`, each pass reads the question in a single pass (``chunk_size=None``) whose question
attention is recorded, and every (mix, budget) selects from those scores exactly as
``compress(chunk_size=None)`` would; truncation at each budget is the reference. This screen runs the second
pass as a full prefill; the lever in the library would only need the longer question's rows over the cached
context (a few percent of the prefill), which ``second-pass seconds`` here overstates.

    python -m benchmarks.requery --limit 30 --seed 3 --mixes 0 0.5 1
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from finch_rag.compression.selection import CandidateScores

from .fusion import sentence_texts
from .screen import (
    SINGLE_PASS,
    Kept,
    budget_records,
    per_question,
    screen_model,
    screen_parser,
    screen_questions,
    write_screen,
)
from .single_pass import RecordedPass, record_pass


def lead_sentences(recorded: RecordedPass, lead_tokens: int) -> list[str]:
    """The text of the sentences the first pass keeps at ``lead_tokens``, in context order."""
    sentence_ids = recorded.parts.sentence_ids()
    kept = recorded.kept(lead_tokens).bool()
    chosen = sorted({int(s) for s in sentence_ids[kept].tolist()})
    texts = sentence_texts(recorded.parts, sentence_ids)
    return [texts[s].strip() for s in chosen if texts[s].strip()]


def mixed(first: CandidateScores, second: CandidateScores, mix: float) -> CandidateScores:
    """``first`` with its attention scores mixed with ``second``'s (same candidates, one single pass each)."""
    for a, b in zip(first.positions, second.positions, strict=True):
        if not torch.equal(a, b):
            raise ValueError("the two passes have different candidates")
    scores = [(1 - mix) * a + mix * b for a, b in zip(first.layer_scores, second.layer_scores, strict=True)]
    return dataclasses.replace(first, layer_scores=scores)


def main(argv: Sequence[str] | None = None) -> int:
    parser = screen_parser("requery", __doc__, seed=3)
    parser.add_argument("--mixes", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--lead-tokens", type=int, default=64, help="first-pass budget whose sentences are added")
    args = parser.parse_args(argv)
    model, tokenizer, started = screen_model(args)
    records: list[dict[str, Any]] = []
    first_seconds = second_seconds = 0.0
    for question in screen_questions(args, model, tokenizer):
        example, first = question.example, question.recorded
        lead = lead_sentences(first, args.lead_tokens)
        second = record_pass(model, tokenizer, example.passages, " ".join([*lead, example.question]), SINGLE_PASS)
        first_seconds += first.seconds
        second_seconds += second.seconds

        def requeried(mix: float, first: RecordedPass = first, second: RecordedPass = second) -> Kept:
            return lambda budget: first.kept(budget, mixed(first.candidates, second.candidates, mix))

        variants = {("finch_rag" if mix == 0 else f"requery mix={mix:g}"): requeried(mix) for mix in args.mixes}
        records += budget_records(example.qid, args.budgets, question.truncation, question.masks, variants)
    extra = {
        "seconds": round(time.perf_counter() - started),
        "first-pass seconds per question": per_question(records, first_seconds),
        "second-pass seconds per question (a full prefill here)": per_question(records, second_seconds),
    }
    levers = [f"requery mix={mix:g}" for mix in args.mixes if mix]
    write_screen(
        "requery", "second-hop re-query", argv, args.out, records, args.budgets, levers, extra, suite=args.suite
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
