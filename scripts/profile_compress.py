"""Where compression time goes: cProfile of `FinchCompressor.compress_ids` on the embedded model.

    .venv/bin/python -m scripts.profile_compress --tokens 4096 --threads 1 > docs/results/profile.md

(from the repository root, so that the ``benchmarks`` harness it reads the data with is importable)

Groups the cumulative time of the functions that matter (the decoder's forward over chunk + question, the
question-row score capture, selection, key re-rotation and cache packing) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from benchmarks.common import data_dir, machine_description
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
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
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
        f"Command: `.venv/bin/python -m scripts.profile_compress --tokens {args.tokens} --threads {args.threads}`; "
        f"machine: {machine_description()}; wall {wall:.2f} s (under cProfile).\n"
    )
    print("| part | seconds | share |\n|---|---:|---:|")
    for label, fragment, function in PARTS:
        seconds = cumulative.get((fragment, function), 0.0)
        print(f"| {label} | {seconds:.3f} | {seconds / total:.1%} |")


if __name__ == "__main__":
    main()
