"""The front-end layer: the one core module that the integrations and the server import.

LangChain's `FinchLLM`, `ChatFinch`, `FinchDocumentCompressor` and `FinchRetriever`, LlamaIndex's `FinchLLM` and
`FinchNodePostprocessor`, and the OpenAI-compatible server are thin: they translate their framework's objects
(documents, nodes, messages, request bodies) to passages and messages, and call what is here. Everything they
share lives in this module, once:

- the names they need from the core, re-exported (`FinchCompressor`, `FinchConfig`, `CompressedContext`,
  `Passage`, `PassageAllocation`, `RankWeighting`, `NO_CONTEXT_ANSWER`, `CACHE_KEY`, `CACHE_KEY_PATTERN`,
  `STATS_KEYS`, `QUESTION_DELIMITER`, the prompt splitting rules `split_prompt` and `split_templated`,
  `title_of`, and the tokenisation that keeps untrusted text
  plain text: `encode_text`, `encode_markup`, `chat_prompt_ids`);
- `CompressorHandle`: a front end's compressor, given or loaded lazily by model name (one per name and process,
  so a document compressor and an LLM built from the same name share their compressed contexts), with the steps
  every front end takes: merge options into a config, plan the allocation and compress passages, find a stored
  compression by its cache key, and turn a chat request into a compressed context or a plain prompt;
- `FinchOptions` and `SamplingOptions`: the pydantic fields the integration classes share, declared once (and
  `TargetTokens`, the type of a budget that may be `"auto"`, which the server's request schema reuses);
- `chat_context` (from `finch_rag.chat`): the rule that says where a chat request's context comes from (`ChatPlan`);
- `Prepared`: what a prompt turns into (a compressed context, a plain prompt or a fixed answer) and how to
  stream the answer from it.

Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from .allocation import ALLOCATIONS, RETRIEVAL_WEIGHTED, Allocation, AllocationPlan, PassageAllocation, RankWeighting
from .chat import ChatPlan, ChatSource, chat_context, chat_question
from .compressor import FinchCompressor
from .config import AUTO_OPTIONS, FinchConfig, check_auto_options
from .context import STATS_KEYS, CompressedContext
from .pipeline import NO_CONTEXT_ANSWER
from .prompts import (
    QUESTION_DELIMITER,
    History,
    Passage,
    chat_prompt_ids,
    encode_markup,
    encode_text,
    split_prompt,
    split_templated,
    template_pieces,
)
from .retrieval import title_of
from .store import CACHE_KEY, CACHE_KEY_PATTERN

__all__ = [
    "ALLOCATIONS",
    "CACHE_KEY",
    "CACHE_KEY_PATTERN",
    "CONFIG_FIELDS",
    "NO_CONTEXT_ANSWER",
    "QUESTION_DELIMITER",
    "RETRIEVAL_WEIGHTED",
    "SAMPLING_FIELDS",
    "STATS_KEYS",
    "Allocation",
    "AllocationPlan",
    "ChatPlan",
    "ChatSource",
    "CompressedContext",
    "CompressorHandle",
    "FinchCompressor",
    "FinchConfig",
    "FinchOptions",
    "History",
    "Passage",
    "PassageAllocation",
    "Prepared",
    "RankWeighting",
    "SamplingOptions",
    "ChunkSize",
    "TargetTokens",
    "accumulate",
    "as_passage",
    "budget_params",
    "chat_context",
    "chat_prompt_ids",
    "chat_question",
    "check_compressor",
    "close",
    "encode_markup",
    "encode_text",
    "in_thread",
    "keys_in",
    "merged_config",
    "plain_prompt_ids",
    "shared_compressor",
    "split_prompt",
    "split_templated",
    "strip_keys",
    "template_pieces",
    "title_of",
]

T = TypeVar("T")
_lock = threading.Lock()
_compressors: dict[str | None, FinchCompressor] = {}

CONFIG_FIELDS = ("target_tokens", "compression_ratio", "chunk_size", "progress", *AUTO_OPTIONS)
"""Front-end options that map one to one onto `FinchConfig` fields."""
_NONE_MEANS_SOMETHING = ("chunk_size",)  # chunk_size=None is a single pass; elsewhere None means "not set"

SAMPLING_FIELDS = ("max_new_tokens", "temperature", "top_p", "seed")
"""Decoding options, settable on a front end and per call."""


def _budget(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError:  # one message for the union, instead of one per member
        raise ValueError(
            f'must be an int >= 1 (the budget B) or "auto" (the automatic budget), got {value!r}'
        ) from None


TargetTokens = Annotated[Annotated[int, Field(ge=1)] | Literal["auto"] | None, WrapValidator(_budget)]
"""The type of a front end's ``target_tokens``: ``B``, ``"auto"`` or ``None`` (not set), with one clear error."""


def _chunk(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(
            f'must be an int >= 1 (tokens per step), "auto" (one pass when it fits, else 512) or None (one pass), '
            f"got {value!r}"
        ) from None


ChunkSize = Annotated[Annotated[int, Field(ge=1)] | Literal["auto"] | None, WrapValidator(_chunk)]
"""The type of a front end's ``chunk_size``: ``S``, ``"auto"`` or ``None`` (one pass), with one clear error."""

_KEY_LINE = re.compile(rf"^[ \t]*{CACHE_KEY}:[ \t]*{CACHE_KEY_PATTERN.pattern}[ \t]*\n?", re.MULTILINE)


# ------------------------------------------------------------------------------------------ compressors
def shared_compressor(model_name: str | None = None) -> FinchCompressor:
    """A `FinchCompressor` on ``model_name`` (``None``: the embedded default), loaded once per process."""
    with _lock:
        compressor = _compressors.get(model_name)
        if compressor is None:
            from .models import load_model

            model, tokenizer = load_model(model_name)
            compressor = FinchCompressor(model, tokenizer)
            _compressors[model_name] = compressor
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


def budget_params(config: FinchConfig) -> dict[str, Any]:
    """``config``'s budget for a framework's identifying parameters (LangChain's ``_identifying_params``).

    ``target_tokens`` and ``compression_ratio``, and with ``target_tokens="auto"`` also ``attention_mass`` and
    ``max_target_tokens``, which then change what is kept.
    """
    params: dict[str, Any] = {"target_tokens": config.target_tokens, "compression_ratio": config.compression_ratio}
    if config.target_tokens == "auto":
        params |= {name: getattr(config, name) for name in AUTO_OPTIONS}
    return params


def merged_config(base: FinchConfig, explicit: Mapping[str, Any]) -> FinchConfig:
    """``base`` with the options the user set explicitly (a budget given in one mode clears the other).

    An explicit ``chunk_size=None`` is kept (a single pass); an explicit ``None`` budget means "not set".
    ``attention_mass`` or ``max_target_tokens`` with a budget that is not ``"auto"`` is a ``ValueError``
    (`check_auto_options`): they would be ignored.
    """
    changes = {
        name: value
        for name, value in explicit.items()
        if name in CONFIG_FIELDS and (value is not None or name in _NONE_MEANS_SOMETHING)
    }
    if "target_tokens" in changes and "compression_ratio" in changes:
        raise ValueError(
            "Give target_tokens or compression_ratio, not both "
            f"(got target_tokens={changes['target_tokens']}, compression_ratio={changes['compression_ratio']})."
        )
    config = base.replace(**changes) if changes else base
    check_auto_options(config, changes)
    return config


# ------------------------------------------------------------------------------------------ passages and keys
def as_passage(text: str, metadata: Mapping[str, Any] | None = None) -> Passage:
    """A passage from a framework's document or node: its text, title (metadata ``"title"``, else ``"source"``)."""
    if not isinstance(text, str):
        raise TypeError(f"A document's text must be a string, got {type(text).__name__}.")
    metadata = dict(metadata or {})
    return Passage(text, title_of(metadata), metadata)


def keys_in(text: str) -> list[str]:
    """The compressed contexts' keys (`CACHE_KEY_PATTERN`) named in ``text``, in order, repeats included."""
    return CACHE_KEY_PATTERN.findall(text)


def strip_keys(text: str) -> str:
    """``text`` without ``finch_cache_key: ...`` lines (a node's metadata as LlamaIndex writes it) and bare keys."""
    return CACHE_KEY_PATTERN.sub("", _KEY_LINE.sub("", text)).strip()


def _one_key(keys: Iterable[Any]) -> str | None:
    distinct = {key for key in keys if isinstance(key, str)}
    return distinct.pop() if len(distinct) == 1 else None


def close(iterator: Iterator[Any]) -> None:
    """Close a generator early (stops decoding when the consumer stops reading)."""
    closer = getattr(iterator, "close", None)
    if closer is not None:
        closer()


def accumulate(pieces: Iterator[str], respond: Callable[[str, str], T]) -> Generator[T, None, None]:
    """``respond(text so far, new piece)`` for each decoded piece, as a framework's streamed responses.

    Closing the result closes ``pieces`` (decoding stops when the consumer does).
    """
    text = ""
    try:
        for piece in pieces:
            text += piece
            yield respond(text, piece)
    finally:
        close(pieces)


async def in_thread(iterator: Iterator[T]) -> AsyncGenerator[T, None]:
    """Drive a blocking iterator (decoding) from worker threads, one item at a time: the event loop stays free.

    Items arrive as they are produced; closing the async iterator closes ``iterator`` (decoding stops).
    """
    done = object()
    busy = threading.Lock()  # held while a worker is inside next(): a running generator cannot be closed

    def step() -> Any:
        with busy:
            return next(iterator, done)

    def finish() -> None:
        with busy:
            close(iterator)

    try:
        while (item := await asyncio.to_thread(step)) is not done:
            yield item  # type: ignore[misc]
    finally:
        if busy.acquire(blocking=False):
            try:
                close(iterator)
            finally:
                busy.release()
        else:  # cancelled while a token was being decoded: close once that step returns, off the event loop
            threading.Thread(target=finish, name="finch-close-stream", daemon=True).start()


def plain_prompt_ids(tokenizer: Any, prompt: str, *, formatted: bool = False) -> list[int]:
    """Token ids of a completion prompt for plain generation (nothing to compress).

    ``formatted=True``: the caller already applied the chat template, so its markup is markup (`encode_markup`).
    Otherwise the prompt is the user's turn: rendered with the chat template, or for a model without one the
    prompt as plain text after the tokenizer's BOS.
    """
    if formatted:
        return encode_markup(tokenizer, prompt)
    if getattr(tokenizer, "chat_template", None):
        return chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])
    return list(encode_text(tokenizer, prompt, add_special_tokens=True).input_ids)


# ------------------------------------------------------------------------------------------ prepared answers
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

    def text(self, compressor: FinchCompressor, sampling: Mapping[str, Any]) -> str:
        """The whole answer (`stream` joined)."""
        return "".join(self.stream(compressor, sampling))

    def stream(self, compressor: FinchCompressor, sampling: Mapping[str, Any]) -> Iterator[str]:
        """Text pieces of the answer, decoded with ``sampling`` (`SamplingOptions.sampling`), cut at ``stop``."""
        if self.compressed is not None:
            return compressor.stream(self.compressed, **sampling)
        if self.prompt_ids is not None:
            return compressor.stream_ids(self.prompt_ids, **sampling)
        text = self.answer or ""
        cuts = [index for stop in sampling.get("stop") or () if (index := text.find(stop)) >= 0]
        return iter([text[: min(cuts)] if cuts else text])


# ------------------------------------------------------------------------------------------ the handle
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
    """

    def __init__(self, compressor: Any = None, model_name: str | None = None) -> None:
        self._compressor = check_compressor(compressor, model_name)
        self.model_name = model_name
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
                    self._compressor = shared_compressor(self.model_name)
        return self._compressor

    def config(self, explicit: Mapping[str, Any]) -> FinchConfig:
        """The compressor's config (or `FinchConfig`'s defaults, without loading) with ``explicit`` applied."""
        base = self._compressor.config if self._compressor is not None else FinchConfig()
        return merged_config(base, explicit)

    # ---------------------------------------------------------------- compress
    def compress(
        self, context: str | Sequence[Passage], question: str, config: FinchConfig, history: History | None = None
    ) -> CompressedContext:
        """Compress as given (no allocation) and put the result in the compressor's store."""
        compressor = self.get()
        compressed = compressor.compress(context, question, config=config, history=history)
        compressor.store.put(compressed)
        return compressed

    def compress_passages(
        self,
        passages: Sequence[Passage],
        question: str,
        config: FinchConfig,
        allocation: PassageAllocation,
        history: History | None = None,
    ) -> CompressedContext:
        """Compress ranked passages (best first) as ``allocation`` plans it; the result goes in the store."""
        return self._compress_plan(passages, question, config, allocation, history)[0]

    def _compress_plan(
        self,
        passages: Sequence[Passage],
        question: str,
        config: FinchConfig,
        allocation: PassageAllocation,
        history: History | None = None,
    ) -> tuple[CompressedContext, AllocationPlan[Passage]]:
        return self.compress_plans([(passages, question, history)], config, allocation)[0]

    def compress_plans(
        self,
        requests: Sequence[tuple[Sequence[Passage], str, History | None]],
        config: FinchConfig,
        allocation: PassageAllocation,
    ) -> list[tuple[CompressedContext, AllocationPlan[Passage]]]:
        """Plan and compress several ``(ranked passages, question, history)`` requests as one padded batch.

        Each result equals compressing that request alone; every result goes in the store.
        """
        plans = [allocation.plan(passages, config) for passages, _, _ in requests]
        compressor = self.get()
        contexts = compressor.compress_plans(
            plans,
            [question for _, question, _ in requests],
            histories=[list(history or ()) for _, _, history in requests],
        )
        for context in contexts:
            compressor.store.put(context)
        return list(zip(contexts, plans, strict=True))

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
        text (`CompressedContext.kept_text` at ``threshold``) and its `CompressedContext.passage_stats`. No
        passages give ``(None, [])``; passages that are all blank give ``""`` and zero statistics each, without
        loading a model.
        """
        if not passages:
            return None, []
        if not any(passage.text.strip() for passage in passages):
            return None, [("", dict(zip(STATS_KEYS, (0.0, 0, 0), strict=True))) for _ in passages]
        compressed, plan = self._compress_plan(passages, query, config, allocation or PassageAllocation())
        texts = [compressed.kept_text(threshold, passage=index) for index in range(len(passages))]
        return compressed, plan.restore(list(zip(texts, compressed.passage_stats(), strict=True)))

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
    ) -> Prepared:
        """Reuse the compression named in the passages' metadata (`CACHE_KEY`), or compress them.

        Passages from a document compressor or postprocessor on the same model all carry one key; it is reused
        when it was made for this question, these passages, ``allocation``'s config and ``history``.
        """
        key = _one_key(passage.metadata.get(CACHE_KEY) for passage in passages)
        stored = self.find_stored(key, question, allocation.configure(config), len(passages), history)
        if stored is not None:
            return Prepared(stored, reused=True)
        return Prepared(self.compress_passages(passages, question, config, allocation, history))

    def prompt_context(
        self,
        context: str,
        question: str,
        config: FinchConfig,
        allocation: PassageAllocation,
        *,
        count_keys: bool,
        system_prompt: str | None = None,
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
        stored = self.find_stored(_one_key(keys), question, allocation.configure(config), count)
        if stored is not None:
            return Prepared(stored, reused=True)
        text = strip_keys(context)
        if not text:
            raise ValueError("The prompt's context is empty: there is nothing to compress for the question.")
        if system_prompt is not None:
            config = config.replace(system_prompt=system_prompt)
        return Prepared(self.compress(text, question, config))

    def chat_context(self, plan: ChatPlan, config: FinchConfig, allocation: PassageAllocation) -> Prepared:
        """What a chat request (`chat_context`) turns into: its passages compressed, or the conversation as a prompt.

        The plan's system prompt (when it has one) replaces ``config.system_prompt``; its history goes in the
        protected prefix. Without passages, the whole conversation is rendered by the chat template for plain
        generation.
        """
        if plan.system_prompt is not None:
            config = config.replace(system_prompt=plan.system_prompt)
        if not plan.passages:
            ids = chat_prompt_ids(self.get().tokenizer, plan.messages, chat_template=config.chat_template)
            return Prepared(prompt_ids=ids)
        return self.passages_context(plan.passages, plan.question, config, allocation, plan.history)


# ------------------------------------------------------------------------------------------ pydantic options
class FinchOptions(BaseModel):
    """The options every integration class shares, declared once; the integration classes inherit them.

    A subclass also gets ``compressor=`` (keyword only, an already built `FinchCompressor`, not with
    ``model_name``), the lazily loaded `compressor`, the merged `config` and the `passage_allocation`.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    model_name: str | None = Field(
        None,
        description="Model to load when no compressor= is given: a hub id, a local path or a .gguf file; "
        "None is the embedded SmolLM2-135M-Instruct (offline). Models loaded by name are shared in the process.",
    )
    target_tokens: TargetTokens = Field(
        None,
        description='Budget B: context KV entries kept per layer/KV head; "auto" picks B per question '
        "(the fewest entries holding attention_mass of the question's attention, at most max_target_tokens).",
    )
    compression_ratio: float | None = Field(None, ge=0, lt=1, description="Fraction of the context removed.")
    chunk_size: ChunkSize = Field(
        "auto", description='Context tokens read per step; "auto": one pass when it fits, else 512; None: one pass.'
    )
    attention_mass: float | None = Field(
        None,
        gt=0,
        le=1,
        description='With target_tokens="auto": share of the question\'s attention the kept entries hold (0.9).',
    )
    max_target_tokens: int | None = Field(None, ge=1, description='With target_tokens="auto": the cap on B (1024).')
    progress: bool = Field(False, description="Show a tqdm bar over chunks.")
    allocation: Allocation = Field(
        RETRIEVAL_WEIGHTED, description="How retrieved passages share the budget (finch_rag.PassageAllocation)."
    )
    weighting: RankWeighting = Field(
        default_factory=RankWeighting, description='Parameters of allocation="retrieval_weighted".'
    )

    _handle: CompressorHandle = PrivateAttr()

    def __init__(self, *, compressor: FinchCompressor | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._handle = CompressorHandle(compressor, self.model_name)
        self.config  # noqa: B018 - validate the option combination now, not on first use

    @property
    def _compressor(self) -> FinchCompressor | None:
        """The compressor if given or already loaded (``None`` before the first use of a model given by name)."""
        return self._handle.loaded

    @property
    def compressor(self) -> FinchCompressor:
        """The `FinchCompressor`, loaded from ``model_name`` on first use unless one was given."""
        return self._handle.get()

    @property
    def config(self) -> FinchConfig:
        """The compressor's config (or `FinchConfig`'s defaults) with this object's options applied."""
        explicit = {name: getattr(self, name) for name in self.model_fields_set} | {"progress": self.progress}
        return self._handle.config(explicit)

    @property
    def passage_allocation(self) -> PassageAllocation:
        """How passages share the budget: ``allocation`` with ``weighting``."""
        return PassageAllocation(self.allocation, self.weighting)


class SamplingOptions(BaseModel):
    """The decoding options of the LLM front ends, declared once; each may also be given per call."""

    max_new_tokens: int = Field(64, gt=0, description="Most tokens generated per answer.")
    temperature: float = Field(0.0, ge=0, description="0 decodes greedily.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (with temperature > 0).")
    seed: int | None = Field(None, description="Seed for sampling, for reproducible answers.")

    def sampling(self, overrides: Mapping[str, Any], stop: Sequence[str] | None = None) -> dict[str, Any]:
        """Keyword arguments for `FinchCompressor.stream` / ``stream_ids``: these options, ``overrides`` applied.

        ``overrides`` are per-call options (`SAMPLING_FIELDS` and ``stop``); anything else is a ``TypeError``.
        """
        unknown = set(overrides) - {*SAMPLING_FIELDS, "stop"}
        if unknown:
            raise TypeError(
                f"Unknown options {sorted(unknown)} for {type(self).__name__}; per call it takes "
                f"{(*SAMPLING_FIELDS, 'stop')}."
            )
        options = {name: overrides.get(name, getattr(self, name)) for name in SAMPLING_FIELDS}
        options["stop"] = list(overrides.get("stop") or stop or ())
        return options
