"""The compressor handle: a front end's `FinchCompressor` (given, or loaded once per model name) and its steps.

Every integration class and the server hold one `CompressorHandle`. Loading is lazy and shared: one compressor per
model name and process (`shared_compressor`), so a document compressor and an LLM built from the same name share
their compressed contexts. The handle takes the steps every front end takes: merge options into a config, plan
the allocation and compress passages, find a stored compression by its cache key, and turn a chat plan
(`sources.chat_context`) or a prompt into a `Prepared` answer: a compressed context, a plain prompt or a fixed
answer. Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

from ..allocation import AllocationPlan, PassageAllocation, check_embedder
from ..compression.prefix_cache import PrefixCache
from ..compressor import FinchCompressor
from ..config import FinchConfig, merged_config
from ..context import STATS_KEYS, CompressedContext
from ..deadline import Deadline, DeadlineExceeded, DeadlineLike
from ..generation import SamplingParams
from ..prompts import History, Passage
from ..store import CACHE_KEY
from .sources import ChatPlan, keys_in, one_key, plain_chat_ids, strip_keys, with_system_prompt

_lock = threading.Lock()
_compressors: dict[tuple[str | None, str | None], FinchCompressor] = {}


def shared_compressor(model_name: str | None = None, dtype: str | None = None) -> FinchCompressor:
    """A `FinchCompressor` on ``model_name`` (``None``: the embedded default), loaded once per process and dtype.

    ``dtype`` names the weights' dtype (`finch_rag.models.DTYPES`; ``None``: `load_model`'s default).
    """
    with _lock:
        compressor = _compressors.get((model_name, dtype))
        if compressor is None:
            from ..models import load_model

            model, tokenizer = load_model(model_name, dtype=dtype)
            # The model is finch-rag's own and its weights never change: the prefix cache is safe.
            compressor = FinchCompressor(model, tokenizer, prefix_cache=PrefixCache())
            _compressors[(model_name, dtype)] = compressor
        return compressor


def check_compressor(compressor: Any, model_name: str | None) -> FinchCompressor | None:
    """Validate a front end's ``compressor=`` / ``model_name=`` pair; ``None`` means "load lazily by name"."""
    if compressor is None:
        return None
    if not isinstance(compressor, FinchCompressor):
        raise TypeError(f"compressor must be a finch_rag.FinchCompressor, got {type(compressor).__name__}.")
    if model_name is not None:
        raise ValueError("Give compressor= (an already built FinchCompressor) or model_name=, not both.")
    return compressor


@dataclass(frozen=True)
class Prepared:
    """What a prompt turns into: a compressed context, a plain prompt, or a fixed answer; and how to answer.

    Attributes
    ----------
    compressed : CompressedContext, optional
        The context to answer from (stored in ``compressor.store``).
    prompt_ids : list of int, optional
        A whole prompt for plain generation (`FinchCompressor.generate_ids`): nothing to compress.
    answer : str, optional
        A fixed answer that needs no model (`NO_CONTEXT_ANSWER` when a retriever found nothing).
    reused : bool
        ``compressed`` came from the store (no second compression pass).
    """

    compressed: CompressedContext | None = None
    prompt_ids: list[int] | None = None
    answer: str | None = None
    reused: bool = False

    @property
    def info(self) -> dict[str, Any]:
        """``finch_cache_key``, ``finch_reused`` and the compression's `CompressedContext.stats`.

        Plain generation reports its prompt as ``original_tokens`` = ``kept_tokens`` (nothing compressed).
        """
        if self.compressed is not None:
            return {CACHE_KEY: self.compressed.cache_key, "finch_reused": self.reused, **self.compressed.stats}
        info: dict[str, Any] = {CACHE_KEY: None, "finch_reused": False}
        if self.prompt_ids is not None:
            size = len(self.prompt_ids)
            info |= {"original_tokens": size, "kept_tokens": size, "compression_factor": 1.0, "num_chunks": 0}
        return info

    def text(self, compressor: FinchCompressor, sampling: SamplingParams, deadline: Deadline | None = None) -> str:
        """The whole answer (`stream` joined)."""
        return "".join(self.stream(compressor, sampling, deadline))

    def stream(
        self, compressor: FinchCompressor, sampling: SamplingParams, deadline: Deadline | None = None
    ) -> Iterator[str]:
        """Text pieces of the answer, decoded with ``sampling`` (`SamplingOptions.to_sampling_params`).

        Past ``deadline`` decoding stops with `DeadlineExceeded`, and a compression made for this request (not
        reused) leaves the compressor's store: nothing is kept for a failed request.
        """
        if self.compressed is not None:
            pieces = compressor.stream(self.compressed, sampling, deadline=deadline)
            return (
                pieces if deadline is None or self.reused else _forget_on_deadline(pieces, compressor, self.compressed)
            )
        if self.prompt_ids is not None:
            return compressor.stream_ids(self.prompt_ids, sampling, deadline=deadline)
        text = self.answer or ""
        cuts = [index for stop in sampling.stop if (index := text.find(stop)) >= 0]
        return iter([text[: min(cuts)] if cuts else text])


def _forget_on_deadline(
    pieces: Iterator[str], compressor: FinchCompressor, compressed: CompressedContext
) -> Iterator[str]:
    try:
        yield from pieces
    except DeadlineExceeded:
        compressor.store.discard(compressed.cache_key)
        raise


class CompressorHandle:
    """A front end's compressor: the one it was given, or one loaded by model name on first use.

    Every integration class holds one as a private attribute. Loading is lazy and thread-safe (double-checked
    lock), so building a front end and reading its `config` never loads a model.

    Parameters
    ----------
    compressor : FinchCompressor, optional
        An already built compressor; not with ``model_name`` (see `check_compressor`).
    model_name : str, optional
        Model for `shared_compressor` when no compressor is given (``None``: the embedded default).
    dtype : str, optional
        Its weights' dtype for `shared_compressor` (``None``: `load_model`'s default); not with ``compressor``.
    embedding_model : optional
        What sentence fusion embeds with (`PassageAllocation.plan`'s ``embedder``): a model `check_embedder`
        accepts, or a sentence-transformers name or path, loaded on first use and shared in the process.
        ``None``: the embedded all-MiniLM-L6-v2.
    """

    def __init__(
        self,
        compressor: Any = None,
        model_name: str | None = None,
        dtype: str | None = None,
        embedding_model: Any = None,
    ) -> None:
        self._compressor = check_compressor(compressor, model_name)
        if compressor is not None and dtype is not None:
            raise ValueError("dtype= applies to a model loaded by name; a given compressor keeps its model's dtype.")
        self.model_name = model_name
        self.dtype = dtype
        self.embedding_model = check_embedder(embedding_model)
        self._lock = threading.Lock()

    @property
    def loaded(self) -> FinchCompressor | None:
        """The compressor if it was given or already loaded, else ``None`` (never loads)."""
        return self._compressor

    def get(self) -> FinchCompressor:
        """The compressor, loaded from ``model_name`` on first use unless one was given."""
        if self._compressor is None:
            with self._lock:
                if self._compressor is None:
                    self._compressor = shared_compressor(self.model_name, self.dtype)
        return self._compressor

    def config(self, explicit: Mapping[str, Any]) -> FinchConfig:
        """The compressor's config (or `FinchConfig`'s defaults, without loading) with ``explicit`` applied."""
        base = self._compressor.config if self._compressor is not None else FinchConfig()
        return merged_config(base, explicit)

    # ---------------------------------------------------------------- compress
    def compress(
        self,
        context: str | Sequence[Passage],
        question: str,
        config: FinchConfig,
        history: History | None = None,
        deadline: Deadline | None = None,
    ) -> CompressedContext:
        """Compress as given (no allocation) and put the result in the compressor's store."""
        compressor = self.get()
        compressed = compressor.compress(context, question, config=config, history=history, deadline=deadline)
        compressor.store.put(compressed)
        return compressed

    def compress_passages(
        self,
        passages: Sequence[Passage],
        question: str,
        config: FinchConfig,
        allocation: PassageAllocation,
        history: History | None = None,
        deadline: Deadline | None = None,
    ) -> CompressedContext:
        """Compress ranked passages (best first) as ``allocation`` plans it; the result goes in the store."""
        return self.compress_plans([(passages, question, history)], config, allocation, deadline=deadline)[0][0]

    @overload
    def compress_plans(
        self,
        requests: Sequence[tuple[Sequence[Passage], str, History | None]],
        config: FinchConfig,
        allocation: PassageAllocation,
        *,
        deadline: DeadlineLike | Sequence[DeadlineLike] = None,
        return_exceptions: Literal[False] = False,
    ) -> list[tuple[CompressedContext, AllocationPlan[Passage]]]: ...

    @overload
    def compress_plans(
        self,
        requests: Sequence[tuple[Sequence[Passage], str, History | None]],
        config: FinchConfig,
        allocation: PassageAllocation,
        *,
        deadline: DeadlineLike | Sequence[DeadlineLike] = None,
        return_exceptions: Literal[True],
    ) -> list[tuple[CompressedContext, AllocationPlan[Passage]] | DeadlineExceeded]: ...

    def compress_plans(
        self,
        requests: Sequence[tuple[Sequence[Passage], str, History | None]],
        config: FinchConfig,
        allocation: PassageAllocation,
        *,
        deadline: DeadlineLike | Sequence[DeadlineLike] = None,
        return_exceptions: bool = False,
    ) -> (
        list[tuple[CompressedContext, AllocationPlan[Passage]]]
        | list[tuple[CompressedContext, AllocationPlan[Passage]] | DeadlineExceeded]
    ):
        """Plan and compress several ``(ranked passages, question, history)`` requests as one padded batch.

        Each result equals compressing that request alone; every result goes in the store. ``deadline`` and
        ``return_exceptions`` are `FinchCompressor.compress_plans`'; a request that ran past its deadline leaves
        nothing in the store.
        """
        plans = [
            allocation.plan(passages, config, question=question, embedder=self.embedding_model)
            for passages, question, _ in requests
        ]
        compressor = self.get()
        contexts = compressor.compress_plans(
            plans,
            [question for _, question, _ in requests],
            histories=[list(history or ()) for _, _, history in requests],
            deadline=deadline,
            return_exceptions=True,
        )
        results: list[tuple[CompressedContext, AllocationPlan[Passage]] | DeadlineExceeded] = []
        for context, plan in zip(contexts, plans, strict=True):
            if isinstance(context, DeadlineExceeded):
                if not return_exceptions:
                    raise context
                results.append(context)
            else:
                compressor.store.put(context)
                results.append((context, plan))
        return results

    def compress_for_query(
        self,
        passages: Sequence[Passage],
        query: str,
        config: FinchConfig,
        threshold: float,
        allocation: PassageAllocation | None = None,
    ) -> tuple[CompressedContext | None, list[tuple[str, dict[str, Any]]]]:
        """Compress ``passages`` together for ``query``: the common step of the document compressors.

        ``passages`` come best first, as retrievers return them, and share the budget as ``allocation`` says
        (default `PassageAllocation()`, `FinchRAG`'s default). Returns the compressed context, put in the
        compressor's store (``None`` when nothing was compressed), and per passage, in the given order, its kept
        text and statistics (`CompressedContext.kept_passages` at ``threshold``). No passages give ``(None, [])``;
        passages that are all blank give ``""`` and zero statistics each, without loading a model.
        """
        if not passages:
            return None, []
        if not any(passage.text.strip() for passage in passages):
            return None, [("", dict(zip(STATS_KEYS, (0.0, 0, 0), strict=True))) for _ in passages]
        [(compressed, plan)] = self.compress_plans([(passages, query, None)], config, allocation or PassageAllocation())
        return compressed, plan.restore(compressed.kept_passages(threshold))

    # ---------------------------------------------------------------- reuse
    def find_stored(
        self,
        key: str | None,
        question: str,
        config: FinchConfig,
        passages: int | None = None,
        history: History | None = None,
    ) -> CompressedContext | None:
        """The stored compression under ``key`` if it was made for this question, config, history (and count)."""
        if key is None:
            return None
        return self.get().store.find(key, question, passages, config=config, history=history)

    def passages_context(
        self,
        passages: Sequence[Passage],
        question: str,
        config: FinchConfig,
        allocation: PassageAllocation,
        history: History | None = None,
        given: int | None = None,
        deadline: Deadline | None = None,
    ) -> Prepared:
        """Reuse the compression named in the passages' metadata (`CACHE_KEY`), or compress them.

        Passages from a document compressor or postprocessor on the same model all carry one key; it is reused
        when it was made for this question, from ``given`` passages (default: as many as ``passages``; a retriever's
        blank documents were compressed too, and dropped since), with ``allocation``'s config and ``history``.
        """
        key = one_key(passage.metadata.get(CACHE_KEY) for passage in passages)
        count = len(passages) if given is None else given
        stored = self.find_stored(key, question, allocation.configure(config), count, history)
        if stored is not None:
            return Prepared(stored, reused=True)
        return Prepared(self.compress_passages(passages, question, config, allocation, history, deadline))

    def prompt_context(
        self,
        context: str,
        question: str,
        config: FinchConfig,
        allocation: PassageAllocation,
        *,
        count_keys: bool,
        system_prompt: str | None = None,
        deadline: Deadline | None = None,
    ) -> Prepared:
        """A prompt's context: the stored compression it names (`keys_in`), or ``context`` compressed as given.

        A context naming one key (several times when each passage carries it) is answered from that stored
        compression when it was made for ``question`` with ``allocation``'s config (that of the document
        compressor or postprocessor that made it); with ``count_keys`` also from as many passages as the key
        appears times (a synthesizer that split the nodes over several prompts must not reuse the whole). A
        reused compression keeps the system prompt it was made with. Otherwise the keys are removed and the text
        is compressed as one string with ``config`` (and ``system_prompt``, when given).
        """
        keys = keys_in(context)
        count = len(keys) if count_keys else None
        stored = self.find_stored(one_key(keys), question, allocation.configure(config), count)
        if stored is not None:
            return Prepared(stored, reused=True)
        text = strip_keys(context)
        if not text:
            raise ValueError("The prompt's context is empty: there is nothing to compress for the question.")
        return Prepared(self.compress(text, question, with_system_prompt(config, system_prompt), deadline=deadline))

    def chat_context(
        self, plan: ChatPlan, config: FinchConfig, allocation: PassageAllocation, deadline: Deadline | None = None
    ) -> Prepared:
        """What a chat plan (`sources.chat_context`) turns into: a stored or new compression, or a plain prompt.

        The plan's system prompt (when it has one) replaces ``config.system_prompt`` (`with_system_prompt`); its
        history goes in the protected prefix. Passages that name a stored compression (`CACHE_KEY`, from a
        `FinchRetriever` or document compressor on the same model) reuse it when it was made for this question,
        conversation and config, from the plan's ``given`` passages. Without passages, the whole conversation is
        rendered by the chat template for plain generation.
        """
        config = with_system_prompt(config, plan.system_prompt)
        if not plan.passages:
            ids = plain_chat_ids(self.get().tokenizer, plan.messages, chat_template=config.chat_template)
            return Prepared(prompt_ids=ids)
        return self.passages_context(
            plan.passages, plan.question, config, allocation, plan.history, plan.given, deadline
        )
