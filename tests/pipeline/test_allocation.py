"""`PassageAllocation`: the one allocation entry point of `FinchRAG` and the integrations."""

from __future__ import annotations

import math
from typing import Any, get_args

import pytest
from conftest import PASSAGES, QUESTION

from finch_rag import FinchCompressor, FinchConfig, FinchRAG, PassageAllocation, RankWeighting
from finch_rag.allocation import ALLOCATIONS, Allocation, rank_weights

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
    weighting = RankWeighting(tau=1.0, floor=0.0)
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
