"""``POST /v1/compress``: compress documents for a question and return, per document, the text that was kept.

This is the "compress here, answer anywhere" path: the kept text is plain text that any LLM server (vLLM,
llama.cpp, a hosted API) can read. FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167)
keeps the KV entries the question attends to; a token's text is kept when at least ``threshold`` of its
(layer, KV head) entries survived (`CompressedContext.kept_text`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..deadline import DeadlineExceeded
from .engine import ContextJob
from .errors import APIError, deadline_error
from .schemas import CompressRequest, Document
from .state import ServerState


async def compress_documents(body: CompressRequest, state: ServerState) -> dict[str, Any]:
    """Run one ``/v1/compress`` request (in a batch with others that share its options)."""
    deadline = state.deadline(body.timeout)
    state.check_model(body.model)
    if not body.question.strip():
        raise APIError(
            400, "The question is empty: FINCH keeps what the question needs, so send one.", param="question"
        )
    passages = body.passages() or []
    if not any(passage.text.strip() for passage in passages):
        raise APIError(
            400, "Every entry of documents is empty; send at least one document with text.", param="documents"
        )
    state.check_size([body.question, *(passage.text for passage in passages)])
    config, allocation = state.resolve_options(body.options())
    with state.admitted():
        try:
            job = ContextJob(body.question, passages, deadline=deadline)
            compressed = await state.engine.compress(job, config, allocation)
        except (TypeError, ValueError) as error:
            raise APIError(400, str(error)) from error
        except DeadlineExceeded as error:
            raise deadline_error(error) from error
    threshold = body.threshold or state.settings.kept_text_threshold
    per_document = await asyncio.to_thread(compressed.per_document, threshold)
    context = compressed.context
    documents = []
    for index, (document, kept) in enumerate(zip(body.documents, per_document, strict=True)):
        entry: dict[str, Any] = {
            "index": index,
            "text": kept["text"],
            "kept_fraction": kept["finch_kept_fraction"],
            "tokens_before": kept["finch_tokens_before"],
            "tokens_after": kept["finch_tokens_after"],
        }
        if isinstance(document, Document):
            entry["title"] = document.title
            entry["metadata"] = document.metadata
        documents.append(entry)
    state.metrics.prompt_tokens.inc(context.prompt_tokens)
    return {
        "object": "finch.compression",
        "model": state.settings.model_id,
        "question": body.question,
        "documents": documents,
        "stats": {**context.stats, "allocation": allocation, "threshold": threshold},
        "usage": {
            "prompt_tokens": context.prompt_tokens,
            "context_tokens": context.original_tokens,
            "kept_tokens": context.kept_tokens,
        },
    }
