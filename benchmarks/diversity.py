"""Lever screen: spread a small budget over passages, so that each hop's passage gets a sentence.

A multi-hop answer needs one fact from each of several passages, but sentence selection ranks sentences
by attention alone and may spend a small budget on three sentences of the passage the question names.
Here whole sentences are taken greedily, best first, with each candidate's score multiplied by
``decay ** (sentences already taken from its passage)`` (``decay = 1`` is `FinchRAG`'s default: plain
best-first, the last sentence admitted cut to fit). The scores are the default's: the shared vote,
sentence pooling and priors, from one recorded single pass per question (as in `benchmarks.fusion`), so
the lever costs no model time.

    python -m benchmarks.diversity --limit 30 --seed 5 --decays 1 0.5 0.25
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from finch_rag.compression.selection import SharedSelection

from .screen import Kept, budget_records, per_question, screen_model, screen_parser, screen_questions, write_screen
from .single_pass import RecordedPass


def sentence_scores(recorded: RecordedPass) -> torch.Tensor:
    """``[n]``: each context token's selection score under the default policy (its sentence's pooled score)."""
    candidates, policy = recorded.candidates, recorded.policy
    if not isinstance(policy, SharedSelection):
        raise TypeError(f"the default's shared vote is needed, got {type(policy).__name__}")
    spans = None if candidates.spans is None else candidates.spans[0][:, 0]
    weights = None if candidates.weights is None else candidates.weights[0][:, 0]
    pooled = policy.adjust(policy.shared(candidates), spans, weights)[0]
    scores = torch.empty(recorded.context_length)
    scores[candidates.positions[0][0, 0]] = pooled.float()
    return scores


def spread_kept(recorded: RecordedPass, budget: int, decay: float) -> torch.Tensor:
    """``[n]`` 0/1: whole sentences best first, each scored ``score * decay ** taken_from_its_passage``."""
    scores = sentence_scores(recorded)
    sentence_ids = recorded.parts.sentence_ids()
    starts = torch.tensor(recorded.parts.passage_token_starts)
    passage_of_token = torch.bucketize(torch.arange(recorded.context_length), starts, right=True) - 1
    sentences = {}
    for sentence in range(int(sentence_ids.max()) + 1):
        tokens = (sentence_ids == sentence).nonzero().flatten()
        if len(tokens):
            sentences[sentence] = (float(scores[tokens].mean()), int(passage_of_token[tokens[0]]), tokens)
    kept = torch.zeros(recorded.context_length)
    taken: dict[int, int] = {}
    room = min(budget, recorded.context_length)
    while room > 0 and sentences:
        best = max(sentences, key=lambda s: sentences[s][0] * decay ** taken.get(sentences[s][1], 0))
        _, passage, tokens = sentences.pop(best)
        kept[tokens[:room]] = 1.0  # only the last sentence admitted is cut
        room -= min(room, len(tokens))
        taken[passage] = taken.get(passage, 0) + 1
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    parser = screen_parser("diversity", __doc__, seed=5)
    parser.add_argument("--decays", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    args = parser.parse_args(argv)
    model, tokenizer, started = screen_model(args)
    records: list[dict[str, Any]] = []
    model_seconds = 0.0
    for question in screen_questions(args, model, tokenizer):
        recorded = question.recorded
        model_seconds += recorded.seconds

        def spread(decay: float, recorded: RecordedPass = recorded) -> Kept:
            return lambda budget: spread_kept(recorded, budget, decay)

        variants: dict[str, Kept] = {"finch_rag": recorded.kept}
        variants |= {f"spread decay={decay:g}": spread(decay) for decay in args.decays}
        records += budget_records(question.example.qid, args.budgets, question.truncation, question.masks, variants)
    extra = {
        "seconds": round(time.perf_counter() - started),
        "single-pass compression seconds per question": per_question(records, model_seconds),
    }
    levers = [f"spread decay={decay:g}" for decay in args.decays if decay != 1]
    write_screen(
        "diversity",
        "spreading the budget over passages",
        argv,
        args.out,
        records,
        args.budgets,
        levers,
        extra,
        suite=args.suite,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
