"""Why Gemma 3 misreads a needle it kept whole: which entries of the compressed cache lead the answer astray.

One RULER-style single-needle example (``niah_single_1``, seed 1, example 0 by default), compressed as the front ends
compress text (whole sentences compete) at ratio 0.875 in chunks of 512 with ``answer_cache="compressed"``. The
same kept positions are then answered from caches assembled layer by layer from two sources: the compressed
cache, and the entries of one plain read of the whole context (prefix + context), gathered at the kept positions
and moved to the packed ones (`KeyRotation.rerotate`). Printed: each layer's largest difference between the two,
and the answer of each mix. ``docs/results/reread.md`` quotes a run.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/reread_diagnosis.py --model GEMMA.gguf
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable

import torch
from transformers import DynamicCache

from benchmarks.common import data_dir
from benchmarks.ruler import Sources, encode, generate
from finch_rag import FinchCompressor, FinchConfig, PassageAllocation, load_model
from finch_rag.compression.cache import all_layer_tensors, cache_kwargs, cache_over
from finch_rag.compression.rotation import KeyRotation
from finch_rag.generation import SamplingParams, generate_token_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2 (the question is about Gemma 3)")
    parser.add_argument("--data", default=None)
    parser.add_argument("--task", default="niah_single_1")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ratio", type=float, default=0.875)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    example = generate(args.task, args.index, tokenizer, Sources(data_dir(args.data)), seed=args.seed)
    case = encode(tokenizer, example)
    compressor = FinchCompressor(model, tokenizer, FinchConfig(progress=False))
    config = PassageAllocation().configure(
        compressor.config.replace(compression_ratio=args.ratio, answer_cache="compressed")
    )
    compressed = compressor.compress(example.context, example.question, config=config)
    chunks, kept = compressed.stats["num_chunks"], compressed.kept_tokens
    print(f"{example.key}: answers {example.answers}, {chunks} chunks, {kept} kept")
    chunked_keys, chunked_values = all_layer_tensors(compressed.cache.as_cache())

    prefix = len(case.prefix_ids)
    read = DynamicCache()
    with torch.inference_mode():
        model(input_ids=torch.tensor([case.prefix_ids + case.context_ids]), use_cache=True, **cache_kwargs(model, read))
    plain_keys, plain_values = all_layer_tensors(read)
    positions = torch.cat((torch.arange(prefix), prefix + compressed.kept_positions[0][0]))
    shift = torch.arange(positions.shape[0]) - positions
    rotation = KeyRotation.from_model(model)
    gathered_keys = [rotation.rerotate(layer, keys[:, :, positions], shift) for layer, keys in enumerate(plain_keys)]
    gathered_values = [values[:, :, positions] for values in plain_values]

    layer_types = list(getattr(model.config.get_text_config(decoder=True), "layer_types", None) or [])
    for layer in range(len(chunked_keys)):
        key_gap = (gathered_keys[layer] - chunked_keys[layer]).abs().max().item()
        value_gap = (gathered_values[layer] - chunked_values[layer]).abs().max().item()
        kind = layer_types[layer] if layer_types else ""
        print(f"layer {layer:2d} {kind:18s} largest difference: keys {key_gap:8.4f}, values {value_gap:8.4f}")

    answer_input = torch.tensor([case.question_ids + case.suffix_ids])

    def answer(from_plain_read: Callable[[int], bool]) -> str:
        layers = range(len(chunked_keys))
        keys = [gathered_keys[layer] if from_plain_read(layer) else chunked_keys[layer] for layer in layers]
        values = [gathered_values[layer] if from_plain_read(layer) else chunked_values[layer] for layer in layers]
        params = SamplingParams(max_new_tokens=10)
        tokens = generate_token_ids(model, cache_over(keys, values), answer_input, params, set(), threading.RLock())
        return repr(tokenizer.decode(list(tokens)))

    sliding = [kind == "sliding_attention" for kind in layer_types]
    mixes: dict[str, Callable[[int], bool]] = {
        "compressed cache, every layer": lambda layer: False,
        "plain read at the kept positions, every layer": lambda layer: True,
    }
    if any(sliding):
        mixes["plain read in the sliding layers only"] = lambda layer: sliding[layer]
        mixes["plain read in the full-attention layers only"] = lambda layer: not sliding[layer]
    for label, from_plain_read in mixes.items():
        print(f"{label:48s} {answer(from_plain_read)}")
    reread = compressor.generate(compressor.reread(compressed), max_new_tokens=10)
    print(f"{'FinchCompressor.reread of the compressed context':48s} {reread!r}")


if __name__ == "__main__":
    main()
