"""`FinchRAG`: retrieve passages, compress them with FINCH for the question, answer from the compressed cache.

Top-k truncation keeps the best retrieved passages whole until the window is full. `FinchRAG` retrieves
more, packs them (each passage's title before its text; by default the best one last, next to the
question, see `finch_rag.allocation`) and lets the model keep the ``B`` key/value entries the question
attends to most, wherever they sit. Based on FINCH (Corallo &
Papotti, TACL 2024, https://arxiv.org/abs/2408.00167).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .allocation import (
    ALLOCATIONS,
    RETRIEVAL_WEIGHTED,
    Allocation,
    PassageAllocation,
    RankWeighting,
    check_embedder,
)
from .compressor import FinchCompressor
from .config import FinchConfig
from .context import CompressedContext
from .deadline import Deadline, DeadlineLike
from .progress import progress_bar
from .prompts import Passage
from .retrieval import (
    NO_CONTEXT_ANSWER,
    Document,
    EmbeddingRetriever,
    RetrievedPassage,
    Retriever,
    shared_embedding_model,
)

logger = logging.getLogger(__name__)

__all__ = ["ALLOCATIONS", "NO_CONTEXT_ANSWER", "Allocation", "Answer", "FinchRAG", "RankWeighting", "Source"]


@dataclass(frozen=True)
class Source:
    """A passage the answer was compressed from.

    Attributes
    ----------
    text, title, metadata
        As retrieved.
    score : float or None
        Retrieval score (``None`` for passages given directly, see `FinchRAG.answer_from`).
    rank : int
        1-based retrieval rank. Sources are listed by rank; the packed order may differ
        (`RankWeighting.reverse_packing`).
    kept_fraction : float
        Fraction of this passage's KV entries (over its tokens, layers and KV heads) that survived compression.
    """

    text: str
    title: str | None
    metadata: dict[str, Any]
    score: float | None
    rank: int
    kept_fraction: float


@dataclass(frozen=True)
class Answer:
    """What `FinchRAG.ask` returns.

    Attributes
    ----------
    question : str
    text : str
        The generated answer, or `NO_CONTEXT_ANSWER` when nothing was retrieved.
    sources : list of Source
        The passages in packing (rank) order, each with its retrieval score and kept fraction.
    compressed : CompressedContext or None
        The compressed cache, for inspection or more answers (``compressor.generate(answer.compressed)``);
        ``None`` when nothing was retrieved.
    stats : dict
        ``retrieval_seconds``, ``compression_seconds``, ``generation_seconds``, ``total_seconds``,
        ``tokens_before`` (context tokens retrieved), ``tokens_after`` (kept per layer and KV head),
        ``compression_factor``, ``passages``, ``chunks``, ``peak_kv_entries``, ``allocation``, and
        ``sentence_fusion`` (whether `RankWeighting`'s sentence fusion applied) when something was compressed.
    """

    question: str
    text: str
    sources: list[Source]
    compressed: CompressedContext | None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def has_context(self) -> bool:
        """False when nothing was retrieved and the answer is `NO_CONTEXT_ANSWER`."""
        return self.compressed is not None

    def __str__(self) -> str:
        return self.text


class FinchRAG:
    """Retrieval-augmented generation whose context is compressed by FINCH for each question.

    Parameters
    ----------
    documents : iterable of Document, optional
        Strings or ``(text, metadata)`` pairs, added to the retriever (which must then have ``add``).
        The title written before each passage is metadata ``"title"``, else ``"source"``.
    retriever : Retriever, optional
        Default: an `EmbeddingRetriever` on the embedded all-MiniLM-L6-v2 (offline), built on first use.
    compressor : FinchCompressor, optional
        Default: ``FinchCompressor`` on `load_model()`, the embedded SmolLM2-135M-Instruct (offline).
    config : FinchConfig, optional
        Budget and chunking for every question. Default: the compressor's config.
    top_k : int
        Passages retrieved per question. FINCH pays off when this is larger than what would fit whole.
    allocation : {"global", "retrieval_weighted"}
        How the passages share the budget (`finch_rag.allocation.PassageAllocation`, the same object the
        integrations use). ``"retrieval_weighted"`` (default): the retriever's ranking shapes the selection
        (`RankWeighting`: the best passage is packed next to the question, and whole sentences compete for
        the budget; when the passages are pieces of one document, the embedder's sentence similarity to the
        question is fused into their scores, `RankWeighting.sentence_fusion_scope`). ``"global"``: plain FINCH,
        passages packed in rank order and every token competing for the budget on question attention alone
        (with ``config`` as given).
    weighting : RankWeighting, optional
        Parameters of ``"retrieval_weighted"``; default ``RankWeighting()``.
    embedding_model : optional
        What sentence fusion embeds with: a sentence-transformers model, its name or path, or an object with
        ``embed_query`` and ``embed_documents`` (`finch_rag.allocation.check_embedder`). Default: the
        retriever's model when it is an `EmbeddingRetriever`, else the embedded all-MiniLM-L6-v2.
    max_new_tokens : int
        Length limit of each answer.

    Notes
    -----
    Errors and empty results: an empty or non-string question is a `ValueError` / `TypeError`, and so is
    asking a retriever that reports an empty corpus (``len(retriever) == 0``). When the retriever returns no
    passage for a question, `ask` does not call the model and returns an `Answer` whose ``text`` is
    `NO_CONTEXT_ANSWER`, with no sources, ``compressed=None`` and ``has_context`` False.

    Several threads may call `ask` on one instance: it keeps no per-call state, the default retriever
    locks its index, and compression and generation on one model are serialised by the model's lock.
    """

    def __init__(
        self,
        documents: Iterable[Document] | None = None,
        *,
        retriever: Retriever | None = None,
        compressor: FinchCompressor | None = None,
        config: FinchConfig | None = None,
        top_k: int = 8,
        allocation: Allocation = RETRIEVAL_WEIGHTED,
        weighting: RankWeighting | None = None,
        embedding_model: Any = None,
        max_new_tokens: int = 64,
    ) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}.")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}.")
        if config is not None and not isinstance(config, FinchConfig):
            raise TypeError(f"config must be a FinchConfig, got {type(config).__name__}.")
        passage_allocation = PassageAllocation(allocation, weighting if weighting is not None else RankWeighting())
        if isinstance(documents, (str, bytes)):
            raise TypeError("documents is a list of documents; wrap a single string in a list.")
        if retriever is not None and not isinstance(retriever, Retriever):
            raise TypeError(
                f"retriever must have retrieve(query, top_k) -> list[RetrievedPassage], got {type(retriever).__name__}."
            )
        if compressor is not None and not isinstance(compressor, FinchCompressor):
            raise TypeError(f"compressor must be a FinchCompressor, got {type(compressor).__name__}.")
        check_embedder(embedding_model)

        self._retriever = retriever
        self._retriever_lock = threading.Lock()
        self._progress = config.progress if config is not None else True
        if documents is not None:
            self.add(documents)
        self.compressor = compressor if compressor is not None else FinchCompressor(config=config)
        self.config = config or self.compressor.config
        self.top_k = top_k
        self.passage_allocation = passage_allocation
        self.embedding_model = embedding_model
        self.max_new_tokens = max_new_tokens

    # --------------------------------------------------------------- corpus
    @property
    def retriever(self) -> Retriever:
        """The retriever; the default `EmbeddingRetriever` is built on first use, so `answer_from` never loads it."""
        if self._retriever is None:
            with self._retriever_lock:
                if self._retriever is None:
                    self._retriever = EmbeddingRetriever(progress=self._progress)
        return self._retriever

    def add(self, documents: Iterable[Document]) -> None:
        """Add documents to the retriever's index."""
        add = getattr(self.retriever, "add", None)
        if add is None:
            raise TypeError(
                f"{type(self.retriever).__name__} has no add(); index the documents in the retriever itself."
            )
        add(documents)

    def retrieve(self, question: str) -> list[RetrievedPassage]:
        """The passages `ask` would compress for ``question``, best first."""
        _check_question(question)
        size = _corpus_size(self.retriever)
        if size == 0:
            raise ValueError("The corpus is empty: give FinchRAG(documents=[...]) or call add() before asking.")
        passages = list(self.retriever.retrieve(question, self.top_k))
        for passage in passages:
            if not isinstance(passage, RetrievedPassage):
                raise TypeError(f"The retriever returned a {type(passage).__name__}; it must return RetrievedPassage.")
        return sorted(passages, key=lambda passage: passage.rank)

    # -------------------------------------------------------------- answers
    def ask(self, question: str, *, deadline: DeadlineLike = None) -> Answer:
        """Retrieve, compress for ``question`` and answer (see the class notes for empty cases).

        ``deadline`` (seconds from now, or a `Deadline`) covers the whole call: past it, compression stops at its
        next chunk or decoding at its next token, with `DeadlineExceeded`.
        """
        limit = Deadline.of(deadline)
        started = time.perf_counter()
        passages = self.retrieve(question)
        return self._answer(question, passages, started, time.perf_counter() - started, limit, self._scoring_model())

    def ask_many(self, questions: Sequence[str], batch_size: int = 8, *, deadline: DeadlineLike = None) -> list[Answer]:
        """Answer several questions, compressing and decoding ``batch_size`` of them at a time.

        Each answer equals what `ask` gives for that question alone (greedy decoding); the batch's
        compression and generation times are reported in each answer's stats. ``deadline`` covers the whole
        call, every batch together (`DeadlineExceeded` past it, as in `ask`).
        """
        if isinstance(questions, str):
            raise TypeError("ask_many takes a list of questions; use ask() for one.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        limit = Deadline.of(deadline)
        answers: list[Answer] = []
        bar = progress_bar(
            total=len(questions),
            desc="finch-rag: questions",
            unit="question",
            enabled=self.config.progress and len(questions) > 1,
        )
        with bar:
            for start in range(0, len(questions), batch_size):
                batch = questions[start : start + batch_size]
                started = time.perf_counter()
                retrieved = [self.retrieve(question) for question in batch]
                seconds = time.perf_counter() - started
                answers += self._answer_batch(batch, retrieved, started, seconds, limit, self._scoring_model())
                bar.update(len(batch))
        return answers

    def answer_from(
        self, question: str, passages: Sequence[RetrievedPassage | Passage | str], *, deadline: DeadlineLike = None
    ) -> Answer:
        """Compress the given passages for ``question`` and answer, skipping retrieval.

        Passages keep the order given, which is their rank (1-based) for ``"retrieval_weighted"``; a
        `RetrievedPassage` keeps its own score and rank. No passages gives the no-context `Answer`.
        ``deadline`` as in `ask`.
        """
        limit = Deadline.of(deadline)
        started = time.perf_counter()
        _check_question(question)
        if isinstance(passages, str):
            raise TypeError("passages is a list; wrap a single string in a list.")
        retrieved = [_as_retrieved(passage, index) for index, passage in enumerate(passages)]
        return self._answer(question, retrieved, started, 0.0, limit)

    def answer_from_documents(
        self,
        question: str,
        documents: Sequence[Passage | str],
        *,
        piece_words: int = 120,
        deadline: DeadlineLike = None,
    ) -> Answer:
        """Answer from whole documents (files, pages): a long one is cut into pieces that are ranked, best last.

        One long document given as a single passage loses to recency: the question attends most to the chunk
        it read last, so the end of the document takes the budget (``docs/results/leval.md``: on long
        Wikipedia pages at B = 512 the gold answer was kept in 0 of 7 questions this way, in 4 of 7 as ranked
        pieces). So a document of more than ``2 * piece_words`` words is cut into pieces of ``piece_words``
        words, and all pieces (short documents whole) are ranked by similarity to ``question`` with the
        retriever's embedding model (the embedded all-MiniLM-L6-v2 unless the retriever is an
        `EmbeddingRetriever` with another), then compressed as `ask` compresses retrieved passages. Nothing
        is dropped: ranking only orders. When no document is long, this is `answer_from` in the order given.
        ``deadline`` as in `ask` (the ranking counts towards it).
        """
        limit = Deadline.of(deadline)
        started = time.perf_counter()
        _check_question(question)
        if isinstance(documents, (str, Passage)):
            raise TypeError("documents is a list; wrap a single document in a list.")
        if isinstance(piece_words, bool) or not isinstance(piece_words, int) or piece_words < 1:
            raise ValueError(f"piece_words must be an int >= 1, got {piece_words!r}.")
        whole = [_as_retrieved(document, index).to_passage() for index, document in enumerate(documents)]
        pieces = [piece for index, document in enumerate(whole) for piece in _pieces(document, piece_words, index)]
        if len(pieces) == len(whole):  # nothing was cut: the order given stands
            return self.answer_from(question, whole, deadline=limit)
        # Not a fresh load per call: without an EmbeddingRetriever, the model sentence fusion embeds with.
        model = self.retriever.model if isinstance(self.retriever, EmbeddingRetriever) else shared_embedding_model()
        ranking = EmbeddingRetriever(
            [(piece.text, {**piece.metadata, "title": piece.title}) for piece in pieces], model=model, progress=False
        )
        ranked = ranking.retrieve(question, len(pieces))
        return self._answer(question, ranked, started, time.perf_counter() - started, limit, ranking.model)

    def _scoring_model(self) -> Any:
        """The model whose cosine similarities `retrieve`'s scores are: an `EmbeddingRetriever`'s, else ``None``."""
        return self._retriever.model if isinstance(self._retriever, EmbeddingRetriever) else None

    def _answer(
        self,
        question: str,
        passages: list[RetrievedPassage],
        started: float,
        retrieval_seconds: float,
        deadline: Deadline | None = None,
        scored_by: Any = None,
    ) -> Answer:
        return self._answer_batch([question], [passages], started, retrieval_seconds, deadline, scored_by)[0]

    def _answer_batch(
        self,
        questions: Sequence[str],
        retrieved: Sequence[list[RetrievedPassage]],
        started: float,
        retrieval_seconds: float,
        deadline: Deadline | None = None,
        scored_by: Any = None,
    ) -> list[Answer]:
        """Compress and answer the questions that found passages together; the others get no-context answers.

        ``scored_by``: the embedding model under which the passages' scores are their similarity to their question
        (`PassageAllocation.plan`), or ``None`` when the scores came from elsewhere.
        """
        answers: list[Answer | None] = [None] * len(questions)
        with_context = [index for index, passages in enumerate(retrieved) if passages]
        for index, passages in enumerate(retrieved):
            if not passages:
                logger.warning("No passage retrieved for %r; answering without calling the model.", questions[index])
                stats = self._stats(retrieval_seconds, started)
                answers[index] = Answer(questions[index], NO_CONTEXT_ANSWER, [], None, stats)
        if with_context:
            compress_started = time.perf_counter()
            asked = [questions[index] for index in with_context]
            # Sentence fusion uses the retriever's embedder unless one was named; without either, the embedded
            # model (this never loads a retriever).
            retriever = self._retriever
            embedder = self.embedding_model
            if embedder is None and isinstance(retriever, EmbeddingRetriever):
                embedder = retriever.model
            plans = [
                self.passage_allocation.plan(
                    [passage.to_passage() for passage in retrieved[index]],
                    self.config,
                    [passage.rank for passage in retrieved[index]],
                    [passage.score for passage in retrieved[index]],
                    question=questions[index],
                    embedder=embedder,
                    scored_by=scored_by,
                )
                for index in with_context
            ]
            compressed = self.compressor.compress_plans(plans, asked, deadline=deadline)
            compression_seconds = time.perf_counter() - compress_started
            generate_started = time.perf_counter()
            if len(compressed) == 1:
                texts = [self.compressor.generate(compressed[0], self.max_new_tokens, deadline=deadline)]
            else:
                texts = self.compressor.generate_batch(compressed, self.max_new_tokens, deadline=deadline)
            generation_seconds = time.perf_counter() - generate_started
            for index, plan, item, text in zip(with_context, plans, compressed, texts, strict=True):
                kept = plan.restore(item.passage_kept_fractions())
                sources = [
                    Source(p.text, p.title, dict(p.metadata), p.score, p.rank, fraction)
                    for p, fraction in zip(retrieved[index], kept, strict=True)
                ]
                stats = self._stats(retrieval_seconds, started, item, compression_seconds, generation_seconds)
                stats["sentence_fusion"] = plan.token_prior is not None
                logger.debug("Answered %r: %s", questions[index], stats)
                answers[index] = Answer(questions[index], text.strip(), sources, item, stats)
        return [answer for answer in answers if answer is not None]

    @property
    def allocation(self) -> Allocation:
        """``"retrieval_weighted"`` or ``"global"`` (see `PassageAllocation`)."""
        return self.passage_allocation.kind

    @property
    def weighting(self) -> RankWeighting:
        """The parameters of ``"retrieval_weighted"``."""
        return self.passage_allocation.weighting

    def _stats(
        self,
        retrieval_seconds: float,
        started: float,
        compressed: CompressedContext | None = None,
        compression_seconds: float = 0.0,
        generation_seconds: float = 0.0,
    ) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "retrieval_seconds": retrieval_seconds,
            "compression_seconds": compression_seconds,
            "generation_seconds": generation_seconds,
            "total_seconds": time.perf_counter() - started,
            "tokens_before": 0,
            "tokens_after": 0,
            "compression_factor": 1.0,
            "passages": 0,
            "chunks": 0,
            "peak_kv_entries": 0,
            "allocation": self.allocation,
        }
        if compressed is not None:
            stats.update(
                tokens_before=compressed.original_tokens,
                tokens_after=compressed.kept_tokens,
                compression_factor=compressed.compression_factor,
                passages=len(compressed.passages or ()),
                chunks=compressed.cache.num_chunks,
                peak_kv_entries=compressed.cache.peak_kv_entries,
            )
        return stats

    def __repr__(self) -> str:
        return (
            f"FinchRAG(retriever={self._retriever!r}, compressor={self.compressor!r}, top_k={self.top_k}, "
            f"allocation={self.allocation!r})"
        )


def _check_question(question: str) -> None:
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}.")
    if not question.strip():
        raise ValueError("The question is empty: FINCH compresses the context for a question, so give one.")


def _corpus_size(retriever: Retriever) -> int | None:
    try:
        return len(retriever)  # type: ignore[arg-type]
    except TypeError:  # a retriever that does not know its size
        return None


def _pieces(document: Passage, piece_words: int, index: int) -> list[Passage]:
    """``document`` whole when it has at most ``2 * piece_words`` words, else in ``piece_words``-word pieces.

    The pieces share the document's metadata ``"source"`` (its title, or ``"document {index + 1}"``, when it has
    none), which tells `RankWeighting` that they are pieces of one document.
    """
    words = document.text.split()
    if len(words) <= 2 * piece_words:
        return [document]
    starts = range(0, len(words), piece_words)
    name = document.title or "document"
    source = document.title or f"document {index + 1}"
    return [
        Passage(
            " ".join(words[start : start + piece_words]),
            f"{name} (part {number} of {len(starts)})",
            {"source": source, **document.metadata, "piece": number},
        )
        for number, start in enumerate(starts, 1)
    ]


def _as_retrieved(passage: RetrievedPassage | Passage | str, index: int) -> RetrievedPassage:
    if isinstance(passage, RetrievedPassage):
        return passage
    if isinstance(passage, Passage):
        return RetrievedPassage(passage.text, passage.title, dict(passage.metadata), None, index + 1)
    if isinstance(passage, str):
        return RetrievedPassage(passage, None, {}, None, index + 1)
    raise TypeError(f"passages[{index}] is a {type(passage).__name__}; give strings, Passage or RetrievedPassage.")
