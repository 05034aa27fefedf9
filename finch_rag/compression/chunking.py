"""Splitting the context into chunks of at most ``S`` tokens, ending at passage boundaries when possible.

``chunk_size="auto"`` (`FinchConfig`'s default) is resolved here, per request, by `resolve_chunk_size`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

AUTO_CHUNK_SIZE = 512
"""``S`` under ``chunk_size="auto"`` when the context must be read in chunks."""
AUTO_SINGLE_PASS_TOKENS = AUTO_CHUNK_SIZE
"""The longest context read in one pass under ``chunk_size="auto"``: the memory cap, one chunk's length.

Activations, and the question rows' attention over them, grow with a pass's length, and a single pass is no
faster than chunks of 512 on a CPU: with the embedded model on one thread, compress+answer took 1.15x a full
prefill+answer in one pass at 1,024 context tokens against 1.01x in chunks of 512
(``docs/results/cost_alternate.md``). So a context longer than one chunk is read in chunks."""


def resolve_chunk_size(
    chunk_size: int | Literal["auto"] | None,
    context_length: int,
    question_length: int,
    prefix_length: int = 0,
    window: int = 0,
    budget: int = 0,
) -> int | None:
    """The chunk size to read a context with: ``chunk_size`` itself unless it is ``"auto"``.

    ``"auto"`` reads the context in one pass (``None``) when the pass fits both the model's ``window``
    (``prefix + context + question`` positions; ``0``: no limit) and the memory cap
    `AUTO_SINGLE_PASS_TOKENS` (context tokens). Otherwise it reads chunks of `AUTO_CHUNK_SIZE`,
    fewer where the window needs it (``prefix + budget + S + question <= window``), so the memory bound
    ``|P| + B + S + m`` holds with ``S <= AUTO_CHUNK_SIZE`` whatever the context length.

    >>> resolve_chunk_size("auto", 500, 20), resolve_chunk_size("auto", 8000, 20), resolve_chunk_size(64, 1000, 20)
    (None, 512, 64)
    >>> resolve_chunk_size("auto", 1000, 20, prefix_length=10, window=512, budget=100)
    382
    """
    if chunk_size != "auto":
        return chunk_size
    fits_window = not window or prefix_length + context_length + question_length <= window
    if fits_window and context_length <= AUTO_SINGLE_PASS_TOKENS:
        return None
    if not window:
        return AUTO_CHUNK_SIZE
    return max(1, min(AUTO_CHUNK_SIZE, window - prefix_length - budget - question_length))


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
