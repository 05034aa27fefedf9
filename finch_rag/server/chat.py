"""``POST /v1/chat/completions``: OpenAI's chat completions, answered from a FINCH-compressed context.

Where the context comes from is `finch_rag.frontends`' chat-context rule, the one `ChatFinch` follows: the
request's ``documents`` (finch-rag's extension), else the system message (its instruction kept whole, the
retrieved text compressed), else the question delimiter in the last user message; with none of these it is a
plain chat. The last user message is the question. Streaming answers are server-sent events in OpenAI's chunk
format, ending with ``data: [DONE]``; an error after the first event (a deadline passed while decoding: code
``"timeout"``) is sent as an error event before it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

from fastapi.responses import JSONResponse, Response, StreamingResponse

from .. import __version__
from ..allocation import PassageAllocation
from ..config import FinchConfig
from ..deadline import Deadline, DeadlineExceeded
from ..frontends import chat_context, in_thread, with_system_prompt
from ..generation import SamplingParams
from ..prompts import Passage, chat_prompt_ids
from .engine import Compressed, ContextJob, PromptJob
from .errors import APIError, deadline_error, error_body
from .schemas import ChatCompletionRequest
from .state import ServerState

logger = logging.getLogger(__name__)


async def chat_completion(body: ChatCompletionRequest, state: ServerState) -> Response:
    """Answer one chat-completion request (JSON, or server-sent events with ``stream: true``)."""
    started = time.perf_counter()
    deadline = state.deadline(body.timeout)
    state.check_model(body.model)
    body.check_supported()
    messages = [{"role": message.role, "content": message.text(index)} for index, message in enumerate(body.messages)]
    passages = body.passages()
    state.check_size([message["content"] for message in messages] + [passage.text for passage in passages or []])
    sampling = body.to_sampling_params(state.settings)
    config, allocation = state.resolve_options(body.options())
    work, config, source = plan_chat(state, messages, passages, config, allocation, deadline)

    context = _Context(work, source, allocation, [passage.text.strip() != "" for passage in passages or []])
    planned = time.perf_counter()
    release = state.admit()
    try:
        if body.stream:
            if isinstance(work, ContextJob):
                context.compressed = await _run(state.engine.compress(work, config, allocation))
            response: Response = _stream(body, state, context, sampling, release, deadline)
            release = _noop  # the stream releases its place when it ends
            return response
        if isinstance(work, ContextJob):
            context.compressed = await _run(state.engine.compress(work, config, allocation, sampling))
            answer = context.compressed.answer or ""
        else:
            answer = await _run(state.engine.answer_prompt(work, sampling))
    finally:
        release()
    answered = time.perf_counter()
    completion_tokens = state.engine.count_tokens(answer)
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": answer},
        "logprobs": None,
        "finish_reason": _finish_reason(completion_tokens, sampling),
    }
    response = JSONResponse(
        {
            **_envelope(state, "chat.completion"),
            "choices": [choice],
            "usage": context.usage(state, completion_tokens),
            "finch": context.stats(),
        }
    )
    logger.debug(
        "chat completion: planned in %.3f s, model %.3f s, response built in %.3f s",
        planned - started,
        answered - planned,
        time.perf_counter() - answered,
    )
    return response


@dataclass
class _Context:
    """One chat request's context: what ran, which rule gave it, and its compression once done."""

    work: ContextJob | PromptJob
    source: str
    allocation: str
    given: list[bool]  # per request document: has text (blank ones are not compressed)
    compressed: Compressed | None = None

    def usage(self, state: ServerState, completion_tokens: int) -> dict[str, Any]:
        """OpenAI's usage, plus the KV entries the answer attended to and the context sizes.

        ``prompt_tokens`` is the whole prompt as the model would read it uncompressed; ``kept_kv_entries`` what it
        read instead (protected prefix, kept context entries, question and answer cue), per layer and KV head.
        """
        if self.compressed is not None:
            context = self.compressed.context
            prompt_tokens = context.prompt_tokens
            kept_kv_entries = prompt_tokens - (context.original_tokens - context.kept_tokens)  # less what was dropped
            sizes = {"context_tokens": context.original_tokens, "context_tokens_kept": context.kept_tokens}
        else:
            prompt_tokens = kept_kv_entries = len(cast(PromptJob, self.work).prompt_ids)
            sizes = {"context_tokens": 0, "context_tokens_kept": 0}
        state.metrics.prompt_tokens.inc(prompt_tokens)
        state.metrics.completion_tokens.inc(completion_tokens)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "kept_kv_entries": kept_kv_entries,
            **sizes,
        }

    def stats(self) -> dict[str, Any]:
        """The ``finch`` field: where the context came from and, when compressed, the compression's statistics.

        ``documents`` has one entry per document of the request's ``documents`` that has text, with its index
        there; for the system-message and delimiter rules, one per passage found.
        """
        stats: dict[str, Any] = {"context_source": self.source}
        if self.compressed is None:
            return stats
        context = self.compressed.context
        indices = [index for index, has_text in enumerate(self.given) if has_text] if self.source == "documents" else []
        documents = []
        for position, stat in enumerate(self.compressed.plan.restore(context.passage_stats())):
            documents.append(
                {
                    "index": indices[position] if indices else position,
                    "kept_fraction": stat["finch_kept_fraction"],
                    "tokens_before": stat["finch_tokens_before"],
                    "tokens_after": stat["finch_tokens_after"],
                }
            )
        return {**stats, **context.stats, "allocation": self.allocation, "documents": documents}


def _finish_reason(completion_tokens: int, sampling: SamplingParams) -> str:
    # Counted on the answer's text: a stop string or the end token ends it early ("stop").
    return "length" if completion_tokens >= sampling.max_new_tokens else "stop"


def plan_chat(
    state: ServerState,
    messages: list[dict[str, str]],
    passages: list[Passage] | None,
    config: FinchConfig,
    allocation: str,
    deadline: Deadline | None = None,
) -> tuple[ContextJob | PromptJob, FinchConfig, str]:
    """Where the chat's context comes from (`frontends.chat_context`, `ChatFinch`'s rule) and what runs.

    Returns the work, the config to compress with (the plan's system prompt in it), and the rule's ``source``.
    With compression off and no documents, the conversation is answered as it is (no context rule applies).
    """
    handle = state.engine.handle
    try:
        if not state.settings.compression and passages is None:
            ids = chat_prompt_ids(handle.get().tokenizer, _plain_roles(messages))
            return PromptJob(ids, deadline), config, "none"
        plan = chat_context(messages, documents=passages)
        config = with_system_prompt(config, plan.system_prompt)
        if not plan.passages:
            prepared = handle.chat_context(plan, config, PassageAllocation(kind=allocation))  # type: ignore[arg-type]
            return PromptJob(list(prepared.prompt_ids or []), deadline), config, plan.source
    except (TypeError, ValueError) as error:
        raise APIError(400, str(error), code="invalid_messages", param="messages") from error
    return ContextJob(plan.question, plan.passages, tuple(plan.history), deadline), config, plan.source


def _plain_roles(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return [
        {**message, "role": "system" if message["role"] == "developer" else message["role"]} for message in messages
    ]


async def _run(awaitable: Any) -> Any:
    try:
        return await awaitable
    except (TypeError, ValueError) as error:  # the library's errors on user input say what to change
        raise APIError(400, str(error)) from error
    except DeadlineExceeded as error:
        raise deadline_error(error) from error


def _noop() -> None:
    return None


def _envelope(state: ServerState, kind: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": state.settings.model_id,
        "system_fingerprint": f"finch-rag-{__version__}",
    }


# --------------------------------------------------------------------------- streaming
def _stream(
    body: ChatCompletionRequest,
    state: ServerState,
    context: _Context,
    sampling: SamplingParams,
    release: Callable[[], None],
    deadline: Deadline | None,
) -> StreamingResponse:
    engine = state.engine
    work = context.compressed if context.compressed is not None else cast(PromptJob, context.work)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    envelope = _envelope(state, "chat.completion.chunk")

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _event({**envelope, "choices": [choice], **extra})

    async def events() -> AsyncIterator[str]:
        answer: list[str] = []
        try:
            yield chunk({"role": "assistant", "content": ""})
            async for piece in in_thread(engine.stream(work, sampling, deadline)):
                answer.append(piece)
                yield chunk({"content": piece})
            completion_tokens = engine.count_tokens("".join(answer))
            usage = context.usage(state, completion_tokens)
            yield chunk({}, _finish_reason(completion_tokens, sampling), finch=context.stats())
            if include_usage:
                yield _event({**envelope, "choices": [], "usage": usage})
        except (TypeError, ValueError) as error:
            yield _event(error_body(400, str(error)))
        except DeadlineExceeded as error:
            yield _event(deadline_error(error).body())
        except Exception as error:  # noqa: BLE001 - the status line is sent: report in-stream, log the rest
            logger.exception("A streamed answer failed")
            yield _event(error_body(500, f"Internal server error ({type(error).__name__}); see the server log."))
        finally:
            release()
        yield "data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
