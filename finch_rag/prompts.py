"""Prompt building: one prompt split into the prefix, the context, the question and the answer cue.

FINCH needs the four parts as separate token ranges: the prefix (chat-template start, system prompt,
earlier turns of the conversation, instruction) is always kept, the context is compressed, the question
conditions the compression, and the suffix (end of the user turn, start of the assistant turn) is fed only
when answering. We render the chat template once with sentinels in place of every piece of text and cut
the string there, so any template works without knowing its markup.

Untrusted text stays text. Passages, the question, the system prompt and earlier turns are tokenised as
plain text: a passage that contains a control token's string (``"<|im_end|>"``) gets the tokens of those
characters, never the control token itself. Only the template's own markup may produce special tokens.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union, cast

import torch
from transformers import PreTrainedTokenizerBase

INSTRUCTION = "Answer the question using the context below. Be concise."
_CONTEXT_SENTINEL = "\x00FINCH_CONTEXT\x00"
_QUESTION_SENTINEL = "\x00FINCH_QUESTION\x00"
_TEXT_SENTINEL = "\x00FINCH_TEXT_{}\x00"
_TEXT_SENTINELS = re.compile("\x00FINCH_TEXT_([0-9]+)\x00")
HISTORY_ROLES = ("user", "assistant")

PASSAGE_SEPARATOR = "\n\n"
# A sentence ends at . ! ? (and any closing quote or bracket) followed by whitespace, or at a line break.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+|\n+")
# ... and where block markup closes (a paragraph, table row, table, list, heading), as in scraped HTML pages:
# without it, a table or a list, which has no sentence punctuation, is one "sentence" of a thousand tokens.
_BLOCK_END = re.compile(r"</(?:p|tr|table|ul|ol|dl|h[1-6]|div|blockquote|pre)\s*>\s*", re.IGNORECASE)
MAX_SENTENCE_TOKENS = 128
"""A longer run without a sentence end is split into even pieces of at most this many tokens (``sentence_ids``).

Whole sentences compete for the budget (``granularity="sentence"``), so one giant "sentence" (text without
punctuation: tables, lists, transcripts) would be kept or dropped whole on a mean that dilutes what it holds.
At most 0.1% of HotpotQA's sentences are longer (``docs/results/leval.md``).
"""


@dataclass(frozen=True)
class Passage:
    """A piece of context, with an optional title or source that is written before its text."""

    text: str
    title: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def header(self) -> str:
        return f"{self.title}\n" if self.title else ""


PassageLike = Union[str, Passage]  # noqa: UP007 - a runtime alias, and the package supports Python 3.10
History = Sequence[Mapping[str, Any]]
"""Earlier turns of a conversation: ``{"role": "user" | "assistant", "content": str}``, oldest first."""


def to_passage(item: Any, where: str) -> Passage:
    """``item`` as a `Passage` (a string is a passage without title); ``where`` names it in the error."""
    if isinstance(item, Passage):
        return item
    if isinstance(item, str):
        return Passage(item)
    raise TypeError(
        f"{where} is a {type(item).__name__}; passages must be strings (or finch_rag.Passage). "
        "Convert documents to their text first, e.g. [doc.page_content for doc in docs]."
    )


def as_passages(context: str | Sequence[PassageLike]) -> list[Passage]:
    """Normalise ``compress()``'s ``context`` argument, rejecting what cannot be a passage."""
    if isinstance(context, str):
        items: Sequence[Any] = [context]
    elif isinstance(context, Sequence):
        items = context
    else:
        raise TypeError(f"context must be a string or a list of strings, got {type(context).__name__}.")
    passages = [to_passage(item, f"context[{index}]") for index, item in enumerate(items)]
    if not passages or not any(passage.text.strip() for passage in passages):
        raise ValueError("The context is empty: give at least one non-empty passage to compress.")
    return passages


@dataclass
class PromptParts:
    """One prompt as FINCH reads it: the token ids of each part, and what they were built from.

    `build_prompt` fills every field. A prompt given as token ids (`FinchCompressor.compress_ids`) has the ids
    only: the fields that map context tokens back to passage text are ``None``, and the methods that need them
    raise a ``ValueError`` that says so.

    Attributes
    ----------
    prefix_ids, context_ids, question_ids, suffix_ids : list of int
        The protected prefix, the context to compress, the question that conditions it, and the answer cue fed
        after the question when answering.
    context_text : str, optional
        The passages as packed into the context (titles and separators included).
    token_offsets : list of (int, int), optional
        ``(char_start, char_end)`` of each context token in ``context_text``.
    passage_text_spans : list of (int, int), optional
        Where each passage's own text (no title, no separator) sits in ``context_text``.
    passage_token_starts : list of int, optional
        The first context token of each passage (its title included).
    question, passages, history
        What the prompt was built from: the question, the passages in packed order, and the earlier turns of the
        conversation, which live in the prefix.
    """

    prefix_ids: list[int]
    context_ids: list[int]
    question_ids: list[int]
    suffix_ids: list[int]
    context_text: str | None = None
    token_offsets: list[tuple[int, int]] | None = None
    passage_text_spans: list[tuple[int, int]] | None = None
    passage_token_starts: list[int] | None = None
    question: str | None = None
    passages: list[Passage] | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the whole prompt, as the model would read it uncompressed (all four parts)."""
        return len(self.prefix_ids) + len(self.context_ids) + len(self.question_ids) + len(self.suffix_ids)

    def _layout(self) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]], list[int]]:
        """``context_text``, ``token_offsets``, ``passage_text_spans`` and ``passage_token_starts``, all set."""
        if (
            self.context_text is None
            or self.token_offsets is None
            or self.passage_text_spans is None
            or self.passage_token_starts is None
        ):
            raise ValueError(
                "This context was built from token ids (compress_ids()), so it has no passages or text: "
                "compress() the passages to inspect them."
            )
        return self.context_text, self.token_offsets, self.passage_text_spans, self.passage_token_starts

    def span_tokens(self, spans: Sequence[tuple[int, int, int]]) -> torch.Tensor:
        """``[n]`` bool: the context tokens overlapping ``spans`` (see `span_token_mask`)."""
        _, offsets, passage_spans, _ = self._layout()
        return span_token_mask(offsets, passage_spans, spans)

    def passage_tokens(self, passage: int) -> torch.Tensor:
        """``[n]`` bool: the tokens of one passage's own text (no title, no separator)."""
        _, offsets, passage_spans, _ = self._layout()
        if not 0 <= passage < len(passage_spans):
            raise IndexError(f"passage {passage} out of range (0..{len(passage_spans) - 1}).")
        start, end = passage_spans[passage]
        return span_token_mask(offsets, passage_spans, [(passage, 0, end - start)])

    def token_weights(self, passage_weights: Sequence[float]) -> torch.Tensor:
        """``[n]`` float: each passage's weight (one non-negative prior per passage) on each of its tokens.

        A passage's tokens run from its `passage_token_starts` entry (title included) to the next passage's.
        """
        _, _, _, starts = self._layout()
        if len(passage_weights) != len(starts):
            raise ValueError(f"passage_weights has {len(passage_weights)} values for {len(starts)} passages.")
        values = torch.tensor([float(w) for w in passage_weights], dtype=torch.float32)
        if not torch.isfinite(values).all() or (values < 0).any():
            raise ValueError(f"passage_weights must be finite and >= 0, got {list(passage_weights)}.")
        ends = [*starts[1:], len(self.context_ids)]
        lengths = torch.tensor([end - start for start, end in zip(starts, ends, strict=True)])
        return values.repeat_interleave(lengths)

    def sentence_ids(self) -> torch.Tensor:
        """``[n]`` long: the index of the sentence each context token starts in, counted over the context.

        A passage always starts a new sentence, and its title line belongs to its first sentence: a title is
        worth keeping only with some of its text (measured in ``docs/results/allocation_study.md``). A token
        belongs to the sentence of its last character, so ``" It"`` goes with the sentence it begins. Closing
        block markup (``</p>``, ``</tr>``, ``</table>``, ``</ul>``, ``</h2>``...) also ends a sentence, and a
        sentence longer than `MAX_SENTENCE_TOKENS` is split into even pieces.
        """
        context_text, offsets, passage_spans, _ = self._layout()
        cuts = {0}
        for text_start, text_end in passage_spans:
            block_start = context_text.rfind(PASSAGE_SEPARATOR, 0, text_start)
            cuts.add(0 if block_start < 0 else block_start + len(PASSAGE_SEPARATOR))
            for pattern in (_SENTENCE_END, _BLOCK_END):
                cuts.update(match.end() for match in pattern.finditer(context_text, text_start, text_end))
        boundaries = torch.tensor(sorted(cuts), dtype=torch.long)
        last_chars = torch.tensor([max(end - 1, 0) for _, end in offsets], dtype=torch.long)
        return cap_spans(torch.searchsorted(boundaries, last_chars, right=True) - 1, MAX_SENTENCE_TOKENS)


def cap_spans(span_ids: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """Relabel ``[n]`` non-decreasing span ids so that no span is longer than ``max_tokens``.

    A longer span is split into ``ceil(length / max_tokens)`` consecutive pieces of (nearly) equal length;
    labels stay consecutive from 0.
    """
    if span_ids.numel() == 0:
        return span_ids
    starts_span = torch.ones_like(span_ids, dtype=torch.bool)
    starts_span[1:] = span_ids[1:] != span_ids[:-1]
    starts = starts_span.nonzero().flatten()
    lengths = torch.diff(starts, append=torch.tensor([span_ids.numel()]))
    pieces = (lengths + max_tokens - 1) // max_tokens
    piece_length = (lengths + pieces - 1) // pieces
    span = torch.cumsum(starts_span.long(), 0) - 1
    piece = (torch.arange(span_ids.numel()) - starts[span]) // piece_length[span]
    new = starts_span.clone()
    new[1:] |= piece[1:] != piece[:-1]
    return torch.cumsum(new.long(), 0) - 1


def span_token_mask(
    token_offsets: Sequence[tuple[int, int]],
    passage_text_spans: Sequence[tuple[int, int]],
    spans: Sequence[tuple[int, int, int]],
) -> torch.Tensor:
    """``[n]`` bool: the context tokens that overlap any ``(passage_index, char_start, char_end)`` span.

    Character offsets are in that passage's own text; ``passage_text_spans`` places each passage's text in the
    packed context and ``token_offsets`` each token. Raises ``IndexError`` for a passage out of range.
    """
    offsets = torch.tensor(list(token_offsets), dtype=torch.long).reshape(-1, 2)
    selected = torch.zeros(offsets.shape[0], dtype=torch.bool)
    for passage, char_start, char_end in spans:
        if not 0 <= passage < len(passage_text_spans):
            raise IndexError(f"passage {passage} out of range (0..{len(passage_text_spans) - 1}).")
        base = passage_text_spans[passage][0]
        selected |= (offsets[:, 0] < base + char_end) & (offsets[:, 1] > base + char_start)
    return selected


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, requested: bool | None) -> bool:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if requested and not has_template:
        raise ValueError(
            f"chat_template=True, but the tokenizer of {tokenizer.name_or_path!r} has no chat template. "
            "Use chat_template=None (plain prompt for base models) or set tokenizer.chat_template."
        )
    return has_template if requested is None else requested


# ------------------------------------------------------------------------------------------ tokenisation
# A fast tokenizer's `split_special_tokens` is a flag on its backend that every call sets: one lock keeps our
# calls from flipping it under each other.
_encode_lock = threading.Lock()


def _special_ids_in(tokenizer: PreTrainedTokenizerBase, text: str) -> set[int]:
    """Ids of the special tokens whose string occurs in ``text``."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {index for index, token in decoder.items() if token.special and token.content and token.content in text}


def encode_text(
    tokenizer: PreTrainedTokenizerBase, text: str, *, add_special_tokens: bool = False, offsets: bool = False
) -> Any:
    """Tokenise untrusted ``text`` (a passage, a question, a message) as plain text.

    A special token's string in ``text`` (``"<|im_end|>"``) is split into ordinary tokens
    (``split_special_tokens=True``), never turned into the special token. ``add_special_tokens`` adds the
    tokenizer's own BOS/EOS around the text, as usual. Returns the tokenizer's encoding (``input_ids``, and
    ``offset_mapping`` with ``offsets``).
    """
    injected = _special_ids_in(tokenizer, text)
    options: dict[str, Any] = {"add_special_tokens": add_special_tokens}
    if offsets:
        options["return_offsets_mapping"] = True
    if injected:
        options["split_special_tokens"] = True
    with _encode_lock:
        encoded = tokenizer(text, **options)
    if injected & set(encoded["input_ids"]):
        raise RuntimeError(
            f"The tokenizer {tokenizer.name_or_path!r} turned control-token strings in untrusted text into special "
            "tokens despite split_special_tokens=True. Upgrade transformers (>= 5.0) and tokenizers."
        )
    return encoded


def encode_markup(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of trusted template markup: here special-token strings are special tokens."""
    if not text:
        return []
    with _encode_lock:
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=False).input_ids)


def _encode_rendered(tokenizer: PreTrainedTokenizerBase, rendered: str, texts: Sequence[str]) -> list[int]:
    """Ids of ``rendered`` markup whose text sentinels stand for ``texts``: markup as markup, texts as plain text."""
    found = [int(index) for index in _TEXT_SENTINELS.findall(rendered)]
    if sorted(found) != list(range(len(texts))):
        raise ValueError(
            f"The chat template of {tokenizer.name_or_path!r} drops or repeats some messages, so the prompt cannot "
            "be split into its parts. Use chat_template=False or a template that renders every message once."
        )
    ids: list[int] = []
    pieces = _TEXT_SENTINELS.split(rendered)  # markup, index, markup, index, ..., markup
    for position, piece in enumerate(pieces):
        if position % 2:
            text = texts[int(piece)]
            ids += list(encode_text(tokenizer, text).input_ids) if text else []
        else:
            ids += encode_markup(tokenizer, piece)
    return ids


# ------------------------------------------------------------------------------------------ conversations
def check_messages(messages: Sequence[Mapping[str, Any]], roles: Sequence[str], name: str) -> list[dict[str, str]]:
    """``messages`` as ``{"role", "content"}`` dicts, checked: each role in ``roles``, each content a string."""
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError(f"{name} is a list of {{'role': ..., 'content': ...}} messages, got {type(messages).__name__}.")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise TypeError(f"{name}[{index}] must be a mapping with 'role' and 'content', got {message!r}.")
        role, content = message["role"], message["content"]
        if role not in roles:
            raise ValueError(f"{name}[{index}] has role {role!r}; the roles allowed here are {tuple(roles)}.")
        if not isinstance(content, str):
            raise TypeError(f"{name}[{index}]['content'] must be a string, got {type(content).__name__}.")
        checked.append({"role": role, "content": content})
    return checked


def _render(
    tokenizer: PreTrainedTokenizerBase,
    chat: bool,
    system_prompt: str | None,
    turns: Sequence[Mapping[str, str]],
    final_user: str | None = None,
) -> tuple[str, list[str]]:
    """The conversation rendered with a sentinel in place of each message's text, and those texts in order.

    ``final_user`` is our own last user turn (with the context and question sentinels), rendered as it is;
    without it the last of ``turns`` is the user's.
    """
    texts: list[str] = []

    def slot(text: str) -> str:
        texts.append(text)
        return _TEXT_SENTINEL.format(len(texts) - 1)

    if chat:
        messages = [{"role": "system", "content": slot(system_prompt)}] if system_prompt is not None else []
        messages += [{"role": turn["role"], "content": slot(turn["content"])} for turn in turns]
        if final_user is not None:
            messages.append({"role": "user", "content": final_user})
        # Untokenized, one conversation renders to a str; the annotation covers every mode.
        rendered = cast(str, tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return rendered, texts
    bos = tokenizer.bos_token if tokenizer.bos_token and _adds_bos(tokenizer) else ""
    system = f"{slot(system_prompt)}\n\n" if system_prompt else ""
    lines = [f"{turn['role'].capitalize()}: {slot(turn['content'])}\n" for turn in turns]
    if final_user is not None:
        history = "".join(lines) + "\n" if lines else ""
        return f"{bos}{system}{history}{final_user}\nAnswer:", texts
    return f"{bos}{system}{''.join(lines)}Assistant:", texts


def chat_prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    *,
    chat_template: bool | None = None,
) -> list[int]:
    r"""Token ids of a whole conversation, for plain generation (no compression): the model answers next.

    ``messages`` are ``{"role": "system" | "user" | "assistant", "content": str}``, in order (usually ending
    with the user's); system messages are joined into one system prompt. The chat template renders them (a model without
    one gets ``"User: ...\nAssistant:"`` lines); every message's text is plain text.
    """
    checked = check_messages(messages, ("system", *HISTORY_ROLES), "messages")
    system = [m["content"] for m in checked if m["role"] == "system"]
    turns = [m for m in checked if m["role"] != "system"]
    if not turns:
        raise ValueError("The conversation has no user message: send at least the user's turn.")
    rendered, texts = _render(
        tokenizer, uses_chat_template(tokenizer, chat_template), "\n\n".join(system) if system else None, turns
    )
    return _encode_rendered(tokenizer, rendered, texts)


def _template_pieces(
    tokenizer: PreTrainedTokenizerBase, chat: bool, system_prompt: str | None, history: Sequence[Mapping[str, str]]
) -> tuple[list[int], str, list[int]]:
    """(prefix ids, text between context and question, suffix ids)."""
    user = f"{INSTRUCTION}\n\nContext:\n{_CONTEXT_SENTINEL}\n\nQuestion: {_QUESTION_SENTINEL}"
    rendered, texts = _render(tokenizer, chat, system_prompt, history, final_user=user)
    if rendered.count(_CONTEXT_SENTINEL) != 1 or rendered.count(_QUESTION_SENTINEL) != 1:
        raise ValueError(
            f"The chat template of {tokenizer.name_or_path!r} does not render the user's message once, so the prompt "
            "cannot be split into its parts. Use chat_template=False or a template that renders every message once."
        )
    prefix, rest = rendered.split(_CONTEXT_SENTINEL)
    between, suffix = rest.split(_QUESTION_SENTINEL)
    if _TEXT_SENTINELS.search(between) or _TEXT_SENTINELS.search(suffix):
        raise ValueError(
            f"The chat template of {tokenizer.name_or_path!r} moves earlier messages after the last user message; "
            "they must come before it. Use chat_template=False or another template."
        )
    return _encode_rendered(tokenizer, prefix, texts), between, encode_markup(tokenizer, suffix)


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    with _encode_lock:
        probe = tokenizer("a").input_ids
    return bool(probe) and probe[0] == tokenizer.bos_token_id


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    passages: Sequence[Passage],
    question: str,
    *,
    chat_template: bool | None = None,
    system_prompt: str | None = None,
    history: History | None = None,
) -> PromptParts:
    r"""Split the full prompt for ``passages`` and ``question`` into token ranges.

    The question segment starts with the text between context and question (``"\n\nQuestion: "``), so
    it reads naturally after any chunk.

    ``history`` holds the earlier turns of a conversation, ``{"role": "user" | "assistant", "content": str}``
    oldest first. The chat template renders them between the system prompt and the final user turn (the one
    that carries the context and the question), so they belong to the prefix: always kept whole, never
    compressed, never dropped. Without a chat template they are written as ``"User: ..."`` / ``"Assistant: ..."``
    lines before the instruction.

    Every piece of text (passages, titles, question, system prompt, history) is tokenised as plain text
    (`encode_text`): a control token's string in it never becomes the control token.
    """
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}.")
    if not question.strip():
        raise ValueError("The question is empty: FINCH compresses the context for a question, so give one.")
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise TypeError(f"system_prompt must be a string, got {type(system_prompt).__name__}.")
    turns = check_messages(history or [], HISTORY_ROLES, "history")
    prefix_ids, between, suffix_ids = _template_pieces(
        tokenizer, uses_chat_template(tokenizer, chat_template), system_prompt, turns
    )

    pieces, spans, block_starts = [], [], []
    cursor = 0
    for index, passage in enumerate(passages):
        if index:
            pieces.append(PASSAGE_SEPARATOR)
            cursor += len(PASSAGE_SEPARATOR)
        header = passage.header()
        block_starts.append(cursor)
        pieces.append(header + passage.text)
        spans.append((cursor + len(header), cursor + len(header) + len(passage.text)))
        cursor += len(header) + len(passage.text)
    context_text = "".join(pieces)

    encoded = encode_text(tokenizer, context_text, offsets=True)
    offsets = [tuple(offset) for offset in encoded["offset_mapping"]]
    passage_starts = []
    token = 0
    for start in block_starts:
        while token < len(offsets) and offsets[token][1] <= start:
            token += 1
        passage_starts.append(token)

    return PromptParts(
        prefix_ids=prefix_ids,
        context_ids=list(encoded["input_ids"]),
        question_ids=list(encode_text(tokenizer, between + question.strip()).input_ids),
        suffix_ids=suffix_ids,
        context_text=context_text,
        token_offsets=offsets,  # type: ignore[arg-type]
        passage_text_spans=spans,
        passage_token_starts=passage_starts,
        question=question,
        passages=list(passages),
        history=turns,
    )
