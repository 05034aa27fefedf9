"""The small pure pieces of the engine: chunking, budgets, top-k, score reduction, packing and priors."""

from __future__ import annotations

import pytest
import torch
from conftest import PASSAGES, QUESTION
from transformers import DynamicCache

from finch_rag import FinchCompressor, FinchConfig
from finch_rag.compression.chunking import chunk_bounds
from finch_rag.compression.rotation import KeyRotation
from finch_rag.compression.scoring import (
    per_head_scores,
    per_layer_scores,
    resolve_layers,
    shared_scores,
    smooth_scores,
)
from finch_rag.compression.selection import select_top, step_budget


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


def test_select_top_ascending_and_correct():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.05, 0.7]])
    assert select_top(scores, 3).tolist() == [[1, 3, 5]]
    assert select_top(scores, 6).tolist() == [list(range(6))]
    assert select_top(scores, 10).tolist() == [list(range(6))]
    assert select_top(scores, 0).shape == (1, 0)
    batch = torch.rand(2, 3, 50, generator=torch.Generator().manual_seed(0))
    chosen = select_top(batch, 7)
    assert chosen.shape == (2, 3, 7) and (chosen[..., 1:] > chosen[..., :-1]).all()
    expected = batch.topk(7, dim=-1).indices.sort(dim=-1).values
    assert torch.equal(chosen, expected)


def test_score_reductions():
    layer = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)  # [b, kvh, group, n]
    torch.testing.assert_close(per_head_scores(layer), layer.mean(dim=2))
    per_layer = per_layer_scores(layer)
    assert per_layer.shape == (2, 3, 5)
    torch.testing.assert_close(per_layer[:, 1], layer.mean(dim=(1, 2)))
    other = torch.rand(2, 3, 4, 5)
    shared = shared_scores([layer, other], [0, 1])
    assert shared.shape == (2, 5)
    torch.testing.assert_close(shared.sum(dim=-1), torch.ones(2))
    only_second = shared_scores([layer, other], [1])
    torch.testing.assert_close(only_second, other.mean(dim=(1, 2)) / other.mean(dim=(1, 2)).sum(-1, keepdim=True))


def test_smoothing():
    scores = torch.tensor([[0.0, 0.0, 3.0, 0.0, 0.0, 6.0]])
    assert torch.equal(smooth_scores(scores, 1), scores)
    smoothed = smooth_scores(scores, 3)
    assert smoothed.shape == scores.shape
    torch.testing.assert_close(smoothed, torch.tensor([[0.0, 1.0, 1.0, 1.0, 2.0, 3.0]]))


def test_resolve_layers():
    assert resolve_layers(None, 4) == [0, 1, 2, 3]
    assert resolve_layers((-1, 0, 3), 4) == [0, 3]
    with pytest.raises(ValueError, match="score_layers contains 4"):
        resolve_layers((4,), 4)


@pytest.mark.parametrize("selection", ["per_head", "per_layer", "shared"])
def test_single_pass_cache_is_gathered_and_rerotated(tiny_model, tiny_tokenizer, selection):
    """With one chunk the packed cache is the prefill of [P; C; Q] restricted to the kept entries.

    Each key is re-rotated from its original position to its packed one; values are copied as they were.
    """
    config = FinchConfig(target_tokens=12, chunk_size=None, selection=selection, progress=False)
    cc = FinchCompressor(tiny_model, tiny_tokenizer, config).compress(PASSAGES, QUESTION)
    prefix = int(cc.prefix_ids.shape[0])
    reference = DynamicCache()
    with torch.no_grad():
        decoder = tiny_model.get_decoder()
        decoder(input_ids=cc.prefix_ids[None], past_key_values=reference, use_cache=True)
        decoder(input_ids=torch.cat((cc.context_ids, cc.question_ids))[None], past_key_values=reference, use_cache=True)
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
            tiny_model.get_decoder()(input_ids=tokens, past_key_values=reference, use_cache=True)
        torch.testing.assert_close(
            cc.cache.keys[0][:, head, prefix:], reference.layers[0].keys[:, head, prefix:], atol=2e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            cc.cache.values[0][:, head, prefix:], reference.layers[0].values[:, head, prefix:], atol=1e-6, rtol=1e-6
        )


@pytest.mark.parametrize(
    ("score_layers", "expected"),
    [("upper_half", [2, 3]), ("all", [0, 1, 2, 3]), (None, [0, 1, 2, 3]), ((0, -1), [0, 3])],
)
def test_resolve_layer_sets(score_layers, expected):
    assert resolve_layers(score_layers, 4) == expected


def test_layer_sets_leave_out_sliding_layers():
    types = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    assert resolve_layers("upper_half", 4, types) == [3]
    assert resolve_layers("all", 4, types) == [1, 3]
    assert resolve_layers((0, 2), 4, types) == [0, 2]  # explicit indices are taken as given
    assert resolve_layers("upper_half", 2, ["sliding_attention"] * 2) == [1]


def test_score_layers_validation():
    with pytest.raises(ValueError, match="upper_half"):
        FinchConfig(score_layers="lower")
    with pytest.raises(ValueError, match="layer indices"):
        FinchConfig(score_layers=())
