"""LangChain integration for finch-rag: FINCH prompt-guided KV-cache compression (TACL 2024)."""

from .document_compressors import CACHE_KEY, FinchDocumentCompressor
from .llms import CACHE_KEY_PATTERN, QUESTION_DELIMITER, FinchLLM, split_prompt

__all__ = [
    "CACHE_KEY",
    "CACHE_KEY_PATTERN",
    "QUESTION_DELIMITER",
    "FinchDocumentCompressor",
    "FinchLLM",
    "split_prompt",
]
__version__ = "0.1.0"
