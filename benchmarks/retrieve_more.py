"""The "retrieve more" curve: quality at a fixed budget as the number of retrieved passages grows.

finch-rag's promise is "retrieve more, compress to the budget" in place of "keep the passages that fit". This
fixes ``B`` (``--budgets``) and varies how many passages retrieval hands over (``--top-k``), for top-k
truncation and for `FinchRAG`'s default (the ``finch_rag`` preset):

- ``hotpotqa``: each question's 10 paragraphs ranked by all-MiniLM-L6-v2, cut to the top ``k``;
- ``rag-squad``: the top ``k`` of all 1,023 SQuAD paragraphs (one retrieval at the largest ``k``, cut).

Each (question, k) is read once: `FinchRAG`'s default allocation (best passage last, whole sentences, and
sentence fusion when the k passages are pieces of one document, e.g. SQuAD paragraphs of one article) in a
single pass (``chunk_size=None``) whose question attention is recorded, and every budget selects from those
scores exactly as ``compress(chunk_size=None)`` at that budget would (one pass instead of one per budget: the
curve costs a third). Truncation keeps the first ``B`` tokens of the ranked passages, and needs no model.

Evidence (supporting sentences; answer occurrences in the gold paragraph) that the top ``k`` does not reach
counts as lost: its tokens count as not kept in ``retention``, and the question fails ``all_hops``. So a curve
rises with ``k`` while retrieval recall grows, and falls when the budget cannot hold what was retrieved.

    python -m benchmarks.retrieve_more hotpotqa --limit 30      # k = 2 4 6 8 10, as in docs/results
    python -m benchmarks.retrieve_more rag-squad --limit 12     # k = 4 8 16 32 (embeds all 1,023 paragraphs)
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from finch_rag import FinchConfig, load_model

from . import plots
from .common import RESULTS_DIR, command_line, machine_description, markdown_table, meta_lines, write_json
from .datasets import Example, load_suite
from .journal import Journal, add_journal_options, report_only_records
from .single_pass import Truncation, record_pass
from .stats import evidence_metrics, group_means, paired_comparison

SUITES = ("hotpotqa", "rag-squad")
METHODS = ("truncation", "finch_rag")
DEFAULT_TOP_K = {"hotpotqa": [2, 4, 6, 8, 10], "rag-squad": [4, 8, 16, 32]}


def top_k_of(example: Example, k: int) -> Example:
    """``example`` as if retrieval had returned only its best ``k`` passages."""
    reached = [span for span in example.evidence if span[0] < k]
    cut_off = [example.passages[p].text[start:end] for p, start, end in example.evidence if p >= k]
    return dataclasses.replace(
        example,
        passages=example.passages[:k],
        evidence=reached,
        unretrieved_evidence=[*example.unretrieved_evidence, *cut_off],
        info={**example.info, "top_k": k},
    )


def _key(record: Mapping[str, Any]) -> tuple[str, int, str, str]:
    return (record["qid"], record["top_k"], record["method"], str(record["budget"]))


def _curve_records(
    model: Any, tokenizer: Any, example: Example, budgets: Sequence[int], config: FinchConfig
) -> list[dict[str, Any]]:
    """Truncation and ``finch_rag`` at every budget for one (question, k), from one recorded pass.

    Truncation's kept set is the first ``B`` tokens of the ranked prompt: no model call. ``finch_rag`` runs
    `FinchRAG`'s default allocation in one pass (``chunk_size=None``) whose question attention is recorded;
    each budget then selects from those scores exactly as ``compress(chunk_size=None)`` at that budget would.
    """
    unretrieved = sum(len(tokenizer(text, add_special_tokens=False).input_ids) for text in example.unretrieved_evidence)
    common = {"suite": example.suite, "qid": example.qid, **example.info}
    truncation = Truncation.of(tokenizer, example.passages, example.question, example.evidence)
    recorded = record_pass(model, tokenizer, example.passages, example.question, config, fuse=True)
    n, masks = recorded.context_length, recorded.evidence_masks(example.evidence)
    records = []
    for budget in budgets:
        records.append(
            common
            | {"method": "truncation", "budget": str(budget), "context_tokens": truncation.context_length}
            | evidence_metrics(truncation.kept(budget), None, truncation.evidence, unretrieved)
        )
        records.append(
            common
            | {"method": "finch_rag", "budget": str(budget), "context_tokens": n}
            | {"compress_s": round(recorded.seconds, 3)}
            | evidence_metrics(recorded.kept(budget), None, masks, unretrieved)
        )
    return records


def run(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    top_ks: Sequence[int],
    budgets: Sequence[int],
    journal: str | Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One record per (question, k, method, budget); ``journal`` (JSON lines) resumes a stopped run."""
    from tqdm.auto import tqdm

    journal_file = Journal(journal, _key)
    config = FinchConfig(chunk_size=None, progress=False)
    records = []
    for example in tqdm(examples, desc="retrieve-more", unit="q", disable=not progress):
        for k in top_ks:
            previous = journal_file.done_under(example.qid, k)
            if len(previous) == 2 * len(budgets):
                records += previous
                continue
            fresh = _curve_records(model, tokenizer, top_k_of(example, k), budgets, config)
            journal_file.append(fresh)
            records += fresh
    return records


def summarize(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return group_means(
        records, ["budget", "top_k", "method"], ("context_tokens", "retention", "all_hops", "compress_s")
    )


def plot(records: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path:
    """PNG: one column per budget; all-hops (top) and retention (bottom) against k, one line per method."""
    return plots.retrieval_curves(summarize(records), path, title, METHODS)


def report(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    """Markdown: the curve per budget, then finch_rag minus truncation per (k, B) with paired 95% intervals."""
    lines = [f"# Retrieve more: {meta['suite']}", ""]
    lines += meta_lines(meta)
    lines += [
        "",
        "retention = gold-evidence KV entries kept, evidence outside the top k counted as lost; all_hops = every "
        "piece of evidence (supporting sentence, answer occurrence) keeps at least half of its entries and was "
        "retrieved; context_tokens = tokens of the k passages (mean).",
        "",
    ]
    rows = summarize(records)
    for budget in dict.fromkeys(str(r["budget"]) for r in rows):
        table = [r for r in rows if str(r["budget"]) == budget]
        columns = ["top_k", "method", "n", "context_tokens", "retention", "all_hops"]
        lines += [f"## B = {budget}", "", markdown_table(table, columns), ""]
    # paired_comparison groups by "budget": give it one label per (k, B).
    relabelled = [{**r, "budget": f"k={r['top_k']} B={r['budget']}"} for r in records]
    labels = list(dict.fromkeys(r["budget"] for r in relabelled))
    lines += paired_comparison(relabelled, labels, "finch_rag", "truncation")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieve_more", description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", choices=SUITES)
    parser.add_argument("--data", help="benchmark data folder (default: ../shared/data from the working directory)")
    parser.add_argument("--limit", type=int, default=60, help="questions (drawn with --seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="skip the first START of the --limit questions")
    parser.add_argument("--top-k", type=int, nargs="+", help="passages retrieved (default: 2-10 / 4-32)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[128, 256, 512], help="B, in tokens")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_journal_options(parser)
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output folder")
    parser.add_argument("--name", help="output file stem (default: retrieve_more_<suite>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    meta: dict[str, Any] = {
        "suite": args.suite,
        "command": command_line("python -m benchmarks.retrieve_more", argv),
        "machine": machine_description(),
        "model": "SmolLM2-135M-Instruct (embedded default)",
    }
    if args.report_only:
        records = report_only_records(parser, args.journal)
        meta |= {"questions": len({r["qid"] for r in records}), "report": "from --journal"}
    else:
        top_ks = sorted(set(args.top_k or DEFAULT_TOP_K[args.suite]))
        if top_ks[0] < 1:
            raise SystemExit(f"--top-k values must be >= 1, got {top_ks[0]}.")
        model, tokenizer = load_model()
        examples = load_suite(args.suite, args.data, args.limit, args.seed, top_k=max(top_ks))[args.start :]
        records = run(model, tokenizer, examples, top_ks, args.budgets, args.journal, progress=not args.quiet)
        meta |= {"questions": len(examples), "seconds": round(time.perf_counter() - started)}
    name = args.name or f"retrieve_more_{args.suite.replace('-', '_')}"
    out = Path(args.out)
    write_json(out / f"{name}.json", {"meta": meta, "summary": summarize(records), "records": records})
    (out / f"{name}.md").write_text(report(records, meta) + "\n")
    plot(records, out / f"{name}.png", f"{args.suite}: quality at fixed B as retrieval grows (SmolLM2-135M-Instruct)")
    print(report(records, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
