"""The options every langchain-finch class shares (`finch_rag.frontends`), on the repository's tiny random model.

Fast: a 2-layer model and a 120-token tokenizer built in memory (``tests/conftest.py`` of finch-rag), no download.
"""

from __future__ import annotations

from typing import Any

import pytest
from finch_rag import FinchCompressor, FinchConfig, FinchRAG, Passage, RankWeighting
from finch_rag.retrieval import shared_embedding_model
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_core.retrievers import BaseRetriever

from langchain_finch import CACHE_KEY, FinchDocumentCompressor, FinchLLM

from .tiny_models import TINY

WEIGHTING = RankWeighting(tau=1e-3, floor=0.0, reverse_packing=False)  # the top passage takes all

DOCUMENTS = [
    Document(page_content=text, metadata={"title": f"T{i}"}, id=str(i)) for i, text in enumerate(TINY.PASSAGES)
]


class FixedRetriever(BaseRetriever):
    documents: list[Document]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self.documents


@pytest.fixture(scope="module")
def tiny() -> FinchCompressor:
    config = FinchConfig(target_tokens=16, chunk_size=32, progress=False)
    return FinchCompressor(TINY.build_tiny_model("llama"), TINY.build_tiny_tokenizer(), config)


def expected(compressor: FinchCompressor, weighting: RankWeighting) -> list[list[list[int]]]:
    """Kept positions of `FinchRAG.answer_from` on the same passages: what the allocation must give."""
    passages = [Passage(d.page_content, d.metadata["title"], d.metadata) for d in DOCUMENTS]
    answer = FinchRAG(compressor=compressor, weighting=weighting, max_new_tokens=1).answer_from(TINY.QUESTION, passages)
    assert answer.compressed is not None
    return [positions.tolist() for positions in answer.compressed.kept_positions]


def test_a_users_weighting_reaches_the_kept_positions(tiny: FinchCompressor) -> None:
    """The integrations used to build their own RankWeighting() and never apply its weights."""
    out = FinchDocumentCompressor(compressor=tiny, weighting=WEIGHTING).compress_documents(DOCUMENTS, TINY.QUESTION)
    stored = tiny.store.get(out[0].metadata[CACHE_KEY])
    kept = [positions.tolist() for positions in stored.kept_positions]
    assert kept == expected(tiny, WEIGHTING) != expected(tiny, RankWeighting())

    llm = FinchLLM(
        compressor=tiny, retriever=FixedRetriever(documents=DOCUMENTS), weighting=WEIGHTING, max_new_tokens=2
    )
    info = llm.generate([TINY.QUESTION]).generations[0][0].generation_info
    assert not info["finch_reused"]  # the retriever's documents carry no key: the LLM compresses them itself
    assert [positions.tolist() for positions in tiny.store.get(info[CACHE_KEY]).kept_positions] == kept
    plain = FinchLLM(compressor=tiny, retriever=FixedRetriever(documents=DOCUMENTS), allocation="global")
    fresh = tiny.store.get(plain.generate([TINY.QUESTION]).generations[0][0].generation_info[CACHE_KEY])
    assert fresh.config.granularity == "token" and [p.text for p in fresh.passages] == [
        d.page_content for d in DOCUMENTS
    ]


def test_chunk_size_none_is_a_single_pass(tiny: FinchCompressor) -> None:
    """``chunk_size=None`` used to be dropped, so 512 (here the compressor's 32) was used."""
    assert FinchLLM(chunk_size=None).config.chunk_size is None
    assert FinchDocumentCompressor(chunk_size=None).config.chunk_size is None
    out = FinchDocumentCompressor(compressor=tiny, chunk_size=None).compress_documents(DOCUMENTS, TINY.QUESTION)
    assert tiny.store.get(out[0].metadata[CACHE_KEY]).cache.num_chunks == 1
    chunked = FinchDocumentCompressor(compressor=tiny).compress_documents(DOCUMENTS, TINY.QUESTION)
    assert tiny.store.get(chunked[0].metadata[CACHE_KEY]).cache.num_chunks > 1


def test_an_llm_with_another_budget_does_not_reuse_a_stored_compression(tiny: FinchCompressor) -> None:
    """`ContextStore.find` ignored the config: an LLM asking for 8 entries reused a 16-entry compression."""
    docs = FinchDocumentCompressor(compressor=tiny).compress_documents(DOCUMENTS, TINY.QUESTION)
    context = "\n\n".join(f"[{d.metadata[CACHE_KEY]}] {d.page_content}" for d in docs)
    prompt = f"Context:\n{context}\n\nQuestion: {TINY.QUESTION}\nAnswer:"
    same = FinchLLM(compressor=tiny, max_new_tokens=2).generate([prompt]).generations[0][0].generation_info
    assert same["finch_reused"] and same["kept_tokens"] == 16
    smaller = FinchLLM(compressor=tiny, target_tokens=8, max_new_tokens=2).generate([prompt])
    info = smaller.generations[0][0].generation_info
    assert not info["finch_reused"] and info["kept_tokens"] == 8


AUTO: dict[str, Any] = {"target_tokens": "auto", "attention_mass": 0.5, "max_target_tokens": 40}


def test_an_automatic_budget_reaches_the_compressor(tiny: FinchCompressor) -> None:
    """``target_tokens="auto"`` keeps the fewest entries holding ``attention_mass``, below the cap a fixed B fills."""
    docs = FinchDocumentCompressor(compressor=tiny, **AUTO).compress_documents(DOCUMENTS, TINY.QUESTION)
    stored = tiny.store.get(docs[0].metadata[CACHE_KEY])
    fixed_docs = FinchDocumentCompressor(compressor=tiny, target_tokens=40).compress_documents(DOCUMENTS, TINY.QUESTION)
    fixed = tiny.store.get(fixed_docs[0].metadata[CACHE_KEY])
    assert (stored.config.target_tokens, stored.config.attention_mass, stored.config.max_target_tokens) == (
        "auto",
        0.5,
        40,
    )
    assert 0 < stored.kept_tokens < fixed.kept_tokens == 40
    # The LLM reuses that compression only with the same automatic options, which identify it to LangChain.
    context = "\n\n".join(f"[{d.metadata[CACHE_KEY]}] {d.page_content}" for d in docs)
    prompt = f"Context:\n{context}\n\nQuestion: {TINY.QUESTION}\nAnswer:"
    llm = FinchLLM(compressor=tiny, max_new_tokens=2, **AUTO)
    same = llm.generate([prompt]).generations[0][0].generation_info
    assert same["finch_reused"] and same["kept_tokens"] == stored.kept_tokens
    other = FinchLLM(compressor=tiny, max_new_tokens=2, **(AUTO | {"attention_mass": 0.2}))
    info = other.generate([prompt]).generations[0][0].generation_info
    assert not info["finch_reused"] and tiny.store.get(info[CACHE_KEY]).config.attention_mass == 0.2
    assert llm._identifying_params["target_tokens"] == "auto" and other._identifying_params["attention_mass"] == 0.2
    assert "attention_mass" not in FinchLLM(compressor=tiny)._identifying_params  # a fixed budget ignores it


def test_bad_automatic_budget_options_are_refused() -> None:
    for bad in ({"target_tokens": "lots"}, {"target_tokens": "auto", "attention_mass": 1.5}, {"max_target_tokens": 0}):
        with pytest.raises(ValueError, match="target_tokens|attention_mass|max_target_tokens"):
            FinchDocumentCompressor(**bad)
    with pytest.raises(ValueError, match='attention_mass only applies with target_tokens="auto"'):
        FinchLLM(target_tokens=8, attention_mass=0.5)


def test_pieces_of_one_document_are_fused_as_in_finchrag(tiny: FinchCompressor) -> None:
    """Chunks of one file (one metadata ``source``) get `FinchRAG`'s sentence fusion, with the embedded embedder."""
    pieces = [Document(page_content=text, metadata={"source": "notes.txt"}) for text in TINY.PASSAGES]
    out = FinchDocumentCompressor(compressor=tiny).compress_documents(pieces, TINY.QUESTION)
    kept = [positions.tolist() for positions in tiny.store.get(out[0].metadata[CACHE_KEY]).kept_positions]
    passages = [Passage(d.page_content, "notes.txt", d.metadata) for d in pieces]  # the source is their title
    answer = FinchRAG(compressor=tiny, max_new_tokens=1).answer_from(TINY.QUESTION, passages)
    assert answer.stats["sentence_fusion"] and answer.compressed is not None
    assert kept == [positions.tolist() for positions in answer.compressed.kept_positions]
    unfused = RankWeighting(sentence_fusion_temperature=None)
    plain = FinchDocumentCompressor(compressor=tiny, weighting=unfused).compress_documents(pieces, TINY.QUESTION)
    assert kept != [positions.tolist() for positions in tiny.store.get(plain[0].metadata[CACHE_KEY]).kept_positions]


class MiniLMEmbeddings(Embeddings):
    """The embedded all-MiniLM-L6-v2 behind LangChain's interface; it records the queries it embeds."""

    def __init__(self) -> None:
        self.model = shared_embedding_model()
        self.queries: list[str] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.model.encode(texts, normalize_embeddings=True, show_progress_bar=False).tolist()

    def embed_query(self, text: str) -> list[float]:
        self.queries.append(text)
        return self.embed_documents([text])[0]


def test_a_langchain_embeddings_is_the_fusion_embedder(tiny: FinchCompressor) -> None:
    """``embedding_model=`` names what sentence fusion embeds with; the question goes through ``embed_query``."""
    pieces = [Document(page_content=text, metadata={"source": "notes.txt"}) for text in TINY.PASSAGES]

    def kept(**options: Any) -> list[list[int]]:
        out = FinchDocumentCompressor(compressor=tiny, **options).compress_documents(pieces, TINY.QUESTION)
        return [positions.tolist() for positions in tiny.store.get(out[0].metadata[CACHE_KEY]).kept_positions]

    embeddings = MiniLMEmbeddings()
    assert kept(embedding_model=embeddings) == kept()  # the default is this very model
    assert embeddings.queries == [TINY.QUESTION]
    assert kept(embedding_model=DeterministicFakeEmbedding(size=32)) != kept()  # another embedder moves the selection
    with pytest.raises(TypeError, match="embed_query"):
        FinchLLM(compressor=tiny, embedding_model=object())
