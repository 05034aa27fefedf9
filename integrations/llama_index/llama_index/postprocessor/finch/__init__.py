"""LlamaIndex node postprocessor for finch-rag: FINCH prompt-guided KV-cache compression (TACL 2024)."""

from .base import CACHE_KEY, CACHE_KEY_PATTERN, STATS_KEYS, FinchNodePostprocessor
from .events import FinchCompressionEvent

__all__ = ["CACHE_KEY", "CACHE_KEY_PATTERN", "STATS_KEYS", "FinchCompressionEvent", "FinchNodePostprocessor"]
__version__ = "0.1.0"
