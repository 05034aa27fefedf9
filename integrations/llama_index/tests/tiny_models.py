"""finch-rag's own tiny random models (``tests/conftest.py``), for tests that need a model in milliseconds.

The repository's test builders are loaded from their file, since this package's tests run without ``tests`` on the
path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("finch_tiny", Path(__file__).parents[3] / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


TINY = _load()
"""The module: ``TINY.build_tiny_model(architecture)``, ``TINY.build_tiny_tokenizer()``, ``TINY.PASSAGES``..."""
