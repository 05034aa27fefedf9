"""Prompt building: one prompt split into the prefix, the context, the question and the answer cue.

FINCH needs the four parts as separate token ranges: the prefix (chat-template start, system prompt,
instruction) is always kept, the context is compressed, the question conditions the compression, and
the suffix (end of the user turn, start of the assistant turn) is fed only when answering. We render the
chat template once with sentinels in place of the context and question and cut the string there, so
any template works without knowing its markup.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union, cast

import torch
from transformers import PreTrainedTokenizerBase

INSTRUCTION = "Answer the question using the context below. Be concise."
_CONTEXT_SENTINEL = "\x00FINCH_CONTEXT\x00"
_QUESTION_SENTINEL = "\x00FINCH_QUESTION\x00"
PASSAGE_SEPARATOR = "\n\n"
# A sentence ends at . ! ? (and any closing quote or bracket) followed by whitespace, or at a line break.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+|\n+")


@dataclass(frozen=True)
class Passage:
    """A piece of context, with an optional title or source that is written before its text."""

    text: str
    title: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def header(self) -> str:
        return f"{self.title}\n" if self.title else ""


PassageLike = Union[str, Passage]  # noqa: UP007 - a runtime alias, and the package supports Python 3.10


def as_passages(context: str | Sequence[PassageLike]) -> list[Passage]:
    """Normalise ``compress()``'s ``context`` argument, rejecting what cannot be a passage."""
    if isinstance(context, str):
        items: Sequence[Any] = [context]
    elif isinstance(context, Sequence):
        items = context
    else:
        raise TypeError(f"context must be a string or a list of strings, got {type(context).__name__}.")
    passages = []
    for index, item in enumerate(items):
        if isinstance(item, Passage):
            passages.append(item)
        elif isinstance(item, str):
            passages.append(Passage(item))
        else:
            raise TypeError(
                f"context[{index}] is a {type(item).__name__}; passages must be strings (or finch_rag.Passage). "
                "Convert documents to their text first, e.g. [doc.page_content for doc in docs]."
            )
    if not passages or not any(passage.text.strip() for passage in passages):
        raise ValueError("The context is empty: give at least one non-empty passage to compress.")
    return passages


@dataclass
class PromptParts:
    """Token ids of each part, plus what is needed to map context tokens back to passage text."""

    prefix_ids: list[int]
    context_ids: list[int]
    question_ids: list[int]
    suffix_ids: list[int]
    context_text: str
    token_offsets: list[tuple[int, int]]  # (char_start, char_end) of each context token in context_text
    passage_text_spans: list[tuple[int, int]]  # where each passage's own text sits in context_text
    passage_token_starts: list[int]

    def span_tokens(self, spans: Sequence[tuple[int, int, int]]) -> torch.Tensor:
        """``[n]`` bool: the context tokens overlapping ``spans`` (see `span_token_mask`)."""
        return span_token_mask(self.token_offsets, self.passage_text_spans, spans)

    def sentence_ids(self) -> torch.Tensor:
        """``[n]`` long: the index of the sentence each context token starts in, counted over the context.

        A passage always starts a new sentence, and its title line belongs to its first sentence: a title is
        worth keeping only with some of its text (measured in ``docs/results/allocation_study.md``). A token
        belongs to the sentence of its last character, so ``" It"`` goes with the sentence it begins.
        """
        cuts = {0}
        for text_start, text_end in self.passage_text_spans:
            block_start = self.context_text.rfind(PASSAGE_SEPARATOR, 0, text_start)
            cuts.add(0 if block_start < 0 else block_start + len(PASSAGE_SEPARATOR))
            for match in _SENTENCE_END.finditer(self.context_text, text_start, text_end):
                cuts.add(match.end())
        boundaries = torch.tensor(sorted(cuts), dtype=torch.long)
        last_chars = torch.tensor([max(end - 1, 0) for _, end in self.token_offsets], dtype=torch.long)
        return torch.searchsorted(boundaries, last_chars, right=True) - 1


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


def _template_pieces(tokenizer: PreTrainedTokenizerBase, chat: bool, system_prompt: str | None) -> tuple[str, str, str]:
    """(prefix, between context and question, suffix) as strings."""
    user = f"{INSTRUCTION}\n\nContext:\n{_CONTEXT_SENTINEL}\n\nQuestion: {_QUESTION_SENTINEL}"
    if chat:
        messages = [{"role": "user", "content": user}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        # Untokenized, one conversation renders to a str; the annotation covers every mode.
        rendered = cast(str, tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    else:
        bos = tokenizer.bos_token if tokenizer.bos_token and _adds_bos(tokenizer) else ""
        system = f"{system_prompt}\n\n" if system_prompt else ""
        rendered = f"{bos}{system}{user}\nAnswer:"
    prefix, rest = rendered.split(_CONTEXT_SENTINEL)
    between, suffix = rest.split(_QUESTION_SENTINEL)
    return prefix, between, suffix


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    probe = tokenizer("a").input_ids
    return bool(probe) and probe[0] == tokenizer.bos_token_id


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    passages: Sequence[Passage],
    question: str,
    *,
    chat_template: bool | None = None,
    system_prompt: str | None = None,
) -> PromptParts:
    r"""Split the full prompt for ``passages`` and ``question`` into token ranges.

    The question segment starts with the text between context and question (``"\n\nQuestion: "``), so
    it reads naturally after any chunk.
    """
    if not isinstance(question, str):
        raise TypeError(f"question must be a string, got {type(question).__name__}.")
    if not question.strip():
        raise ValueError("The question is empty: FINCH compresses the context for a question, so give one.")
    prefix, between, suffix = _template_pieces(tokenizer, uses_chat_template(tokenizer, chat_template), system_prompt)

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

    encoded = tokenizer(context_text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(offset) for offset in encoded["offset_mapping"]]
    passage_starts = []
    token = 0
    for start in block_starts:
        while token < len(offsets) and offsets[token][1] <= start:
            token += 1
        passage_starts.append(token)

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids if text else []

    return PromptParts(
        prefix_ids=ids(prefix),
        context_ids=list(encoded["input_ids"]),
        question_ids=ids(between + question.strip()),
        suffix_ids=ids(suffix),
        context_text=context_text,
        token_offsets=offsets,  # type: ignore[arg-type]
        passage_text_spans=spans,
        passage_token_starts=passage_starts,
    )
