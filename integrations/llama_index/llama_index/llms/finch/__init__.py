"""LlamaIndex LLM for finch-rag: answers from a FINCH-compressed KV cache (TACL 2024)."""

from .base import FinchLLM, split_qa_prompt

__all__ = ["FinchLLM", "split_qa_prompt"]
__version__ = "0.1.0"
