"""Where the context and the question come from in a framework's input: the rules every front end follows.

A front end gets a prompt, a chat, documents or nodes; FINCH needs passages to compress and a question to
compress them for (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167: the question is what the
kept entries are chosen for). The rules that find them live here, once, with no framework types: LangChain
messages and OpenAI request bodies are turned into ``{"role", "content"}`` mappings by their front ends first.

- `chat_context`: the one rule of `ChatFinch` and the server, returning a `ChatPlan` (which text is compressed,
  the question, and where the rest of the conversation goes: the protected prefix);
- `split_prompt` and `QUESTION_DELIMITER`: a prompt that holds context and question (`FinchLLM`, rule 4 of
  `chat_context`); `split_templated` and `template_pieces`: a prompt written with a template (LlamaIndex's
  text-QA template);
- `keys_in`, `strip_keys`, `without_keys`, `one_key`: the compressed contexts a prompt or documents name
  (`CACHE_KEY`), for reuse, and text without them for the model;
- `plain_prompt_ids`, `plain_chat_ids`: a prompt or a conversation with nothing to compress, for plain generation;
- `with_system_prompt`: where a chat's system prompt enters the config.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import FinchConfig
from ..prompts import Passage, chat_prompt_ids, encode_markup, encode_text, to_passage
from ..store import CACHE_KEY, CACHE_KEY_PATTERN

QUESTION_DELIMITER = "\nQuestion:"
"""Separates context from question in a prompt (`split_prompt`).

The prompt is cut at the *last* occurrence, so the context may itself contain the delimiter. A leading
``"Context:"`` label and a trailing ``"Answer:"`` cue are removed, so the usual RAG template
``"Context:\\n{context}\\n\\nQuestion: {question}\\nAnswer:"`` works as it is.
"""

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
    given : int, optional
        How many passages that rule was given, blank ones included (``None``: as many as ``passages``). A
        stored compression that the passages name was made from that many (`CompressorHandle.chat_context`).
    """

    passages: list[Passage]
    question: str
    system_prompt: str | None
    history: list[dict[str, str]] = field(default_factory=list)
    source: ChatSource = "none"
    given: int | None = field(default=None, compare=False)

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
            count = len(given or ())
            return ChatPlan(passages, last, system_prompt, history, source, count)  # type: ignore[arg-type]
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


def with_system_prompt(config: FinchConfig, system_prompt: str | None) -> FinchConfig:
    """``config`` with a chat's system prompt in it (``None`` keeps ``config``'s own).

    The one place a system prompt enters a config: `CompressorHandle.chat_context` and ``prompt_context`` and the
    server's chat endpoint all call it, so a compression made for a conversation is found again by the same config.
    """
    return config if system_prompt is None else config.replace(system_prompt=system_prompt)


# ------------------------------------------------------------------------------------------ the delimiter rule
def split_prompt(prompt: str, delimiter: str = QUESTION_DELIMITER) -> tuple[str, str]:
    """``(context, question)`` from one prompt, cut at the last ``delimiter`` (see `QUESTION_DELIMITER`).

    The context may be empty (the caller decides whether that is an error); the question may not.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"The prompt must be a string, got {type(prompt).__name__}.")
    context, found, question = prompt.rpartition(delimiter)
    if not found:
        raise ValueError(
            f"Without a retriever, the context and the question must come in one prompt, separated by "
            f"{delimiter!r} (e.g. 'Context:\\n{{context}}\\n\\nQuestion: {{question}}'); none found in "
            f"{_preview(prompt)}. Or give a retriever (retriever=...) and pass just the question."
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


def template_pieces(
    template: str, context_field: str, question_field: str, name: str = "The template"
) -> tuple[str, str, str]:
    """The literal text of ``template`` before ``context_field``, between the fields, and after ``question_field``.

    ``name`` names the template in the error raised when it lacks a field or the text between them.
    """
    head, found_context, rest = template.partition(context_field)
    middle, found_question, tail = rest.partition(question_field)
    if not found_context or not found_question or not middle.strip():
        raise ValueError(
            f"{name} must contain {context_field} followed by {question_field}, with text between them "
            f"(like LlamaIndex's default text-QA template); got {template!r}."
        )
    return head, middle, tail


def split_templated(prompt: str, template: str, context_field: str, question_field: str) -> tuple[str, str] | None:
    """``(context, question)`` from a prompt written with ``template``, or ``None`` if it is not one.

    The prompt must start with the template's text before ``context_field`` and end with its text after
    ``question_field`` (surrounding whitespace aside); it is cut at the *last* occurrence of the text between
    the two fields, so the context may contain anything, including the template's separator lines.
    """
    head, middle, tail = template_pieces(template, context_field, question_field)
    text = prompt.strip()
    head, tail = head.strip(), tail.strip()
    if not text.startswith(head) or not text.endswith(tail) or len(text) < len(head) + len(tail):
        return None
    body = text[len(head) : len(text) - len(tail)]
    context, found, question = body.rpartition(middle.strip())
    if not found or not question.strip():
        return None
    return context.strip(), question.strip()


def _preview(text: str, size: int = 80) -> str:
    return repr(text if len(text) <= size else text[: size - 3] + "...")


# ------------------------------------------------------------------------------------------ cache keys
_KEY_LINE = re.compile(rf"^[ \t]*{CACHE_KEY}:[ \t]*{CACHE_KEY_PATTERN.pattern}[ \t]*\n?", re.MULTILINE)


def keys_in(text: str) -> list[str]:
    """The compressed contexts' keys (`CACHE_KEY_PATTERN`) named in ``text``, in order, repeats included."""
    return CACHE_KEY_PATTERN.findall(text)


def without_keys(text: str) -> str:
    """``text`` without ``finch_cache_key: ...`` lines (a node's metadata as LlamaIndex writes it) and bare keys.

    What a model reads of a prompt that names stored compressions: a key is bookkeeping, not text.
    """
    return CACHE_KEY_PATTERN.sub("", _KEY_LINE.sub("", text))


def strip_keys(text: str) -> str:
    """`without_keys`, and the surrounding whitespace: the context left to compress."""
    return without_keys(text).strip()


def one_key(keys: Iterable[Any]) -> str | None:
    """The one key that ``keys`` name (non-strings ignored), or ``None`` when they name none or several."""
    distinct = {key for key in keys if isinstance(key, str)}
    return distinct.pop() if len(distinct) == 1 else None


# ------------------------------------------------------------------------------------------ plain prompts
def plain_prompt_ids(tokenizer: Any, prompt: str, *, formatted: bool = False) -> list[int]:
    """Token ids of a completion prompt for plain generation (nothing to compress).

    ``formatted=True``: the caller already applied the chat template, so its markup is markup (`encode_markup`).
    Otherwise the prompt is the user's turn: rendered with the chat template, or for a model without one the
    prompt as plain text after the tokenizer's BOS. Cache keys are left out (`without_keys`).
    """
    prompt = without_keys(prompt)
    if formatted:
        return encode_markup(tokenizer, prompt)
    if getattr(tokenizer, "chat_template", None):
        return chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])
    return list(encode_text(tokenizer, prompt, add_special_tokens=True).input_ids)


def plain_chat_ids(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], chat_template: bool | None = None
) -> list[int]:
    """Token ids of a conversation for plain generation (nothing to compress), cache keys left out (`without_keys`).

    A LlamaIndex node's metadata, its ``finch_cache_key`` included, is rendered into a chat engine's system message;
    the key is finch-rag's bookkeeping, and a model that read it would answer differently whenever it changes.
    """
    plain = [{**message, "content": without_keys(message["content"])} for message in messages]
    return chat_prompt_ids(tokenizer, plain, chat_template=chat_template)
