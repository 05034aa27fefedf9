"""One layer's attention in a compression step: SDPA over the whole masked step against blocks of rows.

    .venv/bin/python scripts/attention_blocks.py --threads 1

A step after a cache gets a 4-D mask, and SDPA then computes every query-key product; the capturing twin runs
such a step on blocks of ``CAUSAL_BLOCK_ROWS`` query rows over only the keys each block sees
(`finch_rag.compression.attention.blocked_attention`), on a CPU through `grouped_sdpa_attention`, which leaves
the KV heads as they are where transformers' SDPA repeats them for a mask. Shapes are the embedded SmolLM2's
(9 query heads, 3 KV heads, 64 dimensions); prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch
from decode_floor import median_ms  # this folder is first on sys.path when the script runs
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from finch_rag.compression.attention import CAUSAL_BLOCK_ROWS, blocked_attention, grouped_sdpa_attention

# (cached entries, step rows): a first chunk of 512 + question, a later one after B = 256 survivors, one pass.
STEPS = [(40, 531), (296, 531), (40, 1083), (40, 2067)]


def _step_row(cached: int, rows: int, repeats: int) -> str:
    """One table row: a step of ``rows`` query rows after ``cached`` entries, four ways."""
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True)
    generator = torch.Generator().manual_seed(rows)
    query = torch.randn(1, 9, rows, 64, generator=generator)
    key, value = torch.randn(2, 1, 3, cached + rows, 64, generator=generator)
    columns, positions = torch.arange(cached + rows)[None, :], torch.arange(cached, cached + rows)[:, None]
    mask = (columns <= positions)[None, None]
    whole = median_ms(lambda: sdpa_attention_forward(module, query, key, value, mask, scaling=0.125), repeats)
    blocks = median_ms(
        lambda: blocked_attention(sdpa_attention_forward, module, query, key, value, mask, CAUSAL_BLOCK_ROWS),
        repeats,
    )
    grouped = median_ms(
        lambda: blocked_attention(grouped_sdpa_attention, module, query, key, value, mask, CAUSAL_BLOCK_ROWS),
        repeats,
    )
    own_key, own_value = key[:, :, cached:], value[:, :, cached:]
    causal = median_ms(lambda: sdpa_attention_forward(module, query, own_key, own_value, None), repeats)
    return f"| {cached} + {rows} | {whole:.1f} | {blocks:.1f} | {grouped:.1f} | {causal:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    blocks = f"blocks of {CAUSAL_BLOCK_ROWS} ms"
    grouped = "the same, KV heads grouped ms"
    print(f"| step (cached + rows) | whole masked SDPA ms | {blocks} | {grouped} | `is_causal`, no cache ms |")
    print("|---|---:|---:|---:|---:|")
    for cached, rows in STEPS:
        print(_step_row(cached, rows, args.repeats))


if __name__ == "__main__":
    main()
