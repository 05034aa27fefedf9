"""Where a chat request's context comes from: the one rule that `ChatFinch` and the server share.

A chat front end gets messages, and sometimes documents. `chat_context` decides which text is compressed, which
is the question that conditions the compression, and where the rest of the conversation goes (the protected
prefix), returning a `ChatPlan`. No framework types here: LangChain messages and OpenAI request bodies are turned
into ``{"role", "content"}`` mappings by their front ends first. Based on FINCH (Corallo & Papotti, TACL 2024,
https://arxiv.org/abs/2408.00167): the question is what the kept entries are chosen for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .prompts import QUESTION_DELIMITER, Passage, split_prompt, to_passage

ChatSource = Literal["retriever", "documents", "system", "delimiter", "none"]
_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
}
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class ChatPlan:
    """Where a chat request's context comes from, and the rest of the conversation (see `chat_context`).

    Attributes
    ----------
    passages : list of Passage
        The context to compress, best first; empty for plain chat (``source="none"``).
    question : str
        What the compression is for: the last user message (after the delimiter for ``source="delimiter"``).
    system_prompt : str or None
        The system prompt, protected (for ``source="system"``, the instruction paragraph only).
    history : list of dict
        Earlier user and assistant turns, oldest first: rendered in the protected prefix, never dropped.
    source : {"retriever", "documents", "system", "delimiter", "none"}
        Which rule gave the context.
    """

    passages: list[Passage]
    question: str
    system_prompt: str | None
    history: list[dict[str, str]] = field(default_factory=list)
    source: ChatSource = "none"

    @property
    def messages(self) -> list[dict[str, str]]:
        """The conversation as ``{"role", "content"}`` messages: system prompt, history, the question."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        return [*system, *self.history, {"role": "user", "content": self.question}]


def _text_of(content: Any, index: int) -> str:
    """A message's text: a string, or the text parts of a list of content blocks (LangChain, OpenAI)."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise ValueError(f"messages[{index}] has a non-text content part {part!r}; only text is supported.")
        return "".join(parts)
    raise TypeError(f"messages[{index}]['content'] must be a string or a list of text parts, got {content!r}.")


def _conversation(messages: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[dict[str, str]], str]:
    """(system texts, earlier turns, the last user message) of a chat request, checked."""
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages is a list of {{'role': ..., 'content': ...}}, got {type(messages).__name__}.")
    system: list[str] = []
    turns: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise TypeError(f"messages[{index}] must be a mapping with 'role' and 'content', got {message!r}.")
        role = _ROLES.get(message["role"])
        if role is None:
            raise ValueError(
                f"messages[{index}] has role {message['role']!r}; finch-rag chats with {sorted(_ROLES)} "
                "(tool calls are not supported)."
            )
        text = _text_of(message.get("content"), index)
        if role == "system":
            system.append(text)
        else:
            turns.append({"role": role, "content": text})
    if not turns or turns[-1]["role"] != "user" or not turns[-1]["content"].strip():
        raise ValueError(
            "A chat request needs a question: end the messages with a user message that holds it "
            '(e.g. [{"role": "user", "content": "What is ...?"}]).'
        )
    return system, turns[:-1], turns[-1]["content"].strip()


def chat_question(messages: Sequence[Mapping[str, Any]]) -> str:
    """The question of a chat request: its last user message (what a bound retriever is queried with).

    Raises ``ValueError`` (saying what to send) when there is no user message last, or it is empty.
    """
    return _conversation(messages)[2]


def chat_context(
    messages: Sequence[Mapping[str, Any]],
    documents: Sequence[Passage | str] | None = None,
    retrieved: Sequence[Passage | str] | None = None,
    *,
    delimiter: str = QUESTION_DELIMITER,
) -> ChatPlan:
    r"""Resolve where a chat request's context comes from: the one rule of `ChatFinch` and the server.

    ``messages`` are ``{"role", "content"}`` mappings (roles ``system``/``developer``, ``user``/``human``,
    ``assistant``/``ai``; content a string or a list of text parts). The last one must be the user's: it is the
    question (`chat_question`). The context is the first of these that has any:

    1. ``retrieved``: documents a bound retriever returned for the question (the caller queries it with
       `chat_question`);
    2. ``documents``: documents given with this call;
    3. a system message written as LangChain 1.x's RAG middleware writes it, an instruction paragraph ending
       with a colon, then the retrieved text (``"You are a helpful assistant. Use the following context in
       your response:\n\n{docs joined by blank lines}"``): the instruction stays whole as the system prompt
       (the protected prefix) and the rest, split into passages at blank lines, is compressed;
    4. ``delimiter`` (`QUESTION_DELIMITER`) in the last user message: the text before it is the context and the
       text after it the question (`split_prompt`);

    else there is nothing to compress: plain chat (``passages`` empty, ``source="none"``), the whole conversation
    answered through the chat template.

    Earlier user and assistant turns become ``history``: they go in the protected prefix, before the final user
    turn, and are never dropped. System messages other than the one that gave the context are joined (blank
    lines between) into the system prompt.
    """
    system, history, last = _conversation(messages)
    system_prompt = "\n\n".join(system) if system else None
    for source, given in (("retriever", retrieved), ("documents", documents)):
        passages = _passages(given, source)
        if passages:
            return ChatPlan(passages, last, system_prompt, history, source)  # type: ignore[arg-type]
    for index, text in enumerate(system):
        instruction, context = _split_system(text)
        if context:
            prompt = "\n\n".join([*system[:index], instruction, *system[index + 1 :]])
            passages = [Passage(part.strip()) for part in _PARAGRAPH_BREAK.split(context) if part.strip()]
            return ChatPlan(passages, last, prompt, history, "system")
    if delimiter in last:
        context, question = split_prompt(last, delimiter)
        if context:
            return ChatPlan([Passage(context)], question, system_prompt, history, "delimiter")
    return ChatPlan([], last, system_prompt, history, "none")


def _passages(given: Sequence[Passage | str] | None, name: str) -> list[Passage]:
    if given is None:
        return []
    if isinstance(given, str):
        raise TypeError(f"{name} is a list of passages; wrap a single string in a list.")
    passages = [to_passage(item, f"{name}[{index}]") for index, item in enumerate(given)]
    return [passage for passage in passages if passage.text.strip()]


def _split_system(text: str) -> tuple[str, str]:
    """(instruction, context) of a system message in the RAG middleware's shape, else (text, "")."""
    parts = _PARAGRAPH_BREAK.split(text.strip(), maxsplit=1)
    if len(parts) == 2 and parts[0].rstrip().endswith(":") and parts[1].strip():
        return parts[0].strip(), parts[1].strip()
    return text, ""
