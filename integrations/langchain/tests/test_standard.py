"""LangChain's own standard suites (langchain-tests) against `ChatFinch` and `FinchRetriever`, on the real models.

Unsupported features are declared only through the suites' properties:

- ``has_tool_calling`` / ``has_structured_output`` are ``False``: ChatFinch overrides ``bind_tools`` and
  ``with_structured_output`` only to raise ``NotImplementedError`` with the reason, which the suite's defaults
  would otherwise read as support.
- ``supports_model_override`` is ``False``: ChatFinch runs one local model per instance; ``model=`` per call is a
  ``TypeError`` that says to build another ChatFinch.
- Image, audio, PDF, video, JSON mode and Anthropic-style inputs keep the suites' ``False`` defaults (text only).
- ``standard_chat_model_params`` (the unit suite's constructor arguments) drops ``max_retries``: the model runs
  in-process, so there is no request to retry, and ChatFinch rejects unknown options rather than accept ones it
  would ignore. ``temperature``, ``max_tokens``, ``stop`` and ``timeout`` stay; ``timeout`` is ChatFinch's
  per-call deadline (past it, `finch_rag.DeadlineExceeded`, a ``TimeoutError``).

Skips that remain come from the suites themselves for what those properties switch off (tool calling, structured
output, multimodal inputs, model override, VCR benchmarks, serialisation of a non-serialisable class and
environment-variable initialisation, which a local model without an API key has nothing to read from). No test is
skipped or marked xfail by hand.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import ChatModelIntegrationTests, RetrieversIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_finch import ChatFinch, FinchRetriever

from .conftest import SentenceEmbeddings, town_documents_list
from .town_corpus import QUESTIONS


class TestChatFinchUnit(ChatModelUnitTests):
    """Construction, parameters and LangSmith params: no model is loaded."""

    @property
    def chat_model_class(self) -> type[ChatFinch]:
        return ChatFinch

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"compression_ratio": 0.5}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return {"temperature": 0, "max_tokens": 100, "timeout": 60, "stop": []}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False


@pytest.mark.slow
class TestChatFinchIntegration(ChatModelIntegrationTests):
    """The real embedded SmolLM2-135M-Instruct; short answers keep the run time modest."""

    @property
    def chat_model_class(self) -> type[ChatFinch]:
        return ChatFinch

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"max_tokens": 8, "temperature": 0, "compression_ratio": 0.5}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True


@functools.cache
def _town_store() -> InMemoryVectorStore:
    store = InMemoryVectorStore(SentenceEmbeddings())
    store.add_documents(town_documents_list())
    return store


@pytest.mark.slow
class TestFinchRetrieverIntegration(RetrieversIntegrationTests):
    """FinchRetriever over an in-memory vector store of the town corpus (real all-MiniLM-L6-v2 embeddings)."""

    @property
    def retriever_constructor(self) -> type[FinchRetriever]:
        return FinchRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        base = _town_store().as_retriever(search_kwargs={"k": 6})
        return {"base_retriever": base, "compression_ratio": 0.5}

    @property
    def retriever_query_example(self) -> str:
        return QUESTIONS[0][0]
