"""Stream helpers the front ends share: close a decoding generator, accumulate pieces, drive one from async code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def close(iterator: Iterator[Any]) -> None:
    """Close a generator early (stops decoding when the consumer stops reading)."""
    closer = getattr(iterator, "close", None)
    if closer is not None:
        closer()


def accumulate(pieces: Iterator[str], respond: Callable[[str, str], T]) -> Generator[T, None, None]:
    """``respond(text so far, new piece)`` for each decoded piece, as a framework's streamed responses.

    Closing the result closes ``pieces`` (decoding stops when the consumer does).
    """
    text = ""
    try:
        for piece in pieces:
            text += piece
            yield respond(text, piece)
    finally:
        close(pieces)


async def in_thread(iterator: Iterator[T]) -> AsyncGenerator[T, None]:
    """Drive a blocking iterator (decoding) from worker threads, one item at a time: the event loop stays free.

    Items arrive as they are produced; closing the async iterator closes ``iterator`` (decoding stops).
    """
    done = object()
    busy = threading.Lock()  # held while a worker is inside next(): a running generator cannot be closed

    def step() -> Any:
        with busy:
            return next(iterator, done)

    def finish() -> None:
        with busy:
            close(iterator)

    try:
        while (item := await asyncio.to_thread(step)) is not done:
            yield item  # type: ignore[misc]
    finally:
        if busy.acquire(blocking=False):
            try:
                close(iterator)
            finally:
                busy.release()
        else:  # cancelled while a token was being decoded: close once that step returns, off the event loop
            threading.Thread(target=finish, name="finch-close-stream", daemon=True).start()
