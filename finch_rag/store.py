"""A small LRU of compressed contexts, one per loaded model, so a compression can be reused.

A document compressor (LangChain, LlamaIndex) compresses once and tags each output with
`CompressedContext.cache_key`; an LLM wrapper on the same model then finds the compressed cache by that
key instead of recompressing. Keyed per model for the same reason as the model lock: two wrappers built
around one model share it, two models never mix.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .config import FinchConfig
from .context import CompressedContext, compression_settings

logger = logging.getLogger(__name__)

DEFAULT_CAPACITY = 16

CACHE_KEY = "finch_cache_key"
"""Metadata key under which the integrations tag each output with `CompressedContext.cache_key`."""

CACHE_KEY_PATTERN = re.compile(r"finch-[0-9a-f]{24}")
"""A compressed context's key (`CompressedContext.cache_key`: ``finch-`` and 24 hex digits), e.g. in a prompt."""


class ContextStore:
    """Thread-safe LRU of `CompressedContext` by ``cache_key``."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}.")
        self.capacity = capacity
        self._items: OrderedDict[str, CompressedContext] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, compressed: CompressedContext) -> str:
        key = compressed.cache_key
        with self._lock:
            self._items[key] = compressed
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return key

    def get(self, key: str) -> CompressedContext | None:
        with self._lock:
            compressed = self._items.get(key)
            if compressed is not None:
                self._items.move_to_end(key)
            return compressed

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

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_registry_lock = threading.Lock()
_stores: weakref.WeakKeyDictionary[torch.nn.Module, ContextStore] = weakref.WeakKeyDictionary()


def context_store(model: torch.nn.Module) -> ContextStore:
    """The store shared by everything that compresses with ``model``."""
    with _registry_lock:
        store = _stores.get(model)
        if store is None:
            store = ContextStore()
            _stores[model] = store
        return store
