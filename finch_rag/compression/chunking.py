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
faster than chunks of 512 on a CPU: with the embedded model on one thread, compress+answer took 1.03x a full
prefill+answer in one pass at 1,024 context tokens against 0.98x in chunks of 512
(``docs/results/cost_alternate_1k_prefix_pass.md``). So a context longer than one chunk is read in chunks."""
AUTO_SINGLE_PASS_TOKENS_SLIDING = 2 * AUTO_CHUNK_SIZE
"""The same cap on a model with sliding-window layers (Gemma 3): a chunked read of such a model is read again for
its answer (`FinchConfig.answer_cache`), which one pass does not need. On Gemma 3 270M at 1,024 tokens one pass
cost 0.94x a full prefill+answer against 1.00x in chunks (``docs/results/cost_gemma3_1k_prefix_pass.md``), and it
kept more of the RULER-style suite's evidence at 1k (``docs/results/chunking_1k_gemma3.md``)."""


def has_sliding_layers(layer_types: Sequence[str] | None) -> bool:
    """Whether a text config's ``layer_types`` include sliding-window attention (Gemma 3's local layers)."""
    return "sliding_attention" in (layer_types or ())


def single_pass_tokens(layer_types: Sequence[str] | None) -> int:
    """`AUTO_SINGLE_PASS_TOKENS`, or `AUTO_SINGLE_PASS_TOKENS_SLIDING` for a model with sliding-window layers."""
    return AUTO_SINGLE_PASS_TOKENS_SLIDING if has_sliding_layers(layer_types) else AUTO_SINGLE_PASS_TOKENS


def resolve_chunk_size(
    chunk_size: int | Literal["auto"] | None,
    context_length: int,
    question_length: int,
    prefix_length: int = 0,
    window: int = 0,
    budget: int = 0,
    layer_types: Sequence[str] | None = None,
) -> int | None:
    """The chunk size to read a context with: ``chunk_size`` itself unless it is ``"auto"``.

    ``"auto"`` reads the context in one pass (``None``) when the pass fits both the model's ``window``
    (``prefix + context + question`` positions; ``0``: no limit) and the memory cap (context tokens):
    `AUTO_SINGLE_PASS_TOKENS`, or `AUTO_SINGLE_PASS_TOKENS_SLIDING` when the model's ``layer_types`` (its text
    config's) include sliding-window layers. Otherwise it reads chunks of `AUTO_CHUNK_SIZE`,
    fewer where the window needs it (``prefix + budget + S + question <= window``), so the memory bound
    ``|P| + B + S + m`` holds with ``S`` at most the cap whatever the context length.

    >>> resolve_chunk_size("auto", 500, 20), resolve_chunk_size("auto", 8000, 20), resolve_chunk_size(64, 1000, 20)
    (None, 512, 64)
    >>> resolve_chunk_size("auto", 1000, 20, prefix_length=10, window=512, budget=100)
    382
    >>> resolve_chunk_size("auto", 1000, 20, layer_types=["sliding_attention", "full_attention"]) is None
    True
    """
    if chunk_size != "auto":
        return chunk_size
    fits_window = not window or prefix_length + context_length + question_length <= window
    if fits_window and context_length <= single_pass_tokens(layer_types):
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
