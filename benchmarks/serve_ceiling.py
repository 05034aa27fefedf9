"""What bounds the server's requests per second: the arithmetic of one batch, against this CPU's matmul rate.

The serve suite's request (``benchmarks.serve.demo_requests``: 2 demo passages, B=64, 6 answer tokens, greedy) is
compressed and answered in this process, 8 at a time as the server batches them (`FinchCompressor.compress_batch`,
then ``generate_batch``), once per weight dtype. Reported per dtype: the floating-point operations of one batch
(``torch.utils.flop_counter``: matrix products and attention), its median time, the rate that makes, the rate of
plain matrix products of the model's own shapes on the same threads, and the requests per second a server could
reach if every operation ran at that matmul rate with no overhead at all (the ceiling). Answers are compared with
float32's request for request.

    python -m benchmarks.serve_ceiling --threads 1 --dtypes float32 bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finch_rag.models import DTYPES

from .common import RESULTS_DIR, command_line, machine_description, markdown_table, meta_lines, write_json
from .serve import demo_requests

BATCH = 8  # the server's default --max-batch-size


def matmul_rate(hidden: int, intermediate: int, rows: int, dtype: Any, repeats: int) -> float:
    """Median GFLOP/s of ``[rows, hidden] @ [hidden, intermediate]`` and back, the shapes of the model's MLP."""
    import torch

    rates = []
    for inner, outer in ((hidden, intermediate), (intermediate, hidden)):
        left, right = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, outer, dtype=dtype)
        for _ in range(3):
            left @ right
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            left @ right
            times.append(time.perf_counter() - started)
        rates.append(2 * rows * inner * outer / statistics.median(times) / 1e9)
    return statistics.fmean(rates)


def measure(dtype_name: str, repeats: int) -> dict[str, Any]:
    """One dtype's row: FLOPs, time and rate of a batch of 8, the matmul rate and the ceiling."""
    from torch.utils.flop_counter import FlopCounterMode

    from finch_rag import FinchConfig, Passage
    from finch_rag.frontends.handle import shared_compressor

    compressor = shared_compressor(None, dtype_name)  # what a server loads: that dtype, with a prefix cache
    model = compressor.model
    bodies = demo_requests(BATCH, documents=2, max_tokens=6, target_tokens=64)
    contexts = [[Passage(document["text"], document["title"]) for document in body["documents"]] for body in bodies]
    questions = [body["messages"][-1]["content"] for body in bodies]
    config = FinchConfig(target_tokens=64, progress=False)

    def batch() -> list[str]:
        compressed = compressor.compress_batch(contexts, questions, config=config)
        return compressor.generate_batch(compressed, max_new_tokens=6, temperature=0.0)

    answers = batch()  # warm-up, and the prefix cache filled as a running server has it
    with FlopCounterMode(display=False) as counter:
        batch()
    flops = counter.get_total_flops()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        batch()
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    text_config = model.config.get_text_config()
    rate = matmul_rate(text_config.hidden_size, text_config.intermediate_size, 1536, DTYPES[dtype_name], 20)
    return {
        "dtype": dtype_name,
        "gflop_per_request": flops / BATCH / 1e9,
        "batch_s": seconds,
        "requests_per_s": BATCH / seconds,
        "achieved_gflop_s": flops / seconds / 1e9,
        "matmul_gflop_s": rate,
        "ceiling_requests_per_s": rate * 1e9 / (flops / BATCH),
        "answers": answers,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_ceiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (as the server's --server-threads)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per dtype (median)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output folder")
    parser.add_argument("--name", default="serve_ceiling", help="output file stem")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure(dtype, args.repeats) for dtype in args.dtypes]
    reference = rows[0]["answers"]
    for row in rows:
        same = sum(a == b for a, b in zip(row["answers"], reference, strict=True))
        row["answers_as_first"] = f"{same} of {len(reference)}"
    meta = {
        "command": command_line("python -m benchmarks.serve_ceiling", argv),
        "machine": machine_description(),
        "threads": args.threads,
        "model": "SmolLM2-135M-Instruct (embedded default)",
        "request": f"2 demo passages, B=64, 6 answer tokens, greedy; batches of {BATCH} (compress, then generate)",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{args.name}.json", {"meta": meta, "rows": rows})
    columns = [
        "dtype",
        "gflop_per_request",
        "batch_s",
        "requests_per_s",
        "achieved_gflop_s",
        "matmul_gflop_s",
        "ceiling_requests_per_s",
        "answers_as_first",
    ]
    lines = ["# What bounds the server: arithmetic per request against the matmul rate", "", *meta_lines(meta), ""]
    lines += [markdown_table(rows, columns), ""]
    text = "\n".join(lines)
    (out / f"{args.name}.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
