"""Lever screen: fuse each sentence's attention score with the retriever's similarity of that sentence.

Issue 13's "fused sentence scores" lever. `FinchRAG` already holds an embedder; here each sentence of the
packed context (the sentences `granularity="sentence"` selects) gets the prior
``exp(strength * (similarity - max similarity))``, multiplied onto its attention score before selection
(where `FinchRAG`'s passage priors already apply). ``strength = 0`` is `FinchRAG`'s default.

As in `benchmarks.retrieve_more`, each question is read once in a single pass (``chunk_size=None``) whose
question attention is recorded, and every (strength, budget) selects from those scores exactly as
``compress(chunk_size=None)`` would. Truncation at each budget is the reference. Questions: the ``hotpotqa``
suite's seeded sample, drawn with ``--seed`` (use a seed other than 0 to screen on questions the committed
runs did not use).

    python -m benchmarks.fusion --limit 30 --seed 1 --strengths 0 2 4 8
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from finch_rag.compression.selection import CandidateScores
from finch_rag.prompts import PromptParts
from finch_rag.retrieval import load_embedding_model

from .screen import Kept, budget_records, per_question, screen_model, screen_parser, screen_questions, write_screen
from .single_pass import RecordedPass


def sentence_texts(parts: PromptParts, sentence_ids: torch.Tensor) -> list[str]:
    """The text of each sentence of ``parts``' context (``sentence_ids[i]``: the sentence of token ``i``)."""
    texts = []
    for sentence in range(int(sentence_ids.max()) + 1):
        tokens = (sentence_ids == sentence).nonzero().flatten()
        if len(tokens) == 0:
            texts.append("")
            continue
        start, end = parts.token_offsets[int(tokens[0])][0], parts.token_offsets[int(tokens[-1])][1]
        texts.append(parts.context_text[start:end])
    return texts


def with_prior(candidates: CandidateScores, token_prior: torch.Tensor) -> CandidateScores:
    """``candidates`` with ``token_prior`` (``[n]``) multiplied onto their priors."""
    priors = [token_prior[positions] for positions in candidates.positions]
    if candidates.weights is not None:
        priors = [prior * weight for prior, weight in zip(priors, candidates.weights, strict=True)]
    return dataclasses.replace(candidates, weights=priors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = screen_parser("fusion", __doc__, seed=1)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 2.0, 4.0, 8.0])
    args = parser.parse_args(argv)
    model, tokenizer, started = screen_model(args)
    embedder = load_embedding_model()
    records: list[dict[str, Any]] = []
    embed_seconds = model_seconds = 0.0
    for question in screen_questions(args, model, tokenizer, embedder):
        example, recorded = question.example, question.recorded
        model_seconds += recorded.seconds
        parts = recorded.parts
        sentence_ids = parts.sentence_ids()
        tick = time.perf_counter()
        vectors = embedder.encode(
            [*sentence_texts(parts, sentence_ids), example.question],
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        similarity = (vectors[:-1] @ vectors[-1]).float().cpu()
        embed_seconds += time.perf_counter() - tick

        def fused(strength: float, recorded: RecordedPass = recorded, similarity: torch.Tensor = similarity) -> Kept:
            prior = torch.exp(strength * (similarity - similarity.max()))[recorded.parts.sentence_ids()]
            return lambda budget: recorded.kept(budget, with_prior(recorded.candidates, prior))

        variants = {("finch_rag" if s == 0 else f"fused s={s:g}"): fused(s) for s in args.strengths}
        records += budget_records(example.qid, args.budgets, question.truncation, question.masks, variants)
    extra = {
        "seconds": round(time.perf_counter() - started),
        "embedding seconds per question (the fusion's cost)": per_question(records, embed_seconds),
        "single-pass compression seconds per question": per_question(records, model_seconds),
    }
    levers = [f"fused s={s:g}" for s in args.strengths if s]
    model_line = "SmolLM2-135M-Instruct (embedded default); embedder all-MiniLM-L6-v2 (embedded)"
    write_screen(
        "fusion",
        "fused sentence scores",
        argv,
        args.out,
        records,
        args.budgets,
        levers,
        extra,
        model_line,
        suite=args.suite,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
