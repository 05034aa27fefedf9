"""Score reduction (per head, per layer, shared), smoothing, top-k and the voting layers."""

from __future__ import annotations

import pytest
import torch

from finch_rag import FinchConfig
from finch_rag.compression.scoring import (
    per_head_scores,
    per_layer_scores,
    resolve_layers,
    shared_scores,
    smooth_scores,
)
from finch_rag.compression.selection import select_top


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
