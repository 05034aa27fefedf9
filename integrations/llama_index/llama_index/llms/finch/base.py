"""`FinchLLM`: a LlamaIndex LLM that answers from a FINCH-compressed KV cache."""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Sequence
from typing import Any

from finch_rag import Deadline
from finch_rag.frontends import (
    FinchOptions,
    Prepared,
    SamplingOptions,
    accumulate,
    in_thread,
    plain_chat_ids,
    plain_prompt_ids,
    split_templated,
    template_pieces,
)
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
from llama_index.core.bridge.pydantic import ConfigDict, Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT_TMPL

from llama_index.postprocessor.finch.embeddings import fusion_embedder
from llama_index.postprocessor.finch.events import FinchCompressionEvent

dispatcher = get_dispatcher(__name__)


class FinchLLM(FinchOptions, SamplingOptions, CustomLLM):
    """Answer from a FINCH-compressed KV cache of the context, compressed for the query.

    A prompt (or the last user message of a chat) written with ``qa_template`` (LlamaIndex's default text-QA
    template, which query engines use) is split into ``{context_str}`` and ``{query_str}``; the context is
    compressed for the query and the answer decoded from the compressed cache. When the context names a
    ``finch_cache_key`` (nodes from `FinchNodePostprocessor` on the same model and options) still in
    ``compressor.store`` for the same query and number of nodes, it is answered from the store: no second pass.
    Any other prompt is plain generation (`FinchCompressor.generate_ids`): the conversation through the chat
    template (used as is with ``formatted=True``), decoded in full. System messages become the system prompt
    of a fresh compression. Each compression (or reuse) of a QA prompt runs in an instrumentation span and emits a
    `llama_index.postprocessor.finch.FinchCompressionEvent`. Based on FINCH (Corallo & Papotti, TACL 2024,
    https://arxiv.org/abs/2408.00167).

    Parameters
    ----------
    model_name, compressor, target_tokens, compression_ratio, chunk_size, progress, allocation, weighting,
    attention_mass, max_target_tokens, min_target_tokens, embedding_model
        The compressor and the compression (`finch_rag.frontends.FinchOptions`).
        ``embedding_model`` also takes a LlamaIndex ``BaseEmbedding`` (e.g. ``Settings.embed_model``).
    max_new_tokens, temperature, top_p, seed
        Decoding (`finch_rag.frontends.SamplingOptions`); each, and ``stop``, may also be given per call.
    timeout : float, optional
        Deadline in seconds for each call, compression and decoding together (also per call, ``timeout=``): past
        it the call stops at its next chunk or token and raises `finch_rag.DeadlineExceeded`, a ``TimeoutError``.
    qa_template : str
        The template whose ``{context_str}`` is compressed for its ``{query_str}``; set it when the query
        engine uses a custom ``text_qa_template``.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    qa_template: str = Field(
        DEFAULT_TEXT_QA_PROMPT_TMPL, description="Prompt template with {context_str} and {query_str} to split."
    )

    def __init__(self, *, embedding_model: Any = None, **kwargs: Any) -> None:
        super().__init__(embedding_model=fusion_embedder(embedding_model), **kwargs)
        template_pieces(self.qa_template, "{context_str}", "{query_str}", "qa_template")  # an error now, not later

    @classmethod
    def class_name(cls) -> str:
        return "FinchLLM"

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

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete(prompt, formatted, kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        deadline = self.deadline(kwargs)
        return self._stream(self._prepare_prompt(prompt, formatted, deadline), kwargs, deadline, chat=False)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self._complete, prompt, formatted, kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        deadline = self.deadline(kwargs)
        prepared = await asyncio.to_thread(self._prepare_prompt, prompt, formatted, deadline)
        return in_thread(self._stream(prepared, kwargs, deadline, chat=False))

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages, kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        deadline = self.deadline(kwargs)
        return self._stream(self._prepare_messages(messages, deadline), kwargs, deadline, chat=True)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self._chat, messages, kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        deadline = self.deadline(kwargs)
        prepared = await asyncio.to_thread(self._prepare_messages, messages, deadline)
        return in_thread(self._stream(prepared, kwargs, deadline, chat=True))

    def _complete(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> CompletionResponse:
        deadline = self.deadline(kwargs)
        prepared = self._prepare_prompt(prompt, formatted, deadline)
        return CompletionResponse(
            text=prepared.text(self.compressor, self.to_sampling_params(kwargs), deadline),
            additional_kwargs=prepared.info,
        )

    def _chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponse:
        deadline = self.deadline(kwargs)
        prepared = self._prepare_messages(messages, deadline)
        text = prepared.text(self.compressor, self.to_sampling_params(kwargs), deadline)
        return ChatResponse(message=_reply(text), additional_kwargs=prepared.info)

    def _stream(
        self, prepared: Prepared, kwargs: dict[str, Any], deadline: Deadline | None, chat: bool
    ) -> Generator[Any, None, None]:
        """One response per decoded piece, with the text so far (options are checked now, not on first read)."""
        pieces, info = prepared.stream(self.compressor, self.to_sampling_params(kwargs), deadline), prepared.info
        if chat:
            return accumulate(
                pieces, lambda text, piece: ChatResponse(message=_reply(text), delta=piece, additional_kwargs=info)
            )
        return accumulate(
            pieces, lambda text, piece: CompletionResponse(text=text, delta=piece, additional_kwargs=info)
        )

    def _prepare_prompt(self, prompt: str, formatted: bool, deadline: Deadline | None = None) -> Prepared:
        """Input preparation for the completion paths (plain and streaming)."""
        if not isinstance(prompt, str):
            raise TypeError(f"FinchLLM takes a string prompt, got {type(prompt).__name__}.")
        split = split_qa_prompt(prompt, self.qa_template)
        if split is not None:
            return self._prepare_qa(*split, system_prompt=None, deadline=deadline)
        return Prepared(prompt_ids=plain_prompt_ids(self.compressor.tokenizer, prompt, formatted=formatted))

    def _prepare_messages(self, messages: Sequence[ChatMessage], deadline: Deadline | None = None) -> Prepared:
        """Input preparation for the chat paths (plain and streaming)."""
        messages = list(messages)
        if not messages:
            raise ValueError("FinchLLM.chat needs at least one message.")
        last = messages[-1]
        split = split_qa_prompt(last.content or "", self.qa_template) if last.role == MessageRole.USER else None
        if split is not None:
            system = [m.content for m in messages if m.role == MessageRole.SYSTEM and m.content]
            return self._prepare_qa(*split, system_prompt="\n\n".join(system) or None, deadline=deadline)
        tokenizer = self.compressor.tokenizer
        if self.metadata.is_chat_model:
            turns = [{"role": m.role.value, "content": m.content or ""} for m in messages]
            return Prepared(prompt_ids=plain_chat_ids(tokenizer, turns))
        # No chat template: the prompt as plain text after the BOS, as plain_prompt_ids reads it.
        text = (self.messages_to_prompt or generic_messages_to_prompt)(messages)
        return Prepared(prompt_ids=plain_prompt_ids(tokenizer, text))

    @dispatcher.span
    def _prepare_qa(
        self, context: str, question: str, system_prompt: str | None, deadline: Deadline | None = None
    ) -> Prepared:
        """Reuse the stored compression named in ``context``, or compress ``context`` for ``question``.

        Runs in an instrumentation span and emits a `FinchCompressionEvent` there (``reused`` says which).
        """
        prepared = self._handle.prompt_context(
            context,
            question,
            self.config,
            self.passage_allocation,
            count_keys=True,
            system_prompt=system_prompt,
            deadline=deadline,
        )
        if prepared.compressed is not None:
            dispatcher.event(FinchCompressionEvent.of(prepared.compressed, reused=prepared.reused))
        return prepared


def split_qa_prompt(prompt: str, template: str = DEFAULT_TEXT_QA_PROMPT_TMPL) -> tuple[str, str] | None:
    """``(context_str, query_str)`` from a prompt written with ``template``, or ``None`` if it is not one.

    See `finch_rag.frontends.split_templated`: the context may contain anything, even the template's separators.
    """
    return split_templated(prompt, template, "{context_str}", "{query_str}")


def _reply(text: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.ASSISTANT, content=text)
