"""`create_app`: the OpenAI-compatible FastAPI application around one model.

Endpoints: ``POST /v1/chat/completions`` (OpenAI's schema, streaming included, with a ``documents`` extension),
``POST /v1/compress`` (kept text per document, for any other LLM), ``GET /v1/models``, ``GET /health`` and
``GET /metrics`` (Prometheus). The same app runs under uvicorn (`finch_rag.server.run`) and inside Ray Serve
replicas (`finch_rag.server.ray_serve`). Compression is FINCH (Corallo & Papotti, TACL 2024,
https://arxiv.org/abs/2408.00167), done by the library through `finch_rag.frontends`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from .. import FinchCompressor, __version__
from ..store import context_store
from .chat import chat_completion
from .compress import compress_documents
from .errors import error_responses, install_error_handlers
from .gate import RequestGate
from .schemas import ChatCompletionRequest, CompressRequest
from .settings import ServerSettings
from .state import ServerState, default_replica_id, unknown_model


def create_app(settings: ServerSettings | None = None, *, compressor: FinchCompressor | None = None) -> FastAPI:
    """The OpenAI-compatible app; the model loads when the app starts (its lifespan), not here.

    Parameters
    ----------
    settings : ServerSettings, optional
        Model, limits, batching and defaults; ``ServerSettings()`` serves the embedded default.
    compressor : FinchCompressor, optional
        Serve an already loaded compressor instead of loading ``settings.model``.
    """
    settings = settings or ServerSettings()
    state = ServerState(settings, compressor)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.replica_id = settings.replica_id or default_replica_id()
        await asyncio.to_thread(state.engine.start)
        # Every compression goes in the model's store; bound it in bytes, or it grows to the library's default.
        state.metrics.watch_store(context_store(state.engine.compressor.model, max_bytes=settings.store_bytes))
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            await asyncio.to_thread(state.engine.stop)

    app = FastAPI(
        title="finch-rag",
        version=__version__,
        description="OpenAI-compatible chat completions with prompt-guided KV-cache compression (FINCH).",
        lifespan=lifespan,
    )
    app.state.finch = state
    install_error_handlers(app)
    app.add_middleware(
        RequestGate,
        metrics=state.metrics,
        api_key=settings.api_key,
        max_request_bytes=settings.max_request_bytes,
        replica_id=state.replica,
    )

    # Every status an endpoint can answer is in the OpenAPI schema, so that clients and schema-driven fuzzers
    # (tests/server/test_fuzz.py) know the error shape; the key's 401 only exists where a key is set.
    common = (401, 429, 500) if settings.api_key is not None else (429, 500)
    posts = error_responses(400, 404, 413, 422, 504, *common)

    @app.get("/health", responses=error_responses(429, 500))
    async def health() -> dict[str, Any]:
        """Liveness and readiness (no API key needed)."""
        return {
            "status": "ok" if state.ready else "starting",
            "model": settings.model_id,
            "replica": state.replica(),
            "pid": os.getpid(),
            "compression": settings.compression,
            "queue_depth": state.admission.count,
            "version": __version__,
        }

    @app.get("/v1/models", responses=error_responses(*common))
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(settings, state)]}

    @app.get("/v1/models/{model:path}", responses=error_responses(404, *common))
    async def model(model: str) -> dict[str, Any]:
        if model != settings.model_id:
            raise unknown_model(settings, model)
        return _model_card(settings, state)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus metrics."},
            **error_responses(*common),
        },
    )
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.post("/v1/chat/completions", response_model=None, responses={200: _CHAT_200, **posts})
    async def chat(body: ChatCompletionRequest) -> Response:
        """OpenAI chat completions; the context comes from ``documents`` or the system message."""
        return await chat_completion(body, state)

    @app.post("/v1/compress", responses=posts)
    async def compress(body: CompressRequest) -> dict[str, Any]:
        """Compress ``documents`` for ``question``: kept text and kept fraction per document."""
        return await compress_documents(body, state)

    return app


_CHAT_200: dict[str, Any] = {
    "description": "The completion: one JSON object, or with stream: true server-sent events ending in data: [DONE].",
    "content": {
        "application/json": {"schema": {"type": "object"}},
        "text/event-stream": {"schema": {"type": "string"}},
    },
}


def _model_card(settings: ServerSettings, state: ServerState) -> dict[str, Any]:
    return {"id": settings.model_id, "object": "model", "created": state.started, "owned_by": "finch-rag"}
