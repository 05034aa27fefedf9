"""What bounds one greedy decoding step on this machine: memory reads, the matrix-vector kernel, or the loop.

    .venv/bin/python scripts/decode_floor.py --threads 1 --repeats 15 [--dtype bfloat16]

Prints, in ms per token on the embedded model (SmolLM2-135M-Instruct, float32 unless ``--dtype`` says):

- ``read floor``: every weight read once at the core's streaming bandwidth (``tensor.sum`` over 512 MiB);
- ``matvec floor``: every weight matrix of the model (its own tensors, in layer order, then the LM head)
  multiplied by one vector with ``torch.nn.functional.linear``, the call each layer makes: the cost of the
  arithmetic a token needs, with no attention, norms, cache or Python around it. The weights do not fit in
  any cache, so each token streams them from memory as decoding does;
- ``matvec floor, transposed weights``: the same products on ``[in, out]`` copies of the weights
  (``x @ w_t``), which read memory in a friendlier order on some CPUs, but sum in another order, so their
  tokens are not guaranteed to equal the model's;
- ``decode step``: the model's own forward on one token over a 256-entry cache, as the library's loop runs it;
- with ``--compile``: the same step on a preallocated ``StaticCache``, eager and under ``torch.compile``
  (``dynamic=False``; the compile time is printed apart), each checked to give the eager loop's greedy tokens.

A decoding loop with identical float32 tokens cannot beat the matvec floor; the gap between it and the
decode step is everything else (attention, norms, RoPE, cache appends, Python).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import DynamicCache, StaticCache

from finch_rag import load_model
from finch_rag.compression.cache import cache_kwargs
from finch_rag.models import DTYPES


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def greedy_steps(
    model: torch.nn.Module, forward: Callable[..., object], cache: object, tokens: int
) -> tuple[list[int], float]:
    """Greedy tokens after a fixed 256-token prompt, and the median ms of a step after the first two."""
    prompt = torch.randint(100, 1000, (1, 256), generator=torch.Generator().manual_seed(0))
    logits = model(input_ids=prompt, use_cache=True, logits_to_keep=1, **cache_kwargs(model, cache)).logits
    token = logits[:, -1].argmax(-1, keepdim=True)
    generated, times = [int(token)], []
    for position in range(256, 256 + tokens):
        started = time.perf_counter()
        logits = forward(
            input_ids=token,
            use_cache=True,
            logits_to_keep=1,
            cache_position=torch.tensor([position]),
            **cache_kwargs(model, cache),
        ).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        times.append(time.perf_counter() - started)
        generated.append(int(token))
    return generated, 1000 * statistics.median(times[2:])


def static_and_compiled(model: torch.nn.Module, tokens: int) -> None:
    """Print the step on a StaticCache, eager and compiled, against the eager loop on a DynamicCache."""

    def static() -> StaticCache:
        return StaticCache(config=model.config, max_cache_len=256 + tokens + 1)

    eager_tokens, eager_ms = greedy_steps(model, model, DynamicCache(), tokens)
    static_tokens, static_ms = greedy_steps(model, model, static(), tokens)
    compiled = torch.compile(model, dynamic=False)
    started = time.perf_counter()
    greedy_steps(model, compiled, static(), tokens)  # compiles on the first calls
    compile_s = time.perf_counter() - started
    compiled_tokens, compiled_ms = greedy_steps(model, compiled, static(), tokens)
    print(f"greedy loop, DynamicCache, eager: {eager_ms:.1f} ms/token ({tokens} tokens)")
    print(f"greedy loop, StaticCache, eager: {static_ms:.1f} ms/token; same tokens: {static_tokens == eager_tokens}")
    print(
        f"greedy loop, StaticCache, torch.compile: {compiled_ms:.1f} ms/token after {compile_s:.0f} s of compiling "
        f"and a first run; same tokens: {compiled_tokens == eager_tokens}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="the weights' dtype")
    parser.add_argument("--compile", action="store_true", help="also time a StaticCache step, eager and compiled")
    parser.add_argument("--tokens", type=int, default=24, help="--compile: greedy tokens per loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(dtype=args.dtype)
    dtype = next(model.parameters()).dtype
    matrices = [module.weight for module in model.modules() if isinstance(module, torch.nn.Linear)]
    weight_bytes = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    # Tied embeddings are one tensor; the LM head reads it once a token, as counted here.
    matrix_bytes = sum(matrix.numel() * matrix.element_size() for matrix in matrices)

    with torch.inference_mode():
        block = torch.ones(128 * 2**20)  # 512 MiB
        read_ms = median_ms(block.sum, args.repeats)
        bandwidth = block.numel() * block.element_size() / (read_ms / 1000)

        vectors = [torch.ones(1, matrix.shape[1], dtype=dtype) for matrix in matrices]
        matvec_ms = median_ms(lambda: [F.linear(v, m) for v, m in zip(vectors, matrices, strict=True)], args.repeats)
        transposed = [matrix.t().contiguous() for matrix in matrices]
        transposed_ms = median_ms(lambda: [v @ t for v, t in zip(vectors, transposed, strict=True)], args.repeats)

        # Each step appends one entry; 10-20 more over 256 do not change the cost.
        _, step_ms = greedy_steps(model, model, DynamicCache(), args.repeats + 2)

    print(f"torch {torch.__version__}, {args.threads} thread(s); weights {weight_bytes / 1e6:.0f} MB in {dtype}")
    print(f"read floor: {weight_bytes / bandwidth * 1000:.1f} ms/token ({bandwidth / 1e9:.1f} GB/s streaming)")
    print(f"matvec floor: {matvec_ms:.1f} ms/token ({matrix_bytes / (matvec_ms / 1000) / 1e9:.1f} GB/s)")
    print(f"matvec floor, transposed weights: {transposed_ms:.1f} ms/token")
    print(f"decode step: {step_ms:.1f} ms/token")
    if args.compile:
        with torch.inference_mode():
            static_and_compiled(model, args.tokens)


if __name__ == "__main__":
    main()
