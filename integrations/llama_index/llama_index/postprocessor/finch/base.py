"""`FinchNodePostprocessor`: FINCH as a LlamaIndex node postprocessor (e.g. in a query engine)."""

from __future__ import annotations

import asyncio
from typing import Any

from finch_rag import CompressedContext, Passage
from finch_rag.context import STATS_KEYS
from finch_rag.frontends import FinchOptions
from finch_rag.retrieval import as_passage
from finch_rag.store import CACHE_KEY, CACHE_KEY_PATTERN
from llama_index.core.bridge.pydantic import ConfigDict, Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from .embeddings import fusion_embedder
from .events import FinchCompressionEvent

__all__ = ["CACHE_KEY", "CACHE_KEY_PATTERN", "STATS_KEYS", "FinchCompressionEvent", "FinchNodePostprocessor"]

dispatcher = get_dispatcher(__name__)

# `CACHE_KEY` is left visible in ``MetadataMode.LLM`` (the text a response synthesizer puts in ``{context_str}``),
# which is how `llama_index.llms.finch.FinchLLM` finds the stored compression instead of compressing again;
# `STATS_KEYS` are excluded from the LLM and embedding views of each node.


class FinchNodePostprocessor(FinchOptions, BaseNodePostprocessor):
    """Compress retrieved nodes together for the query with FINCH, one output node per input.

    All nodes are packed as passages (their text without metadata; title from metadata ``"title"``, else
    ``"source"``) and compressed in one pass for ``query_bundle.query_str``: the model reads them chunk by chunk
    with the query appended and keeps the key/value entries the query attends to most. The nodes come best
    first, as retrievers return them, and share the budget as ``allocation`` and ``weighting`` say
    (`finch_rag.PassageAllocation`, `FinchRAG`'s default). Each output is a copy of
    its input (same order, same node id and score, metadata kept) whose text is the extractive view of what
    survived in that passage (`CompressedContext.kept_text`), and whose metadata gains:

    - ``finch_kept_fraction``: fraction of the passage's KV entries kept (over its tokens, layers and KV heads);
    - ``finch_tokens_before``: the tokens of the passage's own text in the packed context;
    - ``finch_tokens_after``: ``round(kept_fraction * tokens_before)``, entries kept per layer and KV head on
      average;
    - ``finch_cache_key``: the key of the compressed context in ``compressor.store``.

    The three statistics are excluded from the node's LLM and embedding text; the cache key stays in the LLM
    text, so a `FinchLLM` on the same model answers from the stored compressed cache without a second pass.
    A node that keeps nothing is still returned, with empty text and ``finch_kept_fraction`` 0. Input nodes are
    never modified. ``apostprocess_nodes`` runs the compression in a worker thread, so the event loop stays free.
    Each compression runs in an instrumentation span (``_compress``, on this module's dispatcher) and emits a
    `FinchCompressionEvent` with its statistics there. Based on FINCH (Corallo & Papotti, TACL 2024,
    https://arxiv.org/abs/2408.00167).

    Parameters
    ----------
    threshold : float
        A token is in the output text when at least this fraction of (layer, KV head) pairs kept it.
    model_name, compressor, target_tokens, compression_ratio, chunk_size, progress, allocation, weighting,
    attention_mass, max_target_tokens, min_target_tokens, embedding_model
        The compressor and the compression (`finch_rag.frontends.FinchOptions`); unset budget and chunking come
        from the compressor's config.
        ``embedding_model`` also takes a LlamaIndex ``BaseEmbedding`` (e.g. ``Settings.embed_model``).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    threshold: float = Field(0.5, gt=0, le=1, description="Fraction of (layer, KV head) pairs that must keep a token.")

    def __init__(self, *, embedding_model: Any = None, **kwargs: Any) -> None:
        super().__init__(embedding_model=fusion_embedder(embedding_model), **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "FinchNodePostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        """One node per input, in order, with the kept text and ``finch_*`` metadata (see the class)."""
        if query_bundle is None:
            raise ValueError(
                "FinchNodePostprocessor compresses the nodes for a query: call postprocess_nodes(nodes, "
                "query_bundle=QueryBundle(query_str)) or postprocess_nodes(nodes, query_str=...)."
            )
        passages = [
            as_passage(item.node.get_content(metadata_mode=MetadataMode.NONE), item.node.metadata) for item in nodes
        ]
        compressed, outputs = self._compress(passages, query_bundle.query_str)
        key = compressed.cache_key if compressed is not None else None
        return [_with_stats(item, text, stats, key) for item, (text, stats) in zip(nodes, outputs, strict=True)]

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        """`_postprocess_nodes` in a worker thread: compression never blocks the event loop."""
        return await asyncio.to_thread(self._postprocess_nodes, nodes, query_bundle)

    @dispatcher.span
    def _compress(
        self, passages: list[Passage], query: str
    ) -> tuple[CompressedContext | None, list[tuple[str, dict[str, Any]]]]:
        """Compress the passages for ``query`` in a span of its own, and report the statistics in it."""
        compressed, outputs = self._handle.compress_for_query(
            passages, query, self.config, self.threshold, self.passage_allocation
        )
        if compressed is not None:
            dispatcher.event(FinchCompressionEvent.of(compressed))
        return compressed, outputs


def _with_stats(item: NodeWithScore, text: str, stats: dict[str, Any], key: str | None) -> NodeWithScore:
    node = item.node.model_copy(deep=True)
    node.set_content(text)
    node.metadata.update(stats)
    node.excluded_llm_metadata_keys = _extend(node.excluded_llm_metadata_keys, list(STATS_KEYS))
    node.excluded_embed_metadata_keys = _extend(node.excluded_embed_metadata_keys, [*STATS_KEYS, CACHE_KEY])
    if key is not None:
        node.metadata[CACHE_KEY] = key
    return NodeWithScore(node=node, score=item.score)


def _extend(keys: list[str], more: list[str]) -> list[str]:
    return [*keys, *(key for key in more if key not in keys)]
