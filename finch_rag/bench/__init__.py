"""Benchmarks: commands that write JSON, Markdown tables and PNG plots under ``docs/results/``.

Nothing here runs at import time; each benchmark module has a ``main()`` for ``python -m``.
"""

from .common import answer_scores, contains_gold, data_dir, exact_match, f1_score, normalize_answer

__all__ = ["answer_scores", "contains_gold", "data_dir", "exact_match", "f1_score", "normalize_answer"]
