"""Chunking the context, and the per-step budget B_t."""

from __future__ import annotations

import pytest

from finch_rag.compression.chunking import chunk_bounds
from finch_rag.compression.selection import step_budget


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
