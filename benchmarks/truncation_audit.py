"""Why top-k truncation's all-hops level on HotpotQA depends on the sample: an audit that needs no LLM pass.

Top-k truncation keeps the first ``B`` context tokens of the ranked prompt (`benchmarks.qa`). On HotpotQA it
keeps both hops only when both gold paragraphs rank first and second and the first one is short, so its level
at a small ``B`` is a property of the sample's ranking and paragraph lengths, not of the method compared with
it. This audit counts, for every question of the data file (or a slice), what truncation keeps at each budget,
by question type, by the gold paragraphs' ranks and by the first paragraph's length, and how much the level
moves between 100-question samples of the same file. It uses the tokenizer and the retriever only.

    python -m benchmarks.truncation_audit --budgets 128 256 512 --out docs/results
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from finch_rag.prompts import build_prompt

from .common import command_line, data_dir, machine_description, markdown_table, meta_lines, write_json
from .datasets import load_hotpotqa
from .stats import evidence_metrics

PROG = "python -m benchmarks.truncation_audit"


def audit_question(tokenizer: Any, example: Any, budgets: Sequence[int]) -> dict[str, Any]:
    """What truncation keeps of one question's evidence at each budget, and the features that decide it."""
    parts = build_prompt(tokenizer, example.passages, example.question)
    n = len(parts.context_ids)
    masks = [parts.span_tokens([span]) for span in example.evidence]
    first_length = int(parts.passage_tokens(0).sum()) if example.passages else 0
    record: dict[str, Any] = {
        "qid": example.qid,
        "type": example.info.get("type"),
        "gold_ranks": example.info.get("gold_ranks"),
        "context_tokens": n,
        "first_passage_tokens": first_length,
    }
    for budget in budgets:
        kept = (torch.arange(n) < budget).float()
        record[f"all_hops_{budget}"] = evidence_metrics(kept, None, masks)["all_hops"]
    return record


def _level(records: Sequence[Mapping[str, Any]], budget: int) -> float:
    return statistics.fmean(r[f"all_hops_{budget}"] for r in records) if records else float("nan")


def _groups(records: Sequence[Mapping[str, Any]], budgets: Sequence[int]) -> list[dict[str, Any]]:
    """Truncation's all-hops by the features that decide it."""
    top_two = [r for r in records if r["gold_ranks"] == [1, 2]]
    median_first = statistics.median(r["first_passage_tokens"] for r in records)
    groups = {
        "all questions": records,
        "bridge": [r for r in records if r["type"] == "bridge"],
        "comparison": [r for r in records if r["type"] == "comparison"],
        "golds ranked 1 and 2": top_two,
        "golds not both in the top 2": [r for r in records if r["gold_ranks"] != [1, 2]],
        f"golds 1 and 2, first paragraph <= {median_first:g} tokens": [
            r for r in top_two if r["first_passage_tokens"] <= median_first
        ],
        f"golds 1 and 2, first paragraph > {median_first:g} tokens": [
            r for r in top_two if r["first_passage_tokens"] > median_first
        ],
    }
    return [
        {"group": name, "n": len(rows), "share": len(rows) / len(records)}
        | {f"B={budget}": _level(rows, budget) for budget in budgets}
        for name, rows in groups.items()
    ]


def _sample_spread(records: Sequence[Mapping[str, Any]], budgets: Sequence[int], size: int = 100) -> dict[str, Any]:
    """Truncation's level over 1,000 random ``size``-question samples of ``records``: 2.5th and 97.5th percentiles."""
    generator = random.Random(0)
    spread = {}
    for budget in budgets:
        levels = sorted(_level(generator.sample(list(records), min(size, len(records))), budget) for _ in range(1000))
        spread[f"B={budget}"] = f"{levels[25]:.2f} - {levels[974]:.2f}"
    return spread


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the data folder (default ../shared/data)")
    parser.add_argument("--limit", type=int, help="questions of the seeded sample (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--out", help="write OUT/hotpotqa_truncation_audit.{json,md} (else print only)")
    args = parser.parse_args(argv)
    from finch_rag import load_model

    _, tokenizer = load_model()
    examples = load_hotpotqa(data_dir(args.data), args.limit, args.seed)
    records = [audit_question(tokenizer, example, args.budgets) for example in examples]
    groups = _groups(records, args.budgets)
    spread = _sample_spread(records, args.budgets)
    meta = {"command": command_line(PROG, argv), "machine": machine_description(), "questions": len(records)}
    columns = ["group", "n", "share", *(f"B={budget}" for budget in args.budgets)]
    lines = [
        "# Top-k truncation's all-hops on HotpotQA, by what decides it",
        "",
        *meta_lines(meta),
        "",
        markdown_table(groups, columns),
        "",
        "Truncation's all-hops over 1,000 random 100-question samples of these questions (95% of samples fall in):",
        "",
        markdown_table([{"samples of 100": "all-hops", **spread}], ["samples of 100", *spread]),
    ]
    if args.out:
        write_json(f"{args.out}/hotpotqa_truncation_audit.json", {"meta": meta, "groups": groups, "records": records})
        with open(f"{args.out}/hotpotqa_truncation_audit.md", "w") as report:
            report.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
