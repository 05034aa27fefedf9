"""Passage links: the passages that the best-ranked passages name by title are the question's second hop.

A multi-hop question ("Which archbishop took part in the mass action against the National Party?") needs a
fact from a passage that the question never names: the bridge passage ("Desmond Tutu"), which the first hop
names. The retriever ranks the first hop high, but the bridge passage low, and question attention ranks its
sentences far down, so a small budget loses it. `RankWeighting` therefore multiplies the scores of every
passage that the ``link_sources`` best-ranked passages name by title (``link_boost``). It is a prior known
before compression, so it holds at every step of the chunk loop, and costs no model time. Not in the paper
(FINCH: Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167); measured in ``docs/results/links.md``.

A passage names another when the other's title occurs in its text as whole words, ignoring case and a
trailing disambiguation in parentheses ("Democratic Party (South Africa)" is named by "the Democratic
Party"). Titles are matched as literal text, never as patterns. A title shorter than `MIN_TITLE_CHARS` or
without a letter names nothing, and passages that share a title (pieces of one document) never link each
other.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MIN_TITLE_CHARS = 4
_DISAMBIGUATION = re.compile(r"\s*\([^()]*\)\s*$")
_SPACE = re.compile(r"\s+")


def title_key(title: str | None) -> str:
    """A title as it is matched: lower case, spaces collapsed, without a trailing ``(...)``."""
    if not title:
        return ""
    return _SPACE.sub(" ", _DISAMBIGUATION.sub("", title)).strip().lower()


def named_passages(titles: Sequence[str | None], texts: Sequence[str], sources: int) -> list[bool]:
    """Per passage (ranked, best first): whether one of the first ``sources`` passages names it by title.

    The sources themselves, and passages with a source's title, are never named.
    """
    if len(titles) != len(texts):
        raise ValueError(f"Got {len(titles)} titles for {len(texts)} passages.")
    keys = [title_key(title) for title in titles]
    source_keys = set(keys[:sources])
    source_text = _SPACE.sub(" ", " ".join(texts[:sources])).lower()
    named = []
    for index, key in enumerate(keys):
        linkable = index >= sources and key not in source_keys and len(key) >= MIN_TITLE_CHARS
        linkable = linkable and any(char.isalpha() for char in key)
        named.append(bool(linkable and re.search(r"(?<!\w)" + re.escape(key) + r"(?!\w)", source_text)))
    return named
