"""The budget and memory contract of compression, over architecture x selection x normalisation x chunking."""

from __future__ import annotations

import pytest
import torch
from conftest import PASSAGES, QUESTION
from transformers import DynamicCache

from finch_rag import FinchCompressor, FinchConfig
from finch_rag.compression.cache import cache_kwargs

BUDGET = 40
CHUNK = 64
SELECTIONS = ("per_head", "per_layer", "shared")


def _check_kept_positions(cc, budget: int, num_kv_heads: int, heads_equal: bool) -> None:
    n = cc.original_tokens
    prefix = int(cc.prefix_ids.shape[0])
    assert len(cc.kept_positions) == len(cc.cache.keys) == len(cc.cache.values)
    for layer, positions in enumerate(cc.kept_positions):
        assert positions.dtype == torch.long
        assert tuple(positions.shape) == (num_kv_heads, budget), f"layer {layer}"
        assert (positions[:, 1:] > positions[:, :-1]).all(), f"layer {layer}: not ascending and unique"
        assert int(positions.min()) >= 0 and int(positions.max()) < n
        keys, values = cc.cache.keys[layer], cc.cache.values[layer]
        assert keys.shape[:3] == (1, num_kv_heads, prefix + budget), f"layer {layer}"
        assert values.shape[:3] == (1, num_kv_heads, prefix + budget), f"layer {layer}"
        if heads_equal:
            assert (positions == positions[:1]).all(), f"layer {layer}: heads differ"
    if heads_equal and cc.config.selection == "shared":
        for positions in cc.kept_positions[1:]:
            assert torch.equal(positions, cc.kept_positions[0])


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "single"])
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
@pytest.mark.parametrize("selection", SELECTIONS)
def test_budget_and_peak(tiny_model, tiny_tokenizer, selection, normalize, chunked):
    config = FinchConfig(
        target_tokens=BUDGET,
        chunk_size=CHUNK if chunked else None,
        selection=selection,
        normalize_scores=normalize,
        progress=False,
    )
    compressor = FinchCompressor(tiny_model, tiny_tokenizer, config)
    cc = compressor.compress(PASSAGES * 2, QUESTION)
    n, m, prefix = cc.original_tokens, int(cc.question_ids.shape[0]), int(cc.prefix_ids.shape[0])
    assert n > 4 * BUDGET and n > 2 * CHUNK, "the context must be long enough to need several chunks"
    num_kv_heads = tiny_model.config.num_key_value_heads

    _check_kept_positions(cc, BUDGET, num_kv_heads, heads_equal=selection != "per_head")
    assert cc.cache.kept_scores is not None
    for scores in cc.cache.kept_scores:
        assert scores.shape == (num_kv_heads, BUDGET)
        assert torch.isfinite(scores).all() and (scores >= 0).all()
    assert cc.kept_tokens == BUDGET
    assert cc.cache_length == prefix + BUDGET
    assert cc.compression_factor == pytest.approx(n / BUDGET)
    assert cc.kept_mask().sum().item() == pytest.approx(BUDGET)

    stats = cc.stats
    chunk = CHUNK if chunked else n
    assert stats["peak_kv_entries"] <= prefix + BUDGET + chunk + m
    assert stats["num_chunks"] >= (n // CHUNK if chunked else 1)
    if not chunked:
        assert stats["num_chunks"] == 1
        assert stats["peak_kv_entries"] == prefix + n + m
    assert (stats["original_tokens"], stats["kept_tokens"]) == (n, BUDGET)

    # The prefix is never evicted: its cached keys are those of a plain prefill.
    # A config-less DynamicCache keeps every entry, also on sliding-window layers (as the core does).
    prefill = DynamicCache()
    tiny_model(cc.prefix_ids[None], use_cache=True, **cache_kwargs(tiny_model, prefill))
    for layer, keys in enumerate(cc.cache.keys):
        torch.testing.assert_close(keys[:, :, :prefix], prefill.layers[layer].keys, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("selection", SELECTIONS)
def test_chunk_at_least_context_equals_single_pass(tiny_model, tiny_tokenizer, selection):
    base = FinchConfig(target_tokens=24, chunk_size=None, selection=selection, progress=False)
    compressor = FinchCompressor(tiny_model, tiny_tokenizer, base)
    single = compressor.compress(PASSAGES, QUESTION)
    n = single.original_tokens
    for chunk_size in (n, n + 1, 10 * n):
        chunked = compressor.compress(PASSAGES, QUESTION, config=base.replace(chunk_size=chunk_size))
        assert chunked.stats["num_chunks"] == 1
        for layer, positions in enumerate(single.kept_positions):
            assert torch.equal(chunked.kept_positions[layer], positions), f"chunk_size={chunk_size}, layer {layer}"


def test_compression_ratio_budget(tiny_models, tiny_tokenizer):
    compressor = FinchCompressor(
        tiny_models("llama"), tiny_tokenizer, FinchConfig(compression_ratio=0.75, progress=False)
    )
    cc = compressor.compress(PASSAGES, QUESTION)
    assert cc.kept_tokens == cc.original_tokens // 4  # floor(n * (1 - r))
    assert cc.compression_factor == pytest.approx(cc.original_tokens / cc.kept_tokens)


@pytest.mark.parametrize("chunk_size", [None, 16])
@pytest.mark.parametrize("how", ["ratio0", "budget_n", "budget_above_n"])
def test_no_compression_when_context_fits(tiny_model, tiny_tokenizer, how, chunk_size):
    compressor = FinchCompressor(tiny_model, tiny_tokenizer, FinchConfig(progress=False, chunk_size=chunk_size))
    n = len(tiny_tokenizer(PASSAGES[1], add_special_tokens=False).input_ids)
    config = {
        "ratio0": FinchConfig(compression_ratio=0.0, chunk_size=chunk_size, progress=False),
        "budget_n": FinchConfig(target_tokens=n, chunk_size=chunk_size, progress=False),
        "budget_above_n": FinchConfig(target_tokens=n + 50, chunk_size=chunk_size, progress=False),
    }[how]
    cc = compressor.compress(PASSAGES[1], QUESTION, config=config)
    assert cc.original_tokens == n
    assert cc.cache.kept_scores is None
    num_kv_heads = tiny_model.config.num_key_value_heads
    for positions in cc.kept_positions:
        assert torch.equal(positions, torch.arange(n).expand(num_kv_heads, n))
    assert cc.kept_tokens == n and cc.compression_factor == 1.0
    assert cc.cache_length == cc.prefix_ids.shape[0] + n
    # The cache is a plain prefill of prefix + context.
    full = torch.cat((cc.prefix_ids, cc.context_ids))[None]
    reference = DynamicCache()
    tiny_model(full, use_cache=True, **cache_kwargs(tiny_model, reference))
    for layer, keys in enumerate(cc.cache.keys):
        torch.testing.assert_close(keys, reference.layers[layer].keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cc.cache.values[layer], reference.layers[layer].values, atol=1e-5, rtol=1e-4)


def test_iterative_budget_keeps_survivors_competing(tiny_models, tiny_tokenizer):
    """With S=1 every step keeps round(B * seen / n) entries; the final cache still holds exactly B."""
    compressor = FinchCompressor(tiny_models("qwen3"), tiny_tokenizer)
    config = FinchConfig(target_tokens=7, chunk_size=5, selection="per_head", progress=False)
    cc = compressor.compress(PASSAGES[:2], QUESTION, config=config)
    assert cc.stats["num_chunks"] >= cc.original_tokens // 5
    _check_kept_positions(cc, 7, 2, heads_equal=False)
    assert cc.stats["peak_kv_entries"] <= int(cc.prefix_ids.shape[0]) + 7 + 5 + int(cc.question_ids.shape[0])


def test_compress_ids_without_prefix(tiny_models, tiny_tokenizer):
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer, FinchConfig(target_tokens=10, chunk_size=16))
    context = list(range(10, 90))
    cc = compressor.compress_ids(
        context, [20, 21, 22], config=FinchConfig(target_tokens=10, chunk_size=16, progress=False)
    )
    assert cc.prefix_ids.numel() == 0
    assert cc.cache_length == 10
    _check_kept_positions(cc, 10, 2, heads_equal=True)
    tensor_cc = compressor.compress_ids(
        torch.tensor(context),
        torch.tensor([[20, 21, 22]]),
        config=FinchConfig(target_tokens=10, chunk_size=16, progress=False),
    )
    for a, b in zip(cc.kept_positions, tensor_cc.kept_positions, strict=True):
        assert torch.equal(a, b)
