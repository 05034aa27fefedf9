"""``answer_cache="reread"``: the kept tokens read again by the model, into the cache an answer reads."""

from __future__ import annotations

import pytest
import torch
from conftest import PASSAGES, QUESTION, tiny_config
from transformers import DynamicCache

from finch_rag import FinchCompressor, FinchConfig
from finch_rag.compression.cache import cache_kwargs, cache_over
from finch_rag.compression.loop import resolve_answer_cache
from finch_rag.compression.rotation import KeyRotation


def test_config_names_the_answer_caches_and_refuses_a_reread_of_per_head_selections():
    assert FinchConfig().answer_cache == "auto"
    with pytest.raises(ValueError, match="answer_cache must be one of"):
        FinchConfig(answer_cache="text")  # type: ignore[arg-type]
    for selection in ("per_head", "per_layer"):
        with pytest.raises(ValueError, match='Use selection="shared"'):
            FinchConfig(answer_cache="reread", selection=selection)


def test_auto_rereads_on_models_with_sliding_window_layers_when_one_set_is_kept():
    gemma = tiny_config("gemma3").layer_types
    assert resolve_answer_cache(FinchConfig(), gemma, 2) == "reread"
    assert resolve_answer_cache(FinchConfig(), getattr(tiny_config("llama"), "layer_types", None), 2) == "compressed"
    assert resolve_answer_cache(FinchConfig(), None, 2) == "compressed"
    # One set per head or layer cannot be read again as one sequence: auto keeps the compressed cache there.
    assert resolve_answer_cache(FinchConfig(selection="per_head"), gemma, 2) == "compressed"
    assert resolve_answer_cache(FinchConfig(answer_cache="compressed"), gemma, 2) == "compressed"
    assert resolve_answer_cache(FinchConfig(answer_cache="reread"), None, 2) == "reread"
    # A one-pass read is left as it is by auto, and re-read when asked.
    assert resolve_answer_cache(FinchConfig(), gemma, 1) == "compressed"
    assert resolve_answer_cache(FinchConfig(answer_cache="reread"), gemma, 1) == "reread"


def _plain_read(model, ids: torch.Tensor) -> DynamicCache:
    cache = DynamicCache()
    with torch.no_grad():
        decoder = model.get_decoder()
        decoder(input_ids=ids[None], use_cache=True, **cache_kwargs(decoder, cache))
    return cache


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_reread_cache_keeps_the_first_chunk_s_entries_and_reads_the_later_kept_tokens_again(
    tiny_models, tiny_tokenizer, arch
):
    """Same kept positions; the first chunk's kept entries stay, and the later kept tokens are read again over them.

    The entries kept from the first chunk are a plain read's of the context, moved to their packed positions.

    Chunks of 24 with a budget of 72 on the tiny Gemma 3 (window 16) exercise the sliding layer, and the later kept
    tokens are read back in slices of the chunk length.
    """
    model = tiny_models(arch)
    decoder = model.get_decoder()
    config = FinchConfig(target_tokens=72, chunk_size=24, progress=False)
    compressor = FinchCompressor(model, tiny_tokenizer, config)
    compressed = compressor.compress(PASSAGES, QUESTION, config=config.replace(answer_cache="compressed"))
    reread = compressor.compress(PASSAGES, QUESTION, config=config.replace(answer_cache="reread"))
    assert reread.stats["num_chunks"] > 2
    assert (compressed.stats["answer_cache"], reread.stats["answer_cache"]) == ("compressed", "reread")
    kept = reread.kept_positions[0][0]
    for compressed_positions, reread_positions in zip(compressed.kept_positions, reread.kept_positions, strict=True):
        assert torch.equal(compressed_positions, reread_positions)
        assert torch.equal(reread_positions, kept.expand_as(reread_positions))

    prefix = reread.prefix_ids.shape[0]
    first_chunk_end = reread.cache.first_chunk_end
    from_first_chunk = int((kept < first_chunk_end).sum())
    assert 0 < first_chunk_end < reread.original_tokens and 0 < from_first_chunk < kept.shape[0]
    unchanged = prefix + from_first_chunk
    plain = _plain_read(model, torch.cat((reread.prefix_ids, reread.context_ids)))
    positions = torch.cat((torch.arange(prefix), prefix + kept[:from_first_chunk]))
    shift = torch.arange(unchanged) - positions
    rotation = KeyRotation.from_model(model)
    continued = cache_over(
        [keys[:, :, :unchanged] for keys in compressed.cache.keys],
        [values[:, :, :unchanged] for values in compressed.cache.values],
    )
    with torch.no_grad():
        later_ids = reread.context_ids[kept[from_first_chunk:]][None]
        decoder(input_ids=later_ids, use_cache=True, **cache_kwargs(decoder, continued))
    differs = False
    for layer, (entry, expected) in enumerate(zip(plain.layers, continued.layers, strict=True)):
        moved_keys = rotation.rerotate(layer, entry.keys[:, :, positions], shift)
        torch.testing.assert_close(reread.cache.keys[layer][:, :, :unchanged], moved_keys, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(reread.cache.values[layer][:, :, :unchanged], entry.values[:, :, positions])
        torch.testing.assert_close(reread.cache.keys[layer], expected.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(reread.cache.values[layer], expected.values, atol=1e-5, rtol=1e-4)
        differs |= not torch.allclose(compressed.cache.values[layer], expected.values, atol=1e-3)
    assert differs, "the compressed cache should differ from the re-read one after the first chunk"


def test_auto_is_the_compressed_cache_on_a_model_without_sliding_layers(tiny_models, tiny_tokenizer):
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer, FinchConfig(target_tokens=20, chunk_size=16))
    auto = compressor.compress(PASSAGES, QUESTION)
    compressed = compressor.compress(PASSAGES, QUESTION, config=compressor.config.replace(answer_cache="compressed"))
    assert auto.stats["answer_cache"] == "compressed"
    for layer in range(len(auto.cache.keys)):
        assert torch.equal(auto.cache.keys[layer], compressed.cache.keys[layer])
        assert torch.equal(auto.cache.values[layer], compressed.cache.values[layer])


def test_a_batch_rereads_each_request_as_alone(tiny_models, tiny_tokenizer):
    compressor = FinchCompressor(
        tiny_models("gemma3"), tiny_tokenizer, FinchConfig(target_tokens=20, chunk_size=16, progress=False)
    )
    contexts = [PASSAGES, PASSAGES[1:], PASSAGES[:2]]
    questions = [QUESTION, "Which river is named?", QUESTION]
    batched = compressor.compress_batch(contexts, questions)
    for context, question, together in zip(contexts, questions, batched, strict=True):
        alone = compressor.compress(context, question)
        assert together.stats["answer_cache"] == alone.stats["answer_cache"] == "reread"
        for layer in range(len(alone.cache.keys)):
            assert torch.equal(together.kept_positions[layer], alone.kept_positions[layer])
            torch.testing.assert_close(together.cache.keys[layer], alone.cache.keys[layer], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(together.cache.values[layer], alone.cache.values[layer], atol=1e-5, rtol=1e-4)


def test_reread_of_a_compressed_context_equals_compressing_with_reread(tiny_models, tiny_tokenizer):
    config = FinchConfig(target_tokens=20, chunk_size=16, progress=False)
    compressor = FinchCompressor(tiny_models("gemma3"), tiny_tokenizer, config)
    compressed = compressor.compress(PASSAGES, QUESTION, config=config.replace(answer_cache="compressed"))
    before = [keys.clone() for keys in compressed.cache.keys]
    later = compressor.reread(compressed)
    direct = compressor.compress(PASSAGES, QUESTION, config=config.replace(answer_cache="reread"))
    assert later.stats["answer_cache"] == "reread" and later.config.answer_cache == "reread"
    assert compressor.reread(later) is later
    for layer in range(len(direct.cache.keys)):
        torch.testing.assert_close(later.cache.keys[layer], direct.cache.keys[layer], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(later.cache.values[layer], direct.cache.values[layer], atol=1e-5, rtol=1e-4)
        assert torch.equal(compressed.cache.keys[layer], before[layer])  # the original is left as it was
    assert compressor.generate(later, max_new_tokens=6) == compressor.generate(direct, max_new_tokens=6)
    per_head = compressor.compress(PASSAGES, QUESTION, config=config.replace(selection="per_head"))
    with pytest.raises(ValueError, match='Use selection="shared"'):
        compressor.reread(per_head)


def test_a_one_pass_read_is_left_as_it_is_by_auto_and_by_reread(tiny_models, tiny_tokenizer):
    """A one-pass read computed its entries over the context itself: ``"auto"`` leaves it, and so does ``"reread"``."""
    config = FinchConfig(target_tokens=20, chunk_size=None, progress=False)
    compressor = FinchCompressor(tiny_models("gemma3"), tiny_tokenizer, config)
    one_pass = compressor.compress(PASSAGES, QUESTION)
    assert one_pass.stats["num_chunks"] == 1 and one_pass.stats["answer_cache"] == "compressed"
    forced = compressor.compress(PASSAGES, QUESTION, config=config.replace(answer_cache="reread"))
    assert forced.stats["answer_cache"] == "reread"
    for layer in range(len(one_pass.cache.keys)):
        assert torch.equal(forced.cache.keys[layer], one_pass.cache.keys[layer])
        assert torch.equal(forced.cache.values[layer], one_pass.cache.values[layer])
    chunked = compressor.compress(PASSAGES, QUESTION, config=config.replace(chunk_size=16))
    assert chunked.stats["num_chunks"] > 1 and chunked.stats["answer_cache"] == "reread"
