"""The chunk loop end to end on tiny models: gathering, re-rotation, priors and voting layers."""

from __future__ import annotations

import pytest
import torch
from conftest import PASSAGES, QUESTION
from transformers import DynamicCache

from finch_rag import FinchCompressor, FinchConfig
from finch_rag.compression.cache import cache_kwargs
from finch_rag.compression.rotation import KeyRotation


@pytest.mark.parametrize("selection", ["per_head", "per_layer", "shared"])
def test_single_pass_cache_is_gathered_and_rerotated(tiny_model, tiny_tokenizer, selection):
    """With one chunk the packed cache is the prefill of [P; C; Q] restricted to the kept entries.

    Each key is re-rotated from its original position to its packed one; values are copied as they were
    (``answer_cache="compressed"``: on the tiny Gemma 3, ``"auto"`` would re-read the kept tokens instead).
    """
    config = FinchConfig(
        target_tokens=12, chunk_size=None, selection=selection, progress=False, answer_cache="compressed"
    )
    cc = FinchCompressor(tiny_model, tiny_tokenizer, config).compress(PASSAGES, QUESTION)
    prefix = int(cc.prefix_ids.shape[0])
    reference = DynamicCache()
    with torch.no_grad():
        decoder = tiny_model.get_decoder()
        decoder(input_ids=cc.prefix_ids[None], use_cache=True, **cache_kwargs(decoder, reference))
        decoder(
            input_ids=torch.cat((cc.context_ids, cc.question_ids))[None],
            use_cache=True,
            **cache_kwargs(decoder, reference),
        )
    rotation = KeyRotation.from_model(tiny_model)
    for layer, positions in enumerate(cc.kept_positions):
        full_keys, full_values = reference.layers[layer].keys, reference.layers[layer].values
        index = (positions + prefix)[None, :, :, None]
        keys = full_keys.gather(2, index.expand(-1, -1, -1, full_keys.shape[-1]))
        values = full_values.gather(2, index.expand(-1, -1, -1, full_values.shape[-1]))
        shift = torch.arange(positions.shape[-1]) - positions
        expected_keys = rotation.rerotate(layer, keys, shift[None])
        torch.testing.assert_close(cc.cache.keys[layer][:, :, prefix:], expected_keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cc.cache.values[layer][:, :, prefix:], values, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cc.cache.keys[layer][:, :, :prefix], full_keys[:, :, :prefix], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("selection", ["per_head", "shared"])
@pytest.mark.parametrize("chunk_size", [None, 24])
def test_passage_weights_steer_selection(tiny_models, tiny_tokenizer, selection, chunk_size):
    """A zero prior removes a passage from the competition.

    In a single pass only the weighted passage survives; chunked, earlier zero-weight tokens are evicted once
    weighted ones compete, but the chunks after the weighted passage must still fill the growing budget with
    whatever they hold.
    """
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer)
    config = FinchConfig(target_tokens=10, chunk_size=chunk_size, selection=selection, progress=False)
    cc = compressor.compress(PASSAGES, QUESTION, config=config, passage_weights=[0.0, 0.0, 1.0, 0.0])
    start, end = cc.passage_token_starts[2], cc.passage_token_starts[3]
    assert end - start > 10
    for positions in cc.kept_positions:
        assert int(positions.min()) >= start
        inside = ((positions >= start) & (positions < end)).sum(dim=-1)
        if chunk_size is None:
            assert (inside == 10).all()
        else:
            assert (inside > 5).all()
    assert cc.passage_kept_fractions()[2] > 0 and cc.passage_kept_fractions()[0] == 0


def test_score_layers_vote_in_shared_selection(tiny_models, tiny_tokenizer):
    compressor = FinchCompressor(tiny_models("qwen2"), tiny_tokenizer)
    base = FinchConfig(target_tokens=10, chunk_size=None, selection="shared", progress=False)
    all_layers = compressor.compress(PASSAGES, QUESTION, config=base)
    last = compressor.compress(PASSAGES, QUESTION, config=base.replace(score_layers=(-1,)))
    explicit = compressor.compress(PASSAGES, QUESTION, config=base.replace(score_layers=(1,)))
    assert torch.equal(last.kept_positions[0], explicit.kept_positions[0])
    assert all(torch.equal(p, last.kept_positions[0]) for p in last.kept_positions)
    assert all_layers.kept_tokens == last.kept_tokens == 10
    with pytest.raises(ValueError, match="score_layers contains 5"):
        compressor.compress(PASSAGES, QUESTION, config=base.replace(score_layers=(5,)))


@pytest.mark.parametrize("selection", ["per_head", "shared"])
def test_chunked_layer0_entries_are_kept_tokens_at_packed_positions(tiny_model, tiny_tokenizer, selection):
    """After any number of chunks, layer-0 entry j is the kept token ``context[kept[j]]`` at position ``|P| + j``.

    Layer 0's key and value depend only on the token and its position, so this checks gathering, the order of
    survivors and the accumulated re-rotation across steps.
    """
    config = FinchConfig(target_tokens=20, chunk_size=16, selection=selection, progress=False)
    cc = FinchCompressor(tiny_model, tiny_tokenizer, config).compress(PASSAGES, QUESTION)
    assert cc.stats["num_chunks"] > 5
    prefix = int(cc.prefix_ids.shape[0])
    positions = cc.kept_positions[0]
    for head in range(positions.shape[0]):
        tokens = torch.cat((cc.prefix_ids, cc.context_ids[positions[head]]))[None]
        reference = DynamicCache()
        with torch.no_grad():
            # Only layer 0 is compared, and its K/V do not depend on earlier tokens.
            decoder = tiny_model.get_decoder()
            decoder(input_ids=tokens, use_cache=True, **cache_kwargs(decoder, reference))
        torch.testing.assert_close(
            cc.cache.keys[0][:, head, prefix:], reference.layers[0].keys[:, head, prefix:], atol=2e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            cc.cache.values[0][:, head, prefix:], reference.layers[0].values[:, head, prefix:], atol=1e-6, rtol=1e-6
        )
