"""`FinchLLM`: a LangChain LLM that answers from a FINCH-compressed KV cache (the classic, text-completion path)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from finch_rag import Deadline
from finch_rag.frontends import QUESTION_DELIMITER, FinchOptions, Prepared, SamplingOptions, close, split_prompt
from finch_rag.retrieval import NO_CONTEXT_ANSWER, as_passage
from langchain_core.callbacks import CallbackManager, CallbackManagerForLLMRun
from langchain_core.language_models.llms import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field

from ._utils import child_callbacks

logger = logging.getLogger(__name__)


class FinchLLM(FinchOptions, SamplingOptions, BaseLLM):
    r"""Answer from a FINCH-compressed KV cache of the context, compressed for the question.

    Two ways to give the context:

    - **With** ``retriever=``, the whole prompt is the question: ``invoke(question)`` retrieves documents,
      compresses them together for the question (as ``allocation`` and ``weighting`` say) and answers. When the
      documents come from a ``ContextualCompressionRetriever`` with a `FinchDocumentCompressor` on the same
      model and options, they carry ``finch_cache_key`` and the compressed context is taken from
      ``compressor.store``: no second pass.
    - **Without** a retriever, the prompt holds the context, then `QUESTION_DELIMITER` (``"\nQuestion:"``),
      then the question, as an ordinary RAG ``PromptTemplate`` writes it; the context is compressed as one text.
      A prompt whose text contains a cache key (`CACHE_KEY_PATTERN`, e.g. documents formatted with their
      ``metadata["finch_cache_key"]``) is answered from that stored context when it was compressed for the same
      question with this object's options.

    Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167).

    Parameters
    ----------
    model_name, compressor, target_tokens, compression_ratio, chunk_size, progress, allocation, weighting,
    attention_mass, max_target_tokens, min_target_tokens, embedding_model
        The compressor and the compression (`finch_rag.frontends.FinchOptions`); unset budget and chunking come
        from the compressor's config.
    max_new_tokens, temperature, top_p, seed
        Decoding; each may also be given per call (``llm.invoke(prompt, max_new_tokens=16)``).
    timeout : float, optional
        Deadline in seconds for each prompt (retrieval, compression and decoding together), also per call: past it,
        `finch_rag.DeadlineExceeded` (a ``TimeoutError``).
    retriever : BaseRetriever, optional
        Makes the prompt a question to retrieve for.
    top_k : int, optional
        Use only the first ``top_k`` retrieved documents.
    question_delimiter : str
        See `QUESTION_DELIMITER`.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    retriever: BaseRetriever | None = Field(None, description="Retrieves the context for the question.")
    top_k: int | None = Field(None, ge=1, description="Use only the first top_k retrieved documents.")
    question_delimiter: str = Field(QUESTION_DELIMITER, min_length=1, description="Ends the context in a prompt.")

    @property
    def _llm_type(self) -> str:
        return "finch"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        model = self._compressor.model_name if self._compressor is not None else (self.model_name or "default")
        return {
            "model_name": model,
            **self.compression_params(),
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "top_k": self.top_k,
        }

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        sampling = self.to_sampling_params(kwargs, stop)
        generations = []
        for prompt in prompts:
            deadline = self.deadline(kwargs)
            prepared = self._prepare(prompt, run_manager, deadline)
            text = prepared.text(self.compressor, sampling, deadline)
            generations.append([Generation(text=text, generation_info=prepared.info)])
        return LLMResult(generations=generations, llm_output={"model_name": self._identifying_params["model_name"]})

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        deadline = self.deadline(kwargs)
        prepared = self._prepare(prompt, run_manager, deadline)
        pieces = prepared.stream(self.compressor, self.to_sampling_params(kwargs, stop), deadline)
        try:
            for piece in pieces:
                chunk = GenerationChunk(text=piece)
                if run_manager is not None:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        finally:
            close(pieces)
        yield GenerationChunk(text="", generation_info=prepared.info)

    def _prepare(
        self, prompt: str, run_manager: CallbackManagerForLLMRun | None, deadline: Deadline | None = None
    ) -> Prepared:
        """The one input-preparation step shared by complete and stream: find or build the compressed context."""
        if not isinstance(prompt, str):
            raise TypeError(f"FinchLLM takes a string prompt, got {type(prompt).__name__}.")
        if self.retriever is None:
            context, question = split_prompt(prompt, self.question_delimiter)
            allocation = self.passage_allocation
            return self._handle.prompt_context(
                context, question, self.config, allocation, count_keys=False, deadline=deadline
            )
        question = prompt.strip()
        if not question:
            raise ValueError("The question is empty: with a retriever, the whole prompt is the question.")
        documents = list(
            self.retriever.invoke(question, config={"callbacks": child_callbacks(run_manager, CallbackManager)})
        )
        documents = documents[: self.top_k] if self.top_k is not None else documents
        if not documents:
            logger.warning("The retriever found nothing for %r; answering without calling the model.", question)
            return Prepared(answer=NO_CONTEXT_ANSWER)
        passages = [as_passage(document.page_content, document.metadata) for document in documents]
        return self._handle.passages_context(
            passages, question, self.config, self.passage_allocation, deadline=deadline
        )
