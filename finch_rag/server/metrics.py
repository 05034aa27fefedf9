"""Prometheus metrics of one server, in a registry of its own (several apps may share a process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

if TYPE_CHECKING:
    from ..store import ContextStore


class ServerMetrics:
    """The counters, histograms and gauges that ``/metrics`` exposes.

    - ``finch_requests_total{endpoint, status}``: answered requests.
    - ``finch_request_seconds{endpoint}``: latency histogram (to the last byte, streams included).
    - ``finch_prompt_tokens_total``, ``finch_completion_tokens_total``: tokens in and out.
    - ``finch_context_tokens_total``, ``finch_kept_tokens_total``: context tokens compressed and KV entries kept.
    - ``finch_batch_size{stage}``: requests per padded batch (``compress``, ``generate``).
    - ``finch_queue_depth``: requests in the server (waiting, computing or streaming); ``finch_queue_waiting``:
      those not yet in a batch.
    - ``finch_store_bytes``, ``finch_store_entries``: what the model's `ContextStore` holds (its bound is
      ``--store-bytes``), read when scraped.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "finch_requests",
            "Requests answered, by endpoint and HTTP status.",
            ["endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "finch_request_seconds",
            "Request latency in seconds, to the last byte.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter("finch_prompt_tokens", "Prompt tokens received.", registry=registry)
        self.completion_tokens = Counter("finch_completion_tokens", "Tokens generated.", registry=registry)
        self.context_tokens = Counter(
            "finch_context_tokens", "Context tokens read by the compression.", registry=registry
        )
        self.kept_tokens = Counter(
            "finch_kept_tokens",
            "Context KV entries kept per layer and KV head, summed over requests.",
            registry=registry,
        )
        self.batch_size = Histogram(
            "finch_batch_size", "Requests per padded batch.", ["stage"], buckets=BATCH_BUCKETS, registry=registry
        )
        self.queue_depth = Gauge(
            "finch_queue_depth", "Requests in the server (waiting, computing or streaming).", registry=registry
        )
        self.queue_waiting = Gauge("finch_queue_waiting", "Requests waiting for a batch.", registry=registry)
        self.store_bytes = Gauge(
            "finch_store_bytes", "Bytes held by the compressed-context store (KV and prompts).", registry=registry
        )
        self.store_entries = Gauge("finch_store_entries", "Compressed contexts held by the store.", registry=registry)

    def watch_store(self, store: ContextStore) -> None:
        """Read ``store``'s size at every scrape (so a filling store is told apart from a leak)."""
        self.store_bytes.set_function(lambda: store.bytes)
        self.store_entries.set_function(lambda: len(store))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
