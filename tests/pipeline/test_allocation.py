"""`PassageAllocation`: the one allocation entry point of `FinchRAG` and the integrations."""

from __future__ import annotations

import math
from typing import Any, get_args

import pytest
from conftest import PASSAGES, QUESTION

from finch_rag import FinchCompressor, FinchConfig, FinchRAG, PassageAllocation, RankWeighting
from finch_rag.allocation import ALLOCATIONS, Allocation, one_document, rank_weights
from finch_rag.prompts import Passage
from finch_rag.retrieval import RetrievedPassage

CONFIG = FinchConfig(target_tokens=24, chunk_size=64, progress=False)


def test_retrieval_weighted_packs_best_last_and_restores_the_ranked_order() -> None:
    plan = PassageAllocation().plan(["a", "b", "c"], CONFIG)
    assert plan.packed == ["c", "b", "a"]
    assert plan.config == CONFIG.replace(granularity="sentence") and CONFIG.granularity == "token"
    assert plan.passage_weights is None  # the default weighting has no rank factor
    assert plan.restore(["stats of c", "stats of b", "stats of a"]) == ["stats of a", "stats of b", "stats of c"]
    with pytest.raises(ValueError, match="3 packed passages"):
        plan.restore([1, 2])


def test_weights_follow_the_packed_order_and_the_given_ranks() -> None:
    allocation = PassageAllocation(weighting=RankWeighting(tau=1.0, floor=0.0))
    plan = allocation.plan(["a", "b", "c"], CONFIG)
    assert plan.passage_weights == pytest.approx([math.exp(-2), math.exp(-1), 1.0])  # c (rank 3) is packed first
    ranked = allocation.plan(["a", "b"], CONFIG, ranks=[2, 5])
    assert ranked.passage_weights == pytest.approx([math.exp(-4), math.exp(-1)])
    keep_order = PassageAllocation(weighting=RankWeighting(reverse_packing=False, granularity="token"))
    plan = keep_order.plan(["a", "b"], CONFIG)
    assert plan.packed == ["a", "b"] and plan.config is CONFIG and plan.restore([1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="ranks"):
        allocation.plan(["a"], CONFIG, ranks=[1, 2])


def test_fusion_multiplies_each_passage_by_its_retrieval_score_factor() -> None:
    """``fusion_temperature`` turns retrieval scores into priors: the best passage 1, others exp(-gap / T)."""
    allocation = PassageAllocation(weighting=RankWeighting(fusion_temperature=0.1))
    plan = allocation.plan(["a", "b", "c"], CONFIG, scores=[0.6, 0.5, 0.3])
    assert plan.packed == ["c", "b", "a"]
    assert plan.passage_weights == pytest.approx([math.exp(-3), math.exp(-1), 1.0])  # in the packed order
    both = PassageAllocation(weighting=RankWeighting(tau=1.0, fusion_temperature=0.1))
    combined = both.plan(["a", "b"], CONFIG, scores=[0.6, 0.5]).passage_weights
    assert combined == pytest.approx([math.exp(-1) * math.exp(-1), 1.0])
    unscored = allocation.plan(["a", "b", "c"], CONFIG, scores=[0.6, None, 0.4]).passage_weights
    assert unscored == pytest.approx([math.exp(-2), 1.0, 1.0])
    # Off by default, without scores, or when no passage has one: no prior at all, as before.
    assert PassageAllocation().plan(["a", "b"], CONFIG, scores=[0.9, 0.1]).passage_weights is None
    assert allocation.plan(["a", "b"], CONFIG).passage_weights is None
    assert allocation.plan(["a", "b"], CONFIG, scores=[None, None]).passage_weights is None
    with pytest.raises(ValueError, match="2 retrieval scores for 3 passages"):
        allocation.plan(["a", "b", "c"], CONFIG, scores=[0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        allocation.plan(["a", "b"], CONFIG, scores=[0.1, math.nan])


@pytest.mark.parametrize("temperature", [0, -0.1, math.inf, True, "0.1"])
def test_fusion_temperatures_are_validated(temperature: Any) -> None:
    with pytest.raises(ValueError, match="fusion_temperature is a temperature in retrieval-score"):
        RankWeighting(fusion_temperature=temperature)
    with pytest.raises(ValueError, match="sentence_fusion_temperature is a temperature in cosine"):
        RankWeighting(sentence_fusion_temperature=temperature)
    with pytest.raises(ValueError, match="passage_fusion_temperature is a temperature in cosine"):
        RankWeighting(passage_fusion_temperature=temperature)


def test_finchrag_fuses_its_retrievers_scores(tiny_models: Any, tiny_tokenizer: Any) -> None:
    """`FinchRAG` hands each retrieved passage's score to the plan, so the fused prior reaches compression.

    The scores rise with the rank here, so the factor (set by scores, not ranks) moves the budget away from the
    rank-1 passage that packing puts next to the question: the selection must differ from the unfused one.
    """
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer, CONFIG)
    # Sentence fusion off: these untitled passages read as one document, and this test is about passage scores.
    weighting = RankWeighting(fusion_temperature=0.05, sentence_fusion_temperature=None)
    rag = FinchRAG(compressor=compressor, weighting=weighting, max_new_tokens=1)
    scores = [0.3, 0.4, 0.6, 0.7]
    retrieved = [
        RetrievedPassage(text, None, {}, score, rank)
        for rank, (text, score) in enumerate(zip(PASSAGES, scores, strict=True), 1)
    ]
    answer = rag.answer_from(QUESTION, retrieved)
    plan = PassageAllocation(weighting=weighting).plan(PASSAGES, CONFIG, scores=scores)
    assert plan.passage_weights == pytest.approx([1.0, math.exp(-2), math.exp(-6), math.exp(-8)])
    direct = compressor.compress(plan.packed, QUESTION, config=plan.config, passage_weights=plan.passage_weights)
    unfused = compressor.compress(plan.packed, QUESTION, config=plan.config)
    assert answer.compressed is not None
    assert [p.tolist() for p in answer.compressed.kept_positions] == [p.tolist() for p in direct.kept_positions]
    assert [p.tolist() for p in direct.kept_positions] != [p.tolist() for p in unfused.kept_positions]


def test_global_is_plain_finch() -> None:
    plan = PassageAllocation("global", RankWeighting(tau=1.0)).plan(["a", "b"], CONFIG)
    assert (plan.packed, plan.config, plan.passage_weights) == (["a", "b"], CONFIG, None)


def test_allocation_names_and_validation() -> None:
    assert set(ALLOCATIONS) == set(get_args(Allocation)) and PassageAllocation().kind == "retrieval_weighted"
    with pytest.raises(ValueError, match="allocation must be one of"):
        PassageAllocation("local")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="RankWeighting"):
        PassageAllocation(weighting={"tau": 1.0})  # type: ignore[arg-type]


def test_rank_weights_default_is_rank_weightings_default() -> None:
    """``rank_weights`` used to default to ``tau=4`` while ``RankWeighting()`` has no rank factor."""
    assert rank_weights([1, 2, 3]) == rank_weights([1, 2, 3], RankWeighting()) == [1.0, 1.0, 1.0]


def test_finchrag_compresses_what_the_plan_says(tiny_models: Any, tiny_tokenizer: Any) -> None:
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer, CONFIG)
    weighting = RankWeighting(tau=1.0, floor=0.0, sentence_fusion_temperature=None)
    answer = FinchRAG(compressor=compressor, weighting=weighting, max_new_tokens=1).answer_from(QUESTION, PASSAGES)
    plan = PassageAllocation(weighting=weighting).plan(PASSAGES, CONFIG)
    direct = compressor.compress(plan.packed, QUESTION, config=plan.config, passage_weights=plan.passage_weights)
    assert answer.compressed is not None
    assert [p.tolist() for p in answer.compressed.kept_positions] == [p.tolist() for p in direct.kept_positions]
    assert [s.kept_fraction for s in answer.sources] == pytest.approx(plan.restore(direct.passage_kept_fractions()))


def test_compress_plans_is_compress_of_each_plan_and_refuses_mixed_configs(
    tiny_models: Any, tiny_tokenizer: Any
) -> None:
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer, CONFIG)
    allocation = PassageAllocation(weighting=RankWeighting(tau=1.0, floor=0.0))
    plans = [allocation.plan(PASSAGES, CONFIG), allocation.plan(PASSAGES[::-1], CONFIG)]
    batched = compressor.compress_plans(plans, [QUESTION, QUESTION])
    for plan, compressed in zip(plans, batched, strict=True):
        alone = compressor.compress(plan.packed, QUESTION, config=plan.config, passage_weights=plan.passage_weights)
        assert [p.tolist() for p in compressed.kept_positions] == [p.tolist() for p in alone.kept_positions]
    other = PassageAllocation("global").plan(PASSAGES, CONFIG.replace(target_tokens=5))
    with pytest.raises(ValueError, match="different configs"):
        compressor.compress_plans([plans[0], other], [QUESTION, QUESTION])
    with pytest.raises(ValueError, match="one plan per question"):
        compressor.compress_plans(plans, [QUESTION])


def test_one_document_is_what_no_title_tells_apart() -> None:
    """Pieces of one document: one shared document name ("source", "file_path"), else no titles or one title."""
    assert one_document(["a", "b"])
    assert one_document([Passage("a"), Passage("b", "")])
    assert one_document([Passage("a", "Page"), Passage("b", "Page")])
    pieces = [Passage(text, f"Page (part {n} of 2)", {"source": "page.txt"}) for n, text in ((1, "a"), (2, "b"))]
    assert one_document(pieces)
    assert not one_document([Passage("a", "Paris"), Passage("b", "Lyon")])
    assert not one_document([Passage("a", "Paris"), Passage("b")])
    assert not one_document([Passage("a", "A", {"source": "x"}), Passage("b", "B", {"source": "y"})])
    assert not one_document([]) and not one_document(["a whole page"])
    # LlamaIndex's readers name the file, not a title: untitled nodes of two files are two documents.
    assert not one_document(
        [Passage("a", None, {"file_path": "/d/a.txt"}), Passage("b", None, {"file_path": "/d/b.md"})]
    )
    assert one_document([Passage("a", None, {"file_path": "/d/a.txt"}), Passage("b", None, {"file_path": "/d/a.txt"})])


def test_sentence_fusion_applies_by_its_scope() -> None:
    pieces, articles = ["a", "b"], [Passage("a", "Paris"), Passage("b", "Lyon")]
    default = RankWeighting()
    assert (default.sentence_fusion_temperature, default.sentence_fusion_scope) == (0.1, "one_document")
    assert default.fuses_sentences(pieces) and not default.fuses_sentences(articles)
    assert RankWeighting(sentence_fusion_scope="always").fuses_sentences(articles)
    assert not RankWeighting(sentence_fusion_temperature=None).fuses_sentences(pieces)
    assert PassageAllocation().fuses_sentences(pieces) and not PassageAllocation("global").fuses_sentences(pieces)
    with pytest.raises(ValueError, match="sentence_fusion_scope must be one of"):
        RankWeighting(sentence_fusion_scope="sometimes")  # type: ignore[arg-type]
