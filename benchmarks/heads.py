"""Lever screen: retrieval heads, found once per model with a synthetic probe, cast the selection's vote.

Issue 13's "retrieval heads" lever. In a small model most heads' question attention is noisy; a few heads
find and copy facts from the context (Wu et al., "Retrieval Head Mechanistically Explains Long-Context
Factuality", 2024, https://arxiv.org/abs/2404.15574). The probe hides a fact ("The vault code of Mira
Olsen is 4821.") among generated filler sentences, asks for it, and scores every query head by how much of
its question attention lands on the answer's tokens (which the question never names, so lexical echo of
the question does not count), as a lift over uniform attention. The screen then lets only the top
``k`` heads vote: each chosen head's scores are normalised to sum 1 and averaged, then sentence pooling
and priors apply as in `FinchRAG`'s default (``k = 0``: the default, the upper half of the layers, all heads).

As in `benchmarks.fusion`, each question is read once in a single pass (``chunk_size=None``) and every
(k, budget) selects from its recorded scores, so the lever costs no model time here; in the library the
probe would run once per model (a few seconds) and be cached.

    python -m benchmarks.heads --limit 30 --seed 4 --top-heads 0 8 16 32
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from finch_rag import FinchConfig, Passage
from finch_rag.compression.selection import CandidateScores, SharedSelection

from .screen import Kept, budget_records, per_question, screen_model, screen_parser, screen_questions, write_screen
from .single_pass import RecordedPass, record_pass

FIRST = ["Mira", "Tomas", "Edda", "Jonas", "Lena", "Oskar", "Ines", "Pavel", "Sigrid", "Anton"]
LAST = ["Olsen", "Varga", "Holm", "Brandt", "Keller", "Novak", "Lind", "Moreau", "Sato", "Ruiz"]
ATTRIBUTES = ["vault code", "locker number", "badge number", "room number", "pin"]
PLACES = ["the harbour", "the old mill", "the northern cape", "the market square", "the river bank"]
THINGS = ["fishing boats", "red tiles", "stone bridges", "apple trees", "wooden fences", "church bells"]
VERBS = ["were repaired", "were counted", "were painted", "were sold", "were moved", "were photographed"]


def probe_example(generator: random.Random, sentences: int = 24) -> tuple[str, str, str]:
    """A haystack of filler sentences with one fact, the question for it, and the fact's answer."""
    name = f"{generator.choice(FIRST)} {generator.choice(LAST)}"
    attribute = generator.choice(ATTRIBUTES)
    answer = str(generator.randint(1000, 9999))
    filler = [
        f"In {generator.randint(1850, 1990)} the {generator.choice(THINGS)} near {generator.choice(PLACES)} "
        f"{generator.choice(VERBS)}."
        for _ in range(sentences)
    ]
    filler.insert(generator.randint(0, sentences), f"The {attribute} of {name} is {answer}.")
    return " ".join(filler), f"What is the {attribute} of {name}?", answer


def probe_heads(model: Any, tokenizer: Any, probes: int = 8, seed: int = 0) -> torch.Tensor:
    """``[layers, query heads]``: each head's mean lift of question attention on the hidden answer's tokens."""
    generator = random.Random(seed)
    config = FinchConfig(chunk_size=None, progress=False)
    lifts = []
    for _ in range(probes):
        haystack, question, answer = probe_example(generator)
        recorded = record_pass(model, tokenizer, [Passage(haystack)], question, config)
        start = haystack.index(" is " + answer + ".") + len(" is ")
        answer_tokens = recorded.parts.span_tokens([(0, start, start + len(answer))]).bool()
        per_layer = []
        for scores in recorded.candidates.layer_scores:  # [1, kvh, g, n]: query head kvh * g + i
            heads = scores[0].flatten(0, 1)
            share = heads[:, answer_tokens].sum(-1) / heads.sum(-1).clamp(min=1e-12)
            per_layer.append(share / (answer_tokens.sum() / answer_tokens.numel()))
        lifts.append(torch.stack(per_layer))
    return torch.stack(lifts).mean(dim=0)


@dataclass(frozen=True)
class HeadVote(SharedSelection):
    """`SharedSelection` whose vote is cast by ``heads`` (``(layer, query head)`` pairs) only."""

    heads: tuple[tuple[int, int], ...] = ()

    def shared(self, candidates: CandidateScores) -> torch.Tensor:
        votes = []
        for layer, head in self.heads:
            scores = candidates.layer_scores[layer].flatten(1, 2)[:, head]  # [1, n]
            votes.append(scores / scores.sum(dim=-1, keepdim=True).clamp(min=1e-12))
        return torch.stack(votes).mean(dim=0)


def top_heads(lift: torch.Tensor, k: int) -> tuple[tuple[int, int], ...]:
    flat = lift.flatten().topk(k).indices
    return tuple((int(i) // lift.shape[1], int(i) % lift.shape[1]) for i in flat)


def main(argv: Sequence[str] | None = None) -> int:
    parser = screen_parser("heads", __doc__, seed=4)
    parser.add_argument("--top-heads", type=int, nargs="+", default=[0, 8, 16, 32])
    parser.add_argument("--probes", type=int, default=8)
    args = parser.parse_args(argv)
    model, tokenizer, started = screen_model(args)
    tick = time.perf_counter()
    lift = probe_heads(model, tokenizer, args.probes)
    probe_seconds = time.perf_counter() - tick
    records: list[dict[str, Any]] = []
    model_seconds = 0.0
    for question in screen_questions(args, model, tokenizer):
        recorded = question.recorded
        model_seconds += recorded.seconds

        def voted_by(k: int, recorded: RecordedPass = recorded) -> Kept:
            policy = HeadVote(smoothing=recorded.policy.smoothing, heads=top_heads(lift, k)) if k else None
            return lambda budget: recorded.kept(budget, policy=policy)

        variants = {("finch_rag" if k == 0 else f"top {k} heads"): voted_by(k) for k in args.top_heads}
        records += budget_records(question.example.qid, args.budgets, question.truncation, question.masks, variants)
    best = top_heads(lift, 16)
    extra = {
        "seconds": round(time.perf_counter() - started),
        "probe seconds (once per model)": round(probe_seconds, 1),
        "single-pass compression seconds per question": per_question(records, model_seconds),
        "top heads (layer.head: lift)": ", ".join(f"{layer}.{head}: {lift[layer, head]:.1f}" for layer, head in best),
    }
    levers = [f"top {k} heads" for k in args.top_heads if k]
    write_screen(
        "heads",
        "retrieval heads",
        argv,
        args.out,
        records,
        args.budgets,
        levers,
        extra,
        extra_json={"lift": lift.tolist()},
        suite=args.suite,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
