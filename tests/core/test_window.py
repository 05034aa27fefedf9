"""Contexts several times longer than the model's window compress and answer; no position reaches the window."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from conftest import PASSAGES, QUESTION, build_tiny_model

from finch_rag import FinchCompressor, FinchConfig
from finch_rag.compression.rotation import _find_rotary_module

WINDOW = 64
PREFIX = [1, 9, 10, 11]
QUESTION_IDS = [20, 21, 22, 23, 24, 25]
SUFFIX = [7, 8]


@contextlib.contextmanager
def record_positions(model) -> Iterator[list[int]]:
    """Max ``position_ids`` of every rotary-embedding call, via a forward hook removed on exit."""
    seen: list[int] = []

    def hook(module, args, kwargs, output):
        position_ids = kwargs.get("position_ids", args[1] if len(args) > 1 else None)
        seen.append(int(position_ids.max()))

    handle = _find_rotary_module(model).register_forward_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize("selection", ["per_head", "shared"])
def test_context_three_times_the_window(arch, tiny_tokenizer, selection):
    model = build_tiny_model(arch, max_position_embeddings=WINDOW)
    budget, chunk = 16, 16
    context = [(5 * i + 1) % 100 + 12 for i in range(3 * WINDOW)]
    config = FinchConfig(target_tokens=budget, chunk_size=chunk, selection=selection, progress=False)
    compressor = FinchCompressor(model, tiny_tokenizer, config)
    assert compressor.context_window == WINDOW
    bound = len(PREFIX) + budget + chunk + len(QUESTION_IDS)
    max_new_tokens = 10
    assert bound < WINDOW

    with record_positions(model) as positions:
        cc = compressor.compress_ids(context, QUESTION_IDS, PREFIX, suffix_ids=SUFFIX)
    assert cc.original_tokens == 3 * WINDOW
    assert cc.stats["num_chunks"] == 3 * WINDOW // chunk
    assert cc.stats["peak_kv_entries"] <= bound
    assert max(positions) < bound
    assert cc.cache_length == len(PREFIX) + budget

    with record_positions(model) as positions:
        tokens = list(compressor.stream(cc, max_new_tokens=max_new_tokens))
    assert positions, "generation must run the model"
    assert max(positions) < len(PREFIX) + budget + len(QUESTION_IDS) + len(SUFFIX) + max_new_tokens
    assert max(positions) < WINDOW
    assert isinstance("".join(tokens), str)

    # The cached keys are finite (no position past the RoPE table, no NaN from empty softmax rows).
    for keys, values in zip(cc.cache.keys, cc.cache.values, strict=True):
        assert torch.isfinite(keys).all() and torch.isfinite(values).all()


def test_answer_past_window_is_refused(tiny_tokenizer):
    model = build_tiny_model("llama", max_position_embeddings=WINDOW)
    compressor = FinchCompressor(model, tiny_tokenizer, FinchConfig(target_tokens=16, chunk_size=16, progress=False))
    cc = compressor.compress_ids([i % 100 + 12 for i in range(128)], QUESTION_IDS, PREFIX, suffix_ids=SUFFIX)
    with pytest.raises(ValueError, match=r"window of 64.*Lower max_new_tokens"):
        compressor.generate(cc, max_new_tokens=WINDOW)


def test_string_api_beyond_the_window(tiny_tokenizer):
    """Through compress(): chat-template prefix, passages three times the window, answer within the window."""
    window = 128
    model = build_tiny_model("gemma3", max_position_embeddings=window)
    compressor = FinchCompressor(model, tiny_tokenizer, FinchConfig(target_tokens=16, chunk_size=16, progress=False))
    passages = PASSAGES * 8
    with record_positions(model) as positions:
        cc = compressor.compress(passages, QUESTION)
        answer = compressor.generate(cc, max_new_tokens=8)
    assert cc.original_tokens > 3 * window
    prefix, m, suffix = int(cc.prefix_ids.shape[0]), int(cc.question_ids.shape[0]), int(cc.suffix_ids.shape[0])
    assert cc.stats["peak_kv_entries"] <= prefix + 16 + 16 + m
    compress_bound, answer_bound = prefix + 16 + 16 + m, prefix + 16 + m + suffix + 8
    assert max(positions) < max(compress_bound, answer_bound) <= window
    assert isinstance(answer, str)


def test_single_pass_that_fits_the_window_is_accepted(tiny_tokenizer):
    """A single pass holds |P| + n + m entries (no earlier survivors), so 4 + 50 + 6 = 60 fits a window of 64.

    Core bug (compressor.py:202, `_check_fits`): the bound adds the budget to the chunk even when one chunk
    holds the whole context, so it claims position 68 and refuses. For ``chunk >= n`` the peak is
    ``prefix + context + question``.
    """
    model = build_tiny_model("llama", max_position_embeddings=WINDOW)
    compressor = FinchCompressor(model, tiny_tokenizer, FinchConfig(target_tokens=8, chunk_size=None, progress=False))
    context = [i % 100 + 12 for i in range(50)]
    with record_positions(model) as positions:
        cc = compressor.compress_ids(context, QUESTION_IDS, PREFIX)
    assert cc.stats["peak_kv_entries"] == len(PREFIX) + 50 + len(QUESTION_IDS)
    assert max(positions) < WINDOW
