"""Automatic budget: keep the fewest entries that hold a chosen share of the question's attention.

With ``FinchConfig(target_tokens="auto")`` the user does not pick ``B``. The chunk loop runs as FINCH does
(Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167, Alg. 1) with the cap
``max_target_tokens`` as its budget, so the per-step budgets ``B_t`` and the memory bound are those of a
fixed budget equal to the cap. At the last step, where the final survivors are chosen, this policy keeps
the smallest number of candidates whose scores, after the inner policy's own pooling (sentence means with
``granularity="sentence"``) and priors, add up to at least ``attention_mass`` of the scores of all of that
step's candidates, and never more than the cap. Not in the paper.

The share is measured over the last step's candidates (the earlier survivors and the last chunk), the only
place where the loop sees its final choice whole; with ``chunk_size=None`` that is the whole context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .selection import CandidateScores, Selected, SelectionPolicy


def is_last_step(candidates: CandidateScores) -> bool:
    """Whether the candidates include the context's last token: the step that decides what remains."""
    return int(candidates.positions[0].max()) == candidates.context_length - 1


def mass_count(scores: torch.Tensor, mass: float) -> int:
    """The fewest top entries of ``scores`` (``[..., c]``, non-negative) whose sum reaches ``mass`` of the total.

    Over several rows (layers, heads) the largest count is returned, so every row holds at least ``mass``.
    """
    ranked = scores.reshape(-1, scores.shape[-1]).clamp(min=0).sort(dim=-1, descending=True).values
    share = ranked.cumsum(dim=-1) / ranked.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(ranked.dtype).tiny)
    # Entries needed: those before the cumulative share reaches ``mass``, plus the one that reaches it.
    needed = (share < mass - 1e-6).sum(dim=-1) + 1
    return int(needed.clamp(max=scores.shape[-1]).max())


@dataclass(frozen=True)
class AttentionMassSelection(SelectionPolicy):
    """Wraps a policy: at the last step, keep only the entries that hold ``mass`` of its scores.

    Earlier steps are the inner policy's, unchanged. At the last step the inner policy scores every
    candidate (`select` with ``keep`` = all), the fewest top-scored ones holding ``mass`` of the total
    give the count (per-head selection: the largest count over layers and heads), and the inner policy
    keeps that many, at most ``keep`` (the cap).

    Parameters
    ----------
    inner : SelectionPolicy
        The policy that ranks the candidates (`registry.selection_policy`'s choice for the config).
    mass : float
        Share of the question's attention mass to keep, in ``(0, 1]``.
    """

    inner: SelectionPolicy
    mass: float = 0.9

    def __post_init__(self) -> None:
        if not self.inner.needs_attention:
            raise ValueError(
                f"{type(self.inner).__name__} does not use attention, so it has no attention mass to keep; "
                'use a fixed target_tokens with it, or an attention-based selection with target_tokens="auto".'
            )
        if isinstance(self.mass, bool) or not isinstance(self.mass, (int, float)) or not 0 < self.mass <= 1:
            raise ValueError(f"mass is a share of the attention and must be in (0, 1], got {self.mass!r}.")

    def score(self, candidates: CandidateScores) -> list[torch.Tensor]:
        return self.inner.score(candidates)

    def step_keep(self, budget: int, seen_tokens: int, context_length: int) -> int:
        return self.inner.step_keep(budget, seen_tokens, context_length)

    def select(self, candidates: CandidateScores, keep: int) -> Selected:
        if not is_last_step(candidates):
            return self.inner.select(candidates, keep)
        _, scores = self.inner.select(candidates, candidates.positions[0].shape[-1])
        count = mass_count(torch.stack([layer_scores[0] for layer_scores in scores]), self.mass)
        return self.inner.select(candidates, min(keep, count))
