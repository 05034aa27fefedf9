"""How retrieved passages share the budget: one entry point, `PassageAllocation`, for every front end.

Plain FINCH (``"global"``) packs the passages in rank order and lets every token compete on question
attention alone. On multi-hop questions that starves the best passages and scatters the budget over
fragments of many sentences (``docs/results/allocation_study.md``). ``"retrieval_weighted"`` (the default)
folds the retriever's ranking in through the packing order, makes sentences, not tokens, compete, and boosts
the passages that the best-ranked passage names by title (`linking`, ``docs/results/links.md``). Not in
the paper (FINCH: Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167).

`FinchRAG` and the four integration classes all call `PassageAllocation.plan`, which returns the passages in
packing order, the config to compress them with, their score priors, and a way back to the ranked order::

    plan = PassageAllocation().plan(ranked_passages, config)
    compressed = compressor.compress(plan.packed, question, config=plan.config, passage_weights=plan.passage_weights)
    per_passage = plan.restore(compressed.passage_stats())   # in the ranked order again
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, get_args

import torch

from .config import GRANULARITIES, FinchConfig, Granularity
from .linking import named_passages
from .prompts import Passage, PromptParts
from .retrieval import encode_unit_vectors, shared_embedding_model

T = TypeVar("T")
U = TypeVar("U")

Allocation = Literal["global", "retrieval_weighted"]
"""The allocations, by name; `GLOBAL` and `RETRIEVAL_WEIGHTED` are the constants to write them with."""
ALLOCATIONS: tuple[Allocation, ...] = get_args(Allocation)
GLOBAL, RETRIEVAL_WEIGHTED = ALLOCATIONS
"""``"retrieval_weighted"`` (the default): best passage last, whole sentences competing (see `RankWeighting`).
``"global"``: plain FINCH, passages in rank order, every token competing on question attention alone."""

SentenceFusionScope = Literal["one_document", "always"]
"""Where `RankWeighting.sentence_fusion_temperature` applies: to pieces of one document (`one_document`), or always."""
SENTENCE_FUSION_SCOPES: tuple[SentenceFusionScope, ...] = get_args(SentenceFusionScope)


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
    - ``link_boost`` and ``link_sources``: multiply the scores of every passage that the ``link_sources``
      best-ranked passages name by title by ``link_boost`` (`finch_rag.linking`), so the bridge passage of a
      multi-hop question survives a small budget (``docs/results/links.md``). ``link_boost=1`` turns links
      off; passages without titles, or sharing one title, never link.
    - ``fusion_temperature``: fuse the retriever's scores into the selection. Every token score of a passage
      whose retrieval score is ``s`` is multiplied by ``exp((s - s_max) / fusion_temperature)``, ``s_max`` the
      best passage's score, so the embedder decides how much a passage must out-attend the best one to
      keep its entries, while attention still picks sentences within and across passages. ``None`` (the
      default) fuses nothing; passages without a score (``None``) take the best passage's factor, 1.
      Measured on one long document cut into chunks, where attention alone echoes the question's words
      (``docs/results/leval_lead.md``).
    - ``sentence_fusion_temperature`` and ``sentence_fusion_scope``: fuse an embedding model's sentence scores
      into the selection. Each sentence of the prompt (as ``granularity="sentence"`` splits it) is embedded
      with the retriever's model, and its tokens' scores are multiplied by
      ``exp((c - c_max) / sentence_fusion_temperature)``, ``c`` the sentence's cosine similarity to the question
      and ``c_max`` the best sentence's. Attention alone favours sentences that repeat the question's words;
      the embedder reads what a sentence says. It needs an embedding model: `FinchRAG` uses its
      `EmbeddingRetriever`'s, the integrations and the server the one named by ``embedding_model`` (the
      embedded all-MiniLM-L6-v2 otherwise), see `SentenceFusion`. By default
      (``0.1``, scope ``"one_document"``) it applies only to passages that are pieces of one document
      (`one_document`): on long Wikipedia pages cut into chunks it kept the gold answer 1.11x as often as
      truncation through the default chunked read (1.21x with the passage factor below), against 0.95x without
      it, while on HotpotQA's ten titled paragraphs it lost 0.06 all-hops at B = 256
      (``docs/results/leval_lead.md``).
      ``"always"`` fuses whatever the passages; ``None`` never fuses.
    - ``passage_fusion_temperature``: where sentence fusion applies, each passage's tokens are also multiplied by
      ``exp((p - p_max) / passage_fusion_temperature)``, ``p`` the passage's cosine similarity to the question
      under the same embedder. Through the default chunked read, sentence fusion alone lost three golds in the
      best-ranked chunks that truncation keeps. With this factor (``0.05``, chosen on L-Eval pages 0-3 against
      ``0.02`` and none, confirmed on pages 4-9) the gold is kept 1.21x as often as truncation over all ten
      pages, 4 won and 0 lost (``docs/results/leval_lead.md``). Unlike ``fusion_temperature`` it needs no
      retrieval scores, so every front end applies it alike.

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
    link_boost : float
        Score factor of a passage that a best-ranked passage names, ``>= 1`` (``1`` = off).
    link_sources : int
        How many of the best-ranked passages lend their links, ``>= 1``.
    fusion_temperature : float, optional
        Temperature, in units of the retriever's score, of the retrieval-score factor; ``None`` for none.
    sentence_fusion_temperature : float, optional
        Temperature, in units of cosine similarity, of the sentence-similarity factor; ``None`` for none.
    sentence_fusion_scope : {"one_document", "always"}
        Which passages the sentence-similarity factor applies to.
    passage_fusion_temperature : float, optional
        Temperature, in units of cosine similarity, of the passage-similarity factor that sentence fusion adds
        wherever it applies; ``None`` for none.
    """

    reverse_packing: bool = True
    tau: float | None = None
    floor: float = 0.0
    granularity: Granularity = "sentence"
    link_boost: float = 4.0
    link_sources: int = 1
    fusion_temperature: float | None = None
    sentence_fusion_temperature: float | None = 0.1
    sentence_fusion_scope: SentenceFusionScope = "one_document"
    passage_fusion_temperature: float | None = 0.05

    def __post_init__(self) -> None:
        if self.tau is not None and (
            isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not self.tau > 0
        ):
            raise ValueError(f"tau is a decay length in ranks and must be > 0 (or None), got {self.tau!r}.")
        if isinstance(self.floor, bool) or not isinstance(self.floor, (int, float)) or not 0 <= self.floor <= 1:
            raise ValueError(f"floor is the lowest passage weight and must be in [0, 1], got {self.floor!r}.")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}.")
        boost = self.link_boost
        if isinstance(boost, bool) or not isinstance(boost, (int, float)) or not 1 <= boost < math.inf:
            raise ValueError(f"link_boost is a score factor and must be a finite number >= 1 (1 = off), got {boost!r}.")
        sources = self.link_sources
        if isinstance(sources, bool) or not isinstance(sources, int) or sources < 1:
            raise ValueError(
                f"link_sources (best-ranked passages that lend their links) must be an int >= 1, got {sources!r}."
            )
        for name, units in (
            ("fusion_temperature", "retrieval-score"),
            ("sentence_fusion_temperature", "cosine"),
            ("passage_fusion_temperature", "cosine"),
        ):
            temperature = getattr(self, name)
            if temperature is not None and (
                isinstance(temperature, bool)
                or not isinstance(temperature, (int, float))
                or not 0 < temperature < math.inf
            ):
                raise ValueError(
                    f"{name} is a temperature in {units} units and must be a finite number > 0 "
                    f"(or None to fuse nothing), got {temperature!r}."
                )
        if self.sentence_fusion_scope not in SENTENCE_FUSION_SCOPES:
            raise ValueError(
                f"sentence_fusion_scope must be one of {SENTENCE_FUSION_SCOPES}, got {self.sentence_fusion_scope!r}."
            )

    def fuses_sentences(self, passages: Sequence[Any]) -> bool:
        """Whether sentence fusion applies to these passages (its temperature is set, and its scope holds)."""
        if self.sentence_fusion_temperature is None:
            return False
        return self.sentence_fusion_scope == "always" or one_document(passages)

    def pack(self, ranked: Sequence[T]) -> list[T]:
        """Ranked items (best first) in packing order; applied twice it restores the ranking."""
        return pack_best_last(ranked) if self.reverse_packing else list(ranked)

    def configure(self, config: FinchConfig) -> FinchConfig:
        """``config`` with this allocation's granularity."""
        return config if config.granularity == self.granularity else config.replace(granularity=self.granularity)

    def weights(self, ranks: Sequence[int]) -> list[float] | None:
        """Score factors of the passages of these 1-based ranks, or ``None`` when there is no rank factor."""
        return None if self.tau is None else rank_weights(ranks, self)

    def fusion_weights(self, scores: Sequence[float | None] | None) -> list[float] | None:
        """Per passage, ``exp((s - s_max) / fusion_temperature)`` of its retrieval score ``s``; ``None`` when off.

        Off when ``fusion_temperature`` is ``None``, no scores are given, or no passage has one; a passage
        without a score gets 1, the best passage's factor.
        """
        if self.fusion_temperature is None or scores is None:
            return None
        known = [float(score) for score in scores if score is not None]
        if not known:
            return None
        if not all(math.isfinite(score) for score in known):
            raise ValueError(f"retrieval scores must be finite to fuse them, got {list(scores)}.")
        best = max(known)
        return [1.0 if score is None else math.exp((score - best) / self.fusion_temperature) for score in scores]

    def link_weights(self, ranked: Sequence[Any]) -> list[float] | None:
        """Per ranked passage (best first), ``link_boost`` if a best-ranked one names it, else 1; ``None`` if none is.

        Only `Passage` items have titles; plain strings never link.
        """
        if self.link_boost == 1 or not any(isinstance(item, Passage) and item.title for item in ranked):
            return None
        titles = [item.title if isinstance(item, Passage) else None for item in ranked]
        texts = [item.text if isinstance(item, Passage) else str(item) for item in ranked]
        named = named_passages(titles, texts, self.link_sources)
        return [self.link_boost if is_named else 1.0 for is_named in named] if any(named) else None


DOCUMENT_KEYS = ("source", "file_path", "file_name")
"""Metadata keys that name the document a passage was cut from: LangChain's loaders set ``source``, LlamaIndex's
readers ``file_path`` and ``file_name``."""


def one_document(passages: Sequence[Any]) -> bool:
    """Whether ``passages`` read as pieces of one document, because nothing tells them apart as documents.

    When they all carry a document's name (`DOCUMENT_KEYS`, the first one they all carry), True when it is one
    name: LangChain's loaders set ``source``, and so do the CLI's ``--file`` and `FinchRAG.answer_from_documents`
    on the pieces they cut; LlamaIndex's readers set ``file_path``. Otherwise, True when all have one title, or
    none has a title (plain text chunks, strings). Passages of distinct titles, such as a corpus of articles, are
    several documents. Titles tell the documents apart here as they do for links (`RankWeighting.link_weights`).
    A single passage is not pieces: sentence fusion was measured on chunks competing for one budget.
    """
    items = [item if isinstance(item, Passage) else Passage(str(item)) for item in passages]
    if len(items) < 2:
        return False
    for key in DOCUMENT_KEYS:
        names = [item.metadata.get(key) for item in items]
        if all(name is not None for name in names):
            return len({str(name) for name in names}) == 1
    return all((item.title or None) == (items[0].title or None) for item in items)


def rank_weights(ranks: Sequence[int], weighting: RankWeighting | None = None) -> list[float]:
    """One score factor per passage from its 1-based retrieval rank (see `RankWeighting`).

    The default weighting is ``RankWeighting()``, as everywhere else: it has no rank factor, so every weight is 1.
    """
    weighting = weighting if weighting is not None else RankWeighting()
    if any(isinstance(rank, bool) or not isinstance(rank, int) or rank < 1 for rank in ranks):
        raise ValueError(f"ranks are 1-based integers, got {list(ranks)}.")
    if weighting.tau is None:
        return [1.0 for _ in ranks]
    return [max(weighting.floor, math.exp(-(rank - 1) / weighting.tau)) for rank in ranks]


def pack_best_last(items: Sequence[T]) -> list[T]:
    """Ranked items (best first) in packing order: best last, right before the question. Its own inverse."""
    return list(items)[::-1]


@dataclass(frozen=True)
class AllocationPlan(Generic[T]):
    """What `PassageAllocation.plan` decides for one request.

    Attributes
    ----------
    packed : list
        The passages in packing order (for ``"retrieval_weighted"``, by default the best one last).
    config : FinchConfig
        The config to compress them with (with the allocation's granularity).
    passage_weights : list of float or None
        One score prior per *packed* passage (`RankWeighting.weights` times `RankWeighting.link_weights` times
        `RankWeighting.fusion_weights`), for ``FinchCompressor.compress``'s ``passage_weights``; ``None`` applies
        none.
    order : tuple of int
        ``packed[i]`` is ``ranked[order[i]]``.
    token_prior : callable, optional
        ``token_prior(parts)`` gives ``[n]`` non-negative factors for the context tokens of the prompt built from
        ``packed`` (e.g. `SentenceFusion`), multiplied onto the ``passage_weights`` (`token_weights`). ``None``
        for none.
    """

    packed: list[T]
    config: FinchConfig
    passage_weights: list[float] | None
    order: tuple[int, ...] = field(repr=False)
    token_prior: Callable[[PromptParts], torch.Tensor] | None = field(default=None, repr=False)

    def token_weights(self, parts: PromptParts) -> torch.Tensor | None:
        """``[n]`` score priors of the context tokens of ``parts`` (the prompt built from ``packed``), or ``None``.

        The ``passage_weights`` spread over each passage's tokens, times the ``token_prior``: what
        ``FinchCompressor.compress_plans`` compresses with.
        """
        return combined_weights(parts, self.passage_weights, self.prior(parts))

    def prior(self, parts: PromptParts) -> torch.Tensor | None:
        """``[n]``: the ``token_prior`` of ``parts``, checked (one finite factor >= 0 a context token), or ``None``."""
        if self.token_prior is None:
            return None
        context_length = len(parts.context_ids)
        prior = torch.as_tensor(self.token_prior(parts), dtype=torch.float32).cpu()
        if prior.shape != (context_length,):
            raise ValueError(f"token_prior gave shape {tuple(prior.shape)} for {context_length} context tokens.")
        if not torch.isfinite(prior).all() or (prior < 0).any():
            raise ValueError("token_prior must give finite factors >= 0.")
        return prior

    def restore(self, per_packed: Sequence[U]) -> list[U]:
        """One value per packed passage (e.g. ``compressed.passage_stats()``) back in the ranked order."""
        if len(per_packed) != len(self.order):
            raise ValueError(f"Got {len(per_packed)} values for {len(self.order)} packed passages.")
        restored: list[U] = list(per_packed)
        for value, index in zip(per_packed, self.order, strict=True):
            restored[index] = value
        return restored


def combined_weights(
    parts: PromptParts, passage_weights: Sequence[float] | None, prior: torch.Tensor | None
) -> torch.Tensor | None:
    """``[n]``: per-passage score priors spread over ``parts``' tokens, times a token ``prior``; ``None`` if neither."""
    weights = None if passage_weights is None else parts.token_weights(passage_weights)
    if prior is None:
        return weights
    return prior if weights is None else weights * prior


@dataclass(frozen=True)
class PassageAllocation:
    """How ranked passages share the budget ``B``: the one allocation entry point of `FinchRAG` and the integrations.

    Parameters
    ----------
    kind : {"retrieval_weighted", "global"}
        ``"retrieval_weighted"`` (default): the retriever's ranking shapes the selection as ``weighting`` says (by
        default the best passage is packed next to the question and whole sentences compete). ``"global"``: plain
        FINCH, passages packed in rank order, the config as given, no prior.
    weighting : RankWeighting
        Parameters of ``"retrieval_weighted"`` (ignored by ``"global"``).
    """

    kind: Allocation = RETRIEVAL_WEIGHTED
    weighting: RankWeighting = field(default_factory=RankWeighting)

    def __post_init__(self) -> None:
        if self.kind not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.kind!r}.")
        if not isinstance(self.weighting, RankWeighting):
            raise TypeError(f"weighting must be a RankWeighting, got {type(self.weighting).__name__}.")

    def fuses_sentences(self, packed: Sequence[Any]) -> bool:
        """Whether these passages get `SentenceFusion`: ``"retrieval_weighted"`` and the weighting fuses them."""
        return self.kind == RETRIEVAL_WEIGHTED and self.weighting.fuses_sentences(packed)

    def configure(self, config: FinchConfig) -> FinchConfig:
        """The config `plan` compresses with: ``config`` with this allocation's granularity (``"global"``: as is)."""
        return config if self.kind == GLOBAL else self.weighting.configure(config)

    def plan(
        self,
        ranked: Sequence[T],
        config: FinchConfig,
        ranks: Sequence[int] | None = None,
        scores: Sequence[float | None] | None = None,
        *,
        question: str | None = None,
        embedder: Any = None,
        scored_by: Any = None,
    ) -> AllocationPlan[T]:
        """Pack ``ranked`` (best first) and derive the config and score priors to compress it with.

        ``ranks`` are the passages' 1-based retrieval ranks (default ``1..n`` in the given order); they only
        matter for a ``weighting`` with a rank factor (``tau``). ``scores`` are their retrieval scores
        (``None`` where unknown); they only matter for a ``weighting`` with ``fusion_temperature``.

        With the ``question`` the passages will be compressed for, a plan whose passages the weighting fuses
        (`fuses_sentences`) carries a `SentenceFusion` token prior on ``embedder``: a model `check_embedder`
        accepts, or a sentence-transformers name or path (``None``: the embedded all-MiniLM-L6-v2), loaded once
        per process by `finch_rag.retrieval.shared_embedding_model`. Without a question nothing is fused.
        ``scored_by`` is the model under which ``scores`` are the passages' cosine similarities to ``question`` (an
        `EmbeddingRetriever`'s model, for what it retrieved for that question): when it is the fusion embedder, the
        passage factor takes the scores instead of embedding the passages again.
        """
        ranked = list(ranked)
        ranks = list(ranks) if ranks is not None else list(range(1, len(ranked) + 1))
        if len(ranks) != len(ranked):
            raise ValueError(f"Got {len(ranks)} ranks for {len(ranked)} passages.")
        if scores is not None and len(scores) != len(ranked):
            raise ValueError(f"Got {len(scores)} retrieval scores for {len(ranked)} passages.")
        if self.kind == GLOBAL:
            return AllocationPlan(ranked, config, None, tuple(range(len(ranked))))
        order = tuple(self.weighting.pack(range(len(ranked))))
        weights = self.weighting.weights([ranks[index] for index in order])
        for factors in (self.weighting.link_weights(ranked), self.weighting.fusion_weights(scores)):
            if factors is not None:
                so_far = weights or [1.0] * len(order)
                weights = [weight * factors[index] for weight, index in zip(so_far, order, strict=True)]
        packed = [ranked[index] for index in order]
        token_prior = None
        temperature = self.weighting.sentence_fusion_temperature
        if question is not None and temperature is not None and self.fuses_sentences(packed):
            if embedder is None or isinstance(embedder, (str, os.PathLike)):
                embedder = shared_embedding_model(embedder)
            passage_temperature = self.weighting.passage_fusion_temperature
            texts: tuple[str, ...] = ()
            similarities: tuple[float, ...] = ()
            if passage_temperature is not None:
                texts = tuple(item.text if isinstance(item, Passage) else str(item) for item in packed)
                # Only when every passage has a score under this very embedder; otherwise embed them all.
                scored = [scores[index] for index in order] if scores is not None else []
                known = [float(score) for score in scored if score is not None]
                if scored_by is not None and scored_by is embedder and scored and len(known) == len(scored):
                    similarities = tuple(known)
            token_prior = SentenceFusion(
                check_embedder(embedder), question, temperature, passage_temperature, texts, similarities
            )
        return AllocationPlan(packed, self.configure(config), weights, order, token_prior)


@dataclass(frozen=True)
class SentenceFusion:
    """A token prior from an embedding model: each sentence's, and passage's, similarity to the question.

    ``SentenceFusion(embedder, question, temperature)(parts)`` embeds ``question`` and every sentence of
    ``parts`` (`PromptParts.sentence_ids`, the sentences ``granularity="sentence"`` makes compete) with
    ``embedder`` (see `check_embedder`), and gives each context token
    ``exp((c - c_max) / temperature)``, ``c`` its sentence's cosine similarity to the question. With
    ``passage_temperature`` and the packed ``passages``' texts, each token also gets
    ``exp((p - p_max) / passage_temperature)``, ``p`` its passage's similarity. It is the ``token_prior``
    `PassageAllocation.plan` puts on a plan when `RankWeighting.fuses_sentences` its passages.

    ``passage_similarities``, when given, are those ``p`` already known (a retriever's scores under the same model,
    see `PassageAllocation.plan`'s ``scored_by``): the passages are then not embedded a second time.
    """

    embedder: Any = field(repr=False)
    question: str
    temperature: float
    passage_temperature: float | None = None
    passages: tuple[str, ...] = field(default=(), repr=False)
    passage_similarities: tuple[float, ...] = field(default=(), repr=False)

    def similarities(self, parts: PromptParts) -> torch.Tensor:
        """``[n]``: the cosine similarity of each context token's sentence to the question."""
        return self._similarities(parts, with_passages=False)[0]

    def __call__(self, parts: PromptParts) -> torch.Tensor:
        passage_temperature = self.passage_temperature if self.passages else None
        sentence, passage = self._similarities(parts, with_passages=passage_temperature is not None)
        prior = torch.exp((sentence - sentence.max()) / self.temperature)
        if passage is None or passage_temperature is None:
            return prior
        return prior * torch.exp((passage - passage.max()) / passage_temperature)

    def _similarities(self, parts: PromptParts, with_passages: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per context token, its sentence's and (``with_passages``) its passage's similarity to the question."""
        labels, inverse = torch.unique(parts.sentence_ids(), return_inverse=True)
        context_text, token_offsets, _, passage_starts = parts._layout()
        offsets = torch.tensor(token_offsets, dtype=torch.long).reshape(-1, 2)
        starts = torch.full((len(labels),), len(context_text), dtype=torch.long)
        starts = starts.scatter_reduce(0, inverse, offsets[:, 0], reduce="amin")
        ends = torch.zeros(len(labels), dtype=torch.long).scatter_reduce(0, inverse, offsets[:, 1], reduce="amax")
        texts = [context_text[start:end] for start, end in zip(starts.tolist(), ends.tolist(), strict=True)]
        passages = list(self.passages) if with_passages else []
        if passages and len(passages) != len(passage_starts):
            raise ValueError(f"Got {len(passages)} passage texts for a prompt of {len(passage_starts)} passages.")
        known = list(self.passage_similarities) if passages else []
        if known and len(known) != len(passages):
            raise ValueError(f"Got {len(known)} passage similarities for {len(passages)} passages.")
        vectors = question_and_text_vectors(self.embedder, self.question, [*texts, *([] if known else passages)])
        similarity = vectors[1:] @ vectors[0]
        sentence = similarity[: len(texts)][inverse]
        if not passages:
            return sentence, None
        per_passage = torch.tensor(known, dtype=similarity.dtype) if known else similarity[len(texts) :]
        token_starts = torch.tensor(passage_starts, dtype=torch.long)
        passage_of = torch.bucketize(torch.arange(len(parts.context_ids)), token_starts, right=True) - 1
        return sentence, per_passage[passage_of.clamp(min=0)]


def check_embedder(embedder: Any) -> Any:
    """``embedder`` if sentence fusion can embed with it, else a `TypeError` that says what can.

    Two kinds of model work: a sentence-transformers model (anything with its ``encode``), and an object with
    ``embed_query(text)`` and ``embed_documents(texts)`` returning vectors, the interface LangChain's ``Embeddings``
    implement (the question goes through ``embed_query``, so a model with a query instruction gets it). A name or
    path of a sentence-transformers model, and ``None`` (the embedded default), pass too: `PassageAllocation.plan`
    loads them.
    """
    if embedder is None or isinstance(embedder, (str, os.PathLike)):
        return embedder
    if _embeds_queries(embedder) or callable(getattr(embedder, "encode", None)):
        return embedder
    raise TypeError(
        f"Sentence fusion cannot embed with a {type(embedder).__name__!r} object. Give a sentence-transformers "
        "model or its name or path, or an object with embed_query(text) and embed_documents(texts) (a LangChain "
        "Embeddings; the LlamaIndex classes also take a LlamaIndex BaseEmbedding)."
    )


def question_and_text_vectors(embedder: Any, question: str, texts: Sequence[str]) -> torch.Tensor:
    """``[1 + n, d]`` unit vectors: ``question``'s, then each text's, embedded by ``embedder`` (`check_embedder`).

    A sentence-transformers model encodes through `finch_rag.retrieval.encode_unit_vectors` (under its
    `model_lock`, in batches cut by length).
    """
    if _embeds_queries(embedder):
        rows = [embedder.embed_query(question), *embedder.embed_documents(list(texts))]
        vectors = torch.as_tensor(rows, dtype=torch.float32)
        return torch.nn.functional.normalize(vectors, dim=-1)
    return encode_unit_vectors(embedder, [question, *texts])


def _embeds_queries(embedder: Any) -> bool:
    return callable(getattr(embedder, "embed_query", None)) and callable(getattr(embedder, "embed_documents", None))
