"""A real ``finch-rag serve`` process on a tiny model saved to disk, for tests that send it signals.

`ServerProcess` runs ``python -m finch_rag.cli serve --model DIR`` in a subprocess on a free port of 127.0.0.1 and
waits for ``/health`` (the benchmarks' `benchmarks.reliability.process.ServerProcess`, with its output kept); it
kills the process on exit if a test left it running. `save_tiny_model` writes the tiny
random Llama and tokenizer of ``conftest`` where ``--model`` can load them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from conftest import EOS_ID, build_tiny_model, build_tiny_tokenizer

from benchmarks.reliability import process


def save_tiny_model(directory: Path, *, endless: bool = False, **overrides: Any) -> Path:
    """The tiny Llama (``overrides`` change its config) and the tiny tokenizer, saved in ``directory``.

    ``endless``: the end-of-sequence token's output row is zeroed, so its logit is 0 while the max of the 127 other
    random logits is positive (all negative has odds of 2^-127): greedy answers always run to ``max_tokens``.
    """
    model = build_tiny_model("llama", **overrides)
    if endless:
        with torch.no_grad():
            model.get_output_embeddings().weight[EOS_ID] = 0.0
    model.save_pretrained(directory)
    build_tiny_tokenizer().save_pretrained(directory)
    return directory


class ServerProcess(process.ServerProcess):
    """``finch-rag serve --model MODEL ARGS...`` (the benchmarks' `ServerProcess`), its output kept for failures."""

    def __init__(self, model: Path, *args: str, startup_timeout: float = 120.0) -> None:
        super().__init__(str(model), *args, startup_timeout=startup_timeout, capture_output=True)
