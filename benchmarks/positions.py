"""Where the kept entries sit when the model answers: packed (FINCH) or at their original positions (kvpress).

FINCH (Corallo & Papotti, TACL 2024, Sec. 3.3) re-rotates the kept keys to contiguous positions
``|P|..|P|+B-1`` and the question follows at ``|P|+B``, as kvpress's ``FinchPress`` does; kvpress's other
presses (SnapKV, KVzip, ...) leave every kept key where it was and the question follows at ``|P|+n``. On the
RULER-style suite's multi-key task SmolLM2 answered a distractor's number from finch-rag's packed cache while it
kept every needle whole. This screen answers each compressed context twice, from one compression: as the library
does (``packed``), and with the kept keys rotated back to their original positions and the question and answer
at ``|P|+n`` onwards (``original``). Only the answers differ; what is kept is the same.

    python -m benchmarks.positions --full-journal docs/results/peers_smollm2_48_kvpress.jsonl
        --journal /tmp/positions.jsonl --part 0 --parts 2        (and --part 1 in a second process)
    python -m benchmarks.positions --full-journal docs/results/peers_smollm2_48_kvpress.jsonl
        --journal /tmp/positions.jsonl --report-only --out docs/results/positions_smollm2

Cases are the suite's (``--per-task``, ``--seed``) that full context answers in ``--full-journal`` (a peers
journal with its ``full`` records), so scores compare with ``peers.md``'s.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from finch_rag import FinchCompressor, FinchConfig, PassageAllocation, load_model
from finch_rag.compression.rotation import KeyRotation
from finch_rag.context import CompressedContext
from finch_rag.generation import SamplingParams, eos_token_ids, generate_token_ids

from .common import command_line, machine_description, markdown_table, meta_lines, write_json
from .peers import _append, _read, answered_cases, bootstrap, scored
from .ruler import generate_suite, score
from .stats import won_lost

METHODS = ("packed", "original")


def original_position_cache(compressed: CompressedContext, rotation: KeyRotation) -> Any:
    """A copy of ``compressed``'s cache with every kept key rotated back to its original position."""
    cache = compressed.cache.as_cache()
    prefix = int(compressed.prefix_ids.shape[0])
    with torch.inference_mode():
        for layer, kept in enumerate(compressed.cache.kept_positions):
            entries = cache.layers[layer]
            shift = (kept - torch.arange(kept.shape[-1], device=kept.device)).unsqueeze(0)  # original - packed
            moved = rotation.rerotate(layer, entries.keys[:, :, prefix:], shift)
            entries.keys = torch.cat((entries.keys[:, :, :prefix], moved), dim=2)
    return cache


def answer_at_original_positions(
    compressor: FinchCompressor, compressed: CompressedContext, max_new_tokens: int
) -> str:
    """Greedy answer with every kept key back at its original position and the question at ``|P| + n``."""
    model, tokenizer = compressor.model, compressor.tokenizer
    cache = original_position_cache(compressed, KeyRotation.from_model(model))
    position = int(compressed.prefix_ids.shape[0]) + int(compressed.context_ids.shape[0])
    step_input = torch.cat((compressed.question_ids, compressed.suffix_ids)).unsqueeze(0)
    tokens = generate_token_ids(
        model,
        cache,
        step_input,
        SamplingParams(max_new_tokens=max_new_tokens),
        eos_token_ids(model, tokenizer),  # the library's own stop set, so both answers end alike
        threading.RLock(),
        first_position=position,
    )
    return tokenizer.decode(list(tokens), skip_special_tokens=True)


def run(args: argparse.Namespace) -> None:
    journal = Path(args.journal)
    answered = answered_cases(scored(_read(Path(args.full_journal))))
    model, tokenizer = load_model(args.model)
    compressor = FinchCompressor(model, tokenizer, FinchConfig(progress=False))
    examples = generate_suite(tokenizer, args.data, per_task=args.per_task, seed=args.seed)
    cases = [example for example in examples if example.key in answered]
    for number, example in enumerate(cases):
        if number % args.parts != args.part:
            continue
        key = example.key
        done = {(r["case"], r["ratio"], r["method"]) for r in _read(journal)}
        for ratio in args.ratios:
            if all((key, ratio, method) in done for method in METHODS):
                continue
            config = PassageAllocation().configure(compressor.config.replace(compression_ratio=ratio))
            started = time.perf_counter()
            compressed = compressor.compress(example.context, example.question, config=config)
            answers = {
                "packed": compressor.generate(compressed, max_new_tokens=args.max_new_tokens),
                "original": answer_at_original_positions(compressor, compressed, args.max_new_tokens),
            }
            for method, answer in answers.items():
                _append(
                    journal,
                    {
                        "case": key,
                        "task": example.task,
                        "ratio": ratio,
                        "metric": example.metric,
                        "answers": example.answers,
                        "method": method,
                        "answer": answer,
                        "seconds": round(time.perf_counter() - started, 2),
                    },
                )
            print(key, ratio, {m: score(example.metric, a, example.answers) for m, a in answers.items()}, flush=True)


def report(args: argparse.Namespace, argv: Sequence[str] | None) -> None:
    records = scored(_read(Path(args.journal)))
    ratios = sorted({r["ratio"] for r in records})
    by_key = {(r["method"], r["case"], r["ratio"]): r["score"] for r in records}
    rows, task_rows = [], []
    for ratio in ratios:
        cases = sorted({r["case"] for r in records if r["ratio"] == ratio})
        both = [c for c in cases if all((m, c, ratio) in by_key for m in METHODS)]
        differences = [by_key[("original", c, ratio)] - by_key[("packed", c, ratio)] for c in both]
        mean, low, high = bootstrap(differences, seed=1)
        row = {"ratio": f"{ratio:g}", "n": len(both)}
        for method in METHODS:
            score_mean, score_low, score_high = bootstrap([by_key[(method, c, ratio)] for c in both])
            row[method] = f"{score_mean:.2f} [{score_low:.2f}, {score_high:.2f}]"
        row["original - packed"] = f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
        row["won / lost"] = won_lost(differences)
        rows.append(row)
        for task in sorted({c.split("/")[0] for c in both}):
            of_task = [c for c in both if c.startswith(task + "/")]
            task_rows.append(
                {"ratio": f"{ratio:g}", "task": task, "n": len(of_task)}
                | {m: f"{sum(by_key[(m, c, ratio)] for c in of_task) / len(of_task):.2f}" for m in METHODS}
            )
    meta = {
        "command": command_line("python -m benchmarks.positions", argv).strip(),
        "machine": machine_description(),
        "model": args.model or "SmolLM2-135M-Instruct (embedded default)",
        "full journal": args.full_journal,
    }
    lines = ["# Answering from packed or original positions (RULER-style suite, finch_rag)", "", *meta_lines(meta), ""]
    lines += [markdown_table(rows, ["ratio", "n", *METHODS, "original - packed", "won / lost"]), ""]
    lines += ["Per task (mean score):", "", markdown_table(task_rows, ["ratio", "task", "n", *METHODS])]
    write_json(Path(args.out).with_suffix(".json"), {"meta": meta, "summary": rows, "tasks": task_rows})
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.positions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-journal", required=True, help="a peers journal holding full context's records")
    parser.add_argument("--journal", required=True)
    parser.add_argument("--data", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--per-task", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.875, 0.9375])
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--part", type=int, default=0)
    parser.add_argument("--parts", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", default="docs/results/positions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.report_only:
        run(args)
    report(args, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
