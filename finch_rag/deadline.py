"""Per-request deadlines: how long a request may run before compression or decoding gives up.

A `Deadline` is made once, where a request enters (a library call, an integration's call, a server request), and
passed down. The chunk loop checks it before each chunk, decoding before each token: work stops at the next step
once the deadline has passed, and the request fails with `DeadlineExceeded`. Nothing is interrupted from outside
(no thread is killed): the request's own loop notices and stops, and its partial cache is dropped. A check is one
``time.monotonic()`` call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence


class DeadlineExceeded(TimeoutError):
    """A request ran past its deadline; compression or decoding stopped at the next step.

    Attributes
    ----------
    timeout : float
        The deadline, in seconds after the request started.
    elapsed : float
        How long the request had run when it stopped.
    stage : str
        Where it stopped (``"compression, before chunk 3 of 8"``, ``"decoding, before token 5"``...).
    """

    def __init__(self, timeout: float, elapsed: float, stage: str) -> None:
        self.timeout = timeout
        self.elapsed = elapsed
        self.stage = stage
        super().__init__(
            f"The request ran {elapsed:.3g} s, past its deadline of {timeout:.3g} s; it stopped in {stage}. "
            "Raise the timeout, or ask for less work (fewer or shorter documents, a smaller max_tokens)."
        )

    def __reduce__(self) -> tuple[type[DeadlineExceeded], tuple[float, float, str]]:
        # Ray Serve and multiprocessing pickle errors across processes: rebuild from the fields, not the message.
        return (type(self), (self.timeout, self.elapsed, self.stage))


class Deadline:
    """A point in time, ``seconds`` after its creation, past which a request stops at its next step.

    Parameters
    ----------
    seconds : float
        How long the request may run; a finite number > 0.
    clock : callable, optional
        Returns the current time in seconds (default ``time.monotonic``); tests inject a deterministic one.
    """

    __slots__ = ("seconds", "_clock", "_start", "_end")

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = check_timeout(seconds)
        self._clock = clock
        self._start = clock()
        self._end = self._start + self.seconds

    @classmethod
    def of(cls, value: DeadlineLike) -> Deadline | None:
        """``value`` as a deadline: a `Deadline` as is, seconds from now as a new one, ``None`` as no deadline."""
        if value is None or isinstance(value, Deadline):
            return value
        return cls(value)

    def elapsed(self) -> float:
        """Seconds since the deadline was made (since the request started)."""
        return self._clock() - self._start

    def remaining(self) -> float:
        """Seconds left, 0 once the deadline has passed."""
        return max(self._end - self._clock(), 0.0)

    @property
    def expired(self) -> bool:
        return self._clock() >= self._end

    def error(self, stage: str) -> DeadlineExceeded:
        """The `DeadlineExceeded` for a request stopped in ``stage``."""
        return DeadlineExceeded(self.seconds, self.elapsed(), stage)

    def check(self, stage: str) -> None:
        """Raise `DeadlineExceeded` (saying ``stage``) if the deadline has passed."""
        if self.expired:
            raise self.error(stage)

    def __repr__(self) -> str:
        return f"Deadline(seconds={self.seconds}, remaining={self.remaining():.3g})"


DeadlineLike = Deadline | float | None
"""What a ``deadline=`` argument takes: a `Deadline`, seconds from now, or ``None`` (no deadline)."""


def check_timeout(seconds: object, name: str = "timeout") -> float:
    """``seconds`` as a float if it is a finite number > 0, else a ``ValueError`` that says so."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError(f"{name} must be a number of seconds > 0 (or None for no deadline), got {seconds!r}.")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0 (or None for no deadline), got {seconds!r}.")
    return float(seconds)


def deadlines_for(value: DeadlineLike | Sequence[DeadlineLike], count: int) -> list[Deadline | None]:
    """One deadline per request of a batch: ``value`` shared by all (made once, now), or one per request."""
    if value is None or isinstance(value, (Deadline, int, float)):
        return [Deadline.of(value)] * count
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != count:
            raise ValueError(f"Got {len(value)} deadlines for {count} requests; give one, or one per request.")
        return [Deadline.of(item) for item in value]
    raise ValueError(
        f"deadline must be a number of seconds > 0, a Deadline, None, or one of these per request; got {value!r}."
    )
