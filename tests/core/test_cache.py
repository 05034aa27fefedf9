"""Cache helpers: wrapping tensors without copies, left padding, stacking rows of different lengths."""

from __future__ import annotations

import pytest
import torch

from finch_rag.compression.cache import all_layer_tensors, cache_over, left_pad, stack_left_padded


def _kv(length: int, layers: int = 2, fill: float = 1.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    keys = [torch.full((1, 2, length, 4), fill + layer) for layer in range(layers)]
    values = [torch.full((1, 2, length, 4), -fill - layer) for layer in range(layers)]
    return keys, values


def test_cache_over_holds_the_tensors_themselves():
    keys, values = _kv(3)
    cache = cache_over(keys, values)
    got_keys, got_values = all_layer_tensors(cache)
    assert all(a is b for a, b in zip(got_keys, keys, strict=True))
    assert all(a is b for a, b in zip(got_values, values, strict=True))
    assert cache.get_seq_length() == 3


def test_left_pad_prepends_zeros():
    tensor = torch.ones(1, 2, 3, 4)
    padded = left_pad(tensor, 5)
    assert padded.shape == (1, 2, 5, 4)
    assert float(padded[:, :, :2].abs().sum()) == 0.0 and torch.equal(padded[:, :, 2:], tensor)
    assert left_pad(tensor, 3) is tensor
    with pytest.raises(ValueError, match="shorter"):
        left_pad(tensor, 2)


def test_stack_left_padded_rows_of_different_lengths():
    short, long = _kv(2, fill=1.0), _kv(5, fill=10.0)
    empty: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
    batch = stack_left_padded([short, empty, cache_over(*long)], length=6)
    keys, values = all_layer_tensors(batch)
    assert len(keys) == 2
    for layer in range(2):
        assert keys[layer].shape == values[layer].shape == (3, 2, 6, 4)
        torch.testing.assert_close(keys[layer][0, :, 4:], short[0][layer][0])
        assert float(keys[layer][0, :, :4].abs().sum()) == 0.0
        assert float(keys[layer][1].abs().sum()) == 0.0  # the empty row is all padding
        torch.testing.assert_close(values[layer][2, :, 1:], long[1][layer][0])
    assert stack_left_padded([empty, empty]).get_seq_length() == 0
    alone = stack_left_padded([short])
    assert all_layer_tensors(alone)[0][0] is short[0][0]  # one row, no padding: no copy
