"""The server's engine: one model, a batcher in front of it, and the front-end calls that do the work.

No algorithm lives here: compression, allocation, prompt building and decoding are `finch_rag.frontends` calls.
The engine decides only what runs together. Requests with the same compression options (and, when they are
answered in the batch, the same sampling parameters) are compressed with one padded
`FinchCompressor.compress_batch` and decoded with one `FinchCompressor.generate_batch`; a streaming request is
compressed in a batch and decoded alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import frontends
from ..allocation import AllocationPlan, PassageAllocation
from ..compressor import FinchCompressor
from ..config import FinchConfig, merged_config
from ..context import CompressedContext
from ..deadline import Deadline, DeadlineExceeded
from ..generation import SamplingParams
from ..prompts import Passage
from ..retrieval import shared_embedding_model
from .batching import Batcher
from .metrics import ServerMetrics
from .settings import ServerSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContextJob:
    """Compress ``passages`` (best first) for ``question``; answer too when the batch key has `SamplingParams`.

    Past ``deadline`` the job leaves its batch at the next chunk or token and fails with `DeadlineExceeded`.
    """

    question: str
    passages: list[Passage]
    history: tuple[dict[str, str], ...] = ()
    deadline: Deadline | None = field(default=None, compare=False)


@dataclass(frozen=True)
class PromptJob:
    """Answer a whole prompt, nothing compressed (a plain chat, or the compression-off mode), before ``deadline``."""

    prompt_ids: list[int]
    deadline: Deadline | None = field(default=None, compare=False)


@dataclass(frozen=True)
class _ContextKey:
    config: FinchConfig
    allocation: str
    sampling: SamplingParams | None


@dataclass(frozen=True)
class _PromptKey:
    sampling: SamplingParams


@dataclass
class Compressed:
    """One request's compression: the context, how its documents were packed, and the answer if decoded."""

    context: CompressedContext
    plan: AllocationPlan[Passage]
    answer: str | None = None

    def per_document(self, threshold: float) -> list[dict[str, Any]]:
        """Per document, in the order given: kept text and stats (`CompressedContext.kept_passages`)."""
        return [{"text": text, **stats} for text, stats in self.plan.restore(self.context.kept_passages(threshold))]


class Engine:
    """The model behind one server (or one Ray Serve replica) and the batcher that feeds it.

    Parameters
    ----------
    settings : ServerSettings
        Model, batching and defaults.
    metrics : ServerMetrics
        Where batch sizes and queue depth go.
    compressor : FinchCompressor, optional
        An already loaded compressor (tests, embedding the app); default: load ``settings.model`` (in
        ``settings.dtype``) on `start`.
    """

    def __init__(
        self, settings: ServerSettings, metrics: ServerMetrics, compressor: FinchCompressor | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._handle = (
            frontends.CompressorHandle(compressor, embedding_model=settings.embedding_model)
            if compressor is not None
            else frontends.CompressorHandle(
                model_name=settings.model, dtype=settings.dtype, embedding_model=settings.embedding_model
            )
        )
        self._batcher = Batcher(
            self._run,
            window_s=settings.batch_window_ms / 1000,
            max_batch_size=settings.max_batch_size,
            on_batch=self._count_batch,
            on_waiting=metrics.queue_waiting.set,
        )

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Load the model (if not given) and sentence fusion's embedder, then start the batch worker."""
        self._handle.get()
        # Sentence fusion's embedder, so the first request for pieces of one document does not wait for it.
        shared_embedding_model(self.settings.embedding_model)
        self._batcher.start()

    def stop(self) -> None:
        self._batcher.stop()

    @property
    def compressor(self) -> FinchCompressor:
        return self._handle.get()

    # ------------------------------------------------------------------- work
    @property
    def handle(self) -> frontends.CompressorHandle:
        return self._handle

    def config(self, explicit: dict[str, Any]) -> FinchConfig:
        """The server's config with a request's explicit options (``ValueError`` when they are invalid).

        With compression off the budget is the whole context (``compression_ratio=0``): nothing is dropped.
        """
        if not self.settings.compression:
            return self.settings.config.replace(compression_ratio=0.0)
        options = {name: value for name, value in explicit.items() if name != "allocation"}
        return merged_config(self.settings.config, options)

    async def compress(
        self, job: ContextJob, config: FinchConfig, allocation: str, sampling: SamplingParams | None = None
    ) -> Compressed:
        """Compress (and, with ``sampling``, answer) one request in a batch with others like it."""
        result: Compressed = await self._batcher.submit(_ContextKey(config, allocation, sampling), job)
        return result

    async def answer_prompt(self, job: PromptJob, sampling: SamplingParams) -> str:
        """Answer a whole prompt (no compression) in the worker's turn."""
        text: str = await self._batcher.submit(_PromptKey(sampling), job)
        return text

    def stream(
        self, work: Compressed | PromptJob, sampling: SamplingParams, deadline: Deadline | None = None
    ) -> Iterator[str]:
        """Text pieces of the answer, decoded alone (the model lock is taken per step, not per answer).

        Past ``deadline`` decoding stops with `DeadlineExceeded` (and the compression leaves the store).
        """
        if isinstance(work, Compressed):
            prepared = frontends.Prepared(compressed=work.context)
        else:
            prepared = frontends.Prepared(prompt_ids=work.prompt_ids)
        return prepared.stream(self.compressor, sampling, deadline)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` (completion usage is counted on the answer text, after stop strings are cut)."""
        return len(self.compressor.tokenizer(text, add_special_tokens=False).input_ids) if text else 0

    # ------------------------------------------------------------ batch worker
    def _count_batch(self, key: Hashable, size: int) -> None:
        if isinstance(key, _ContextKey):
            self.metrics.batch_size.labels(stage="compress").observe(size)
        if isinstance(key, _PromptKey) or (isinstance(key, _ContextKey) and key.sampling is not None):
            self.metrics.batch_size.labels(stage="generate").observe(size)

    def _run(self, key: Hashable, jobs: Sequence[Any]) -> list[Any]:
        if isinstance(key, _PromptKey):
            return [self._guard(self._answer_prompt, job, key.sampling) for job in jobs]  # no batched plain decoding
        if not isinstance(key, _ContextKey):
            raise TypeError(f"Unknown batch key {key!r}.")
        try:
            return self._compress_batch(key, list(jobs))
        except (ValueError, TypeError):
            if len(jobs) == 1:
                raise
            # One bad request must not fail the others: run them one at a time, each with its own error.
            return [self._guard(self._compress_batch, key, [job]) for job in jobs]

    @staticmethod
    def _guard(function: Any, *args: Any) -> Any:
        try:
            result = function(*args)
        except (ValueError, TypeError, DeadlineExceeded) as error:
            return error
        return result[0] if isinstance(result, list) else result

    def _answer_prompt(self, job: PromptJob, sampling: SamplingParams) -> str:
        return frontends.Prepared(prompt_ids=job.prompt_ids).text(self.compressor, sampling, job.deadline)

    def _compress_batch(self, key: _ContextKey, jobs: list[ContextJob]) -> list[Compressed | DeadlineExceeded]:
        """Compress (and answer) the jobs as one padded batch; a job past its deadline leaves it at the next step.

        Dropping the expired job from the running batch, rather than splitting the batch, is what the chunk loop
        and the decoder already do with a request that has finished: the others' rows are untouched, so they
        give what they give alone. The failed job's result is its `DeadlineExceeded`, and its compression (if
        it got that far) leaves the store.
        """
        compressor = self.compressor
        allocation = PassageAllocation(kind=key.allocation)  # type: ignore[arg-type]  # checked by the schema
        started = time.perf_counter()
        planned = self._handle.compress_plans(
            [(job.passages, job.question, job.history) for job in jobs],
            key.config,
            allocation,
            deadline=[job.deadline for job in jobs],
            return_exceptions=True,
        )
        results: list[Compressed | DeadlineExceeded] = [
            item if isinstance(item, DeadlineExceeded) else Compressed(*item) for item in planned
        ]
        compressed_at = time.perf_counter()
        compressed = [(index, item) for index, item in enumerate(results) if isinstance(item, Compressed)]
        if key.sampling is not None and compressed:
            answers = compressor.generate_batch(
                [item.context for _, item in compressed],
                key.sampling,
                deadline=[jobs[index].deadline for index, _ in compressed],
                return_exceptions=True,
            )
            for (index, item), answer in zip(compressed, answers, strict=True):
                if isinstance(answer, DeadlineExceeded):
                    compressor.store.discard(item.context.cache_key)
                    results[index] = answer
                else:
                    item.answer = answer
        for _, item in compressed:
            self.metrics.context_tokens.inc(item.context.original_tokens)
            self.metrics.kept_tokens.inc(item.context.kept_tokens)
        logger.debug(
            "%d requests: compressed in %.3f s (%s context tokens), decoded in %.3f s",
            len(jobs),
            compressed_at - started,
            "+".join(str(item.context.original_tokens) for _, item in compressed),
            time.perf_counter() - compressed_at,
        )
        return results
