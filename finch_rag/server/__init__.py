"""finch-rag's OpenAI-compatible server (``finch-rag serve``), deployable on Ray Serve.

Needs the ``serve`` extra (``pip install 'finch-rag[serve]'``); Ray Serve needs ``finch-rag[ray]``. Names are
imported on first use, so ``finch_rag.server.command`` (the CLI's ``serve`` arguments) loads without them.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ServerSettings": "settings",
    "ServerThread": "runner",
    "create_app": "app",
    "serve": "runner",
}

__all__ = ["ServerSettings", "ServerThread", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'finch_rag.server' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
