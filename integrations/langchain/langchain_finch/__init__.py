"""LangChain integration for finch-rag: FINCH prompt-guided KV-cache compression (TACL 2024)."""

from finch_rag.frontends import QUESTION_DELIMITER, split_prompt
from finch_rag.store import CACHE_KEY, CACHE_KEY_PATTERN

from .chat_models import ChatFinch
from .document_compressors import FinchDocumentCompressor
from .llms import FinchLLM
from .retrievers import FinchRetriever

__all__ = [
    "CACHE_KEY",
    "CACHE_KEY_PATTERN",
    "QUESTION_DELIMITER",
    "ChatFinch",
    "FinchDocumentCompressor",
    "FinchLLM",
    "FinchRetriever",
    "split_prompt",
]
__version__ = "0.1.0"
