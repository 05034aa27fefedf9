"""LlamaIndex node postprocessor for finch-rag: FINCH prompt-guided KV-cache compression (TACL 2024)."""

from .base import CACHE_KEY, CACHE_KEY_PATTERN, STATS_KEYS, FinchNodePostprocessor

__all__ = ["CACHE_KEY", "CACHE_KEY_PATTERN", "STATS_KEYS", "FinchNodePostprocessor"]
__version__ = "0.1.0"
