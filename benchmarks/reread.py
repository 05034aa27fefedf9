"""The answer's cache, compressed or re-read: one selection answered from both, on the RULER-style suite.

`FinchConfig.answer_cache` decides what an answer reads: the kept entries as the chunked read computed them
(``"compressed"``, FINCH as published) or the model's own read of the kept tokens after the first chunk
(``"reread"``). Both answer from the same selection, so each example is compressed once, with the front ends'
default (`PassageAllocation`: whole sentences compete), answered from that cache, then from
`FinchCompressor.reread` of it: the difference is the answer cache alone, paired by example.

Only the examples full context answers are run (RULER's score at least 0.3 on a task full context solves), read
from the peers harness's kvpress journal for the same suite, model and seed (its ``full`` records).

Commands and results: ``docs/results/reread.md``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import RESULTS_DIR, command_line, machine_description, markdown_table, write_json
from .journal import Journal, read_records
from .peers import answered_cases, bootstrap, scored
from .ruler import TASKS, generate_suite, score
from .stats import bootstrap_difference, won_lost

PROG = "python -m benchmarks reread"
RATIOS = (0.875, 0.9375)
CACHES = ("compressed", "reread")


def run(args: argparse.Namespace) -> None:
    """Compress each answered example once per ratio; answer from the compressed cache and from its re-read."""
    from finch_rag import FinchCompressor, FinchConfig, PassageAllocation, load_model

    model, tokenizer = load_model(args.model)
    answered = answered_cases(scored([r for r in read_records(args.full_journal) if r["method"] == "full"]))
    examples = generate_suite(tokenizer, args.data, per_task=args.per_task, seed=args.seed)
    examples = [example for example in examples if example.key in answered][args.part[0] :: args.part[1]]
    compressor = FinchCompressor(model, tokenizer, FinchConfig(progress=False))
    journal = Journal(args.journal, key=lambda record: (record["case"], record["ratio"]))
    for example in examples:
        for ratio in args.ratios:
            if (example.key, ratio) in journal:
                continue
            config = PassageAllocation().configure(
                compressor.config.replace(compression_ratio=ratio, answer_cache="compressed")
            )
            started = time.perf_counter()
            compressed = compressor.compress(example.context, example.question, config=config)
            compress_s = time.perf_counter() - started
            started = time.perf_counter()
            reread = compressor.reread(compressed)
            reread_s = time.perf_counter() - started
            record: dict[str, Any] = {
                "case": example.key,
                "task": example.task,
                "ratio": ratio,
                "answers": example.answers,
                "compress_s": round(compress_s, 2),
                "reread_s": round(reread_s, 2),
            }
            for name, context in (("compressed", compressed), ("reread", reread)):
                answer = compressor.generate(context, max_new_tokens=args.max_new_tokens)
                record[f"answer_{name}"] = answer
                record[f"score_{name}"] = score(example.metric, answer, example.answers)
            journal.append([record])
            scores = " ".join(f"{name} {record[f'score_{name}']:.2f}" for name in CACHES)
            print(f"{example.key} r={ratio}: {scores}", flush=True)


def summarize(records: Sequence[Mapping[str, Any]], ratios: Sequence[float]) -> dict[str, Any]:
    """Per ratio: each cache's mean score with its interval, and re-read minus compressed, paired; per task too."""
    rows, task_rows = [], []
    generator = random.Random(0)
    for ratio in ratios:
        at_ratio = [r for r in records if r["ratio"] == ratio]
        if not at_ratio:
            continue
        differences = [r["score_reread"] - r["score_compressed"] for r in at_ratio]
        row: dict[str, Any] = {"ratio": ratio, "examples": len(at_ratio)}
        for name in CACHES:
            mean, low, high = bootstrap([r[f"score_{name}"] for r in at_ratio])
            row[name] = f"{mean:.2f} [{low:.2f}, {high:.2f}]"
        row["reread - compressed"] = bootstrap_difference(differences, generator)
        row["won / lost"] = won_lost(differences)
        for seconds in ("reread_s", "compress_s"):
            row[seconds] = f"{statistics.median(r[seconds] for r in at_ratio):.2f}"
        rows.append(row)
        for task in [t for t in TASKS if any(r["task"] == t for r in at_ratio)]:
            of_task = [r for r in at_ratio if r["task"] == task]
            task_rows.append(
                {"ratio": ratio, "task": task, "examples": len(of_task)}
                | {name: sum(r[f"score_{name}"] for r in of_task) / len(of_task) for name in CACHES}
            )
    return {"rows": rows, "task_rows": task_rows}


def against_before(
    records: Sequence[Mapping[str, Any]], before: Sequence[Mapping[str, Any]], ratios: Sequence[float]
) -> list[dict[str, Any]]:
    """Per ratio and cache: this run against an earlier journal of the same examples (a change to the library).

    Paired by example; ``changed`` lists the examples whose score moved, ``case before -> after``.
    """
    earlier = {(r["case"], r["ratio"]): r for r in before}
    rows = []
    generator = random.Random(0)
    for ratio in ratios:
        paired = [
            (earlier[(r["case"], ratio)], r) for r in records if r["ratio"] == ratio and (r["case"], ratio) in earlier
        ]
        if not paired:
            continue
        for name in CACHES:
            field = f"score_{name}"
            differences = [after[field] - old[field] for old, after in paired]
            rows.append(
                {
                    "ratio": ratio,
                    "cache": name,
                    "examples": len(paired),
                    "before": sum(old[field] for old, _ in paired) / len(paired),
                    "after": sum(after[field] for _, after in paired) / len(paired),
                    "after - before": bootstrap_difference(differences, generator),
                    "won / lost": won_lost(differences),
                    "changed": ", ".join(
                        f"{after['case']} {old[field]:g} -> {after[field]:g}"
                        for old, after in paired
                        if after[field] != old[field]
                    ),
                }
            )
    return rows


def markdown(summary: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    def exact_ratio(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [dict(row) | {"ratio": f"{row['ratio']:g}"} for row in rows]  # not rounded to 2 digits

    lines = [
        "# The answer's cache: compressed or re-read (one selection, RULER-style suite)",
        "",
        f"- command: `{meta['command']}`",
        f"- model: {meta['model']}; seed {meta['seed']}, up to {meta['per_task']} examples per task, the ones full "
        f"context answers; {meta['max_new_tokens']} answer tokens, greedy",
        f"- machine: {meta['machine']}",
        "",
        'Each example is compressed once (`PassageAllocation().configure`, `answer_cache="compressed"`), answered '
        "from that cache, then from `FinchCompressor.reread` of it. Scores are RULER's; intervals are 95% "
        "bootstrap intervals over examples; `reread_s` and `compress_s` are medians in seconds.",
        "",
        markdown_table(
            exact_ratio(summary["rows"]),
            ["ratio", "examples", *CACHES, "reread - compressed", "won / lost", "reread_s", "compress_s"],
        ),
        "",
        "Per task (mean score):",
        "",
        markdown_table(exact_ratio(summary["task_rows"]), ["ratio", "task", "examples", *CACHES]),
        "",
    ]
    if summary.get("before_rows"):
        lines += [
            f"Against `{meta['before']}` (an earlier run of the same examples; paired, this run minus that one):",
            "",
            markdown_table(
                exact_ratio(summary["before_rows"]),
                ["ratio", "cache", "examples", "before", "after", "after - before", "won / lost", "changed"],
            ),
            "",
        ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="benchmark data folder (default ../shared/data)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="where the report goes (default docs/results)")
    parser.add_argument("--name", default="reread", help="the report's file name, without extension")
    parser.add_argument("--model", default=None, help="model (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-task", type=int, default=8)
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument(
        "--full-journal", required=True, help="the peers harness's kvpress journal: its full-context answers"
    )
    parser.add_argument("--journal", required=True, help="this run's records (JSON lines; a rerun resumes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--part", type=int, nargs=2, default=(0, 1), metavar=("I", "N"), help="every Nth example from I"
    )
    parser.add_argument("--report-only", action="store_true", help="only write the report from the journal")
    parser.add_argument(
        "--before", help="an earlier journal of the same examples: the report pairs this run against it"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)  # the machine line names the run's threads, with --report-only too
    if not args.report_only:
        run(args)
    records = read_records(args.journal)
    summary = summarize(records, args.ratios)
    if args.before:
        summary["before_rows"] = against_before(records, read_records(args.before), args.ratios)
    meta = {
        "command": command_line(PROG, argv),
        "model": Path(args.model).name if args.model else "SmolLM2-135M-Instruct (embedded)",
        "seed": args.seed,
        "per_task": args.per_task,
        "max_new_tokens": args.max_new_tokens,
        "machine": machine_description(),
        "before": args.before,
    }
    out = Path(args.out)
    write_json(out / f"{args.name}.json", {"meta": meta, **summary})
    (out / f"{args.name}.md").write_text(markdown(summary, meta))
    print(f"wrote {out / f'{args.name}.md'}")
    return 0
