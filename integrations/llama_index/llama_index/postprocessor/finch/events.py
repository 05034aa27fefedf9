"""`FinchCompressionEvent`: what llama-index-finch tells LlamaIndex's instrumentation about each compression.

LlamaIndex 0.14 reports through dispatchers (``llama_index.core.instrumentation.get_dispatcher``): spans around
work, events inside them. `FinchNodePostprocessor` and `llama_index.llms.finch.FinchLLM` run each compression in
a span of their module's dispatcher and emit one of these events inside it, so any handler added to that dispatcher
or an ancestor (the root one, ``get_dispatcher()``) sees the statistics::

    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler

    class Stats(BaseEventHandler):
        def handle(self, event, **kwargs):
            if isinstance(event, FinchCompressionEvent):
                print(event.kept_tokens, "of", event.original_tokens, "entries kept")

    get_dispatcher().add_event_handler(Stats())
"""

from __future__ import annotations

from typing import Any

from finch_rag import CompressedContext
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation.events import BaseEvent


class FinchCompressionEvent(BaseEvent):
    """One FINCH compression (or reuse of a stored one), with its statistics; ``span_id`` is the span it ran in.

    Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167).

    Attributes
    ----------
    query : str
        The question the context was compressed for.
    cache_key : str
        The compression's key in ``compressor.store`` (``finch_cache_key`` on the output nodes).
    reused : bool
        The compression was found in the store (made earlier, e.g. by the postprocessor), not run again.
    num_passages : int
        Passages (nodes) compressed together.
    original_tokens, kept_tokens : int
        Context tokens before, and KV entries kept per layer and KV head after.
    compression_factor : float
        ``original_tokens / kept_tokens``.
    stats : dict
        All of `CompressedContext.stats` (seconds, chunks, peak KV entries, prefix and question tokens).
    """

    query: str
    cache_key: str
    reused: bool = False
    num_passages: int = Field(ge=0)
    original_tokens: int = Field(ge=0)
    kept_tokens: int = Field(ge=0)
    compression_factor: float
    stats: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def class_name(cls) -> str:
        return "FinchCompressionEvent"

    @classmethod
    def of(cls, compressed: CompressedContext, reused: bool = False) -> FinchCompressionEvent:
        """The event for ``compressed`` (emit it inside the span of the work that made or found it)."""
        return cls(
            query=compressed.question or "",
            cache_key=compressed.cache_key,
            reused=reused,
            num_passages=len(compressed.passages or ()),
            original_tokens=compressed.original_tokens,
            kept_tokens=compressed.kept_tokens,
            compression_factor=compressed.compression_factor,
            stats=dict(compressed.stats),
        )
