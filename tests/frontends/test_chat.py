"""`frontends.chat_context`: where a chat request's context comes from (`ChatFinch` and the server follow it)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import PASSAGES, QUESTION

from finch_rag import FinchCompressor, FinchConfig, Passage, PassageAllocation
from finch_rag.frontends import CompressorHandle, chat_context, chat_question
from finch_rag.frontends.sources import ChatPlan
from finch_rag.prompts import chat_prompt_ids

MIDDLEWARE = "You are a helpful assistant. Use the following context in your response:"
RAG_SYSTEM = MIDDLEWARE + "\n\n" + "\n\n".join(PASSAGES)  # as LangChain 1.x's RAG middleware writes it
HISTORY = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi! Ask away."}]


def conversation(*, system: str | None = None, last: str = QUESTION) -> list[dict[str, Any]]:
    return ([{"role": "system", "content": system}] if system else []) + HISTORY + [{"role": "user", "content": last}]


def test_the_sources_in_order() -> None:
    given, found = [Passage("given")], [Passage("found")]
    messages = conversation(system=RAG_SYSTEM, last=f"Context:\nx\nQuestion: {QUESTION}")
    assert chat_context(messages, given, found).source == "retriever"
    assert chat_context(messages, given, []).source == "documents"  # a retriever that found nothing: next rule
    assert chat_context(messages, None, None).source == "system"
    assert chat_context(conversation(last=f"Context:\nx\nQuestion: {QUESTION}")).source == "delimiter"
    assert chat_context(conversation()) == ChatPlan([], QUESTION, None, HISTORY, "none")


def test_retrieved_and_given_documents_keep_the_whole_system_prompt_and_question() -> None:
    plan = chat_context(conversation(system="Be brief."), retrieved=[Passage("a", "T"), "b", "  "])
    assert plan == ChatPlan([Passage("a", "T"), Passage("b")], QUESTION, "Be brief.", HISTORY, "retriever")
    assert plan.messages == [
        {"role": "system", "content": "Be brief."},
        *HISTORY,
        {"role": "user", "content": QUESTION},
    ]
    with pytest.raises(TypeError, match=r"documents\[0\] is a int"):
        chat_context(conversation(), documents=[3])  # type: ignore[list-item]


def test_the_rag_middleware_system_message() -> None:
    messages = [{"role": "system", "content": "Answer in English."}, *conversation(system=RAG_SYSTEM)]
    plan = chat_context(messages)
    assert plan.source == "system" and plan.question == QUESTION and plan.history == HISTORY
    assert plan.system_prompt == "Answer in English.\n\n" + MIDDLEWARE  # the instruction stays whole
    assert [p.text for p in plan.passages] == PASSAGES  # the retrieved text, split at blank lines
    # A system prompt that introduces nothing is a system prompt, not context.
    assert chat_context(conversation(system="You are a pirate.\n\nAlways rhyme.")).source == "none"
    assert chat_context(conversation(system=MIDDLEWARE + "\n\n  ")).source == "none"


def test_the_delimiter_in_the_last_user_message() -> None:
    plan = chat_context(conversation(last=f"Context:\n{PASSAGES[1]}\n\nQuestion: {QUESTION}\nAnswer:"))
    assert plan == ChatPlan([Passage(PASSAGES[1])], QUESTION, None, HISTORY, "delimiter")
    assert chat_context(conversation(last="\nQuestion: only a question")).source == "none"


@pytest.mark.parametrize(
    ("messages", "error", "match"),
    [
        ([], ValueError, "needs a question: end the messages with a user message"),
        ([{"role": "system", "content": "x"}], ValueError, "needs a question"),
        ([{"role": "user", "content": "  "}], ValueError, "needs a question"),
        ([*conversation(), {"role": "assistant", "content": "x"}], ValueError, "needs a question"),
        ([{"role": "tool", "content": "x"}], ValueError, "tool calls are not supported"),
        ([{"content": "x"}], TypeError, r"messages\[0\] must be a mapping with 'role'"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], ValueError, "only text"),
        ([{"role": "user", "content": 3}], TypeError, "string or a list of text parts"),
        ("hello", TypeError, "messages is a list"),
    ],
)
def test_bad_requests_say_what_to_send(messages: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        chat_context(messages)


def test_roles_and_content_blocks() -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "human", "content": "Hi"},
        {"role": "ai", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "What is "}, "the code?"]},
    ]
    assert chat_question(messages) == "What is the code?"
    plan = chat_context(messages)
    assert plan.system_prompt == "Be brief." and [t["role"] for t in plan.history] == ["user", "assistant"]


# ------------------------------------------------------------------------------------------ answering a plan
@pytest.fixture(scope="module")
def handle(tiny_models: Any, tiny_tokenizer: Any) -> CompressorHandle:
    config = FinchConfig(target_tokens=16, chunk_size=32, progress=False)
    return CompressorHandle(FinchCompressor(tiny_models("llama"), tiny_tokenizer, config))


def test_a_plan_with_passages_is_compressed_with_its_system_prompt_and_history(handle: CompressorHandle) -> None:
    tokenizer = handle.get().tokenizer
    plan = chat_context(conversation(system=RAG_SYSTEM))
    prepared = handle.chat_context(plan, handle.get().config, PassageAllocation())
    compressed = prepared.compressed
    assert compressed is not None and compressed.kept_tokens == 16 and compressed.history == HISTORY
    assert compressed.config.system_prompt == MIDDLEWARE and compressed.question == QUESTION
    prefix = tokenizer.decode(compressed.prefix_ids)
    assert prefix.startswith(f"<bos><|system|>\n{MIDDLEWARE}<|end|>\n<|user|>\nHello.<|end|>\n<|assistant|>\nHi!")
    assert compressed.passages == [Passage(text) for text in reversed(PASSAGES)]  # best (first) packed last
    again = handle.chat_context(plan, handle.get().config, PassageAllocation())
    assert again.compressed is not compressed  # passages from text carry no key: compressed afresh


def test_a_plan_without_context_is_plain_chat(handle: CompressorHandle) -> None:
    plan = chat_context(conversation(system="Be brief."))
    prepared = handle.chat_context(plan, handle.get().config, PassageAllocation())
    assert prepared.compressed is None
    assert prepared.prompt_ids == chat_prompt_ids(handle.get().tokenizer, plan.messages)
    assert handle.get().tokenizer.decode(prepared.prompt_ids) == (
        "<bos><|system|>\nBe brief.<|end|>\n<|user|>\nHello.<|end|>\n<|assistant|>\nHi! Ask away.<|end|>\n"
        f"<|user|>\n{QUESTION}<|end|>\n<|assistant|>\n"
    )


def test_plain_chat_never_shows_the_model_a_cache_key(handle: CompressorHandle) -> None:
    """A ``finch_cache_key`` line in plain chat is bookkeeping: the model reads the conversation without it.

    (A LlamaIndex node's metadata, rendered into a chat engine's system message, carries one.)
    """
    system = "Be brief. The documents:\ntitle: T0\n{key}The lighthouse is yellow."
    key = "finch_cache_key: finch-0123456789abcdef01234567\n"
    with_key, without = (
        handle.chat_context(
            chat_context(conversation(system=system.format(key=k))), handle.get().config, PassageAllocation()
        )
        for k in (key, "")
    )
    assert with_key.compressed is None and with_key.prompt_ids == without.prompt_ids
