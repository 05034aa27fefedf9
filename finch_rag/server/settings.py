"""`ServerSettings`: everything `finch-rag serve` can be told, validated at construction."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..allocation import ALLOCATIONS
from ..config import FinchConfig, merged_config
from ..deadline import check_timeout
from ..frontends import CONFIG_FIELDS
from ..models import DEFAULT_MODEL, dtype_named


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")


@dataclass(frozen=True)
class ServerSettings:
    """How the OpenAI-compatible server runs: model, network, batching, limits and defaults.

    The server compresses each request's context with FINCH (Corallo & Papotti, TACL 2024,
    https://arxiv.org/abs/2408.00167) before answering; ``compression=False`` turns it into a plain chat server
    (documents kept whole), e.g. to stand in for vLLM behind another finch-rag server's ``/v1/compress``.

    Parameters
    ----------
    model : str, optional
        What `finch_rag.load_model` loads: ``None`` is the embedded default (offline), else a hub id, a local
        directory or a ``.gguf`` file.
    served_model_name : str, optional
        The ``id`` in ``/v1/models`` and the ``model`` requests must name. Default: ``model``, or the embedded
        default's name. A request may also omit ``model``.
    dtype : str, optional
        The weights' dtype, a name in `finch_rag.models.DTYPES` (``"bfloat16"`` gave 1.7x float32's throughput on
        a bf16-capable CPU; answers may differ from float32's). Default: `load_model`'s (float32 on a CPU).
    embedding_model : str, optional
        The sentence-transformers model (hub name or local directory) that sentence fusion embeds with when a
        request's documents are pieces of one document (`finch_rag.RankWeighting.sentence_fusion_scope`); loaded
        at start. Default: the embedded all-MiniLM-L6-v2 (offline).
    host, port : str, int
        Where uvicorn listens. The default host is loopback only; give ``0.0.0.0`` to serve a network.
    api_key : str, optional
        When set, every endpoint but ``/health`` needs ``Authorization: Bearer <api_key>``.
    compression : bool
        ``False``: never compress (documents are answered from whole, chats as the chat template renders them).
    config : FinchConfig
        Default compression options (budget, chunk size, selection); requests override the budget and chunk
        size in their ``finch`` field.
    allocation : {"retrieval_weighted", "global"}
        How a request's documents (given best first) share the budget, as in `finch_rag.FinchRAG`.
    batch_window_ms : float
        How long the first request of a batch waits for others to join it. ``0`` batches only what is already
        waiting.
    max_batch_size : int
        Most requests compressed and decoded together in one padded batch. ``1`` turns batching off.
    max_queue : int
        Most requests in the server at once (waiting, computing or streaming); the next one gets 429.
    max_request_bytes : int
        Largest request body; a larger one gets 413.
    max_input_chars : int
        Most characters of text (messages and documents) in one request; more gets 413.
    default_max_tokens : int
        Answer length limit when a request gives no ``max_tokens``.
    default_timeout : float, optional
        Per-request deadline in seconds, counted from when the request arrives (queueing included), when a
        request gives no ``timeout`` of its own; ``None``: no deadline. Past it, compression stops at its next
        chunk and decoding at its next token, and the request gets a 504 with code ``"timeout"``.
    default_temperature : float
        Temperature when a request gives none. ``0`` (greedy, the library's default) differs from OpenAI's 1.
    kept_text_threshold : float
        ``/v1/compress`` keeps a token's text when at least this fraction of (layer, KV head) pairs kept its
        entry (`CompressedContext.kept_text`).
    replica_id : str, optional
        Reported in ``/health`` and the ``X-Finch-Replica`` header; default ``<hostname>-<pid>``.
    drain_timeout : float
        Grace period in seconds on SIGTERM (or Ctrl-C): the server stops accepting connections at once, lets the
        requests in flight (streams included) finish for up to this long, cancels what is left, and exits 0. On
        Ray Serve it is each replica's ``graceful_shutdown_timeout_s``.
    store_bytes : int
        Bound, in bytes (KV and prompt, `finch_rag.store.entry_bytes`), of the model's store of compressed contexts
        (`finch_rag.store.ContextStore`), which keeps each request's compression for reuse by ``cache_key``; least
        recently used out first.
    """

    model: str | None = None
    served_model_name: str | None = None
    dtype: str | None = None
    embedding_model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    compression: bool = True
    config: FinchConfig = field(default_factory=lambda: FinchConfig(progress=False))
    allocation: str = "retrieval_weighted"
    batch_window_ms: float = 10.0
    max_batch_size: int = 8
    max_queue: int = 128
    max_request_bytes: int = 8 * 1024 * 1024
    max_input_chars: int = 1_000_000
    default_max_tokens: int = 256
    default_temperature: float = 0.0
    default_timeout: float | None = None
    kept_text_threshold: float = 0.5
    replica_id: str | None = None
    drain_timeout: float = 30.0
    store_bytes: int = 256 * 1024 * 1024

    def __post_init__(self) -> None:
        if not isinstance(self.config, FinchConfig):
            raise TypeError(f"config must be a FinchConfig, got {type(self.config).__name__}.")
        if self.dtype is not None:
            dtype_named(self.dtype)  # fail at start-up, not at the first request's model load
        if self.embedding_model is not None and (
            not isinstance(self.embedding_model, str) or not self.embedding_model.strip()
        ):
            raise ValueError(
                "embedding_model must be a sentence-transformers model name or directory, or None for the embedded "
                f"all-MiniLM-L6-v2; got {self.embedding_model!r}."
            )
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}.")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be an int in [0, 65535] (0 picks a free one), got {self.port!r}.")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise ValueError("api_key must be a non-empty string, or None for no authentication.")
        window = self.batch_window_ms
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not math.isfinite(window) or window < 0:
            raise ValueError(f"batch_window_ms must be a number >= 0, got {window!r}.")
        drain = self.drain_timeout
        if isinstance(drain, bool) or not isinstance(drain, (int, float)) or not math.isfinite(drain) or drain < 0:
            raise ValueError(f"drain_timeout must be a number of seconds >= 0, got {drain!r}.")
        counts = ("max_batch_size", "max_queue", "max_request_bytes", "max_input_chars", "default_max_tokens")
        for name in (*counts, "store_bytes"):
            _positive_int(name, getattr(self, name))
        if not 0 <= self.default_temperature <= 2:
            raise ValueError(f"default_temperature must be in [0, 2], got {self.default_temperature!r}.")
        if self.default_timeout is not None:
            check_timeout(self.default_timeout, "default_timeout")
        if not 0 < self.kept_text_threshold <= 1:
            raise ValueError(f"kept_text_threshold must be in (0, 1], got {self.kept_text_threshold!r}.")

    @property
    def model_id(self) -> str:
        """The name clients use in ``model`` and see in ``/v1/models``."""
        return self.served_model_name or self.model or DEFAULT_MODEL

    def accepts_model(self, name: str | None) -> bool:
        """Whether a request naming ``name`` is for this server (``None``: the client left it out)."""
        return name is None or name in {self.model_id, self.model or DEFAULT_MODEL}

    def replace(self, **changes: Any) -> ServerSettings:
        """A validated copy with ``changes``."""
        return replace(self, **changes)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ServerSettings:
        """Settings from flat options, as a Ray Serve config file's ``args`` gives them.

        Keys are `ServerSettings` fields and, for the default `FinchConfig`, ``target_tokens`` (an int or
        ``"auto"``), ``compression_ratio``, ``min_target_tokens`` (its floor), ``chunk_size``, ``selection``,
        ``answer_cache``, and with ``target_tokens: auto`` ``attention_mass`` and ``max_target_tokens``. An unknown key
        is an error naming the known ones.
        """
        own = {item.name for item in fields(cls)} - {"config"}
        unknown = sorted(set(options) - own - set(CONFIG_OPTIONS))
        if unknown:
            raise ValueError(f"Unknown server options {unknown}; the options are {sorted(own | set(CONFIG_OPTIONS))}.")
        changes = {name: value for name, value in options.items() if name in CONFIG_OPTIONS}
        config = merged_config(FinchConfig(progress=False), changes)
        return cls(config=config, **{name: value for name, value in options.items() if name in own})


CONFIG_OPTIONS = (*CONFIG_FIELDS, "selection")
"""`FinchConfig` fields a server's flat options may set (`ServerSettings.from_options`)."""
