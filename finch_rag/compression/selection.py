"""Which entries survive a step: the iterative budget and top-k selection.

Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167), Alg. 1: after chunk
``t`` the cache may hold ``B_t = round(B * seen_t / n)`` context entries, and earlier survivors compete
again with the new chunk's tokens.
"""

from __future__ import annotations

import torch


def step_budget(budget: int, seen_tokens: int, context_length: int) -> int:
    """``B_t``: the share of the final budget ``B`` earned by the ``seen_tokens`` read so far."""
    return round(budget * seen_tokens / context_length)


def select_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores along the last axis, in ascending (original) order.

    Parameters
    ----------
    scores : torch.Tensor
        ``[..., n]`` candidate scores.
    keep : int
        How many to keep, ``0 <= keep <= n``.

    Returns
    -------
    torch.LongTensor
        ``[..., keep]``, sorted ascending so the kept entries stay in reading order.
    """
    if keep >= scores.shape[-1]:
        return torch.arange(scores.shape[-1], device=scores.device).expand(*scores.shape[:-1], -1)
    return scores.topk(keep, dim=-1, sorted=False).indices.sort(dim=-1).values
