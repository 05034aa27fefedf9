"""Padded batches (`compress_batch`) give what one-at-a-time compression gives."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import PASSAGES, QUESTION

from finch_rag import FinchCompressor, FinchConfig, PrefixCache
from finch_rag.compression.loop import CompressionRequest, compress_batch
from finch_rag.prompts import as_passages, build_prompt

# Different lengths everywhere: contexts, passages, questions, and one context that fits the budget.
CONTEXTS = [
    PASSAGES,
    PASSAGES[1:] + PASSAGES[:1] + ["Rivers flow to the sea and the sea is salty and wide."],
    [PASSAGES[2]],
    "The secret code is hidden under the old oak tree in the park.",
]
QUESTIONS = [QUESTION, "Where does the fox jump?", "What colour are bananas?", "Where is the code?"]


@pytest.mark.parametrize("selection", ["per_head", "shared"])
@pytest.mark.parametrize("chunk_size", [8, None])
@pytest.mark.parametrize("granularity", ["token", "sentence"])
def test_batch_equals_one_at_a_time(tiny_model, tiny_tokenizer, selection, chunk_size, granularity):
    config = FinchConfig(
        target_tokens=12,
        chunk_size=chunk_size,
        selection=selection,
        smoothing=3,
        granularity=granularity,
        progress=False,
    )
    compressor = FinchCompressor(tiny_model, tiny_tokenizer, config)
    batched = compressor.compress_batch(CONTEXTS, QUESTIONS, batch_size=3)
    assert len(batched) == len(CONTEXTS)
    for context, question, together in zip(CONTEXTS, QUESTIONS, batched, strict=True):
        alone = compressor.compress(context, question)
        assert together.original_tokens == alone.original_tokens
        assert together.stats["peak_kv_entries"] == alone.stats["peak_kv_entries"]
        for got, expected in zip(together.kept_positions, alone.kept_positions, strict=True):
            assert torch.equal(got, expected)
        for got, expected in zip(together.cache.keys, alone.cache.keys, strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        assert compressor.generate(together, max_new_tokens=6) == compressor.generate(alone, max_new_tokens=6)


def test_batch_rejects_mismatched_inputs(tiny_models, tiny_tokenizer):
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer, FinchConfig(target_tokens=8, progress=False))
    with pytest.raises(ValueError, match="one context per question"):
        compressor.compress_batch(CONTEXTS, QUESTIONS[:2])
    with pytest.raises(TypeError, match="use compress"):
        compressor.compress_batch("one context", "one question")
    with pytest.raises(ValueError, match="batch_size"):
        compressor.compress_batch(CONTEXTS, QUESTIONS, batch_size=0)
    with pytest.raises(ValueError, match="question is empty"):
        compressor.compress_batch(CONTEXTS[:2], [QUESTION, " "])


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "top_p": 0.9, "seed": 3}], ids=["greedy", "sampled"])
def test_generate_batch_equals_one_at_a_time(tiny_model, tiny_tokenizer, sampling):
    config = FinchConfig(target_tokens=12, chunk_size=8, progress=False)
    compressor = FinchCompressor(tiny_model, tiny_tokenizer, config)
    compressed = compressor.compress_batch(CONTEXTS, QUESTIONS)
    together = compressor.generate_batch(compressed, max_new_tokens=8, **sampling)
    alone = [compressor.generate(item, max_new_tokens=8, **sampling) for item in compressed]
    assert together == alone
    assert compressor.generate_batch([], max_new_tokens=4) == []


def test_generate_batch_with_questions_of_one_length_equals_one_at_a_time(tiny_models, tiny_tokenizer):
    """Questions of one length leave no padding after them: the batch cache decodes as it comes out."""
    compressor = FinchCompressor(tiny_models("gemma3"), tiny_tokenizer, FinchConfig(target_tokens=12, progress=False))
    compressed = compressor.compress_batch(CONTEXTS, [QUESTION] * len(CONTEXTS))
    alone = [compressor.generate(item, max_new_tokens=8) for item in compressed]
    assert compressor.generate_batch(compressed, max_new_tokens=8) == alone


def test_generate_batch_honours_stop_strings(tiny_models, tiny_tokenizer):
    compressor = FinchCompressor(tiny_models("qwen2"), tiny_tokenizer, FinchConfig(target_tokens=12, progress=False))
    compressed = compressor.compress_batch(CONTEXTS, QUESTIONS)
    free = compressor.generate_batch(compressed, max_new_tokens=10)
    stops = [text[2:4] for text in free if len(text) > 4][:1] or ["e"]
    stopped = compressor.generate_batch(compressed, max_new_tokens=10, stop=stops)
    assert stopped == [compressor.generate(item, max_new_tokens=10, stop=stops) for item in compressed]
    assert all(stops[0] not in text for text in stopped)


def test_each_request_gets_its_own_seconds(tiny_models, tiny_tokenizer):
    """A short context and a long one in one batch get their own seconds, which add up to the wall time.

    The short one needs no compression (a prefill); the long one takes part in every step.
    """
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer)
    config = FinchConfig(target_tokens=12, chunk_size=4, progress=False)

    def request(passages: list[str]) -> CompressionRequest:
        parts = build_prompt(tiny_tokenizer, as_passages(passages), QUESTION)
        return CompressionRequest(
            *(torch.tensor([ids]) for ids in (parts.prefix_ids, parts.context_ids, parts.question_ids))
        )

    short, long = request(["Paris is red."]), request(PASSAGES * 2)
    assert short.context_ids.shape[1] <= 12 < long.context_ids.shape[1] // 8
    with torch.inference_mode():
        started = time.perf_counter()
        results = compress_batch(compressor.model, [short, long], config)
        wall = time.perf_counter() - started
    assert results[0].kept_scores is None and results[1].num_chunks > 20  # the short one was only prefilled
    assert 0 < results[0].seconds < results[1].seconds / 3
    assert sum(result.seconds for result in results) == pytest.approx(wall, rel=0.05, abs=0.01)


def test_a_shared_prefix_is_prefilled_once(tiny_models, tiny_tokenizer):
    """Requests with the same prefix (the chat template's header) read it once per batch, and still equal alone."""
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer)
    config = FinchConfig(target_tokens=12, chunk_size=8, progress=False)
    prompts = [
        build_prompt(tiny_tokenizer, as_passages(context), question)
        for context, question in zip(CONTEXTS, QUESTIONS, strict=True)
    ]
    assert len({tuple(parts.prefix_ids) for parts in prompts}) == 1
    requests = [
        CompressionRequest(*(torch.tensor([ids]) for ids in (parts.prefix_ids, parts.context_ids, parts.question_ids)))
        for parts in prompts
    ]
    prefix_length = len(prompts[0].prefix_ids)
    lengths: list[int] = []
    decoder = compressor.model.get_decoder()
    hook = decoder.register_forward_pre_hook(
        lambda _, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            together = compress_batch(compressor.model, requests, config)
            assert lengths.count(prefix_length) == 1  # once for the batch
            alone = []
            for request in requests:
                lengths.clear()
                alone.append(compress_batch(compressor.model, [request], config)[0])
                # Alone, a request reads its prefix in its first pass, with its first chunk and its question.
                first_chunk = min(config.chunk_size, request.context_ids.shape[1])
                assert lengths[0] == prefix_length + first_chunk + request.question_ids.shape[1]
                assert prefix_length not in lengths
    finally:
        hook.remove()
    for got, expected in zip(together, alone, strict=True):
        for got_keys, expected_keys in zip(got.keys, expected.keys, strict=True):
            torch.testing.assert_close(got_keys, expected_keys, atol=1e-5, rtol=1e-4)


def test_a_prefix_cache_prefills_a_prefix_once_across_calls(tiny_models, tiny_tokenizer):
    """With a `PrefixCache`, later calls reuse the prefix's entries and compress exactly as without one."""
    model = tiny_models("gemma3")  # sliding-window layers too
    config = FinchConfig(target_tokens=12, chunk_size=8, progress=False)
    cached = FinchCompressor(model, tiny_tokenizer, config, prefix_cache=PrefixCache())
    plain = FinchCompressor(model, tiny_tokenizer, config)
    assert plain.prefix_cache is None  # a model the caller passes may change: no cache unless asked for
    prefix_length = len(build_prompt(tiny_tokenizer, as_passages(CONTEXTS[0]), QUESTIONS[0]).prefix_ids)
    lengths: list[int] = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda _, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        first = [cached.compress(context, question) for context, question in zip(CONTEXTS, QUESTIONS, strict=True)]
        second = cached.compress_batch(CONTEXTS, QUESTIONS)
    finally:
        hook.remove()
    # The first call read the prefix with its first chunk and kept its entries; the others read no prefix.
    assert prefix_length not in lengths and len(cached.prefix_cache) == 1
    expected = [plain.compress(context, question) for context, question in zip(CONTEXTS, QUESTIONS, strict=True)]
    for results in (first, second):
        for got, want in zip(results, expected, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(got.kept_positions, want.kept_positions, strict=True))
            for got_keys, want_keys in zip(got.cache.keys, want.cache.keys, strict=True):
                torch.testing.assert_close(got_keys, want_keys, atol=1e-5, rtol=1e-4)
    assert cached.generate_batch(second, max_new_tokens=6) == plain.generate_batch(expected, max_new_tokens=6)


def test_prefix_cache_is_bounded_in_bytes_and_keyed_by_dtype():
    def entries(length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [torch.zeros(1, 2, length, 4)], [torch.zeros(1, 2, length, 4)]  # 64 bytes per position

    cache = PrefixCache(max_bytes=64 * 10)
    ids = [torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5, 6]]), torch.tensor([[7, 8]])]
    keys = [PrefixCache.key(prefix, torch.float32) for prefix in ids]
    cache.put(keys[0], *entries(4))
    cache.put(keys[1], *entries(4))
    assert cache.get(keys[0]) is not None  # now the most recently used
    cache.put(keys[2], *entries(4))  # 12 positions > 10: the least recently used (keys[1]) goes
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None and cache.nbytes == 64 * 8
    cache.put(PrefixCache.key(ids[1], torch.float32), *entries(11))  # larger than the bound: not kept
    assert len(cache) == 2
    assert PrefixCache.key(ids[0], torch.bfloat16) != keys[0]
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0
    with pytest.raises(ValueError, match="max_bytes must be an int >= 0"):
        PrefixCache(max_bytes=-1)
    with pytest.raises(TypeError, match="prefix_cache must be a PrefixCache"):
        FinchCompressor(torch.nn.Linear(1, 1), object(), prefix_cache={})  # type: ignore[arg-type]
