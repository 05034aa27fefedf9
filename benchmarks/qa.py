"""Question-answering suites: ``squad``, ``rag-squad`` and ``hotpotqa``, every method at equal budget.

Suites (data from ``--data``, default ``../shared/data``; questions drawn with a fixed seed):

- ``squad``: the paper's setting, one SQuAD v1.1 dev paragraph and its question;
- ``rag-squad``: every paragraph of ``squad-v1.1-dev-part.json`` is a document; all-MiniLM-L6-v2 retrieves
  the top ``--top-k`` for each question (best first), and the methods fit them into the budget
  (``--corpus-limit N``: a smaller corpus of the first N paragraphs plus the sampled questions' own, for quick
  runs; embedding all 1,023 takes minutes on a CPU);
- ``hotpotqa``: the 10 paragraphs of each HotpotQA distractor question, ranked by all-MiniLM-L6-v2.

Each method (`benchmarks.methods`) runs at each budget of ``--budgets``: ``4x`` is ``B = floor(n / 4)``
of the ``n`` context tokens, ``256`` is ``B = 256``. Metrics per question (DESIGN §4):

- ``retention``: fraction of the gold evidence's KV entries that survive, over layers and KV heads (the answer
  spans in SQuAD, the supporting sentences in HotpotQA); ``retention_per_layer`` in the JSON;
- ``all_hops``: 1 when every piece of evidence (supporting sentence, answer occurrence) keeps at least half of
  its entries (all-hops coverage in HotpotQA, answer-span coverage in SQuAD);
- ``contains``, ``em``, ``f1``: the greedy answer against the gold answers (SQuAD normalisation);
- ``compress_s``, ``generate_s``: seconds to build the cache (compression, or the prefill for ``full`` and
  ``truncation``) and to answer (greedy, up to ``--max-new-tokens``, stopping at a newline).

Truncation keeps passages in retrieval order until ``B`` tokens and answers with full attention over them;
its retention counts the evidence tokens inside those first ``B``. ``full`` reads everything.

    python -m benchmarks hotpotqa --limit 200 --budgets 128 256 512 --methods allocation
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from finch_rag import CompressedContext, FinchCompressor, FinchConfig, Passage
from finch_rag.prompts import PromptParts, build_prompt

from . import plots
from .common import (
    RESULTS_DIR,
    add_chunk_size_option,
    answer_scores,
    machine_description,
    markdown_table,
    meta_lines,
    write_json,
)
from .datasets import QA_SUITES, Example, load_suite
from .journal import Journal, add_journal_options, report_only_records
from .methods import Method, allocation_of, expand_methods, method_config
from .stats import evidence_metrics, group_means, paired_comparison


# -------------------------------------------------------------------- budgets
def budget_of(label: str, context_tokens: int) -> int:
    """``"4x"`` -> ``floor(n / 4)`` (at least 1); ``"256"`` -> 256 (at most ``n``)."""
    text = str(label).strip().lower()
    try:
        if text.endswith("x"):
            factor = float(text[:-1])
            if factor < 1:
                raise ValueError
            return max(1, math.floor(context_tokens / factor))
        tokens = int(text)
        if tokens < 1:
            raise ValueError
        return min(tokens, context_tokens)
    except ValueError:
        raise ValueError(
            f"Budget {label!r} is neither a compression factor like '4x' (>= 1) nor a token count like '256'."
        ) from None


# ---------------------------------------------------------------------- runs
def _truncated(parts: PromptParts, passages: Sequence[Passage], budget: int) -> list[Passage]:
    """Passages in order until ``budget`` context tokens, the last one cut at a token boundary.

    A budget that ends inside the first passage's title keeps that title and one character of text.
    """
    end_char = parts.token_offsets[budget - 1][1]
    kept = []
    for passage, (start, end) in zip(passages, parts.passage_text_spans, strict=True):
        if end <= end_char:
            kept.append(passage)
        else:
            if end_char > start:
                kept.append(Passage(passage.text[: end_char - start], passage.title))
            break
    return kept or [Passage(passages[0].text[:1], passages[0].title)]


def untitled(example: Example) -> Example:
    """``example`` with its passages' titles dropped; its evidence spans, offsets into the texts, still hold."""
    return dataclasses.replace(example, passages=[Passage(passage.text) for passage in example.passages])


def run_example(
    compressor: FinchCompressor,
    example: Example,
    methods: Sequence[Method],
    budgets: Sequence[str],
    *,
    max_new_tokens: int = 32,
    answer: bool = True,
    skip: Callable[[str, str], bool] | None = None,
) -> list[dict[str, Any]]:
    """One record per (method, budget) for ``example``; ``full`` gives one record with budget ``"full"``.

    ``skip(method_name, budget_label)`` returning True leaves that record out (a resumed run).
    """
    base = compressor.config
    tokenizer = compressor.tokenizer
    num_layers = compressor.model.config.get_text_config(decoder=True).num_hidden_layers
    rank_parts = build_prompt(
        tokenizer,
        example.passages,
        example.question,
        chat_template=base.chat_template,
        system_prompt=base.system_prompt,
    )
    n = len(rank_parts.context_ids)
    unretrieved = sum(len(tokenizer(text, add_special_tokens=False).input_ids) for text in example.unretrieved_evidence)
    common = {
        "suite": example.suite,
        "qid": example.qid,
        "context_tokens": n,
        "passages": len(example.passages),
        "missing_evidence": example.missing_evidence,
        **example.info,
    }
    records: list[dict[str, Any]] = []
    contexts: list[CompressedContext] = []
    for method in methods:
        labels = ["full"] if method.kind == "full" else list(budgets)
        for label in labels:
            if skip is not None and skip(method.name, label):
                continue
            budget = n if label == "full" else budget_of(label, n)
            record = common | {"method": method.name, "budget": label, "B": budget, "factor": n / budget}
            passages = list(example.passages)
            started = time.perf_counter()
            if method.kind in ("full", "truncation"):
                kept = (torch.arange(n) < budget).float()
                masks = [rank_parts.span_tokens([span]) for span in example.evidence]
                record |= evidence_metrics(kept, None, masks, unretrieved)
                if not answer:  # what truncation keeps is known without a prefill
                    record |= {"compress_s": 0.0, "kept_tokens": budget}
                    records.append(record)
                    continue
                if method.kind == "truncation" and budget < n:
                    passages = _truncated(rank_parts, example.passages, budget)
                config = base.replace(compression_ratio=0.0, chunk_size=None, progress=False)
                try:
                    compressed = compressor.compress(passages, example.question, config=config)
                except ValueError as error:  # the whole prompt does not fit the window
                    records.append(record | {"skipped": str(error)})
                    continue
            else:
                config = method_config(base, method, num_layers, target_tokens=budget)
                allocation = allocation_of(method, config)
                plan = allocation.plan(passages, config, question=example.question)  # fuses as FinchRAG does
                (compressed,) = compressor.compress_plans([plan], [example.question])
                packed_index = {ranked: packed for packed, ranked in enumerate(plan.order)}
                masks = [compressed.span_tokens([(packed_index[p], s, e)]) for p, s, e in example.evidence]
                record |= evidence_metrics(compressed.kept_mask(), compressed.kept_per_layer(), masks, unretrieved)
            record["compress_s"] = round(time.perf_counter() - started, 4)
            record["kept_tokens"] = compressed.kept_tokens
            records.append(record)
            contexts.append(compressed)
    if answer:
        answered = [record for record in records if "skipped" not in record]
        for record, compressed in zip(answered, contexts, strict=True):
            started = time.perf_counter()
            try:
                text = compressor.generate(compressed, max_new_tokens=max_new_tokens, stop=["\n"])
            except ValueError as error:  # the answer would pass the model's window
                record["answer_skipped"] = str(error)
                continue
            record |= {"generate_s": round(time.perf_counter() - started, 4), "answer": text.strip()}
            record |= answer_scores(text, example.answers)
    return records


def _record_key(record: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (record["suite"], record["qid"], record["method"], str(record["budget"]))


def run_suite(
    compressor: FinchCompressor,
    examples: Sequence[Example],
    methods: Sequence[str | Method],
    budgets: Sequence[str],
    *,
    max_new_tokens: int = 32,
    answer: bool = True,
    seed: int = 0,
    progress: bool = True,
    journal: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Every example through every method and budget; records in order.

    ``journal`` is a JSON-lines file: each record is appended as it is done, and a rerun skips the records
    already there, so an interrupted run resumes.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    resolved = expand_methods(methods)
    for label in budgets:
        budget_of(label, 10_000)  # fail on a bad label before any model work
    journal_file = Journal(journal, _record_key)
    records = []
    for example in tqdm(examples, desc=examples[0].suite if examples else "qa", unit="q", disable=not progress):

        def already_done(method: str, label: str, key: tuple[str, str] = (example.suite, example.qid)) -> bool:
            return (*key, method, label) in journal_file

        previous = journal_file.done_under(example.suite, example.qid)
        fresh = run_example(
            compressor,
            example,
            resolved,
            budgets,
            max_new_tokens=max_new_tokens,
            answer=answer,
            skip=already_done,
        )
        journal_file.append(fresh)
        records += previous + fresh
    return records


# -------------------------------------------------------------------- output
METRICS = ("factor", "retention", "all_hops", "contains", "em", "f1", "compress_s", "generate_s")


def summarize(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Means per (method, budget) over the records that ran."""
    ran = [record for record in records if "skipped" not in record]
    return group_means(ran, ["method", "budget"], METRICS)


def markdown_report(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    suite = records[0]["suite"] if records else "?"
    rows = summarize(records)
    budgets = list(dict.fromkeys(str(r["budget"]) for r in rows if r["budget"] != "full"))
    columns = ["method", "n", "factor", "retention", "all_hops", "contains", "em", "f1", "compress_s", "generate_s"]
    lines = [f"# Benchmark `{suite}`", ""]
    lines += meta_lines(meta)
    lines += [
        "",
        "retention = gold-evidence KV entries kept (over layers and KV heads); contains = a gold answer occurs in "
        "the answer; em, f1 = SQuAD exact match and token F1; factor = context tokens / B (mean); seconds per "
        "question (compress_s is the prefill for full and truncation, 0 when answers are off: none is needed).",
        "",
    ]
    lines += [
        "all_hops = every piece of evidence (a supporting sentence in HotpotQA, an answer occurrence in SQuAD) "
        "keeps at least half of its KV entries.",
        "",
    ]
    full = [r for r in rows if r["budget"] == "full"]
    for budget in budgets:
        table = [r for r in rows if str(r["budget"]) == budget] + full
        lines += [f"## Budget {budget}", "", markdown_table(table, columns), ""]
    # The pipeline's default allocation (older runs without it: the library default) against the baselines.
    default = next((m for m in ("finch_rag", "finch") if any(r["method"] == m for r in records)), None)
    if default is not None:
        for baseline in ("truncation", "finch_global"):
            lines += paired_comparison(records, budgets, default, baseline)
    skipped = [r for r in records if "skipped" in r]
    if skipped:
        lines += [f"Skipped records: {len(skipped)} (e.g. {skipped[0]['method']}: {skipped[0]['skipped']})", ""]
    return "\n".join(lines)


def write_results(
    records: Sequence[Mapping[str, Any]], out: str | Path, name: str, meta: Mapping[str, Any], plot: bool = True
) -> dict[str, Path]:
    """``{name}.json`` (meta, summary, records), ``{name}.md`` and ``{name}.png`` under ``out``."""
    folder = Path(out)
    info = {"machine": machine_description(), **meta}
    ranks = {r["qid"]: r["gold_rank"] for r in records if "gold_rank" in r}
    if ranks:
        info["gold paragraph retrieved (recall@k)"] = round(sum(v is not None for v in ranks.values()) / len(ranks), 3)
    paths = {
        "json": write_json(folder / f"{name}.json", {"meta": info, "summary": summarize(records), "records": records})
    }
    paths["md"] = folder / f"{name}.md"
    paths["md"].write_text(markdown_report(records, info) + "\n")
    if plot and records:
        title = f"{records[0]['suite']}: {info.get('model', '')}"
        paths["png"] = plots.quality_curves(summarize(records), folder / f"{name}.png", title=title)
    return paths


# ----------------------------------------------------------------------- CLI
QUICK = {"limit": 3, "budgets": ["4x", "8x", "16x", "32x"]}


def build_parser(suite: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks {suite}" if suite else "python -m benchmarks.qa",
        description=__doc__.split("\n\n")[0],
    )
    if suite is None:
        parser.add_argument("suite", choices=QA_SUITES)
    parser.add_argument("--data", help="benchmark data folder (default: ../shared/data from the working directory)")
    parser.add_argument("--model", help="model path or hub id (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--limit", type=int, default=50, help="questions (drawn with --seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--start", type=int, default=0, help="skip the first START of the --limit questions (split a run in parts)"
    )
    parser.add_argument(
        "--budgets", nargs="+", default=["4x", "8x", "16x", "32x"], help="compression factors like 4x or B like 256"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["all"],
        help="full, truncation, finch, finch_rag, finch_single, finch_global, finchpress, random, recency, first; "
        "groups 'all', 'baselines', 'allocation'; or 'label:key=value,...' with FinchConfig fields",
    )
    parser.add_argument("--top-k", type=int, default=8, help="rag-squad: passages retrieved per question")
    parser.add_argument(
        "--corpus-limit",
        type=int,
        help="rag-squad: retrieve from the first N paragraphs plus the questions' own (default: all 1,023)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=32, help="answer length cap (answers stop at a newline)")
    parser.add_argument("--no-answer", action="store_true", help="evidence retention only, no decoding")
    parser.add_argument(
        "--untitled",
        action="store_true",
        help="drop the passages' titles, as plain-string documents have none: no passage links, and the passages "
        "then read as pieces of one document (`finch_rag.allocation.one_document`)",
    )
    add_chunk_size_option(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help=f"a short run: {QUICK}")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output folder")
    parser.add_argument("--name", help="output file stem (default: the suite name)")
    add_journal_options(parser)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None, suite: str | None = None) -> int:
    parser = build_parser(suite)
    args = parser.parse_args(argv)
    suite = suite or args.suite
    if args.quick:
        args.limit, args.budgets = QUICK["limit"], QUICK["budgets"]
    if argv is None:
        command = "python -m benchmarks.qa " + " ".join(sys.argv[1:])
    else:
        command = f"python -m benchmarks {suite} " + " ".join(argv)
    name = args.name or suite
    if args.report_only:
        records = report_only_records(parser, args.journal)
        torch.set_num_threads(args.threads)  # so the machine line names the run's thread count
        run_command = command.replace(" --report-only", "")
        meta = {
            "command": run_command,
            "model": args.model or "SmolLM2-135M-Instruct (embedded default)",
            "questions": len({r["qid"] for r in records}),
            "report": "from --journal",
        }
        paths = write_results(records, args.out, name, meta, plot=not args.no_plot)
        print("wrote " + ", ".join(map(str, paths.values())))
        return 0
    from finch_rag import load_model

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model) if args.model else load_model()
    compressor = FinchCompressor(model, tokenizer, FinchConfig(chunk_size=args.chunk_size, progress=False))
    started = time.perf_counter()
    examples = load_suite(suite, args.data, args.limit, args.seed, args.top_k, args.corpus_limit)[args.start :]
    if args.untitled:
        examples = [untitled(example) for example in examples]
    records = run_suite(
        compressor,
        examples,
        args.methods,
        args.budgets,
        max_new_tokens=args.max_new_tokens,
        answer=not args.no_answer,
        seed=args.seed,
        progress=not args.quiet,
        journal=args.journal,
    )
    meta = {
        "command": command,
        "model": compressor.model_name,
        "questions": len(examples),
        "seconds": round(time.perf_counter() - started, 1),
    }
    paths = write_results(records, args.out, name, meta, plot=not args.no_plot)
    print(markdown_report(records, meta))
    print("wrote " + ", ".join(map(str, paths.values())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
