"""Progress bars that stay quiet unless a person is watching.

Every bar of the library and the server is made here, so one rule holds for all of them: a bar shows
only when the caller asks for it (``progress=True``), ``TQDM_DISABLE`` is not set to a true value, and
stderr (where tqdm writes) is a terminal. tqdm's own ``TQDM_DISABLE`` only changes its default, which an
explicit ``disable=`` overrides; hence the check here.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

_FALSE = ("", "0", "false", "no", "off")


def bars_allowed() -> bool:
    """Whether a bar may show at all: ``TQDM_DISABLE`` unset (or false) and stderr a terminal."""
    if os.environ.get("TQDM_DISABLE", "").strip().lower() not in _FALSE:
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(*, total: int, desc: str, unit: str, enabled: bool = True) -> tqdm[Any]:
    """A tqdm bar over ``total`` items, shown only if ``enabled`` and `bars_allowed`."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not (enabled and bars_allowed()))


@contextlib.contextmanager
def transformers_bars_as_ours() -> Iterator[None]:
    """Hide transformers' own bars (weight loading, conversion) inside the block unless `bars_allowed`.

    transformers switches its bars globally; the previous setting is restored on exit.
    """
    from transformers.utils import logging as transformers_logging

    if bars_allowed() or not transformers_logging.is_progress_bar_enabled():
        yield
        return
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.enable_progress_bar()
