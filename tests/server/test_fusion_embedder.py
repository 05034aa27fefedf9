"""``embedding_model``: the server's sentence-fusion embedder, on a real server (tiny LLM, embedded MiniLM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import torch
from conftest import PASSAGES, QUESTION
from sentence_transformers import SentenceTransformer
from servers import TIMEOUT, make_tiny_compressor, serving

from finch_rag.retrieval import default_embedding_model_path, load_embedding_model

try:
    from sentence_transformers.sentence_transformer.modules import Dense
except ImportError:  # sentence-transformers < 6
    from sentence_transformers.models import Dense

# Untitled documents are pieces of one document: their sentences get the embedder's similarity as a prior.
BODY = {"question": QUESTION, "documents": [{"text": text} for text in PASSAGES], "finch": {"target_tokens": 20}}


def compress(**settings: Any) -> dict[str, Any]:
    with (
        serving(make_tiny_compressor(), **settings) as server,
        httpx.Client(base_url=server.url, timeout=TIMEOUT) as client,
    ):
        response = client.post("/v1/compress", json=BODY)
        assert response.status_code == 200, response.text
        return response.json()


def test_a_named_embedding_model_is_what_the_server_fuses_with(tmp_path: Path) -> None:
    """The embedded MiniLM named by its directory keeps what the default keeps; another model keeps otherwise."""
    default, named = compress(), compress(embedding_model=str(default_embedding_model_path()))
    assert named["documents"] == default["documents"] and named["usage"]["kept_tokens"] == 20
    # Another embedder: MiniLM followed by a seeded projection to 2 dimensions, saved as a model directory.
    minilm = load_embedding_model()
    torch.manual_seed(0)
    width = minilm.encode([QUESTION]).shape[-1]
    projection = Dense(width, 2, bias=False, activation_function=torch.nn.Identity())
    SentenceTransformer(modules=[*minilm, projection]).save(str(tmp_path))
    other = compress(embedding_model=str(tmp_path))
    assert other["documents"] != default["documents"] and other["usage"]["kept_tokens"] == 20
