"""`FinchLLM`: a LangChain LLM that answers from a FINCH-compressed KV cache."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from finch_rag import CompressedContext, FinchCompressor, FinchConfig, Passage
from finch_rag.allocation import RankWeighting
from finch_rag.pipeline import NO_CONTEXT_ANSWER
from finch_rag.retrieval import title_of
from finch_rag.shared import CompressorHandle
from finch_rag.store import CACHE_KEY, CACHE_KEY_PATTERN
from langchain_core.callbacks import CallbackManager, CallbackManagerForLLMRun
from langchain_core.language_models.llms import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr

logger = logging.getLogger(__name__)

QUESTION_DELIMITER = "\nQuestion:"
"""Separates context from question in a prompt for `FinchLLM` without a retriever.

The prompt is cut at the *last* occurrence, so the context may itself contain the delimiter. A leading
``"Context:"`` label and a trailing ``"Answer:"`` cue are removed, so the usual RAG template
``"Context:\\n{context}\\n\\nQuestion: {question}\\nAnswer:"`` works as it is.
"""

_SAMPLING_OPTIONS = ("max_new_tokens", "temperature", "top_p", "seed")


@dataclass(frozen=True)
class _Prepared:
    """What a prompt turns into: a compressed context to answer from, or a fixed answer."""

    compressed: CompressedContext | None
    text: str = ""
    reused: bool = False


class FinchLLM(BaseLLM):
    """Answer from a FINCH-compressed KV cache of the context, compressed for the question.

    Two ways to give the context:

    - **With** ``retriever=``, the whole prompt is the question: ``invoke(question)`` retrieves documents,
      compresses them together for the question and answers. When the documents come from a
      ``ContextualCompressionRetriever`` with a `FinchDocumentCompressor` on the same model, they carry
      ``finch_cache_key`` and the compressed context is taken from ``compressor.store``: no second pass.
    - **Without** a retriever, the prompt holds the context, then `QUESTION_DELIMITER` (``"\\nQuestion:"``),
      then the question, as an ordinary RAG ``PromptTemplate`` writes it. A prompt whose text contains a
      cache key (`CACHE_KEY_PATTERN`, e.g. documents formatted with their ``metadata["finch_cache_key"]``) is
      answered from that stored context when it was compressed for the same question.

    Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167).

    Parameters
    ----------
    model_name : str, optional
        Model to load when no ``compressor=`` is given: a hub id, a local path or a ``.gguf`` file; ``None`` is
        the embedded SmolLM2-135M-Instruct (offline). Models loaded by name are shared within the process.
    compressor : FinchCompressor, optional
        An already built compressor (keyword only); not with ``model_name``.
    target_tokens, compression_ratio, chunk_size : optional
        Budget and chunking (see `finch_rag.FinchConfig`); unset ones come from the compressor's config.
    max_new_tokens, temperature, top_p, seed
        Decoding; each may also be given per call (``llm.invoke(prompt, max_new_tokens=16)``).
    retriever : BaseRetriever, optional
        Makes the prompt a question to retrieve for.
    top_k : int, optional
        Use only the first ``top_k`` retrieved documents.
    question_delimiter : str
        See `QUESTION_DELIMITER`.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    model_name: str | None = Field(None, description="Model to load (None: the embedded SmolLM2-135M-Instruct).")
    target_tokens: int | None = Field(None, ge=1, description="Budget B: context KV entries kept per layer/KV head.")
    compression_ratio: float | None = Field(None, ge=0, lt=1, description="Fraction of the context removed.")
    chunk_size: int | None = Field(512, ge=1, description="Context tokens read per step; None for a single pass.")
    max_new_tokens: int = Field(64, gt=0, description="Most tokens generated per answer.")
    temperature: float = Field(0.0, ge=0, description="0 decodes greedily.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (with temperature > 0).")
    seed: int | None = Field(None, description="Seed for sampling, for reproducible answers.")
    retriever: BaseRetriever | None = Field(None, description="Retrieves the context for the question.")
    top_k: int | None = Field(None, ge=1, description="Use only the first top_k retrieved documents.")
    question_delimiter: str = Field(QUESTION_DELIMITER, min_length=1, description="Ends the context in a prompt.")
    progress: bool = Field(False, description="Show a tqdm bar over chunks.")

    _handle: CompressorHandle = PrivateAttr()

    def __init__(self, *, compressor: FinchCompressor | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._handle = CompressorHandle(compressor, self.model_name)
        self.config  # noqa: B018 - validate the option combination now, not on first use

    # ------------------------------------------------------------ components
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
    def _llm_type(self) -> str:
        return "finch"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        model = self._compressor.model_name if self._compressor is not None else (self.model_name or "default")
        config = self.config
        return {
            "model_name": model,
            "target_tokens": config.target_tokens,
            "compression_ratio": config.compression_ratio,
            "chunk_size": config.chunk_size,
            "selection": config.selection,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "top_k": self.top_k,
        }

    # ------------------------------------------------------------ LangChain
    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations = []
        for prompt in prompts:
            prepared = self._prepare(prompt, run_manager)
            text = "".join(self._pieces(prepared, stop, kwargs))
            generations.append([Generation(text=text, generation_info=_info(prepared))])
        return LLMResult(generations=generations, llm_output={"model_name": self._identifying_params["model_name"]})

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        prepared = self._prepare(prompt, run_manager)
        pieces = self._pieces(prepared, stop, kwargs)
        try:
            for piece in pieces:
                chunk = GenerationChunk(text=piece)
                if run_manager is not None:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        yield GenerationChunk(text="", generation_info=_info(prepared))

    # ------------------------------------------------------------ internals
    def _pieces(self, prepared: _Prepared, stop: Sequence[str] | None, overrides: dict[str, Any]) -> Iterator[str]:
        """Text pieces of the answer, cut at the first stop string (the core cuts, holding back partial matches)."""
        unknown = set(overrides) - set(_SAMPLING_OPTIONS)
        if unknown:
            raise TypeError(f"Unknown options {sorted(unknown)} for FinchLLM; per call it takes {_SAMPLING_OPTIONS}.")
        options = {name: overrides.get(name, getattr(self, name)) for name in _SAMPLING_OPTIONS}
        if prepared.compressed is None:
            cuts = [index for s in stop or () if (index := prepared.text.find(s)) >= 0]
            return iter([prepared.text[: min(cuts)] if cuts else prepared.text])
        return self.compressor.stream(
            prepared.compressed,
            options["max_new_tokens"],
            temperature=options["temperature"],
            top_p=options["top_p"],
            seed=options["seed"],
            stop=list(stop or ()),
        )

    def _prepare(self, prompt: str, run_manager: CallbackManagerForLLMRun | None) -> _Prepared:
        """The one input-preparation step shared by complete and stream: find or build the compressed context."""
        if not isinstance(prompt, str):
            raise TypeError(f"FinchLLM takes a string prompt, got {type(prompt).__name__}.")
        if self.retriever is not None:
            question = prompt.strip()
            if not question:
                raise ValueError("The question is empty: with a retriever, the whole prompt is the question.")
            documents = list(self.retriever.invoke(question, config={"callbacks": _child_callbacks(run_manager)}))
            if self.top_k is not None:
                documents = documents[: self.top_k]
            if not documents:
                logger.warning("The retriever found nothing for %r; answering without calling the model.", question)
                return _Prepared(None, NO_CONTEXT_ANSWER)
            keys = {document.metadata.get(CACHE_KEY) for document in documents}
            reused = self._stored(keys.pop() if len(keys) == 1 else None, question, len(documents))
            if reused is not None:
                return _Prepared(reused, reused=True)
            passages = [Passage(d.page_content, title_of(d.metadata), dict(d.metadata)) for d in documents]
            allocation = RankWeighting()  # FinchRAG's default: best passage last, whole sentences compete
            return _Prepared(self._compress(allocation.pack(passages), question, allocation.configure(self.config)))

        context, question = split_prompt(prompt, self.question_delimiter)
        keys = set(CACHE_KEY_PATTERN.findall(context))
        reused = self._stored(keys.pop() if len(keys) == 1 else None, question, None)
        if reused is not None:
            return _Prepared(reused, reused=True)
        context = CACHE_KEY_PATTERN.sub("", context).strip()
        if not context:
            raise ValueError(f"The prompt has no context before {self.question_delimiter!r}; nothing to compress.")
        return _Prepared(self._compress(context, question))

    def _compress(
        self, context: str | list[Passage], question: str, config: FinchConfig | None = None
    ) -> CompressedContext:
        compressor = self.compressor
        compressed = compressor.compress(context, question, config=config or self.config)
        compressor.store.put(compressed)
        return compressed

    def _stored(self, key: str | None, question: str, passages: int | None) -> CompressedContext | None:
        """The stored context under ``key`` if it was compressed for this question (and these passages)."""
        return self.compressor.store.find(key, question, passages) if key else None


def split_prompt(prompt: str, delimiter: str = QUESTION_DELIMITER) -> tuple[str, str]:
    """``(context, question)`` from a prompt, cut at the last ``delimiter`` (see `QUESTION_DELIMITER`)."""
    context, found, question = prompt.rpartition(delimiter)
    if not found:
        raise ValueError(
            f"FinchLLM without a retriever needs the context and the question in one prompt, separated by "
            f"{delimiter!r} (e.g. 'Context:\\n{{context}}\\n\\nQuestion: {{question}}'); none found in "
            f"{_preview(prompt)}. Or give FinchLLM(retriever=...) and pass just the question."
        )
    context = context.strip()
    if context.lower().startswith("context:"):
        context = context[len("context:") :].strip()
    question = question.strip()
    if question.lower().endswith("answer:"):
        question = question[: -len("answer:")].strip()
    if not question:
        raise ValueError(f"The question after {delimiter!r} is empty.")
    return context, question


def _child_callbacks(run_manager: CallbackManagerForLLMRun | None) -> CallbackManager | None:
    """Callbacks for the retriever run, nested under this LLM run (what a chain's ``get_child()`` gives)."""
    if run_manager is None:
        return None
    manager = CallbackManager(handlers=[], parent_run_id=run_manager.run_id)
    manager.set_handlers(run_manager.inheritable_handlers)
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_metadata(run_manager.inheritable_metadata)
    return manager


def _preview(text: str, size: int = 80) -> str:
    return repr(text if len(text) <= size else text[: size - 3] + "...")


def _info(prepared: _Prepared) -> dict[str, Any]:
    if prepared.compressed is None:
        return {"finch_cache_key": None, "finch_reused": False}
    return {
        "finch_cache_key": prepared.compressed.cache_key,
        "finch_reused": prepared.reused,
        **prepared.compressed.stats,
    }
