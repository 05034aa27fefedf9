"""One recorded single pass of `FinchRAG`'s default allocation: every budget's selection from one forward.

FINCH's chunk loop depends on ``B``, but with ``chunk_size=None`` it is one pass whose question attention does
not: the pass is run once with the budget at ``n - 1`` and `RecordingSelection` keeps the step's candidates.
Any budget (or budget rule, or extra prior) then selects from those scores exactly as
``compress(chunk_size=None)`` at that budget would, so a sweep over budgets costs one forward per question.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from finch_rag import FinchConfig, Passage, PassageAllocation
from finch_rag.allocation import AllocationPlan, combined_weights
from finch_rag.compression.loop import CompressionRequest, compress_batch
from finch_rag.compression.registry import selection_policy
from finch_rag.compression.selection import CandidateScores, RecordingSelection, SelectionPolicy
from finch_rag.prompts import PromptParts, build_prompt

Span = tuple[int, int, int]


@dataclass
class RecordedPass:
    """The packed prompt, the policy, and the single step's candidates of one question."""

    plan: AllocationPlan[Passage]
    parts: PromptParts
    policy: SelectionPolicy
    candidates: CandidateScores
    seconds: float
    prior: torch.Tensor | None = None  # the plan's token prior (sentence fusion), when it has one

    @property
    def context_length(self) -> int:
        return len(self.parts.context_ids)

    def evidence_masks(self, evidence: Sequence[Span]) -> list[torch.Tensor]:
        """``[n]`` token masks of evidence spans given on the ranked passages, in the packed prompt."""
        packed_index = {ranked_at: packed_at for packed_at, ranked_at in enumerate(self.plan.order)}
        return [self.parts.span_tokens([(packed_index[p], start, end)]) for p, start, end in evidence]

    def token_weights(self, passage_weights: Sequence[float] | None) -> torch.Tensor | None:
        """``[n]``: these packed-passage priors (``None``: none) over the tokens, times the pass's token prior."""
        return combined_weights(self.parts, passage_weights, self.prior)

    def reweighted(self, passage_weights: Sequence[float] | None) -> CandidateScores:
        """The pass's candidates with other packed-passage priors (``None``: none), as compression would weigh them."""
        token_weights = self.token_weights(passage_weights)
        weights = (
            None if token_weights is None else [token_weights[positions] for positions in self.candidates.positions]
        )
        return dataclasses.replace(self.candidates, weights=weights)

    def kept(self, budget: int, candidates: CandidateScores | None = None, policy: Any = None) -> torch.Tensor:
        """``[n]`` float 0/1: what ``policy`` (default: the pass's) keeps at ``budget`` from ``candidates``."""
        candidates = candidates or self.candidates
        chosen, _ = (policy or self.policy).select(candidates, min(budget, self.context_length))
        kept = torch.zeros(self.context_length)
        kept[candidates.positions[0][0, 0][chosen[0][0, 0]]] = 1.0
        return kept


def record_pass(
    model: Any,
    tokenizer: Any,
    passages: Sequence[Passage],
    question: str,
    config: FinchConfig | None = None,
    allocation: PassageAllocation | None = None,
    fuse: bool = False,
) -> RecordedPass:
    """Pack ``passages`` (ranked, best first) as ``allocation`` plans them and record one single pass.

    With ``fuse`` the plan is made for ``question``, so passages the allocation fuses (pieces of one document,
    by default) carry sentence fusion's prior, as in `FinchRAG`. Without it (what the earlier recordings did,
    and what `benchmarks.leval_lead` replays its levers on) the pass is attention and passage priors only.
    """
    config = (config or FinchConfig(progress=False)).replace(chunk_size=None)
    plan = (allocation or PassageAllocation()).plan(list(passages), config, question=question if fuse else None)
    parts = build_prompt(tokenizer, plan.packed, question)
    n = len(parts.context_ids)
    prior = plan.prior(parts)  # run once: it is an embedding of every sentence and passage
    token_weights = combined_weights(parts, plan.passage_weights, prior)
    request = CompressionRequest(
        prefix_ids=torch.tensor([parts.prefix_ids]),
        context_ids=torch.tensor([parts.context_ids]),
        question_ids=torch.tensor([parts.question_ids]),
        passage_starts=parts.passage_token_starts,
        token_weights=token_weights,
        span_ids=parts.sentence_ids() if plan.config.granularity == "sentence" else None,
    )
    text_config = model.config.get_text_config(decoder=True)
    policy = selection_policy(plan.config, text_config.num_hidden_layers, getattr(text_config, "layer_types", None))
    recorder = RecordingSelection(policy)
    started = time.perf_counter()
    with torch.inference_mode():
        compress_batch(model, [request], plan.config.replace(target_tokens=max(n - 1, 1)), policy=recorder)
    return RecordedPass(plan, parts, policy, recorder.steps[0], time.perf_counter() - started, prior)


@dataclass
class Truncation:
    """Top-k truncation of ranked passages: it keeps the first ``B`` context tokens of the ranked prompt.

    No model call is needed to know what it keeps; ``evidence`` masks are on that ranked prompt.
    """

    context_length: int
    evidence: list[torch.Tensor]

    @classmethod
    def of(cls, tokenizer: Any, passages: Sequence[Passage], question: str, evidence: Sequence[Span]) -> Truncation:
        ranked = build_prompt(tokenizer, list(passages), question)
        return cls(len(ranked.context_ids), [ranked.span_tokens([span]) for span in evidence])

    def kept(self, budget: int) -> torch.Tensor:
        """``[n]`` float 0/1: the first ``budget`` tokens."""
        return (torch.arange(self.context_length) < budget).float()
