"""Automatic budget (``target_tokens="auto"``) against fixed budgets on the same HotpotQA questions.

For each question (the seeded sample of the ``hotpotqa`` suite: 10 paragraphs ranked by MiniLM, `FinchRAG`'s
default allocation, i.e. best passage last and whole sentences), the question's attention over the whole
context is captured once in a single pass (``chunk_size=None``, `RecordingSelection`). Every budget rule then
selects from those same scores, exactly as ``compress(chunk_size=None)`` would: fixed ``B`` in ``--budgets``,
and ``AttentionMassSelection`` (what ``target_tokens="auto"`` runs) at each share of ``--masses`` with the cap
``--cap``. Top-k truncation at each fixed budget is given for reference.

Metrics per question: ``B`` kept, ``retention`` (fraction of the supporting sentences' tokens kept) and
``all_hops`` (every supporting sentence keeps at least half of its tokens).

    python -m benchmarks.auto_budget --limit 60 --masses 0.5 0.7 0.8 0.9 0.95 --budgets 128 256 512
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from finch_rag import FinchConfig, load_model
from finch_rag.compression.auto_budget import AttentionMassSelection

from .common import RESULTS_DIR, command_line, data_dir, machine_description, markdown_table, meta_lines, write_json
from .datasets import load_hotpotqa
from .single_pass import Truncation, record_pass
from .stats import evidence_metrics, mean


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.auto_budget", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--masses", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95])
    parser.add_argument("--cap", type=int, default=1024, help="max_target_tokens of the automatic budget")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS_DIR / "auto_budget"))
    return parser


def coverage(kept: torch.Tensor, evidence: Sequence[torch.Tensor]) -> dict[str, float]:
    """``B`` kept, evidence retention and all-hops coverage of the ``[n]`` mask ``kept``."""
    return {"B": float(kept.sum()), **evidence_metrics(kept.float(), None, evidence)}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model()
    base = FinchConfig(target_tokens=args.cap, chunk_size=None, progress=False)
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    for example in load_hotpotqa(data_dir(args.data), args.limit, args.seed):
        recorded = record_pass(model, tokenizer, example.passages, example.question, base)
        n, evidence = recorded.context_length, recorded.evidence_masks(example.evidence)
        if not evidence:
            continue
        # Truncation: the ranked passages in rank order, first B tokens (its own prompt, same passages).
        truncation = Truncation.of(tokenizer, example.passages, example.question, example.evidence)
        rows = []
        for budget in args.budgets:
            rows.append({"method": f"fixed B={budget}", **coverage(recorded.kept(budget).bool(), evidence)})
            kept = truncation.kept(budget).bool()
            rows.append({"method": f"truncation B={budget}", **coverage(kept, truncation.evidence)})
        for mass in args.masses:
            policy = AttentionMassSelection(recorded.policy, mass)
            kept = recorded.kept(min(args.cap, n - 1), policy=policy).bool()
            rows.append({"method": f"auto mass={mass}", **coverage(kept, evidence)})
        for row in rows:
            records.append({"qid": example.qid, "n": n, **row})
        print(f"{len(records) // len(rows)} questions, {time.perf_counter() - started:.0f} s", flush=True)
    summary = []
    for method in dict.fromkeys(r["method"] for r in records):
        items = [r for r in records if r["method"] == method]
        budgets = sorted(r["B"] for r in items)
        summary.append(
            {
                "method": method,
                "questions": len(items),
                "mean B": mean(budgets),
                "B p10-p90": f"{budgets[len(budgets) // 10]:.0f}-{budgets[(9 * len(budgets)) // 10]:.0f}",
                "retention": mean(r["retention"] for r in items),
                "all_hops": mean(r["all_hops"] for r in items),
                "all_hops per 100 B": 100 * mean(r["all_hops"] for r in items) / max(mean(budgets), 1),
            }
        )
    meta = {
        "command": command_line("python -m benchmarks.auto_budget", argv),
        "machine": machine_description(),
        "model": "SmolLM2-135M-Instruct (embedded default)",
        "seconds": round(time.perf_counter() - started),
        "mean context tokens": mean(r["n"] for r in records),
    }
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"meta": meta, "summary": summary, "records": records})
    lines = ["# Automatic budget against fixed budgets (HotpotQA, single-pass selection)", ""]
    lines += meta_lines(meta)
    columns = ["method", "questions", "mean B", "B p10-p90", "retention", "all_hops", "all_hops per 100 B"]
    lines += ["", markdown_table(summary, columns), ""]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
