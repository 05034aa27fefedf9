"""`ChatFinch`: a LangChain chat model that answers from a FINCH-compressed KV cache of its context."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from finch_rag import Deadline, FinchCompressor, Passage, SamplingParams
from finch_rag.frontends import (
    QUESTION_DELIMITER,
    FinchOptions,
    Prepared,
    SamplingOptions,
    chat_context,
    chat_question,
    close,
    in_thread,
)
from finch_rag.models import DEFAULT_MODEL
from finch_rag.prompts import encode_text
from finch_rag.retrieval import as_passage
from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage, UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from pydantic import AliasChoices, ConfigDict, Field

from ._utils import child_callbacks

logger = logging.getLogger(__name__)

KEPT_DETAIL = "finch_kept_tokens"
"""Key in ``usage_metadata["input_token_details"]``: the context KV entries kept (per layer and KV head)."""

_ROLES = {"system": "system", "developer": "system", "human": "user", "ai": "assistant"}
_NO_TOOLS = (
    "ChatFinch does not support {what}: it answers from a FINCH-compressed context with a small local model and "
    "has no tool-call or schema-constrained decoding. Use it with tools=[] (e.g. create_agent(ChatFinch(...), "
    "tools=[], middleware=[...]) with a retrieval middleware), and give tools to another chat model."
)


@dataclass(frozen=True)
class _Turn:
    """One request, prepared: what to answer from, where its context came from, and how to count it."""

    prepared: Prepared
    source: str
    model_name: str
    input_tokens: int

    def usage(self, compressor: FinchCompressor, text: str) -> UsageMetadata:
        output = len(encode_text(compressor.tokenizer, text).input_ids) if text else 0
        usage: dict[str, Any] = {
            "input_tokens": self.input_tokens,
            "output_tokens": output,
            "total_tokens": self.input_tokens + output,
        }
        if self.prepared.compressed is not None:
            usage["input_token_details"] = {KEPT_DETAIL: self.prepared.compressed.kept_tokens}
        return cast(UsageMetadata, usage)

    @property
    def metadata(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "finch_context_source": self.source, **self.prepared.info}


class ChatFinch(FinchOptions, SamplingOptions, BaseChatModel):
    r"""A chat model that compresses its context with FINCH for the question, then answers from the compressed cache.

    Messages go in, an ``AIMessage`` comes out, through the model's chat template. The context to compress comes
    from the first of these that has any (`finch_rag.frontends.chat_context`, the same rule as the server's):

    1. a bound ``retriever`` (any LangChain ``BaseRetriever``), queried with the last human message;
    2. ``documents=[Document, ...]`` given with the call (``chat.invoke(messages, documents=docs)``);
    3. the system message, as LangChain 1.x's RAG middleware writes it: an instruction paragraph ending with a
       colon, a blank line, then the retrieved text (``"Use the following context in your response:\n\n{docs}"``).
       The instruction stays whole as the system prompt (the protected prefix); the text after it, split into
       passages at blank lines, is compressed;
    4. `QUESTION_DELIMITER` (``"\nQuestion:"``) in the last human message: the text before it is the context, the
       text after it the question, as `FinchLLM` reads a prompt.

    With none of these it is a plain chat model: nothing to compress, the conversation is answered as it is. The
    last human message is the question the context is compressed for. Earlier turns (human and AI messages before
    it) are never dropped: they are rendered by the chat template before the final turn, in the protected prefix,
    which is kept whole and never compressed. Documents from a `FinchRetriever` (or a `FinchDocumentCompressor`) on
    the same model and options carry ``finch_cache_key``; when they were compressed for the same question and
    conversation, the answer comes from that stored compression, with no second pass.

    ``response_metadata`` holds ``model_name``, ``finch_context_source`` (``"retriever"``, ``"documents"``,
    ``"system"``, ``"delimiter"`` or ``"none"``), ``finch_cache_key``, ``finch_reused`` and the compression's stats
    (``original_tokens``, ``kept_tokens``, ``compression_factor``, ...). ``usage_metadata`` counts the input tokens
    the request covers (prefix, whole context, question and answer cue, or the whole plain prompt), the output
    tokens (the answer text re-tokenised, after any stop string is cut) and, under
    ``input_token_details["finch_kept_tokens"]``, the context KV entries kept per layer and KV head.

    Tool calling and structured output are not supported (``bind_tools`` and ``with_structured_output`` raise
    ``NotImplementedError``). Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167).

    Parameters
    ----------
    model_name, compressor, target_tokens, compression_ratio, chunk_size, progress, allocation, weighting,
    attention_mass, max_target_tokens, min_target_tokens, embedding_model
        The compressor and the compression (`finch_rag.frontends.FinchOptions`); unset budget and chunking come
        from the compressor's config.
    max_tokens : int
        Most tokens generated per answer (LangChain's standard name; ``max_new_tokens`` is accepted too).
    timeout : float, optional
        LangChain's standard ``timeout``, here a deadline in seconds for each call, retrieval, compression and
        decoding together (the model runs in-process: there is no request to a server to time out). Past it the
        call stops at its next chunk or token and raises `finch_rag.DeadlineExceeded`, a ``TimeoutError``.
    temperature, top_p, seed
        Decoding: ``temperature=0`` is greedy; ``seed`` makes sampling repeatable.
    stop : list of str, optional
        The answer is cut before the first of these strings (a ``stop=`` per call wins).
    retriever : BaseRetriever, optional
        Retrieves the context for the last human message; e.g. a `FinchRetriever`.
    question_delimiter : str
        The delimiter of rule 4.
    streaming : bool
        Stream in ``invoke`` too (LangChain's convention), so callbacks see each token.

    Each of ``max_tokens``/``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop`` and ``timeout`` may also
    be given per call, with ``documents``.
    """

    model_config = ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, protected_namespaces=(), populate_by_name=True
    )

    max_new_tokens: int = Field(
        64,
        gt=0,
        validation_alias=AliasChoices("max_tokens", "max_new_tokens"),
        description="Most tokens generated per answer (max_tokens, LangChain's standard name, or max_new_tokens).",
    )
    stop: list[str] | None = Field(None, description="Cut the answer before the first of these strings.")
    retriever: BaseRetriever | None = Field(None, description="Retrieves the context for the last human message.")
    question_delimiter: str = Field(
        QUESTION_DELIMITER, min_length=1, description="Separates context from question in the last human message."
    )
    streaming: bool = Field(False, description="Stream in invoke too, so callbacks see each token.")

    # ------------------------------------------------------------ LangChain
    @property
    def _llm_type(self) -> str:
        return "finch-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self._model_label(),
            **self.compression_params(),
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="finch",
            ls_model_name=str(kwargs.get("model") or self._model_label()),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_new_tokens)),
        )
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or ())
        return params

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        """Not supported: raises ``NotImplementedError`` saying why and what to do instead."""
        raise NotImplementedError(_NO_TOOLS.format(what="tool calling"))

    def with_structured_output(self, schema: Any, **kwargs: Any) -> Any:
        """Not supported: raises ``NotImplementedError`` saying why and what to do instead."""
        raise NotImplementedError(_NO_TOOLS.format(what="structured output"))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        documents, sampling, deadline = self._call_options(kwargs, stop)
        turns = _turns(messages)
        retrieved = self._retrieve(turns, run_manager)
        turn = self._prepare(turns, documents, retrieved, deadline)
        compressor = self.compressor
        text = turn.prepared.text(compressor, sampling, deadline)
        message = AIMessage(content=text, usage_metadata=turn.usage(compressor, text), response_metadata=turn.metadata)
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"model_name": turn.model_name})

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        documents, sampling, deadline = self._call_options(kwargs, stop)
        turns = _turns(messages)
        retrieved = self._retrieve(turns, run_manager)
        turn = self._prepare(turns, documents, retrieved, deadline)
        compressor = self.compressor
        pieces = turn.prepared.stream(compressor, sampling, deadline)
        text = []
        try:
            for piece in pieces:
                text.append(piece)
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager is not None:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            close(pieces)
        yield _last_chunk(turn, compressor, "".join(text))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """`_stream` without blocking the event loop: compression and each decoding step run in worker threads."""
        documents, sampling, deadline = self._call_options(kwargs, stop)
        turns = _turns(messages)
        retrieved = None
        if self.retriever is not None:
            callbacks = child_callbacks(run_manager, AsyncCallbackManager)
            retrieved = await self.retriever.ainvoke(chat_question(turns), config={"callbacks": callbacks})
        turn = await asyncio.to_thread(self._prepare, turns, documents, retrieved, deadline)
        compressor = self.compressor
        pieces = await asyncio.to_thread(turn.prepared.stream, compressor, sampling, deadline)
        text = []
        async for piece in in_thread(pieces):
            text.append(piece)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield _last_chunk(turn, compressor, "".join(text))

    # ------------------------------------------------------------ internals
    def _model_label(self) -> str:
        """The model's name, without loading it."""
        if self._compressor is not None:
            return self._compressor.model_name
        return self.model_name or DEFAULT_MODEL

    def _call_options(
        self, kwargs: Mapping[str, Any], stop: list[str] | None
    ) -> tuple[Any, SamplingParams, Deadline | None]:
        """(``documents``, how to decode, deadline from now) of one call; unknown options are a ``TypeError``."""
        options = dict(kwargs)
        documents = options.pop("documents", None)
        if "max_tokens" in options:
            options["max_new_tokens"] = options.pop("max_tokens")
        if "model" in options:
            raise TypeError(
                f"ChatFinch runs one local model ({self._model_label()!r}) and cannot switch per call; "
                "build another ChatFinch(model_name=...) instead of passing model=."
            )
        deadline = self.deadline(options)
        return documents, self.to_sampling_params(options, stop if stop is not None else self.stop), deadline

    def _retrieve(self, turns: list[dict[str, Any]], run_manager: CallbackManagerForLLMRun | None) -> Any:
        if self.retriever is None:
            return None
        callbacks = child_callbacks(run_manager, CallbackManager)
        return self.retriever.invoke(chat_question(turns), config={"callbacks": callbacks})

    def _prepare(
        self, turns: list[dict[str, Any]], documents: Any, retrieved: Any, deadline: Deadline | None = None
    ) -> _Turn:
        """The one input-preparation step of every path: the context's source, then its compression (or reuse)."""
        plan = chat_context(
            turns,
            documents=_passages(documents, "documents"),
            retrieved=_passages(retrieved, "the retriever's results"),
            delimiter=self.question_delimiter,
        )
        if self.retriever is not None and plan.source != "retriever":
            logger.info("The retriever found nothing for %r; the context comes from %s.", plan.question, plan.source)
        prepared = self._handle.chat_context(plan, self.config, self.passage_allocation, deadline)
        return _Turn(prepared, plan.source, self.compressor.model_name, _input_tokens(prepared))


def _turns(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as ``{"role", "content"}`` turns for `chat_context` (which checks roles and content)."""
    turns = []
    for index, message in enumerate(messages):
        if not isinstance(message, BaseMessage):
            raise TypeError(f"messages[{index}] is a {type(message).__name__}; ChatFinch takes LangChain messages.")
        role = message.role if isinstance(message, ChatMessage) else _ROLES.get(message.type, message.type)
        turns.append({"role": role, "content": message.content})
    return turns


def _passages(documents: Any, name: str) -> list[Passage] | None:
    """Documents as passages (title from metadata), or ``None``; anything but ``Document`` is a ``TypeError``."""
    if documents is None:
        return None
    if isinstance(documents, (str, Document)) or not isinstance(documents, Sequence):
        raise TypeError(f"{name} must be a list of langchain_core.documents.Document, got {type(documents).__name__}.")
    for index, document in enumerate(documents):
        if not isinstance(document, Document):
            raise TypeError(
                f"{name}[{index}] is a {type(document).__name__}, not a langchain_core.documents.Document; "
                "wrap text as Document(page_content=text)."
            )
    return [as_passage(document.page_content, document.metadata) for document in documents]


def _input_tokens(prepared: Prepared) -> int:
    """Tokens the request covers: the prompt parts of a compression (context before compression), or the prompt."""
    if prepared.compressed is not None:
        return prepared.compressed.prompt_tokens
    return len(prepared.prompt_ids or ())


def _last_chunk(turn: _Turn, compressor: FinchCompressor, text: str) -> ChatGenerationChunk:
    message = AIMessageChunk(
        content="", usage_metadata=turn.usage(compressor, text), response_metadata=turn.metadata, chunk_position="last"
    )
    return ChatGenerationChunk(message=message)
