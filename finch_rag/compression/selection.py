"""Which entries survive a step: selection policies, the iterative budget and top-k.

Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167), Alg. 1: after chunk
``t`` the cache may hold ``B_t = round(B * seen_t / n)`` context entries, and earlier survivors compete
again with the new chunk's tokens. Which ones win is a *policy*, in the spirit of kvpress's presses:
`SelectionPolicy.select` calls `score`, and a policy overrides only the step that differs. The chunk
loop (`loop`) builds a `CandidateScores` for each request at each step and asks its policy what to keep;
it never branches on the policy's type.

Policies: `PerHeadSelection` (kvpress's ``FinchPress``), `PerLayerSelection` (the authors' code),
`SharedSelection` (finch-rag's default, not in the paper), and the benchmark controls `RandomSelection`,
`RecencySelection` and `FirstSelection` (not in the paper either), which need no attention at all. Which
policy a `FinchConfig` names is `registry.selection_policy`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .scoring import per_head_scores, per_layer_scores, pool_spans, shared_scores, smooth_scores


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


@dataclass(frozen=True)
class CandidateScores:
    """What one step hands a policy, for one request: the candidates and what is known about them.

    The candidates of a step are the request's earlier survivors followed by the new chunk's tokens, per
    layer and KV head (with per-head selection, heads may hold different survivors).

    Parameters
    ----------
    layer_scores : list of torch.Tensor
        Per layer ``[1, num_kv_heads, group_size, c]`` float32: the mean over the question rows of each
        query head's attention to each candidate (`attention.question_row_scores`). Empty when the policy
        does not need attention (``needs_attention=False``): the loop then does not capture it.
    positions : list of torch.Tensor
        Per layer ``[1, num_kv_heads, c]`` long: each candidate's 0-based position in the context.
    weights : list of torch.Tensor, optional
        Per layer ``[1, num_kv_heads, c]``: a non-negative prior per candidate (`FinchRAG`'s passage
        weights), multiplied onto the scores; ``None`` for no prior.
    spans : list of torch.Tensor, optional
        Per layer ``[1, num_kv_heads, c]`` long: each candidate's sentence when
        ``granularity="sentence"``, else ``None``.
    context_length : int
        ``n``, the request's context length.
    budget : int
        ``B``, the request's final budget (``B_t`` of this step is the ``keep`` passed to ``select``).
    request : int
        The request's index in its batch (0 when compressed alone).
    """

    layer_scores: list[torch.Tensor]
    positions: list[torch.Tensor]
    weights: list[torch.Tensor] | None = None
    spans: list[torch.Tensor] | None = None
    context_length: int = 0
    budget: int = 0
    request: int = 0


Selected = tuple[list[torch.Tensor], list[torch.Tensor]]
"""Per layer, indices ``[1, kvh, k]`` into the candidates (ascending) and their scores ``[1, kvh, k]``."""


class SelectionPolicy:
    """Base of the selection policies: score the candidates, then keep the best ``keep`` per KV head.

    `select` calls `score` (per layer ``[1, kvh, c]``), applies the adjustments every policy shares in
    `adjust` (smoothing, sentence pooling, priors), and keeps the top ``keep`` per layer and KV head. A
    policy overrides `score`, or `select` when it decides differently (one set for all layers, a fixed
    rule). `select` may keep fewer than ``keep`` (the controls do), but the same number in every layer and
    head; the loop packs what it returns. Policies hold configuration only, never per-call state, so one
    may serve concurrent calls (`RecordingSelection`, made for one call, is the exception).

    Attributes
    ----------
    needs_attention : bool
        Whether `score` reads ``CandidateScores.layer_scores``. When ``False`` the loop does not capture
        question attention and does not feed the question at all.
    smoothing : int
        Width of the moving average over candidates (``1`` = off); not applied with sentence spans.
    """

    needs_attention: bool = True
    smoothing: int = 1

    def score(self, candidates: CandidateScores) -> list[torch.Tensor]:
        """Per layer ``[1, kvh, c]``: how much each KV head wants each candidate (higher is kept first)."""
        raise NotImplementedError(f"{type(self).__name__} must implement score() or select().")

    def step_keep(self, budget: int, seen_tokens: int, context_length: int) -> int:
        """How many entries a step may keep: FINCH's ``B_t`` (`step_budget`)."""
        return step_budget(budget, seen_tokens, context_length)

    def adjust(self, scores: torch.Tensor, spans: torch.Tensor | None, weights: torch.Tensor | None) -> torch.Tensor:
        """The one place where sentence pooling (or smoothing) and priors apply, on ``[..., c]`` scores.

        With ``spans`` each candidate takes its sentence's mean score (``granularity="sentence"``);
        otherwise scores are smoothed over ``smoothing`` neighbours. ``weights`` then multiply them.
        """
        scores = smooth_scores(scores, self.smoothing) if spans is None else pool_spans(scores, spans)
        return scores if weights is None else scores * weights

    def select(self, candidates: CandidateScores, keep: int) -> Selected:
        """Per layer, the ``keep`` best candidates of each KV head (ascending indices) and their scores."""
        indices, kept = [], []
        for layer, layer_scores in enumerate(self.score(candidates)):
            scores = self.adjust(layer_scores, _layer(candidates.spans, layer), _layer(candidates.weights, layer))
            chosen = select_top(scores, keep)
            indices.append(chosen)
            kept.append(scores.gather(-1, chosen))
        return indices, kept


def _layer(values: list[torch.Tensor] | None, layer: int) -> torch.Tensor | None:
    return None if values is None else values[layer]


def _first_head(values: list[torch.Tensor] | None) -> torch.Tensor | None:
    return None if values is None else values[0][:, 0]


@dataclass(frozen=True)
class PerHeadSelection(SelectionPolicy):
    """Each KV head keeps its own candidates, scored by the mean over its query group.

    kvpress's ``FinchPress`` mode: with ``chunk_size=None``, ``normalize_scores=True`` and no smoothing it
    keeps the same positions as kvpress. Based on FINCH (TACL 2024, https://arxiv.org/abs/2408.00167).

    Parameters
    ----------
    smoothing : int
        Moving-average width over candidates (``1`` = off; not in the paper).
    """

    smoothing: int = 1

    def score(self, candidates: CandidateScores) -> list[torch.Tensor]:
        return [per_head_scores(scores) for scores in candidates.layer_scores]


@dataclass(frozen=True)
class PerLayerSelection(SelectionPolicy):
    """Every head of a layer keeps the same candidates, scored by the mean over all its heads.

    The authors' reference code (FINCH, TACL 2024, https://arxiv.org/abs/2408.00167).

    Parameters
    ----------
    smoothing : int
        Moving-average width over candidates (``1`` = off; not in the paper).
    """

    smoothing: int = 1

    def score(self, candidates: CandidateScores) -> list[torch.Tensor]:
        return [per_layer_scores(scores) for scores in candidates.layer_scores]


@dataclass(frozen=True)
class SharedSelection(SelectionPolicy):
    """One set of candidates for every layer and head, voted by ``voting_layers``.

    Each voting layer's head-averaged scores are normalised to sum 1, then averaged
    (`scoring.shared_scores`). Not in the paper: finch-rag's default, measured better on needles
    (``docs/results/niah_study_4000.md``). Candidates are the same in every layer and head under this
    policy, so the set is chosen once and repeated.

    Parameters
    ----------
    voting_layers : tuple of int, optional
        Layer indices whose scores vote; ``None`` lets every layer vote.
    smoothing : int
        Moving-average width over candidates (``1`` = off).
    """

    voting_layers: tuple[int, ...] | None = None
    smoothing: int = 1

    def shared(self, candidates: CandidateScores) -> torch.Tensor:
        """``[1, c]``: the voted score of each candidate, before `adjust`."""
        layers = self.voting_layers if self.voting_layers is not None else range(len(candidates.layer_scores))
        return shared_scores(candidates.layer_scores, list(layers))

    def score(self, candidates: CandidateScores) -> list[torch.Tensor]:
        shared = self.shared(candidates).unsqueeze(1)
        return [shared.expand(-1, scores.shape[1], -1) for scores in candidates.layer_scores]

    def select(self, candidates: CandidateScores, keep: int) -> Selected:
        # Every layer and head holds the same candidates here, so the first head's spans and priors hold for all.
        spans, weights = _first_head(candidates.spans), _first_head(candidates.weights)
        scores = self.adjust(self.shared(candidates), spans, weights)
        chosen = select_top(scores, keep)  # [1, keep]
        kept = scores.gather(-1, chosen)
        indices, kept_scores = [], []
        for positions in candidates.positions:
            num_kv_heads = positions.shape[1]
            indices.append(chosen.unsqueeze(1).expand(-1, num_kv_heads, -1))
            kept_scores.append(kept.unsqueeze(1).expand(-1, num_kv_heads, -1))
        return indices, kept_scores


class ControlSelection(SelectionPolicy):
    """Base of the benchmark controls: a fixed rule, not attention, picks the final ``B`` positions.

    Not in the paper; these are the baselines of ``docs/benchmarks.md``. `priority` ranks the context's
    positions up front and the final set is its top ``B``. The context is still read chunk by chunk like
    FINCH, and after each chunk every candidate outside the final set is evicted (the survivors are
    re-rotated to contiguous positions as usual), so the cache never holds more than ``|P| + B + S``
    entries and later chunks are read over an already-evicted cache. There is no per-step ``B_t``: a
    fixed rule gains nothing by competing again, and with ``B_t`` the early chunks could not keep their
    share of e.g. the first ``B`` tokens. Controls ignore priors, smoothing and sentences, and the
    question is not fed (``needs_attention=False``). Kept scores are the rule's priorities.
    """

    needs_attention = False

    def priority(self, context_length: int) -> torch.Tensor:
        """``[n]`` float64, distinct values: higher positions in this ranking are kept first."""
        raise NotImplementedError

    def step_keep(self, budget: int, seen_tokens: int, context_length: int) -> int:
        return budget

    def score(self, candidates: CandidateScores) -> list[torch.Tensor]:
        priority = self.priority(candidates.context_length).to(candidates.positions[0].device)
        return [priority[positions] for positions in candidates.positions]

    def select(self, candidates: CandidateScores, keep: int) -> Selected:
        """The candidates inside the final set (at most ``keep``), the same number for every head."""
        n, budget = candidates.context_length, candidates.budget
        priority = self.priority(n).to(candidates.positions[0].device)
        final = torch.zeros(n, dtype=torch.bool, device=priority.device)
        final[priority.topk(min(budget, n)).indices] = True
        indices, kept = [], []
        for positions in candidates.positions:
            member = final[positions]
            count = int(member[0, 0].sum())
            if count > keep or not bool((member.sum(dim=-1) == count).all()):
                raise ValueError(f"{type(self).__name__}: heads hold different candidates; controls need one set.")
            chosen = select_top(member.to(priority.dtype), count)
            indices.append(chosen)
            kept.append(priority[positions].gather(-1, chosen))
        return indices, kept


@dataclass(frozen=True)
class RandomSelection(ControlSelection):
    """Control: a uniformly random set of ``B`` positions (not in the paper).

    The set is ``torch.randperm(n, generator=manual_seed(seed))[:B]``, so it is deterministic per
    request: the same ``seed``, context length and budget always keep the same positions.

    Parameters
    ----------
    seed : int
        Seed of the permutation.
    """

    seed: int = 0

    def priority(self, context_length: int) -> torch.Tensor:
        order = torch.randperm(context_length, generator=torch.Generator().manual_seed(self.seed))
        priority = torch.empty(context_length, dtype=torch.float64)
        priority[order] = torch.arange(context_length, 0, -1, dtype=torch.float64)
        return priority


@dataclass(frozen=True)
class RecencySelection(ControlSelection):
    """Control: keep the most recent ``B`` positions, the last tokens of the context (not in the paper)."""

    def priority(self, context_length: int) -> torch.Tensor:
        return torch.arange(context_length, dtype=torch.float64)


@dataclass(frozen=True)
class FirstSelection(ControlSelection):
    """Control: keep the first ``B`` positions of the context (not in the paper)."""

    def priority(self, context_length: int) -> torch.Tensor:
        return -torch.arange(context_length, dtype=torch.float64)


@dataclass
class RecordingSelection(SelectionPolicy):
    """Asks ``inner`` what to keep, and records every step's candidates on the way.

    Use one recorder per call (it holds that call's records). With ``chunk_size=None`` and a budget below
    the context length there is one step per request, whose candidates are the whole context: its
    ``layer_scores`` are then the question's attention to every context token, as the loop computed it.

    Parameters
    ----------
    inner : SelectionPolicy
        The policy that decides.
    steps : list of CandidateScores
        Filled during compression, in call order (``CandidateScores.request`` tells batched requests
        apart).
    """

    inner: SelectionPolicy
    steps: list[CandidateScores] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.needs_attention = self.inner.needs_attention

    def score(self, candidates: CandidateScores) -> list[torch.Tensor]:
        return self.inner.score(candidates)

    def step_keep(self, budget: int, seen_tokens: int, context_length: int) -> int:
        return self.inner.step_keep(budget, seen_tokens, context_length)

    def select(self, candidates: CandidateScores, keep: int) -> Selected:
        self.steps.append(candidates)
        return self.inner.select(candidates, keep)
