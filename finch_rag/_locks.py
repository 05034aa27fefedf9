"""One re-entrant lock per loaded model: compress and generate on a model never interleave."""

from __future__ import annotations

import threading
import weakref

import torch

_registry_lock = threading.Lock()
_model_locks: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The lock shared by every compressor and pipeline that uses ``model``."""
    with _registry_lock:
        lock = _model_locks.get(model)
        if lock is None:
            lock = threading.RLock()
            _model_locks[model] = lock
        return lock
