"""finch-rag: prompt-guided KV-cache compression (FINCH, TACL 2024) as a retrieval component."""

from .compressor import FinchCompressor
from .config import FinchConfig
from .context import CompressedContext
from .models import load_model
from .pipeline import Answer, FinchRAG, RankWeighting, Source
from .prompts import Passage
from .retrieval import EmbeddingRetriever, RetrievedPassage, Retriever

__all__ = ["CompressedContext", "FinchCompressor", "FinchConfig", "Passage", "load_model"]
__all__ += ["Answer", "EmbeddingRetriever", "FinchRAG", "RankWeighting", "RetrievedPassage", "Retriever", "Source"]
__version__ = "0.1.0"
