"""A small LRU of compressed contexts, one per loaded model, so a compression can be reused.

A document compressor (LangChain, LlamaIndex) compresses once and tags each output with
`CompressedContext.cache_key`; an LLM wrapper on the same model then finds the compressed cache by that
key instead of recompressing. Keyed per model for the same reason as the model lock: two wrappers built
around one model share it, two models never mix.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .compression.cache import tensor_bytes
from .config import FinchConfig
from .context import CompressedContext, compression_settings

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 30
"""Default bound on the bytes a store holds (1 GiB): about 30 contexts of SmolLM2-135M at B=4096, or two of an
8B model; a count of entries would let 16 contexts of an 8B model hold about 8 GB."""

DEFAULT_CAPACITY: int | None = None
"""No bound on the number of entries by default: the bytes bound is what protects memory."""

STORE_BYTES_ENV = "FINCH_RAG_STORE_BYTES"
"""Environment variable that sets the default bound, in bytes, of each model's store."""

CACHE_KEY = "finch_cache_key"
"""Metadata key under which the integrations tag each output with `CompressedContext.cache_key`."""

CACHE_KEY_PATTERN = re.compile(r"finch-[0-9a-f]{24}")
"""A compressed context's key (`CompressedContext.cache_key`: ``finch-`` and 24 hex digits), e.g. in a prompt."""


def kv_bytes(compressed: CompressedContext) -> int:
    """Bytes of the tensors a stored context keeps alive: its keys and values, kept positions and scores."""
    cache = compressed.cache
    tensors = [*cache.keys, *cache.values, *cache.kept_positions, *(cache.kept_scores or ())]
    return tensor_bytes(tensors)


_INT_BYTES = sys.getsizeof(1 << 20)
_PAIR_BYTES = sys.getsizeof((0, 0)) + 2 * _INT_BYTES


def prompt_bytes(compressed: CompressedContext) -> int:
    """Bytes of the prompt a stored context keeps beside its KV: the token ids and the text bookkeeping.

    An estimate from each container's length (a Python ``int`` or ``(start, end)`` pair per token), not a walk of
    every object. It matters for small models: a tiny model's 2,000-token context holds ~100 KB of KV and ~300 KB
    of token offsets, so a bound on KV alone let the store's real size grow several times past its setting.
    """
    parts = compressed.parts
    ids = [parts.prefix_ids, parts.context_ids, parts.question_ids, parts.suffix_ids]
    size = sum(sys.getsizeof(part) + len(part) * _INT_BYTES for part in ids)
    size += sum(
        int(getattr(compressed, f"{name}_ids").numel()) * 8 for name in ("prefix", "context", "question", "suffix")
    )
    for pairs in (parts.token_offsets, parts.passage_text_spans):
        size += sys.getsizeof(pairs) + len(pairs) * _PAIR_BYTES if pairs is not None else 0
    if parts.passage_token_starts is not None:
        size += sys.getsizeof(parts.passage_token_starts) + len(parts.passage_token_starts) * _INT_BYTES
    texts = [parts.context_text, parts.question, *(turn.get("content") for turn in parts.history)]
    texts += [text for passage in parts.passages or () for text in (passage.text, passage.title)]
    return size + sum(sys.getsizeof(text) for text in texts if isinstance(text, str))


def entry_bytes(compressed: CompressedContext) -> int:
    """What a stored context costs the store's bound: `kv_bytes` plus `prompt_bytes`."""
    return kv_bytes(compressed) + prompt_bytes(compressed)


class ContextStore:
    """Thread-safe LRU of `CompressedContext` by ``cache_key``, bounded in bytes.

    Parameters
    ----------
    max_bytes : int
        Most bytes held at once, counted per entry by `entry_bytes` (its KV and its prompt's token ids and
        text); the least recently used contexts go first. A context larger than this on its own is not stored
        (logged at warning level), so one huge compression cannot evict all
        the others and then stay pinned.
    capacity : int, optional
        Also bound the number of entries (``None``: only the bytes bound applies).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, capacity: int | None = DEFAULT_CAPACITY) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be an int >= 1, got {max_bytes!r}.")
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1):
            raise ValueError(f"capacity must be an int >= 1 or None, got {capacity!r}.")
        self.max_bytes = max_bytes
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[CompressedContext, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        """Bytes held now (`entry_bytes` summed over the entries)."""
        with self._lock:
            return self._bytes

    def put(self, compressed: CompressedContext) -> str:
        """Store ``compressed`` under its ``cache_key`` (evicting the least recently used as needed); returns the key.

        A context larger than ``max_bytes`` is not stored; `get` will not find it, and callers compress again.
        """
        key = compressed.cache_key
        size = entry_bytes(compressed)
        with self._lock:
            previous = self._items.pop(key, None)
            if previous is not None:
                self._bytes -= previous[1]
            if size > self.max_bytes:
                logger.warning(
                    "%s holds %d bytes, more than the store's bound of %d; not stored (raise max_bytes to "
                    "reuse contexts this large).",
                    key,
                    size,
                    self.max_bytes,
                )
                return key
            self._items[key] = (compressed, size)
            self._bytes += size
            self._evict()
        return key

    def _evict(self) -> None:
        while self._items and (
            self._bytes > self.max_bytes or (self.capacity is not None and len(self._items) > self.capacity)
        ):
            key, (_, size) = self._items.popitem(last=False)
            self._bytes -= size
            logger.debug("%s evicted from the store (%d bytes).", key, size)

    def resize(self, max_bytes: int | None = None, capacity: int | None = None) -> None:
        """Change the bounds (``None`` leaves one as it is), evicting at once what no longer fits."""
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
            raise ValueError(f"max_bytes must be an int >= 1, got {max_bytes!r}.")
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1):
            raise ValueError(f"capacity must be an int >= 1 or None, got {capacity!r}.")
        with self._lock:
            self.max_bytes = max_bytes if max_bytes is not None else self.max_bytes
            self.capacity = capacity if capacity is not None else self.capacity
            self._evict()

    def get(self, key: str) -> CompressedContext | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def find(
        self,
        key: str,
        question: str,
        passages: int | None = None,
        config: FinchConfig | None = None,
        history: Sequence[Mapping[str, Any]] | None = None,
    ) -> CompressedContext | None:
        """The context stored under ``key`` if it can be reused, else ``None`` (the reason is logged at debug level).

        Reusable means compressed for ``question`` (surrounding whitespace aside); when ``passages`` is given,
        from that many passages; when ``config`` is given, with the same settings (budget, chunking, selection,
        prompt...; display options such as ``progress`` aside), so a caller asking for another budget never
        gets a compression made for a different one; and always with the same earlier turns of the conversation
        (``history``, none by default), which live in its prefix.
        """
        compressed = self.get(key)
        if compressed is None:
            logger.debug("%s is no longer in the store; compressing again.", key)
            return None
        if (compressed.question or "").strip() != question.strip():
            logger.debug("%s was compressed for another question; compressing again.", key)
            return None
        held = len(compressed.passages or ())
        if passages is not None and held != passages:
            logger.debug("%s holds %d passages, not %d; compressing again.", key, held, passages)
            return None
        if config is not None and compression_settings(compressed.config) != compression_settings(config):
            logger.debug("%s was compressed with %s, not %s; compressing again.", key, compressed.config, config)
            return None
        turns = [{"role": turn["role"], "content": turn["content"]} for turn in history or ()]
        if compressed.history != turns:
            logger.debug("%s was compressed in another conversation; compressing again.", key)
            return None
        return compressed

    def discard(self, key: str) -> None:
        """Drop the context stored under ``key``, if any (a request that failed after its compression)."""
        with self._lock:
            dropped = self._items.pop(key, None)
            if dropped is not None:
                self._bytes -= dropped[1]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


_registry_lock = threading.Lock()
_stores: weakref.WeakKeyDictionary[torch.nn.Module, ContextStore] = weakref.WeakKeyDictionary()


def context_store(model: torch.nn.Module, max_bytes: int | None = None) -> ContextStore:
    """The store shared by everything that compresses with ``model``; ``max_bytes`` (re)sets its bound in bytes.

    The bound defaults to `DEFAULT_MAX_BYTES`, or to the environment variable ``FINCH_RAG_STORE_BYTES``.
    """
    with _registry_lock:
        store = _stores.get(model)
        if store is None:
            store = ContextStore(max_bytes=max_bytes if max_bytes is not None else _default_max_bytes())
            _stores[model] = store
        elif max_bytes is not None:
            store.resize(max_bytes=max_bytes)
        return store


def _default_max_bytes() -> int:
    value = os.environ.get(STORE_BYTES_ENV)
    if not value:
        return DEFAULT_MAX_BYTES
    try:
        parsed = int(value)
    except ValueError:
        parsed = 0
    if parsed < 1:
        raise ValueError(f"{STORE_BYTES_ENV} must be a number of bytes >= 1, got {value!r}.")
    return parsed
