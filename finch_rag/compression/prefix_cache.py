"""The protected prefix's KV entries, computed once and reused by every compression that starts with it.

Every prompt `build_prompt` makes starts with the same header: the chat template's opening and the system
prompt (about 40 tokens on the embedded model, a sixth of a small RAG request). FINCH never compresses the
prefix (FINCH, Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167, keeps it whole), and causal
attention makes its keys and values a function of its own tokens only, so the entries one prefill computed
are exactly the entries the next prefill of the same ids would compute. Sharing them is safe because nothing
writes into a cache tensor in place (`finch_rag.compression.loop.CompressedCache.as_cache`).

This is the prompt (prefix) caching of LLM servers, restricted to exact matches of the protected prefix: a
conversation's history lives in the prefix too, so its entries change from turn to turn and age out. Entries
are keyed by the ids, the device and the dtype, not by the weights: a cache is for a model whose weights stay
as they are (a server's). A notebook that trains or patches the model in place calls `PrefixCache.clear`, or
uses none (`FinchCompressor`'s default).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .cache import tensor_bytes

PrefixEntries = tuple[list[torch.Tensor], list[torch.Tensor]]
"""Per-layer keys and values of one prefix, ``[1, num_kv_heads, |P|, head_dim]`` each."""

DEFAULT_PREFIX_CACHE_BYTES = 64 * 2**20
UNBOUNDED_BYTES = 2**62
"""A bound no cache reaches: the per-call cache of `compress_batch`, which lives only as long as one batch."""


@dataclass
class PrefixCache:
    """A bounded, thread-safe map from prefix token ids to their KV entries; least recently used goes first.

    Parameters
    ----------
    max_bytes : int
        Most bytes of keys and values held. A prefix larger than this is computed but not kept. ``0`` keeps
        nothing, so every compression prefills its own prefix (the same entries, recomputed).
    """

    max_bytes: int = DEFAULT_PREFIX_CACHE_BYTES
    _entries: OrderedDict[tuple[object, ...], tuple[PrefixEntries, int]] = field(
        default_factory=OrderedDict, repr=False
    )  # key -> (entries, their bytes)
    _bytes: int = field(default=0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0 (0 keeps nothing), got {self.max_bytes!r}.")

    @staticmethod
    def key(prefix_ids: torch.Tensor, dtype: torch.dtype) -> tuple[object, ...]:
        """The lookup key of ``[1, |P|]`` ids on a model of ``dtype``: entries live where and as the model runs."""
        return (str(prefix_ids.device), str(dtype), *prefix_ids[0].tolist())

    def get(self, key: tuple[object, ...]) -> PrefixEntries | None:
        with self._lock:
            held = self._entries.get(key)
            if held is None:
                return None
            self._entries.move_to_end(key)
            return held[0]

    def put(self, key: tuple[object, ...], keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
        size = tensor_bytes((*keys, *values))
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = ((list(keys), list(values)), size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, evicted_size) = self._entries.popitem(last=False)
                self._bytes -= evicted_size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes of keys and values held now."""
        return self._bytes
