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

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from finch_rag import FinchConfig, load_model
from finch_rag.compression.selection import CandidateScores
from finch_rag.prompts import PromptParts
from finch_rag.retrieval import load_embedding_model

from .common import RESULTS_DIR, data_dir, group_means, machine_description, markdown_table, write_json
from .qa import _evidence_metrics, load_hotpotqa, paired_comparison
from .single_pass import Truncation, record_pass


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
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fusion", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 2.0, 4.0, 8.0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS_DIR / "fusion"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer = load_model()
    embedder = load_embedding_model()
    config = FinchConfig(chunk_size=None, progress=False)
    records: list[dict[str, Any]] = []
    embed_seconds = model_seconds = 0.0
    for example in load_hotpotqa(data_dir(args.data), args.limit, args.seed, embedder=embedder):
        recorded = record_pass(model, tokenizer, example.passages, example.question, config)
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
        masks = recorded.evidence_masks(example.evidence)
        truncation = Truncation.of(tokenizer, example.passages, example.question, example.evidence)
        if not masks:
            continue
        for budget in args.budgets:
            records.append(
                {"qid": example.qid, "method": "truncation", "budget": str(budget)}
                | _evidence_metrics(truncation.kept(budget), None, truncation.evidence)
            )
            for strength in args.strengths:
                prior = torch.exp(strength * (similarity - similarity.max()))[sentence_ids]
                kept = recorded.kept(budget, with_prior(recorded.candidates, prior))
                name = "finch_rag" if strength == 0 else f"fused s={strength:g}"
                records.append(
                    {"qid": example.qid, "method": name, "budget": str(budget)} | _evidence_metrics(kept, None, masks)
                )
    questions = len({r["qid"] for r in records})
    meta = {
        "command": "python -m benchmarks.fusion " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_description(),
        "model": "SmolLM2-135M-Instruct (embedded default); embedder all-MiniLM-L6-v2 (embedded)",
        "questions": questions,
        "seconds": round(time.perf_counter() - started),
        "embedding seconds per question (the fusion's cost)": round(embed_seconds / max(questions, 1), 3),
        "single-pass compression seconds per question": round(model_seconds / max(questions, 1), 3),
    }
    summary = group_means(records, ["budget", "method"], ("retention", "all_hops"))
    lines = ["# Lever screen: fused sentence scores (HotpotQA, single-pass selection)", ""]
    lines += [f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}" for key, value in meta.items()]
    lines += ["", markdown_table(summary, ["budget", "method", "n", "retention", "all_hops"]), ""]
    budgets = [str(b) for b in args.budgets]
    for strength in args.strengths:
        if strength:
            lines += paired_comparison(records, budgets, f"fused s={strength:g}", "finch_rag")
    lines += paired_comparison(records, budgets, "finch_rag", "truncation")
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"meta": meta, "summary": summary, "records": records})
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
