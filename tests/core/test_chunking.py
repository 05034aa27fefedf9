"""Chunking the context, and the per-step budget B_t."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_model, build_tiny_tokenizer

from finch_rag.compression.chunking import (
    AUTO_CHUNK_SIZE,
    AUTO_SINGLE_PASS_TOKENS,
    AUTO_SINGLE_PASS_TOKENS_SLIDING,
    chunk_bounds,
    resolve_chunk_size,
    single_pass_tokens,
)
from finch_rag.compression.selection import step_budget


@pytest.mark.parametrize(
    ("n", "size", "starts", "expected"),
    [
        (10, 4, [0, 3, 5], [(0, 3), (3, 5), (5, 9), (9, 10)]),
        (10, None, [0, 3], [(0, 10)]),
        (10, 10, [0, 3], [(0, 10)]),
        (10, 3, [], [(0, 3), (3, 6), (6, 9), (9, 10)]),
        (7, 1, [], [(i, i + 1) for i in range(7)]),
        (0, 4, [], []),
        (12, 5, [0, 6, 11], [(0, 5), (5, 6), (6, 11), (11, 12)]),
    ],
)
def test_chunk_bounds(n, size, starts, expected):
    bounds = chunk_bounds(n, size, starts)
    assert bounds == expected
    if bounds:
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
        assert all(0 < end - start <= (size or n) for start, end in bounds)


@pytest.mark.parametrize("n", [1, 7, 100, 513])
@pytest.mark.parametrize("budget", [1, 5, 64])
def test_step_budget_ends_at_budget(n, budget):
    budget = min(budget, n)
    for size in (1, 3, 50):
        previous = 0
        for _, end in chunk_bounds(n, size):
            kept = step_budget(budget, end, n)
            assert previous <= kept <= budget
            previous = kept
        assert previous == budget


# ------------------------------------------------------------------ chunk_size="auto"
@pytest.mark.parametrize(
    ("context", "question", "prefix", "window", "budget", "expected"),
    [
        (500, 20, 10, 8192, 256, None),  # fits the window and the memory cap: one pass
        (AUTO_SINGLE_PASS_TOKENS, 20, 10, 8192, 256, None),  # exactly at the cap
        (AUTO_SINGLE_PASS_TOKENS + 1, 20, 10, 8192, 256, AUTO_CHUNK_SIZE),  # one token past the cap
        (8000, 20, 10, 0, 256, AUTO_CHUNK_SIZE),  # no known window: the cap alone decides
        (600, 20, 10, 512, 100, 382),  # past the window: chunks small enough for P + B + S + m <= window
        (30, 20, 10, 512, 30, None),
    ],
)
def test_auto_chunk_size_rule(context, question, prefix, window, budget, expected):
    assert resolve_chunk_size("auto", context, question, prefix, window, budget) == expected
    assert resolve_chunk_size(64, context, question, prefix, window, budget) == 64  # an explicit S is kept
    assert resolve_chunk_size(None, context, question, prefix, window, budget) is None


SLIDING = ["sliding_attention", "sliding_attention", "full_attention"]


@pytest.mark.parametrize(
    ("context", "window", "expected"),
    [
        (AUTO_SINGLE_PASS_TOKENS + 1, 8192, None),  # past the cap of a model without a window, still one pass
        (AUTO_SINGLE_PASS_TOKENS_SLIDING, 8192, None),  # exactly at the sliding model's cap
        (AUTO_SINGLE_PASS_TOKENS_SLIDING + 1, 8192, AUTO_CHUNK_SIZE),  # one token past it
        (800, 512, 512 - 10 - 256 - 20),  # the window still decides first
    ],
)
def test_auto_reads_a_sliding_window_model_in_one_pass_up_to_its_own_cap(context, window, expected):
    assert single_pass_tokens(SLIDING) == AUTO_SINGLE_PASS_TOKENS_SLIDING > AUTO_SINGLE_PASS_TOKENS
    assert single_pass_tokens(["full_attention"]) == single_pass_tokens(None) == AUTO_SINGLE_PASS_TOKENS
    assert resolve_chunk_size("auto", context, 20, 10, window, 256, SLIDING) == expected


def _compress_auto(model, n: int, budget: int = 16):
    from conftest import VOCAB

    from finch_rag import FinchCompressor, FinchConfig

    generator = torch.Generator().manual_seed(n)
    context = torch.randint(8, VOCAB, (n,), generator=generator).tolist()
    question, prefix = [9, 10, 11, 12, 13], [1, 4, 5]
    compressor = FinchCompressor(model, build_tiny_tokenizer(), FinchConfig(target_tokens=budget, progress=False))
    assert compressor.config.chunk_size == "auto"  # the default
    return compressor.compress_ids(context, question, prefix), len(prefix), len(question)


def test_auto_reads_in_one_pass_where_it_fits(tiny_models):
    cc, prefix, question = _compress_auto(tiny_models("llama"), 300)  # 3 + 300 + 5 positions < window 512
    assert cc.stats["num_chunks"] == 1
    assert cc.stats["peak_kv_entries"] == prefix + 300 + question
    assert cc.kept_tokens == 16


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_auto_chunks_past_the_window_within_the_memory_bound(tiny_models, arch):
    model = tiny_models(arch)
    n, budget = 1500, 16  # three times the tiny model's window of 512 positions
    cc, prefix, question = _compress_auto(model, n, budget)
    size = resolve_chunk_size("auto", n, question, prefix, model.config.max_position_embeddings, budget)
    assert size is not None and size <= AUTO_CHUNK_SIZE
    assert cc.stats["num_chunks"] >= -(-n // size) > 1
    assert cc.stats["peak_kv_entries"] <= prefix + budget + size + question <= model.config.max_position_embeddings
    assert cc.kept_tokens == budget


def test_auto_chunks_past_the_memory_cap(arch):
    # A window far above the cap, so only the cap forces chunks of AUTO_CHUNK_SIZE.
    model = build_tiny_model(arch, max_position_embeddings=8192)
    cap = single_pass_tokens(getattr(model.config.get_text_config(decoder=True), "layer_types", None))
    n, budget = cap + 100, 16
    cc, prefix, question = _compress_auto(model, n, budget)
    assert cc.stats["num_chunks"] == -(-n // AUTO_CHUNK_SIZE)
    assert cc.stats["peak_kv_entries"] <= prefix + budget + AUTO_CHUNK_SIZE + question


@pytest.mark.parametrize(("arch", "chunks"), [("llama", 2), ("gemma3", 1)])
def test_a_sliding_window_model_reads_a_1k_context_in_one_pass_and_needs_no_reread(arch, chunks):
    model = build_tiny_model(arch, max_position_embeddings=8192)
    cc, prefix, question = _compress_auto(model, 2 * AUTO_CHUNK_SIZE - 24)
    assert cc.stats["num_chunks"] == chunks
    assert cc.stats["answer_cache"] == "compressed"  # one pass has nothing to re-read; llama is never re-read
