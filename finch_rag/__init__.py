"""finch-rag: prompt-guided KV-cache compression (FINCH, TACL 2024) as a retrieval component."""

from .compressor import FinchCompressor
from .config import FinchConfig
from .context import CompressedContext
from .models import load_model
from .prompts import Passage

__all__ = ["CompressedContext", "FinchCompressor", "FinchConfig", "Passage", "load_model"]
__version__ = "0.1.0"
