"""How retrieved passages share the budget: `FinchRAG`'s ``"retrieval_weighted"`` allocation.

Plain FINCH (``"global"``) packs the passages in rank order and lets every token compete on question
attention alone. On multi-hop questions that starves the best passages and scatters the budget over
fragments of many sentences (``docs/results/allocation_study.md``). ``"retrieval_weighted"`` folds the
retriever's ranking in through the packing order, and makes sentences, not tokens, compete. Not in the
paper (FINCH: Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from .config import GRANULARITIES, FinchConfig, Granularity

T = TypeVar("T")


@dataclass(frozen=True)
class RankWeighting:
    """Parameters of ``allocation="retrieval_weighted"``; the defaults are the measured best.

    - ``reverse_packing``: pack the best-ranked passage last, right before the question. The question's
      attention favours what it has just read, so this turns that recency bias into a rank prior: the top
      passages cannot be starved, while lower-ranked ones still compete on attention.
    - ``granularity``: ``"sentence"`` makes each sentence compete with the mean of its tokens' scores, so
      the budget goes to whole sentences (a supporting fact kept whole is worth more than fragments of
      five), see `FinchConfig.granularity`. It overrides the config's ``granularity``.
    - ``tau``: multiply every token score of the passage of rank ``r`` (1-based) by
      ``max(floor, exp(-(r - 1) / tau))``, so a lower-ranked passage must draw proportionally more attention
      to keep its entries. ``None`` (the default) applies no factor: on top of reverse packing it did not
      help.

    Parameters
    ----------
    reverse_packing : bool
        Pack passages from the lowest rank to the best, so rank 1 sits next to the question.
    tau : float, optional
        Decay length in ranks of the score factor; ``None`` for no factor.
    floor : float
        Lowest factor any passage gets, in ``[0, 1]``.
    granularity : {"sentence", "token"}
        What competes for the budget.
    """

    reverse_packing: bool = True
    tau: float | None = None
    floor: float = 0.0
    granularity: Granularity = "sentence"

    def __post_init__(self) -> None:
        if self.tau is not None and (
            isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not self.tau > 0
        ):
            raise ValueError(f"tau is a decay length in ranks and must be > 0 (or None), got {self.tau!r}.")
        if isinstance(self.floor, bool) or not isinstance(self.floor, (int, float)) or not 0 <= self.floor <= 1:
            raise ValueError(f"floor is the lowest passage weight and must be in [0, 1], got {self.floor!r}.")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}.")

    def pack(self, ranked: Sequence[T]) -> list[T]:
        """Ranked items (best first) in packing order; applied twice it restores the ranking."""
        return pack_best_last(ranked) if self.reverse_packing else list(ranked)

    def configure(self, config: FinchConfig) -> FinchConfig:
        """``config`` with this allocation's granularity."""
        return config if config.granularity == self.granularity else config.replace(granularity=self.granularity)

    def weights(self, ranks: Sequence[int]) -> list[float] | None:
        """Score factors of the passages of these 1-based ranks, or ``None`` when there is no rank factor."""
        return None if self.tau is None else rank_weights(ranks, self)


def rank_weights(ranks: Sequence[int], weighting: RankWeighting = RankWeighting(tau=4.0)) -> list[float]:
    """One score factor per passage from its 1-based retrieval rank (see `RankWeighting`)."""
    if any(isinstance(rank, bool) or not isinstance(rank, int) or rank < 1 for rank in ranks):
        raise ValueError(f"ranks are 1-based integers, got {list(ranks)}.")
    if weighting.tau is None:
        return [1.0 for _ in ranks]
    return [max(weighting.floor, math.exp(-(rank - 1) / weighting.tau)) for rank in ranks]


def pack_best_last(items: Sequence[T]) -> list[T]:
    """Ranked items (best first) in packing order: best last, right before the question. Its own inverse."""
    return list(items)[::-1]
