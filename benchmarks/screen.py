"""What the lever screens (`fusion`, `requery`, `heads`, `diversity`) share: options, records and report.

Each screen reads HotpotQA questions (``--suite rag-squad``: SQuAD's corpus) in recorded single passes
(`benchmarks.single_pass`) and compares, per budget, what its variants keep against `FinchRAG`'s default
(``finch_rag``) and top-k truncation.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from finch_rag import FinchConfig, load_model
from finch_rag.retrieval import load_embedding_model

from .common import RESULTS_DIR, command_line, data_dir, machine_description, markdown_table, meta_lines, write_json
from .datasets import Example, load_hotpotqa, load_suite
from .single_pass import RecordedPass, Truncation, record_pass
from .stats import evidence_metrics, group_means, paired_comparison

MODEL = "SmolLM2-135M-Instruct (embedded default)"
Kept = Callable[[int], torch.Tensor]
"""What a variant keeps at budget ``B``: a ``[n]`` 0/1 mask."""


def screen_parser(name: str, doc: str, seed: int) -> argparse.ArgumentParser:
    """The options every screen takes; the screen adds its own."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc.split("\n\n")[0])
    parser.add_argument("--data")
    parser.add_argument("--suite", choices=["hotpotqa", "rag-squad"], default="hotpotqa")
    parser.add_argument("--top-k", type=int, default=8, help="rag-squad: passages retrieved per question")
    parser.add_argument("--limit", type=int, default=30)
    parser.add_argument("--start", type=int, default=0, help="skip the first START of the --limit questions")
    parser.add_argument("--seed", type=int, default=seed, help="use a seed the committed runs did not use")
    parser.add_argument("--budgets", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS_DIR / name))
    return parser


def screen_model(args: argparse.Namespace) -> tuple[Any, Any, float]:
    """The embedded model and tokenizer on ``--threads`` threads, and when the screen started (for its seconds)."""
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer = load_model()
    return model, tokenizer, started


def per_question(records: Sequence[Mapping[str, Any]], seconds: float, digits: int = 3) -> float:
    """``seconds`` spread over the questions of ``records``, rounded: a screen's cost per question."""
    return round(seconds / max(len({r["qid"] for r in records}), 1), digits)


SINGLE_PASS = FinchConfig(chunk_size=None, progress=False)
"""The config every screen records its passes with: `FinchRAG`'s default, read in one pass."""


@dataclass
class ScreenQuestion:
    """One question of a screen: its recorded single pass, its evidence masks on it, and truncation's view."""

    example: Example
    recorded: RecordedPass
    masks: list[torch.Tensor]
    truncation: Truncation


def screen_questions(
    args: argparse.Namespace, model: Any, tokenizer: Any, embedder: Any = None
) -> Iterator[ScreenQuestion]:
    """``args``' seeded sample, each question read in one recorded pass; those without evidence left out."""
    if args.suite == "hotpotqa":
        embedder = embedder or load_embedding_model()
        examples = load_hotpotqa(data_dir(args.data), args.limit, args.seed, embedder=embedder)
    else:
        examples = load_suite(args.suite, args.data, args.limit, args.seed, top_k=args.top_k)
    for example in examples[args.start :]:
        recorded = record_pass(model, tokenizer, example.passages, example.question, SINGLE_PASS)
        masks = recorded.evidence_masks(example.evidence)
        if masks:
            truncation = Truncation.of(tokenizer, example.passages, example.question, example.evidence)
            yield ScreenQuestion(example, recorded, masks, truncation)


def budget_records(
    qid: str,
    budgets: Sequence[int],
    truncation: Truncation,
    masks: list[torch.Tensor],
    variants: Mapping[str, Kept],
) -> list[dict[str, Any]]:
    """Per budget: truncation's record, then one per variant (``name -> kept mask at B``), in order."""
    records = []
    for budget in budgets:
        records.append(
            {"qid": qid, "method": "truncation", "budget": str(budget)}
            | evidence_metrics(truncation.kept(budget), None, truncation.evidence)
        )
        for name, kept in variants.items():
            records.append(
                {"qid": qid, "method": name, "budget": str(budget)} | evidence_metrics(kept(budget), None, masks)
            )
    return records


def write_screen(
    name: str,
    title: str,
    argv: Sequence[str] | None,
    out: str | Path,
    records: Sequence[Mapping[str, Any]],
    budgets: Sequence[int],
    levers: Sequence[str],
    extra: Mapping[str, Any],
    model: str = MODEL,
    extra_json: Mapping[str, Any] | None = None,
    suite: str = "hotpotqa",
) -> None:
    """Write ``out``.md/.json: means per (budget, method), each lever against ``finch_rag``, that against truncation."""
    meta = {
        "command": command_line(f"python -m benchmarks.{name}", argv),
        "machine": machine_description(),
        "model": model,
        "questions": len({r["qid"] for r in records}),
        **extra,
    }
    summary = group_means(records, ["budget", "method"], ("retention", "all_hops"))
    suite_name = {"hotpotqa": "HotpotQA", "rag-squad": "SQuAD corpus"}[suite]
    lines = [f"# Lever screen: {title} ({suite_name}, single-pass selection)", ""]
    lines += meta_lines(meta)
    lines += ["", markdown_table(summary, ["budget", "method", "n", "retention", "all_hops"]), ""]
    labels = [str(b) for b in budgets]
    for lever in levers:
        lines += paired_comparison(records, labels, lever, "finch_rag")
    lines += paired_comparison(records, labels, "finch_rag", "truncation")
    out = Path(out)
    write_json(
        out.with_suffix(".json"), {"meta": meta, "summary": summary, "records": list(records), **(extra_json or {})}
    )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
