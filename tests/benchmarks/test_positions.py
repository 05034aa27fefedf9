"""The positions screen: kept keys rotated back to where a full prefill computed them, and the answer there."""

from __future__ import annotations

import torch
from conftest import PASSAGES, QUESTION
from transformers import DynamicCache

from benchmarks.positions import answer_at_original_positions, original_position_cache
from finch_rag import FinchCompressor, FinchConfig
from finch_rag.compression.cache import cache_kwargs
from finch_rag.compression.rotation import KeyRotation


def test_kept_keys_return_to_the_keys_of_a_full_prefill(tiny_models, tiny_tokenizer):
    # In one pass a kept entry was computed over the whole preceding text, so at its original position its key
    # is the full prefill's key there.
    model = tiny_models("llama")
    compressor = FinchCompressor(model, tiny_tokenizer, FinchConfig(target_tokens=8, chunk_size=None, progress=False))
    compressed = compressor.compress(PASSAGES, QUESTION)
    cache = original_position_cache(compressed, KeyRotation.from_model(model))
    prefix = int(compressed.prefix_ids.shape[0])
    full = DynamicCache()
    decoder = model.get_decoder()
    with torch.inference_mode():
        ids = torch.cat((compressed.prefix_ids, compressed.context_ids)).unsqueeze(0)
        decoder(input_ids=ids, use_cache=True, **cache_kwargs(decoder, full))
    for layer, kept in enumerate(compressed.cache.kept_positions):
        full_keys = full.layers[layer].keys[0]  # [kv heads, |P| + n, head dim]
        expected = full_keys.gather(1, (prefix + kept).unsqueeze(-1).expand(-1, -1, full_keys.shape[-1]))
        torch.testing.assert_close(cache.layers[layer].keys[0, :, prefix:], expected, rtol=1e-4, atol=1e-4)
        packed = compressed.cache.as_cache().layers[layer].keys[0, :, prefix:]
        assert not torch.allclose(packed, expected, atol=1e-4), "the packed keys sit elsewhere"


def test_with_nothing_evicted_both_answers_agree(tiny_models, tiny_tokenizer):
    model = tiny_models("llama")
    compressor = FinchCompressor(model, tiny_tokenizer, FinchConfig(target_tokens=10**6, progress=False))
    compressed = compressor.compress(PASSAGES, QUESTION)
    assert compressed.cache.kept_positions[0].shape[-1] == compressed.context_ids.shape[0]
    assert answer_at_original_positions(compressor, compressed, 6) == compressor.generate(compressed, max_new_tokens=6)
