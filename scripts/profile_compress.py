"""Where compression time goes: cProfile of `FinchCompressor.compress_ids` on the embedded model.

    .venv/bin/python -m scripts.profile_compress --tokens 4096 --threads 1 > docs/results/profile.md

(from the repository root, so that the ``benchmarks`` harness it reads the data with is importable)

``--ops N`` adds PyTorch's operator table (the N operators with the most time of their own) for one more
compression and for one full prefill of the same prompt (``[prefix | context | question]``, the last position's
logits only), so the two can be compared operator by operator:

    .venv/bin/python -m scripts.profile_compress --tokens 1024 --chunk-size auto --ops 12

Groups the cumulative time of the functions that matter (the decoder's forward over chunk + question, the
question-row score capture, selection, key re-rotation and cache packing) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from typing import Any

import torch

from benchmarks.common import add_chunk_size_option, data_dir, machine_description
from finch_rag import FinchCompressor, FinchConfig, Passage, load_model
from finch_rag.prompts import build_prompt

# (label, module path fragment, function name): cumulative seconds of that function.
PARTS = [
    ("whole compress_ids", "finch_rag/compressor.py", "compress_ids"),
    ("one step per chunk: forward + keep best", "finch_rag/compression/loop.py", "_step"),
    ("  attention (SDPA twin) in every layer", "finch_rag/compression/attention.py", "attention_forward"),
    ("    question-row scores", "finch_rag/compression/attention.py", "question_row_scores"),
    ("  keep best: select, gather, re-rotate, pack", "finch_rag/compression/loop.py", "_keep_best"),
    ("    selection (scores, smoothing, top-k)", "finch_rag/compression/selection.py", "select"),
    ("    key re-rotation", "finch_rag/compression/rotation.py", "rerotate"),
    ("  cache assembly (left-padded batch of one)", "finch_rag/compression/cache.py", "stack_left_padded"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--target-tokens", type=int, default=256)
    add_chunk_size_option(parser)
    parser.set_defaults(chunk_size=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ops", type=int, default=0, help="also PyTorch's table of the N costliest operators")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model()
    compressor = FinchCompressor(
        model, tokenizer, FinchConfig(target_tokens=args.target_tokens, chunk_size=args.chunk_size, progress=False)
    )
    essays = sorted((data_dir() / "paul_graham_essays").glob("*.txt"))
    context = tokenizer("\n\n".join(e.read_text() for e in essays[:8]), add_special_tokens=False).input_ids
    context = context[: args.tokens]
    parts = build_prompt(tokenizer, [Passage("x")], "What does the author say about startups?")
    compressor.compress_ids(context[:64], parts.question_ids, parts.prefix_ids)  # warm-up
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    compressor.compress_ids(context, parts.question_ids, parts.prefix_ids)
    profiler.disable()
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    cumulative: dict[tuple[str, str], float] = {}
    for (path, _, name), (_, _, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        for _label, fragment, function in PARTS:
            if path.endswith(fragment) and name == function:
                # Several functions may share a name (a policy's select calling its base's): the outermost
                # one's cumulative time holds the others'.
                cumulative[(fragment, function)] = max(cumulative.get((fragment, function), 0.0), cum)
    total = cumulative.get(("finch_rag/compressor.py", "compress_ids"), wall)
    print(f"# Profile of one compression ({args.tokens} context tokens, B={args.target_tokens}, S={args.chunk_size})\n")
    print(
        f"Command: `.venv/bin/python -m scripts.profile_compress {' '.join(sys.argv[1:])}`; "
        f"machine: {machine_description()}; wall {wall:.2f} s (under cProfile).\n"
    )
    print("| part | seconds | share |\n|---|---:|---:|")
    for label, fragment, function in PARTS:
        seconds = cumulative.get((fragment, function), 0.0)
        print(f"| {label} | {seconds:.3f} | {seconds / total:.1%} |")
    if args.ops:
        _operator_tables(model, compressor, context, parts, args.ops)


def _operator_tables(model: Any, compressor: FinchCompressor, context: list[int], parts: Any, rows: int) -> None:
    """PyTorch's operator table of one compression and of one full prefill of the same prompt."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import DynamicCache

    from finch_rag.compression.cache import cache_kwargs

    def full_prefill() -> None:
        ids = torch.tensor([parts.prefix_ids + context + parts.question_ids])
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache))

    def compression() -> None:
        compressor.compress_ids(context, parts.question_ids, parts.prefix_ids)

    for label, run in (("compression", compression), ("full prefill", full_prefill)):
        run()  # warm
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            started = time.perf_counter()
            run()
            wall = time.perf_counter() - started
        print(f"\n## Operators: {label} (wall {wall:.2f} s under the profiler)\n")
        print("| operator | self seconds | calls |\n|---|---:|---:|")
        events = sorted(profiler.key_averages(), key=lambda event: -event.self_cpu_time_total)[:rows]
        for event in events:
            print(f"| {event.key} | {event.self_cpu_time_total / 1e6:.3f} | {event.count} |")


if __name__ == "__main__":
    main()
