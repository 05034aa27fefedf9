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
from finch_rag.retrieval import load_embedding_model

from .common import RESULTS_DIR, data_dir, group_means, machine_description, markdown_table, write_json
from .fusion import sentence_texts
from .qa import _evidence_metrics, load_hotpotqa, paired_comparison
from .single_pass import RecordedPass, Truncation, record_pass


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
    parser = argparse.ArgumentParser(prog="python -m benchmarks.requery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--mixes", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--lead-tokens", type=int, default=64, help="first-pass budget whose sentences are added")
    parser.add_argument("--budgets", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS_DIR / "requery"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer = load_model()
    config = FinchConfig(chunk_size=None, progress=False)
    records: list[dict[str, Any]] = []
    first_seconds = second_seconds = 0.0
    examples = load_hotpotqa(data_dir(args.data), args.limit, args.seed, embedder=load_embedding_model())
    for example in examples:
        first = record_pass(model, tokenizer, example.passages, example.question, config)
        lead = lead_sentences(first, args.lead_tokens)
        second = record_pass(model, tokenizer, example.passages, " ".join([*lead, example.question]), config)
        first_seconds += first.seconds
        second_seconds += second.seconds
        masks = first.evidence_masks(example.evidence)
        truncation = Truncation.of(tokenizer, example.passages, example.question, example.evidence)
        if not masks:
            continue
        for budget in args.budgets:
            records.append(
                {"qid": example.qid, "method": "truncation", "budget": str(budget)}
                | _evidence_metrics(truncation.kept(budget), None, truncation.evidence)
            )
            for mix in args.mixes:
                kept = first.kept(budget, mixed(first.candidates, second.candidates, mix))
                name = "finch_rag" if mix == 0 else f"requery mix={mix:g}"
                records.append(
                    {"qid": example.qid, "method": name, "budget": str(budget)} | _evidence_metrics(kept, None, masks)
                )
    questions = len({r["qid"] for r in records})
    meta = {
        "command": "python -m benchmarks.requery " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_description(),
        "model": "SmolLM2-135M-Instruct (embedded default)",
        "questions": questions,
        "seconds": round(time.perf_counter() - started),
        "first-pass seconds per question": round(first_seconds / max(questions, 1), 3),
        "second-pass seconds per question (a full prefill here)": round(second_seconds / max(questions, 1), 3),
    }
    summary = group_means(records, ["budget", "method"], ("retention", "all_hops"))
    lines = ["# Lever screen: second-hop re-query (HotpotQA, single-pass selection)", ""]
    lines += [f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}" for key, value in meta.items()]
    lines += ["", markdown_table(summary, ["budget", "method", "n", "retention", "all_hops"]), ""]
    budgets = [str(b) for b in args.budgets]
    for mix in args.mixes:
        if mix:
            lines += paired_comparison(records, budgets, f"requery mix={mix:g}", "finch_rag")
    lines += paired_comparison(records, budgets, "finch_rag", "truncation")
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"meta": meta, "summary": summary, "records": records})
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
