"""`FinchLLM`: a LlamaIndex LLM that answers from a FINCH-compressed KV cache."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from finch_rag import CompressedContext, FinchCompressor, FinchConfig
from finch_rag.shared import CompressorHandle
from finch_rag.store import CACHE_KEY, CACHE_KEY_PATTERN
from llama_index.core.base.llms.generic_utils import messages_to_prompt as generic_messages_to_prompt
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT_TMPL

logger = logging.getLogger(__name__)

_SAMPLING_OPTIONS = ("max_new_tokens", "temperature", "top_p", "seed", "stop")
_KEY_LINE = re.compile(rf"^[ \t]*{CACHE_KEY}:[ \t]*{CACHE_KEY_PATTERN.pattern}[ \t]*\n?", re.MULTILINE)


@dataclass(frozen=True)
class _Prepared:
    """What a prompt turns into: a compressed context to answer from, and whether it came from the store."""

    compressed: CompressedContext
    reused: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class FinchLLM(CustomLLM):
    """Answer from a FINCH-compressed KV cache of the context, compressed for the query.

    A prompt (or the last user message of a chat) written with ``qa_template`` (LlamaIndex's default text-QA
    template, which query engines use) is split into ``{context_str}`` and ``{query_str}``; the context is
    compressed for the query and the answer is decoded from the compressed cache. When the context carries a
    ``finch_cache_key`` (nodes from `FinchNodePostprocessor` on the same model: the key is in their metadata,
    which the synthesizer writes into the prompt) and that compression is still in ``compressor.store`` for
    the same query and number of nodes, it is answered from the store: no second compression pass.

    Any other prompt is answered as plain generation: the conversation is rendered with the model's chat
    template (or used as is for a model without one, or with ``formatted=True``) and decoded in full, without
    compression. System messages become the system prompt of a fresh compression; a reused compression keeps
    the prompt it was compressed with. Based on FINCH (Corallo & Papotti, TACL 2024,
    https://arxiv.org/abs/2408.00167).

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
        Decoding; each, and ``stop``, may also be given per call (``llm.complete(prompt, max_new_tokens=16)``).
    qa_template : str
        The template whose ``{context_str}`` is compressed for its ``{query_str}``; set it when the query
        engine uses a custom ``text_qa_template``.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    model_name: str | None = Field(None, description="Model to load (None: the embedded SmolLM2-135M-Instruct).")
    target_tokens: int | None = Field(None, ge=1, description="Budget B: context KV entries kept per layer/KV head.")
    compression_ratio: float | None = Field(None, ge=0, lt=1, description="Fraction of the context removed.")
    chunk_size: int | None = Field(512, ge=1, description="Context tokens read per step; None for a single pass.")
    max_new_tokens: int = Field(64, gt=0, description="Most tokens generated per answer (LLMMetadata.num_output).")
    temperature: float = Field(0.0, ge=0, description="0 decodes greedily.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (with temperature > 0).")
    seed: int | None = Field(None, description="Seed for sampling, for reproducible answers.")
    qa_template: str = Field(
        DEFAULT_TEXT_QA_PROMPT_TMPL, description="Prompt template with {context_str} and {query_str} to split."
    )
    progress: bool = Field(False, description="Show a tqdm bar over chunks.")

    _handle: CompressorHandle = PrivateAttr()

    def __init__(self, *, compressor: FinchCompressor | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._handle = CompressorHandle(compressor, self.model_name)
        _template_pieces(self.qa_template)  # a template without both fields is an error now, not on first use
        self.config  # noqa: B018 - validate the option combination now, not on first use

    @classmethod
    def class_name(cls) -> str:
        return "FinchLLM"

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
    def metadata(self) -> LLMMetadata:
        """The model's real window and name (this loads the model when it was given by name)."""
        compressor = self.compressor
        return LLMMetadata(
            context_window=compressor.context_window,
            num_output=self.max_new_tokens,
            model_name=compressor.model_name,
            is_chat_model=bool(getattr(compressor.tokenizer, "chat_template", None)),
        )

    # ------------------------------------------------------------ completion
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete(prompt, formatted, kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._stream_complete(prompt, formatted, kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self._complete, prompt, formatted, kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        responses = await asyncio.to_thread(self._stream_complete, prompt, formatted, kwargs)
        return _in_thread(responses)

    def _complete(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> CompletionResponse:
        prepared = self._prepare_prompt(prompt, formatted)
        text = "".join(self._pieces(prepared, kwargs))
        return CompletionResponse(text=text, additional_kwargs=prepared.info)

    def _stream_complete(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> CompletionResponseGen:
        prepared = self._prepare_prompt(prompt, formatted)
        pieces = self._pieces(prepared, kwargs)

        def responses() -> CompletionResponseGen:
            text = ""
            try:
                for piece in pieces:
                    text += piece
                    yield CompletionResponse(text=text, delta=piece, additional_kwargs=prepared.info)
            finally:
                _close(pieces)

        return responses()

    # ------------------------------------------------------------ chat
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages, kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._stream_chat(messages, kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self._chat, messages, kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        responses = await asyncio.to_thread(self._stream_chat, messages, kwargs)
        return _in_thread(responses)

    def _chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponse:
        prepared = self._prepare_messages(messages)
        text = "".join(self._pieces(prepared, kwargs))
        message = ChatMessage(role=MessageRole.ASSISTANT, content=text)
        return ChatResponse(message=message, additional_kwargs=prepared.info)

    def _stream_chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponseGen:
        prepared = self._prepare_messages(messages)
        pieces = self._pieces(prepared, kwargs)

        def responses() -> ChatResponseGen:
            text = ""
            try:
                for piece in pieces:
                    text += piece
                    message = ChatMessage(role=MessageRole.ASSISTANT, content=text)
                    yield ChatResponse(message=message, delta=piece, additional_kwargs=prepared.info)
            finally:
                _close(pieces)

        return responses()

    # ------------------------------------------------------------ internals
    def _prepare_prompt(self, prompt: str, formatted: bool) -> _Prepared:
        """Input preparation for the completion paths (plain and streaming)."""
        if not isinstance(prompt, str):
            raise TypeError(f"FinchLLM takes a string prompt, got {type(prompt).__name__}.")
        split = split_qa_prompt(prompt, self.qa_template)
        if split is not None:
            return self._prepare_qa(*split, system_prompt=None)
        if formatted or not self.metadata.is_chat_model:
            return self._plain(self._ids(prompt, special=not formatted))
        return self._plain(self._chat_ids([ChatMessage(role=MessageRole.USER, content=prompt)]))

    def _prepare_messages(self, messages: Sequence[ChatMessage]) -> _Prepared:
        """Input preparation for the chat paths (plain and streaming)."""
        messages = list(messages)
        if not messages:
            raise ValueError("FinchLLM.chat needs at least one message.")
        last = messages[-1]
        split = split_qa_prompt(last.content or "", self.qa_template) if last.role == MessageRole.USER else None
        if split is not None:
            system = [m.content for m in messages if m.role == MessageRole.SYSTEM and m.content]
            return self._prepare_qa(*split, system_prompt="\n\n".join(system) or None)
        if self.metadata.is_chat_model:
            return self._plain(self._chat_ids(messages))
        to_prompt = self.messages_to_prompt or generic_messages_to_prompt
        return self._plain(self._ids(to_prompt(messages), special=True))

    def _prepare_qa(self, context: str, question: str, system_prompt: str | None) -> _Prepared:
        """Reuse the stored compression named in ``context``, or compress ``context`` for ``question``."""
        reused = self._stored(context, question)
        if reused is not None:
            return _prepared(reused, reused=True)
        context = CACHE_KEY_PATTERN.sub("", _KEY_LINE.sub("", context)).strip()
        if not context:
            raise ValueError("The prompt's {context_str} is empty: there is nothing to compress for the query.")
        config = self.config
        if system_prompt is not None:
            config = config.replace(system_prompt=system_prompt)
        compressor = self.compressor
        compressed = compressor.compress(context, question, config=config)
        compressor.store.put(compressed)
        return _prepared(compressed)

    def _stored(self, context: str, question: str) -> CompressedContext | None:
        """The stored compression named in ``context``, if it was made for this question and as many nodes."""
        found = CACHE_KEY_PATTERN.findall(context)
        if not found:
            return None
        if len(set(found)) > 1:
            logger.debug("The context names %d compressions; compressing it again as one.", len(set(found)))
            return None
        return self.compressor.store.find(found[0], question, len(found))

    def _plain(self, ids: list[int]) -> _Prepared:
        """Plain generation through the public API: a "compression" whose budget keeps every token.

        The prompt minus its last token is the context, the last token the question; with ``B = n`` nothing is
        evicted, so the answer is decoded after the full prompt, exactly as without FINCH.
        """
        if len(ids) < 2:
            raise ValueError("The prompt is too short to generate from (fewer than two tokens).")
        config = self.config.replace(target_tokens=len(ids) - 1, chunk_size=None, granularity="token")
        compressed = self.compressor.compress_ids(ids[:-1], ids[-1:], config=config)
        return _prepared(compressed)

    def _ids(self, text: str, special: bool) -> list[int]:
        return list(self.compressor.tokenizer(text, add_special_tokens=special).input_ids)

    def _chat_ids(self, messages: Sequence[ChatMessage]) -> list[int]:
        tokenizer = self.compressor.tokenizer
        turns = [{"role": m.role.value, "content": m.content or ""} for m in messages]
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return self._ids(text, special=False)

    def _pieces(self, prepared: _Prepared, overrides: dict[str, Any]) -> Iterator[str]:
        unknown = set(overrides) - set(_SAMPLING_OPTIONS)
        if unknown:
            raise TypeError(f"Unknown options {sorted(unknown)} for FinchLLM; per call it takes {_SAMPLING_OPTIONS}.")
        options = {name: overrides.get(name, getattr(self, name, None)) for name in _SAMPLING_OPTIONS}
        return self.compressor.stream(
            prepared.compressed,
            options["max_new_tokens"],
            temperature=options["temperature"],
            top_p=options["top_p"],
            seed=options["seed"],
            stop=list(options["stop"] or ()),
        )


def split_qa_prompt(prompt: str, template: str = DEFAULT_TEXT_QA_PROMPT_TMPL) -> tuple[str, str] | None:
    """``(context_str, query_str)`` from a prompt written with ``template``, or ``None`` if it is not one.

    The prompt must start with the template's text before ``{context_str}`` and end with its text after
    ``{query_str}`` (surrounding whitespace aside); it is cut at the *last* occurrence of the text between the
    two fields, so the context may contain anything, including the template's separator lines.
    """
    head, middle, tail = _template_pieces(template)
    text = prompt.strip()
    head, tail = head.strip(), tail.strip()
    if not text.startswith(head) or not text.endswith(tail):
        return None
    body = text[len(head) : len(text) - len(tail)]
    context, found, question = body.rpartition(middle.strip())
    if not found or not question.strip():
        return None
    return context.strip(), question.strip()


def _template_pieces(template: str) -> tuple[str, str, str]:
    """The literal text before ``{context_str}``, between it and ``{query_str}``, and after ``{query_str}``."""
    head, context_field, rest = template.partition("{context_str}")
    middle, query_field, tail = rest.partition("{query_str}")
    if not context_field or not query_field or not middle.strip():
        raise ValueError(
            "qa_template must contain {context_str} followed by {query_str}, with text between them, "
            f"like LlamaIndex's default text-QA template; got {template!r}."
        )
    return head, middle, tail


def _prepared(compressed: CompressedContext, reused: bool = False) -> _Prepared:
    info = {CACHE_KEY: compressed.cache_key, "finch_reused": reused, **compressed.stats}
    return _Prepared(compressed, reused, info)


async def _in_thread(responses: Iterator[Any]) -> AsyncGenerator[Any, None]:
    """Drive a blocking generator from a worker thread, one item at a time, so the event loop stays free."""
    done = object()
    try:
        while (item := await asyncio.to_thread(next, responses, done)) is not done:
            yield item
    finally:
        _close(responses)


def _close(iterator: Iterator[Any]) -> None:
    """Close a generator early (stops decoding when the consumer stops reading)."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
