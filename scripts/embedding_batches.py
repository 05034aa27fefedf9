"""What padding costs the embedder: one ``encode`` in batches of 32 against batches cut by padded length.

    PYTHONPATH=. .venv/bin/python scripts/embedding_batches.py --threads 1 --repeats 3

Sentence fusion embeds every sentence of a prompt together with whole passages, and a batch pads each text to
its longest. This times, on all-MiniLM-L6-v2 (the embedded default), three such inputs:

- ``essay``: the first 800 words of a Paul Graham essay in 120-word pieces, and their sentences;
- ``leval``: the first 16 120-word chunks of L-Eval page 1, and their sentences;
- ``soak``: the 8 documents of `benchmarks.reliability.soak`'s first request shape (1 to 12 of its sentences
  each, seed 0), and their sentences;

each embedded by ``model.encode(texts, batch_size=32)`` and by `finch_rag.retrieval.encode_unit_vectors` (batches
cut at `PADDED_CHARACTERS`), and prints the fastest of ``--repeats`` and the largest difference between the two
vectors of any text. Run from the repository root (it reads ``../shared/data``, or ``--data``).
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import data_dir
from benchmarks.datasets import load_leval, word_chunks
from benchmarks.reliability.soak import SENTENCES
from finch_rag.retrieval import encode_unit_vectors, shared_embedding_model


def sentences(text: str) -> list[str]:
    return [sentence for sentence in re.split(r"(?<=[.!?])\s+", text) if sentence.strip()]


def inputs(data: Path) -> dict[str, list[str]]:
    essay = sorted((data / "paul_graham_essays").glob("*.txt"))[0].read_text()
    rng = random.Random(0)
    pieces = {
        "essay": word_chunks(" ".join(essay.split()[:800]), 120),
        "leval": word_chunks(load_leval(data)[1]["input"], 120)[:16],
        "soak": [" ".join(rng.choices(SENTENCES, k=rng.choice((1, 2, 4, 12)))) for _ in range(8)],
    }
    return {name: [s for piece in texts for s in sentences(piece)] + texts for name, texts in pieces.items()}


def fastest(run: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    times, vectors = [], torch.empty(0)
    for _ in range(repeats):
        started = time.perf_counter()
        vectors = run()
        times.append(time.perf_counter() - started)
    return min(times), vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", default=None, help="data folder (default: $FINCH_RAG_DATA, else ../shared/data)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = shared_embedding_model()
    model.encode(["warm-up"])
    print("| input | texts | characters | batches of 32, s | by padded length, s | speed-up | max difference |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, texts in inputs(data_dir(args.data)).items():
        plain_s, plain = fastest(
            lambda texts=texts: model.encode(texts, batch_size=32, convert_to_tensor=True, normalize_embeddings=True),
            args.repeats,
        )
        cut_s, cut = fastest(lambda texts=texts: encode_unit_vectors(model, texts), args.repeats)
        difference = (cut - plain.float().cpu()).abs().max().item()
        characters = sum(len(text) for text in texts)
        print(
            f"| {name} | {len(texts)} | {characters} | {plain_s:.2f} | {cut_s:.2f} | {plain_s / cut_s:.1f}x | "
            f"{difference:.1e} |"
        )


if __name__ == "__main__":
    main()
