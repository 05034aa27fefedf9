"""The ``finch-rag serve`` subcommand: its arguments, and turning them into `ServerSettings`.

Importing this module needs neither the ``serve`` nor the ``ray`` extra; running the command does.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from ..arguments import add_budget_arguments, add_dtype_argument, budget_options
from ..config import FinchConfig
from .settings import ServerSettings

API_KEY_ENV = "FINCH_RAG_API_KEY"


def add_serve_parser(commands: Any) -> None:
    """Add ``serve`` to the CLI's subcommands."""
    defaults = ServerSettings.__dataclass_fields__
    serve = commands.add_parser(
        "serve",
        help="serve an OpenAI-compatible API (chat completions with compression, /v1/compress)",
        description="OpenAI-compatible HTTP server: /v1/chat/completions (with a 'documents' extension), "
        "/v1/compress, /v1/models, /health, /metrics. With no arguments it serves the embedded default model "
        "offline on 127.0.0.1:8000. See docs/serving.md.",
    )
    model = serve.add_argument_group("model")
    model.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="causal LM: hub id, local directory or .gguf (default: the embedded SmolLM2, offline)",
    )
    model.add_argument("--served-model-name", metavar="NAME", help="the model id clients send (default: --model)")
    add_dtype_argument(model)
    model.add_argument(
        "--embedding-model",
        metavar="NAME_OR_PATH",
        help="sentence-transformers model that sentence fusion embeds with, for documents that are pieces of one "
        "document (default: the embedded all-MiniLM-L6-v2, offline)",
    )
    network = serve.add_argument_group("network")
    network.add_argument(
        "--host",
        default=defaults["host"].default,
        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)",
    )
    network.add_argument("--port", type=int, default=defaults["port"].default, help="port (default 8000)")
    network.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' on every endpoint "
        f"but /health (default: ${API_KEY_ENV} if set, else no key)",
    )
    compression = serve.add_argument_group("compression defaults (requests may override them)")
    compression.add_argument(
        "--no-compression",
        action="store_true",
        help="never compress: a plain chat server (e.g. standing in for vLLM behind another server's /v1/compress)",
    )
    chunk_size = FinchConfig.__dataclass_fields__["chunk_size"].default
    add_budget_arguments(
        compression,
        defaults={"chunk_size": chunk_size, "allocation": defaults["allocation"].default},
        notes={
            "compression_ratio": "(default 0.75, with --min-target-tokens 128)",
            "chunk_size": "(default auto)",
            "allocation": "(default retrieval_weighted)",
        },
    )
    limits = serve.add_argument_group("batching and limits")
    limits.add_argument(
        "--batch-window-ms",
        type=float,
        default=defaults["batch_window_ms"].default,
        help="how long a request waits for others to batch with (default 10)",
    )
    limits.add_argument(
        "--max-batch-size",
        type=int,
        default=defaults["max_batch_size"].default,
        help="most requests in one padded batch; 1 turns batching off (default 8)",
    )
    limits.add_argument(
        "--max-queue",
        type=int,
        default=defaults["max_queue"].default,
        help="most requests in the server at once; more get 429 (default 128)",
    )
    limits.add_argument(
        "--max-request-bytes",
        type=int,
        default=defaults["max_request_bytes"].default,
        help="largest request body; more gets 413 (default 8 MiB)",
    )
    limits.add_argument(
        "--max-input-chars",
        type=int,
        default=defaults["max_input_chars"].default,
        help="most characters of text per request; more gets 413 (default 1,000,000)",
    )
    limits.add_argument(
        "--max-tokens",
        type=int,
        default=defaults["default_max_tokens"].default,
        help="answer length when a request sets none (default 256)",
    )
    limits.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=defaults["default_timeout"].default,
        help="per-request deadline, from arrival; a request may set its own 'timeout'. Past it, the request stops "
        "at its next chunk or token and gets 504 (code 'timeout'). Default: none",
    )
    limits.add_argument(
        "--temperature",
        type=float,
        default=defaults["default_temperature"].default,
        help="temperature when a request sets none (default 0: greedy)",
    )
    limits.add_argument(
        "--drain-timeout",
        type=float,
        metavar="SECONDS",
        default=defaults["drain_timeout"].default,
        help="on SIGTERM, stop accepting and let requests in flight finish for up to this long, then exit 0 "
        "(default 30)",
    )
    limits.add_argument(
        "--store-bytes",
        type=int,
        metavar="BYTES",
        default=defaults["store_bytes"].default,
        help="bound in bytes (KV and prompt) of the compressed contexts kept for reuse (default 256 MiB)",
    )
    ray = serve.add_argument_group("Ray Serve (needs finch-rag[ray])")
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve instead of one process")
    ray.add_argument("--replicas", type=int, default=1, help="replicas, each with its own model (default 1)")
    ray.add_argument("--max-replicas", type=int, metavar="N", help="autoscale between --replicas and N replicas")
    ray.add_argument(
        "--num-gpus", type=float, metavar="G", help="GPUs per replica (default: 1 when the cluster has GPUs, else 0)"
    )
    ray.add_argument("--ray-address", metavar="ADDRESS", help="join this Ray cluster (default: start one here)")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="server log level (default info)",
    )
    serve.set_defaults(handler=run_serve, quiet=False, no_progress=True)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """`ServerSettings` from the parsed ``serve`` arguments (``ValueError`` names a bad value)."""
    options: dict[str, Any] = {"progress": False, **budget_options(args)}
    return ServerSettings(
        model=args.model,
        served_model_name=args.served_model_name,
        dtype=args.dtype,
        embedding_model=args.embedding_model,
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        compression=not args.no_compression,
        config=FinchConfig(**options),
        allocation=args.allocation,
        batch_window_ms=args.batch_window_ms,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        max_request_bytes=args.max_request_bytes,
        max_input_chars=args.max_input_chars,
        default_max_tokens=args.max_tokens,
        default_temperature=args.temperature,
        default_timeout=args.timeout,
        drain_timeout=args.drain_timeout,
        store_bytes=args.store_bytes,
    )


def run_serve(args: argparse.Namespace) -> None:
    """Run the server the arguments describe, until interrupted."""
    settings = settings_from_args(args)
    logging.getLogger("finch_rag").setLevel(args.log_level.upper())
    if args.ray:
        try:
            from .ray_serve import run_ray
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                f"finch-rag serve --ray needs Ray Serve ({error}). Install it: pip install 'finch-rag[ray]'"
            ) from error
        run_ray(
            settings,
            replicas=args.replicas,
            max_replicas=args.max_replicas,
            num_gpus=args.num_gpus,
            address=args.ray_address,
        )
        return
    try:
        from .runner import serve
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"finch-rag serve needs the server's packages ({error}). Install them: pip install 'finch-rag[serve]'"
        ) from error
    serve(settings, log_level=args.log_level)
