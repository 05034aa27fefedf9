"""`ContextStore`: bounded in bytes of KV and prompt, not entries; least recently used out first; oversized out."""

from __future__ import annotations

import logging

import pytest
from conftest import PASSAGES, QUESTION

from finch_rag import FinchCompressor, FinchConfig
from finch_rag.store import ContextStore, context_store, entry_bytes, kv_bytes, prompt_bytes


@pytest.fixture(scope="module")
def compressor(tiny_models, tiny_tokenizer):
    return FinchCompressor(
        tiny_models("llama"), tiny_tokenizer, FinchConfig(target_tokens=20, chunk_size=40, progress=False)
    )


@pytest.fixture(scope="module")
def contexts(compressor):
    """Four contexts (one question each) of about the same size."""
    questions = [QUESTION, "Where does the fox live?", "What is the capital of France?", "Who wrote the letter?"]
    return [compressor.compress(PASSAGES, question) for question in questions]


def test_kv_bytes_counts_every_layer_keys_values_positions_and_scores(contexts):
    cc = contexts[0]
    cache = cc.cache
    expected = sum(t.numel() * t.element_size() for t in [*cache.keys, *cache.values, *cache.kept_positions])
    expected += sum(t.numel() * t.element_size() for t in cache.kept_scores or ())
    assert kv_bytes(cc) == expected
    # keys and values: layers x [1, kv_heads, |P| + B, head_dim] float32
    layers = len(cache.keys)
    _, heads, length, dim = cache.keys[0].shape
    assert kv_bytes(cc) >= 2 * layers * heads * length * dim * 4


def test_an_entry_also_counts_its_prompt_bookkeeping(contexts):
    cc = contexts[0]
    # at least a Python int per token id and an (int, int) pair per context token offset
    tokens = cc.parts.prompt_tokens
    assert prompt_bytes(cc) >= tokens * 28 + len(cc.parts.token_offsets or ()) * 2 * 28
    assert entry_bytes(cc) == kv_bytes(cc) + prompt_bytes(cc)
    # a tiny model's prompt outweighs its KV: a bound on KV alone would be far past its setting
    assert prompt_bytes(cc) > kv_bytes(cc)


def test_the_bound_is_in_bytes_and_evicts_least_recently_used(contexts):
    sizes = [entry_bytes(cc) for cc in contexts]
    bound = max(sizes[0] + sizes[1], sizes[0] + sizes[2], sizes[2] + sizes[3])
    assert sum(sizes) - max(sizes) > bound  # room for the two each step keeps, never for three
    store = ContextStore(max_bytes=bound)
    first, second, third, fourth = (cc.cache_key for cc in contexts)
    store.put(contexts[0])
    store.put(contexts[1])
    assert len(store) == 2 and store.bytes == sizes[0] + sizes[1]
    assert store.get(first) is contexts[0]  # now the most recently used
    store.put(contexts[2])  # evicts `second`, the least recently used
    assert first in store and third in store and second not in store
    assert store.bytes == sizes[0] + sizes[2] <= store.max_bytes
    store.put(contexts[3])
    assert set(store._items) == {third, fourth}
    store.put(contexts[3])  # storing again does not count twice
    assert store.bytes == sizes[2] + sizes[3] and len(store) == 2


def test_a_context_larger_than_the_bound_is_not_stored(contexts, caplog):
    size = entry_bytes(contexts[0])
    store = ContextStore(max_bytes=size - 1)
    with caplog.at_level(logging.WARNING, logger="finch_rag.store"):
        key = store.put(contexts[0])
    assert key == contexts[0].cache_key
    assert key not in store and store.bytes == 0 and store.get(key) is None
    assert "not stored" in caplog.text
    store = ContextStore(max_bytes=size)
    store.put(contexts[0])
    assert key in store


def test_count_bound_still_applies_when_given(contexts):
    store = ContextStore(max_bytes=10 * entry_bytes(contexts[0]), capacity=1)
    store.put(contexts[0])
    store.put(contexts[1])
    assert len(store) == 1 and contexts[1].cache_key in store


def test_resize_evicts_at_once_and_clear_frees_every_byte(contexts):
    store = ContextStore(max_bytes=sum(entry_bytes(cc) for cc in contexts))
    for cc in contexts:
        store.put(cc)
    store.resize(max_bytes=entry_bytes(contexts[3]))
    assert len(store) == 1 and contexts[3].cache_key in store and store.bytes == entry_bytes(contexts[3])
    store.clear()
    assert len(store) == 0 and store.bytes == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1"])
def test_bad_bounds_are_clear_errors(bad):
    with pytest.raises(ValueError, match="max_bytes"):
        ContextStore(max_bytes=bad)
    with pytest.raises(ValueError, match="capacity"):
        ContextStore(capacity=bad)


def test_the_model_store_takes_its_bound_from_the_argument_or_the_environment(compressor, tiny_models, monkeypatch):
    model = tiny_models("qwen2")
    store = context_store(model, max_bytes=12345)
    assert store.max_bytes == 12345 and context_store(model) is store
    monkeypatch.setenv("FINCH_RAG_STORE_BYTES", "777")
    from finch_rag.store import _default_max_bytes

    assert _default_max_bytes() == 777
    monkeypatch.setenv("FINCH_RAG_STORE_BYTES", "lots")
    with pytest.raises(ValueError, match="FINCH_RAG_STORE_BYTES"):
        _default_max_bytes()


def test_compressor_store_serves_integrations_within_the_bound(compressor, contexts):
    store = compressor.store
    store.clear()
    store.resize(max_bytes=max(entry_bytes(cc) for cc in contexts))
    try:
        for cc in contexts:
            store.put(cc)
        assert len(store) == 1 and store.bytes <= store.max_bytes
    finally:
        from finch_rag.store import DEFAULT_MAX_BYTES

        store.resize(max_bytes=DEFAULT_MAX_BYTES)
        store.clear()
