"""How requests reach the model: a bounded admission count, then one worker thread that runs them in batches.

Requests that arrive within ``window_s`` of each other, up to ``max_batch_size``, are handed to the worker
together; those sharing a key (the same compression options and sampling parameters) run as one padded batch
(`FinchCompressor.compress_batch`, `FinchCompressor.generate_batch`). This is the server's only batching: under
Ray Serve each replica batches its own requests this way, and ``@serve.batch`` is not used on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

RunBatch = Callable[[Hashable, Sequence[Any]], Sequence[Any]]
"""``run(key, payloads)`` -> one result per payload; a result that is an exception is raised to its request."""


class Overloaded(Exception):
    """The server holds as many requests as it may; the client should retry later."""


class Admission:
    """Counts the requests in the server and refuses one past ``limit``.

    Parameters
    ----------
    limit : int
        Most requests admitted at once.
    on_change : callable, optional
        Called with the new count after every change (the queue-depth gauge).
    """

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self._count = 0
        self._lock = threading.Lock()
        self._on_change = on_change

    @property
    def count(self) -> int:
        return self._count

    def acquire(self) -> None:
        """Admit one request, or raise `Overloaded`."""
        with self._lock:
            if self._count >= self.limit:
                raise Overloaded(f"The server is at its limit of {self.limit} requests in flight.")
            self._count += 1
            count = self._count
        if self._on_change is not None:
            self._on_change(count)

    def release(self) -> None:
        with self._lock:
            self._count -= 1
            count = self._count
        if self._on_change is not None:
            self._on_change(count)

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


@dataclass
class _Job:
    key: Hashable
    payload: Any
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    queued: float = field(default_factory=time.perf_counter)


def _deliver(job: _Job, result: Any) -> None:
    """Hand ``result`` to the job's event loop (from the worker thread)."""
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        job.loop.call_soon_threadsafe(_resolve, job.future, result)


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():  # the request went away (client disconnect, server shutdown)
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class Batcher:
    """Collects jobs arriving together and runs them, grouped by key, on one worker thread.

    Parameters
    ----------
    run : callable
        ``run(key, payloads)`` returns one result (or exception) per payload, in order.
    window_s : float
        How long the first job of a batch waits for more.
    max_batch_size : int
        Most jobs collected into one batch.
    on_batch : callable, optional
        Called with ``(key, size)`` before each group runs (the batch-size histogram).
    on_waiting : callable, optional
        Called with the number of jobs waiting whenever it changes.
    """

    def __init__(
        self,
        run: RunBatch,
        *,
        window_s: float,
        max_batch_size: int,
        on_batch: Callable[[Hashable, int], None] | None = None,
        on_waiting: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self.window_s = window_s
        self.max_batch_size = max_batch_size
        self._on_batch = on_batch
        self._on_waiting = on_waiting
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._work, name="finch-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in progress, then fail every job still waiting."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            _deliver(job, RuntimeError("The server is shutting down."))
        self._waiting_changed()

    async def submit(self, key: Hashable, payload: Any) -> Any:
        """Queue ``payload`` under ``key`` and wait for its result."""
        if self._thread is None or self._stopping.is_set():
            raise RuntimeError("The batcher is not running.")
        loop = asyncio.get_running_loop()
        job = _Job(key, payload, loop.create_future(), loop)
        self._queue.put(job)
        self._waiting_changed()
        return await job.future

    def _waiting_changed(self) -> None:
        if self._on_waiting is not None:
            self._on_waiting(self._queue.qsize())

    def _collect(self) -> list[_Job]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        jobs = [first]
        deadline = time.monotonic() + self.window_s
        while len(jobs) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                jobs.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        self._waiting_changed()
        return jobs

    def _work(self) -> None:
        while not self._stopping.is_set():
            jobs = [job for job in self._collect() if not job.future.done()]
            groups: dict[Hashable, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                self._run_group(key, group)

    def _run_group(self, key: Hashable, group: list[_Job]) -> None:
        if self._on_batch is not None:
            self._on_batch(key, len(group))
        started = time.perf_counter()
        try:
            results = list(self._run(key, [job.payload for job in group]))
            if len(results) != len(group):
                raise RuntimeError(f"A batch of {len(group)} requests gave {len(results)} results.")
        except Exception as error:  # noqa: BLE001 - handed to each request, which answers it cleanly
            logger.exception("A batch of %d requests failed", len(group))
            results = [error] * len(group)
        if logger.isEnabledFor(logging.DEBUG):
            waited = [started - job.queued for job in group]
            logger.debug(
                "batch of %d: queued %.3f-%.3f s, ran %.3f s",
                len(group),
                min(waited),
                max(waited),
                time.perf_counter() - started,
            )
        for job, result in zip(group, results, strict=True):
            _deliver(job, result)
