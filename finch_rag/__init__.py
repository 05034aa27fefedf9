"""finch-rag: prompt-guided KV-cache compression (FINCH, TACL 2024) as a retrieval component."""

from .allocation import PassageAllocation, RankWeighting
from .compression.prefix_cache import PrefixCache
from .compressor import FinchCompressor
from .config import FinchConfig
from .context import CompressedContext
from .deadline import Deadline, DeadlineExceeded
from .generation import SamplingParams
from .models import load_model
from .pipeline import Answer, FinchRAG, Source
from .prompts import Passage
from .retrieval import EmbeddingRetriever, RetrievedPassage, Retriever

__all__ = [
    "Answer",
    "CompressedContext",
    "Deadline",
    "DeadlineExceeded",
    "EmbeddingRetriever",
    "FinchCompressor",
    "FinchConfig",
    "FinchRAG",
    "Passage",
    "PassageAllocation",
    "PrefixCache",
    "RankWeighting",
    "RetrievedPassage",
    "Retriever",
    "SamplingParams",
    "Source",
    "load_model",
]
__version__ = "0.1.0"
