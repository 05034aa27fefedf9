"""`CompressedContext`: a compressed KV cache plus the bookkeeping to inspect and reuse it."""

from __future__ import annotations

import hashlib
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from transformers import PreTrainedTokenizerBase

from .compression.loop import CompressedCache
from .config import FinchConfig
from .prompts import Passage, PromptParts

STATS_KEYS = ("finch_kept_fraction", "finch_tokens_before", "finch_tokens_after")
"""Per-passage statistics (`CompressedContext.passage_stats`) that the integrations add to each output's metadata."""

DISPLAY_OPTIONS = ("progress",)
"""`FinchConfig` fields that change how a compression is shown, not what it keeps."""


def compression_settings(config: FinchConfig) -> tuple[tuple[str, Any], ...]:
    """The fields of ``config`` that decide what a compression keeps (all but `DISPLAY_OPTIONS`), sorted by name."""
    return tuple(sorted((name, value) for name, value in config.to_dict().items() if name not in DISPLAY_OPTIONS))


_ID_PARTS = ("prefix_ids", "context_ids", "question_ids", "suffix_ids")


@dataclass(eq=False)
class CompressedContext:
    """The result of `FinchCompressor.compress`: answer from it as often as you like, it never changes.

    Attributes
    ----------
    cache : CompressedCache
        Per-layer keys/values ``[1, num_kv_heads, |P| + B, head_dim]`` and where each entry came from.
    parts : PromptParts
        The prompt it was compressed from: each part's token ids and, with `FinchCompressor.compress`, the
        question, the passages in packed order, the earlier turns held in the prefix, and where each context
        token sits in the passages' text. The attributes of the same names read it.
    config : FinchConfig
        The configuration it was compressed with.
    prefix_ids, context_ids, question_ids, suffix_ids : torch.LongTensor
        1-D token ids of each prompt part, from ``parts`` (``suffix_ids`` is the assistant-turn cue fed after the
        question).
    """

    cache: CompressedCache
    parts: PromptParts
    config: FinchConfig
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    model_name: str = ""

    prefix_ids: torch.Tensor = field(init=False, repr=False)
    context_ids: torch.Tensor = field(init=False, repr=False)
    question_ids: torch.Tensor = field(init=False, repr=False)
    suffix_ids: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in _ID_PARTS:
            setattr(self, name, torch.tensor(getattr(self.parts, name), dtype=torch.long))

    # ---------------------------------------------------------------- the prompt
    @property
    def question(self) -> str | None:
        return self.parts.question

    @property
    def passages(self) -> list[Passage] | None:
        return self.parts.passages

    @property
    def history(self) -> list[dict[str, str]]:
        return self.parts.history

    @property
    def context_text(self) -> str | None:
        return self.parts.context_text

    @property
    def token_offsets(self) -> list[tuple[int, int]] | None:
        return self.parts.token_offsets

    @property
    def passage_text_spans(self) -> list[tuple[int, int]] | None:
        return self.parts.passage_text_spans

    @property
    def passage_token_starts(self) -> list[int] | None:
        return self.parts.passage_token_starts

    # ----------------------------------------------------------------- sizes
    @property
    def kept_positions(self) -> list[torch.Tensor]:
        """Per layer, ``LongTensor [num_kv_heads, kept]``: kept positions in the context, ascending."""
        return self.cache.kept_positions

    @property
    def original_tokens(self) -> int:
        """``n``, context tokens before compression."""
        return int(self.context_ids.shape[0])

    @property
    def kept_tokens(self) -> int:
        """``B``, context entries kept per layer and KV head."""
        return int(self.cache.kept_positions[0].shape[-1])

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the whole prompt uncompressed: prefix, context, question and answer cue (usage counts)."""
        return self.parts.prompt_tokens

    @property
    def compression_factor(self) -> float:
        return self.original_tokens / max(self.kept_tokens, 1)

    @property
    def cache_length(self) -> int:
        """Entries per layer and KV head in the compressed cache: ``|P| + B``."""
        return int(self.cache.keys[0].shape[2])

    @property
    def stats(self) -> dict[str, Any]:
        return {
            "compression_seconds": self.cache.seconds,
            "peak_kv_entries": self.cache.peak_kv_entries,
            "num_chunks": self.cache.num_chunks,
            "original_tokens": self.original_tokens,
            "kept_tokens": self.kept_tokens,
            "compression_factor": self.compression_factor,
            "prefix_tokens": len(self.parts.prefix_ids),
            "question_tokens": len(self.parts.question_ids),
            "answer_cache": "reread" if self.cache.reread else "compressed",
        }

    @property
    def cache_key(self) -> str:
        """Identifies this compression (model, prompt parts, config but its display options) for reuse."""
        digest = hashlib.sha256()
        digest.update(self.model_name.encode())
        for part in (self.prefix_ids, self.context_ids, self.question_ids, self.suffix_ids):
            digest.update(part.numpy().tobytes())
            digest.update(b"|")
        digest.update(repr(list(compression_settings(self.config))).encode())
        return "finch-" + digest.hexdigest()[:24]

    # ------------------------------------------------------------- inspection
    def kept_mask(self) -> torch.Tensor:
        """``[n]`` float: for each context token, the fraction of (layer, KV head) pairs that kept it."""
        counts = torch.zeros(self.original_tokens, dtype=torch.float32)
        heads = 0
        for positions in self.kept_positions:
            flat = positions.reshape(-1).cpu()
            counts.index_add_(0, flat, torch.ones(flat.shape[0]))
            heads += positions.shape[0]
        return counts / heads

    def kept_per_layer(self) -> torch.Tensor:
        """``[num_layers, n]`` float: per layer, the fraction of KV heads that kept each context token."""
        rows = []
        for positions in self.kept_positions:
            row = torch.zeros(self.original_tokens, dtype=torch.float32)
            flat = positions.reshape(-1).cpu()
            row.index_add_(0, flat, torch.ones(flat.shape[0]))
            rows.append(row / positions.shape[0])
        return torch.stack(rows)

    def passage_tokens(self, passage: int | None) -> torch.Tensor:
        """``[n]`` bool: the tokens of one passage's own text (no title, no separator), or all tokens."""
        if passage is None:
            return torch.ones(self.original_tokens, dtype=torch.bool)
        return self.parts.passage_tokens(passage)

    def kept_text(self, threshold: float = 0.5, passage: int | None = None, gap: str = " … ") -> str:
        """Extractive view: the context tokens kept by at least ``threshold`` of the (layer, KV head) pairs.

        Runs of kept tokens are joined with ``gap``. ``passage`` restricts it to one passage.
        """
        if not 0 < threshold <= 1:
            raise ValueError(
                f"threshold is a fraction of (layer, KV head) pairs and must be in (0, 1], got {threshold}."
            )
        kept = ((self.kept_mask() >= threshold - 1e-6) & self.passage_tokens(passage)).tolist()
        runs: list[tuple[int, int]] = []
        for token, is_kept in enumerate(kept):
            if not is_kept:
                continue
            if runs and runs[-1][1] == token:
                runs[-1] = (runs[-1][0], token + 1)
            else:
                runs.append((token, token + 1))
        pieces = [self.text_of(start, end) for start, end in runs]
        return gap.join(piece.strip() for piece in pieces if piece.strip())

    def text_of(self, start: int, end: int) -> str:
        """The context text of tokens ``start..end-1``: a slice of the passages' text, or decoded from token ids."""
        if self.parts.context_text is not None and self.parts.token_offsets is not None:
            offsets = self.parts.token_offsets
            return self.parts.context_text[offsets[start][0] : offsets[end - 1][1]]
        # One sequence decodes to a str; `decode` is annotated for batches too.
        return cast(str, self.tokenizer.decode(self.parts.context_ids[start:end]))

    def span_tokens(self, spans: Sequence[tuple[int, int, int]]) -> torch.Tensor:
        """``[n]`` bool: the context tokens overlapping ``spans``.

        ``spans`` holds ``(passage_index, char_start, char_end)`` in that passage's own text.
        """
        return self.parts.span_tokens(spans)

    def kept_fraction(self, spans: Sequence[tuple[int, int, int]]) -> float:
        """Fraction of the KV entries of the tokens overlapping ``spans`` that survived.

        ``spans`` holds ``(passage_index, char_start, char_end)`` in that passage's own text. The result
        averages over those tokens, layers and KV heads.
        """
        selected = self.span_tokens(spans)
        if not selected.any():
            raise ValueError(f"The spans {list(spans)} cover no context token.")
        return float(self.kept_mask()[selected].mean())

    def kept_fraction_per_layer(self, spans: Sequence[tuple[int, int, int]]) -> list[float]:
        """`kept_fraction` for each layer (averaged over that layer's KV heads)."""
        selected = self.span_tokens(spans)
        if not selected.any():
            raise ValueError(f"The spans {list(spans)} cover no context token.")
        return self.kept_per_layer()[:, selected].mean(dim=1).tolist()

    def passage_kept_fractions(self) -> list[float]:
        """For each passage, the fraction of its tokens' KV entries that survived."""
        if self.parts.passage_text_spans is None:
            return []
        mask = self.kept_mask()
        fractions = []
        for index in range(len(self.parts.passage_text_spans)):
            tokens = self.passage_tokens(index)
            fractions.append(float(mask[tokens].mean()) if tokens.any() else 0.0)
        return fractions

    def passage_stats(self) -> list[dict[str, Any]]:
        """Per passage, the `STATS_KEYS` statistics.

        ``finch_kept_fraction`` is `passage_kept_fractions`' value; ``finch_tokens_before`` the tokens of the
        passage's own text (not its title); ``finch_tokens_after`` is ``round(kept_fraction * tokens_before)``,
        the entries kept per layer and KV head on average.
        """
        stats = []
        for index, fraction in enumerate(self.passage_kept_fractions()):
            before = int(self.passage_tokens(index).sum())
            stats.append(dict(zip(STATS_KEYS, (fraction, before, round(fraction * before)), strict=True)))
        return stats

    def kept_passages(self, threshold: float = 0.5) -> list[tuple[str, dict[str, Any]]]:
        """Per passage, in packed order: its kept text (`kept_text` at ``threshold``) and its `passage_stats`.

        What a front end returns for each document it compressed; an allocation plan's ``restore`` puts it back
        in the order the documents were given. A context built from token ids has no passages: ``[]``.
        """
        texts = [self.kept_text(threshold, passage=index) for index in range(len(self.parts.passage_text_spans or ()))]
        return list(zip(texts, self.passage_stats(), strict=True))

    def __repr__(self) -> str:
        return (
            f"CompressedContext(original_tokens={self.original_tokens}, kept_tokens={self.kept_tokens}, "
            f"compression_factor={self.compression_factor:.1f}, chunks={self.cache.num_chunks}, "
            f"model={self.model_name!r})"
        )

    def _repr_html_(self) -> str:
        from .visualize import kept_tokens_html

        header = html.escape(repr(self))
        return f"<div><code>{header}</code>{kept_tokens_html(self)}</div>"
