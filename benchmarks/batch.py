"""Batch suite: throughput of padded batches against a sequential loop, and equality of the answers.

The same (context, question) pairs (retrieved SQuAD paragraphs, as in ``rag-squad``) are compressed and
answered greedily three ways in one process: one at a time (`FinchCompressor.compress` then ``generate``),
and with `FinchCompressor.compress_batch` plus ``generate_batch`` at each ``--batch-sizes``. Each way reports
questions per second, its speed-up over the sequential loop, and whether every answer and kept position equals
the sequential one (greedy decoding; ``tests/core/test_batch.py`` checks the same on six architectures).

    python -m benchmarks batch --requests 16 --batch-sizes 1 4 8 --target-tokens 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from finch_rag import FinchCompressor, FinchConfig

from .common import RESULTS_DIR, machine_description, markdown_table, meta_lines, write_json
from .datasets import load_suite


def _same_selection(a: Any, b: Any) -> bool:
    return all(torch.equal(x.cpu(), y.cpu()) for x, y in zip(a.kept_positions, b.kept_positions, strict=True))


def run_batch(
    compressor: FinchCompressor,
    requests: Sequence[tuple[Sequence[Any], str]],
    batch_sizes: Sequence[int],
    max_new_tokens: int = 12,
    repeats: int = 1,
) -> list[dict[str, Any]]:
    """One row for the sequential loop and one per batch size: seconds, questions/s, speed-up, equality."""

    def sequential() -> tuple[list[Any], list[str]]:
        contexts = [compressor.compress(passages, question) for passages, question in requests]
        return contexts, [compressor.generate(c, max_new_tokens=max_new_tokens) for c in contexts]

    def batched(size: int) -> tuple[list[Any], list[str]]:
        contexts = compressor.compress_batch(
            [passages for passages, _ in requests], [question for _, question in requests], batch_size=size
        )
        answers: list[str] = []
        for start in range(0, len(contexts), size):
            answers += compressor.generate_batch(contexts[start : start + size], max_new_tokens=max_new_tokens)
        return contexts, answers

    def timed(run: Any) -> tuple[float, list[Any], list[str]]:
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            contexts, answers = run()
            seconds.append(time.perf_counter() - started)
        return statistics.median(seconds), contexts, answers

    reference_s, reference_contexts, reference_answers = timed(sequential)
    rows = [
        {
            "mode": "sequential",
            "batch_size": 1,
            "seconds": reference_s,
            "questions_per_s": len(requests) / reference_s,
            "speedup": 1.0,
            "same_answers": True,
            "same_kept_positions": True,
        }
    ]
    for size in batch_sizes:
        seconds, contexts, answers = timed(lambda size=size: batched(size))
        rows.append(
            {
                "mode": "batched",
                "batch_size": size,
                "seconds": seconds,
                "questions_per_s": len(requests) / seconds,
                "speedup": reference_s / seconds,
                "same_answers": answers == reference_answers,
                "same_kept_positions": all(
                    _same_selection(a, b) for a, b in zip(contexts, reference_contexts, strict=True)
                ),
            }
        )
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks batch``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="benchmark data folder (default: ../shared/data from the working directory)")
    parser.add_argument("--model", help="model path or hub id (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--requests", type=int, default=16, help="(context, question) pairs")
    parser.add_argument("--top-k", type=int, default=4, help="retrieved paragraphs per question")
    parser.add_argument("--corpus-limit", type=int, help="retrieve from the first N paragraphs (default: all)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--target-tokens", type=int, default=256, help="B")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=1, help="median over this many runs of each mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output folder")
    parser.add_argument("--name", default="batch", help="output file stem")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from finch_rag import load_model

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model) if args.model else load_model()
    config = FinchConfig(target_tokens=args.target_tokens, progress=False)
    compressor = FinchCompressor(model, tokenizer, config)
    examples = load_suite("rag-squad", args.data, args.requests, args.seed, args.top_k, args.corpus_limit)
    requests = [(example.passages, example.question) for example in examples]
    compressor.generate(compressor.compress(*requests[0]), max_new_tokens=2)  # warm-up
    rows = run_batch(compressor, requests, args.batch_sizes, args.max_new_tokens, args.repeats)
    tokens = [len(compressor.tokenizer(" ".join(p.text for p in passages)).input_ids) for passages, _ in requests]
    command = ("python -m benchmarks batch " + " ".join(argv)) if argv is not None else " ".join(["python", *sys.argv])
    meta = {
        "command": command,
        "machine": machine_description(),
        "model": compressor.model_name,
        "requests": len(requests),
        "context tokens (median)": statistics.median(tokens),
        "B": args.target_tokens,
        "max_new_tokens": args.max_new_tokens,
    }
    write_json(Path(args.out) / f"{args.name}.json", {"meta": meta, "rows": rows})
    columns = ["mode", "batch_size", "seconds", "questions_per_s", "speedup", "same_answers", "same_kept_positions"]
    lines = ["# Batched requests: throughput against a sequential loop", ""]
    lines += meta_lines(meta)
    lines += ["", "Compress and answer every request; seconds for all of them.", "", markdown_table(rows, columns), ""]
    text = "\n".join(lines)
    (Path(args.out) / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
