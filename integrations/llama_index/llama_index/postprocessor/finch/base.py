"""`FinchNodePostprocessor`: FINCH as a LlamaIndex node postprocessor (e.g. in a query engine)."""

from __future__ import annotations

from typing import Any

from finch_rag import FinchCompressor, FinchConfig, Passage
from finch_rag.context import STATS_KEYS
from finch_rag.retrieval import title_of
from finch_rag.shared import CompressorHandle
from finch_rag.store import CACHE_KEY, CACHE_KEY_PATTERN
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

__all__ = ["CACHE_KEY", "CACHE_KEY_PATTERN", "STATS_KEYS", "FinchNodePostprocessor"]

# `CACHE_KEY` is left visible in ``MetadataMode.LLM`` (the text a response synthesizer puts in ``{context_str}``),
# which is how `llama_index.llms.finch.FinchLLM` finds the stored compression instead of compressing again;
# `STATS_KEYS` are excluded from the LLM and embedding views of each node.


class FinchNodePostprocessor(BaseNodePostprocessor):
    """Compress retrieved nodes together for the query with FINCH, one output node per input.

    All nodes are packed as passages (their text without metadata; title from metadata ``"title"``, else
    ``"source"``) and compressed in one pass for ``query_bundle.query_str``: the model reads them chunk by chunk
    with the query appended and keeps the key/value entries the query attends to most. Each output is a copy of
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
    never modified. Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167).

    Parameters
    ----------
    threshold : float
        A token is in the output text when at least this fraction of (layer, KV head) pairs kept it.
    target_tokens, compression_ratio, chunk_size : optional
        Budget and chunking (see `finch_rag.FinchConfig`); unset ones come from the compressor's config.
    model_name : str, optional
        Model to load when no ``compressor=`` is given: a hub id, a local path or a ``.gguf`` file; ``None``
        is the embedded SmolLM2-135M-Instruct. Models loaded by name are shared within the process.
    compressor : FinchCompressor, optional
        An already built compressor (keyword only); not with ``model_name``.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    threshold: float = Field(0.5, gt=0, le=1, description="Fraction of (layer, KV head) pairs that must keep a token.")
    target_tokens: int | None = Field(None, ge=1, description="Budget B: context KV entries kept per layer/KV head.")
    compression_ratio: float | None = Field(None, ge=0, lt=1, description="Fraction of the context removed.")
    chunk_size: int | None = Field(512, ge=1, description="Context tokens read per step; None for a single pass.")
    model_name: str | None = Field(None, description="Model to load (None: the embedded default).")
    progress: bool = Field(False, description="Show a tqdm bar over chunks.")

    _handle: CompressorHandle = PrivateAttr()

    def __init__(self, *, compressor: FinchCompressor | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._handle = CompressorHandle(compressor, self.model_name)
        self.config  # noqa: B018 - validate the option combination now, not on first use

    @classmethod
    def class_name(cls) -> str:
        return "FinchNodePostprocessor"

    @property
    def _compressor(self) -> FinchCompressor | None:
        """The compressor if given or already loaded (``None`` before the first use of a model given by name)."""
        return self._handle.loaded

    @property
    def compressor(self) -> FinchCompressor:
        """The `FinchCompressor`, loaded from ``model_name`` on first use unless one was given."""
        return self._handle.get()

    @property
    def config(self) -> FinchConfig:
        """The compressor's config (or `FinchConfig`'s defaults) with this object's options applied."""
        explicit = {name: getattr(self, name) for name in self.model_fields_set} | {"progress": self.progress}
        return self._handle.config(explicit)

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        """One node per input, in order, with the kept text and ``finch_*`` metadata (see the class)."""
        if query_bundle is None:
            raise ValueError(
                "FinchNodePostprocessor compresses the nodes for a query: call postprocess_nodes(nodes, "
                "query_bundle=QueryBundle(query_str)) or postprocess_nodes(nodes, query_str=...)."
            )
        texts = [item.node.get_content(metadata_mode=MetadataMode.NONE) for item in nodes]
        passages = [Passage(text, title_of(item.node.metadata)) for item, text in zip(nodes, texts)]
        compressed, outputs = self._handle.compress_for_query(
            passages, query_bundle.query_str, self.config, self.threshold
        )
        key = compressed.cache_key if compressed is not None else None
        return [_with_stats(item, text, stats, key) for item, (text, stats) in zip(nodes, outputs)]


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
