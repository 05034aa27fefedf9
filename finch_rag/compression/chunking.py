"""Splitting the context into chunks of at most ``S`` tokens, ending at passage boundaries when possible."""

from __future__ import annotations

from collections.abc import Sequence


def chunk_bounds(
    context_length: int, chunk_size: int | None, passage_starts: Sequence[int] = ()
) -> list[tuple[int, int]]:
    """``[start, end)`` token ranges covering ``0..context_length``.

    A chunk is cut at the last passage start that keeps it within ``chunk_size``; a passage longer than
    ``chunk_size`` is cut into full-size pieces. ``chunk_size=None`` gives one chunk.

    >>> chunk_bounds(10, 4, passage_starts=[0, 3, 5])
    [(0, 3), (3, 5), (5, 9), (9, 10)]
    """
    if context_length <= 0:
        return []
    if chunk_size is None or chunk_size >= context_length:
        return [(0, context_length)]
    boundaries = sorted({start for start in passage_starts if 0 < start < context_length})
    bounds = []
    start = 0
    while start < context_length:
        limit = min(start + chunk_size, context_length)
        cut = limit
        if limit < context_length:
            inside = [boundary for boundary in boundaries if start < boundary <= limit]
            if inside:
                cut = inside[-1]
        bounds.append((start, cut))
        start = cut
    return bounds
