"""target_tokens="auto": the fewest entries that hold a share of the question's attention, within a cap."""

from __future__ import annotations

import pytest
import torch
from conftest import PASSAGES, QUESTION

from finch_rag import FinchCompressor, FinchConfig
from finch_rag.compression.auto_budget import AttentionMassSelection, is_last_step, mass_count
from finch_rag.compression.registry import selection_policy
from finch_rag.compression.selection import (
    CandidateScores,
    PerHeadSelection,
    RecencySelection,
    SharedSelection,
)


def _candidates(scores: list[float], context_length: int | None = None, first: int = 0) -> CandidateScores:
    """One layer, one KV head, one query head, with these question-attention scores at positions first.."""
    c = len(scores)
    return CandidateScores(
        layer_scores=[torch.tensor(scores).reshape(1, 1, 1, c)],
        positions=[torch.arange(first, first + c).reshape(1, 1, c)],
        context_length=context_length or first + c,
        budget=c,
    )


# ------------------------------------------------------------------------------------------------ config
def test_config_accepts_auto_and_validates_its_options():
    config = FinchConfig(target_tokens="auto")
    assert (config.attention_mass, config.max_target_tokens) == (0.9, 1024)
    assert config.budget(5000) == 1024 and config.budget(300) == 299 and config.budget(1) == 1
    assert FinchConfig(target_tokens="auto", max_target_tokens=64).budget(100) == 64
    assert config.replace(target_tokens=32).target_tokens == 32
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match="attention_mass"):
            FinchConfig(target_tokens="auto", attention_mass=bad)
    with pytest.raises(ValueError, match="max_target_tokens"):
        FinchConfig(target_tokens="auto", max_target_tokens=0)
    with pytest.raises(TypeError, match='"auto"'):
        FinchConfig(target_tokens="all")
    with pytest.raises(ValueError, match="not both"):
        FinchConfig(target_tokens="auto", compression_ratio=0.5)


def test_selection_policy_wraps_only_auto_budgets():
    assert isinstance(selection_policy(FinchConfig(target_tokens=8), 4), SharedSelection)
    wrapped = selection_policy(FinchConfig(target_tokens="auto", attention_mass=0.7, selection="per_head"), 4)
    assert isinstance(wrapped, AttentionMassSelection) and isinstance(wrapped.inner, PerHeadSelection)
    assert wrapped.mass == 0.7 and wrapped.needs_attention
    with pytest.raises(ValueError, match="does not use attention"):
        AttentionMassSelection(RecencySelection())


@pytest.mark.parametrize("selection", ["recency", "random", "first"])
def test_auto_budget_with_a_control_selection_fails_when_the_config_is_built(selection):
    """Not at the first compress: a server configured this way must fail at startup, not on every request."""
    with pytest.raises(ValueError, match="uses none; use a fixed target_tokens"):
        FinchConfig(target_tokens="auto", selection=selection)
    FinchConfig(target_tokens=8, selection=selection)


# ------------------------------------------------------------------------------------------------ counting
def test_mass_count_is_the_fewest_top_entries_reaching_the_share():
    scores = torch.tensor([0.05, 0.5, 0.1, 0.3, 0.05])
    assert [mass_count(scores, mass) for mass in (0.3, 0.5, 0.8, 0.81, 0.9, 0.95, 1.0)] == [1, 1, 2, 3, 3, 4, 5]
    # Several rows (layers, heads): the largest count, so that every row holds the share.
    rows = torch.tensor([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3]])
    assert mass_count(rows, 0.9) == 3 and mass_count(rows[:1], 0.9) == 1
    assert mass_count(torch.zeros(4), 0.9) == 4  # no signal: everything (the cap then applies)


def test_only_the_last_step_shrinks_the_budget():
    policy = AttentionMassSelection(PerHeadSelection(), mass=0.8)
    scores = [0.05, 0.5, 0.1, 0.3, 0.05]
    earlier = _candidates(scores, context_length=20)
    assert not is_last_step(earlier)
    indices, _ = policy.select(earlier, 4)
    assert indices[0].shape[-1] == 4  # an earlier step keeps its B_t, as FINCH does
    last = _candidates(scores, first=15)
    assert is_last_step(last)
    indices, kept = policy.select(last, 4)
    assert indices[0].flatten().tolist() == [1, 3]  # 0.5 + 0.3 hold 0.8 of the mass
    assert kept[0].flatten().tolist() == pytest.approx([0.5, 0.3])
    indices, _ = AttentionMassSelection(PerHeadSelection(), mass=1.0).select(last, 4)
    assert indices[0].shape[-1] == 4  # never above the cap


def test_sentence_pooling_counts_whole_sentences():
    # Two sentences: tokens 0-2 (mean 0.1) and 3-5 (mean 0.233). Pooled, the second holds 0.7 of the mass.
    candidates = _candidates([0.1, 0.1, 0.1, 0.4, 0.2, 0.1])
    spans = [torch.tensor([0, 0, 0, 1, 1, 1]).reshape(1, 1, 6)]
    candidates = CandidateScores(**{**candidates.__dict__, "spans": spans})
    indices, _ = AttentionMassSelection(PerHeadSelection(), mass=0.7).select(candidates, 6)
    assert indices[0].flatten().tolist() == [3, 4, 5]


# ------------------------------------------------------------------------------------------------ the loop
@pytest.mark.parametrize("chunk_size", [None, 16])
def test_auto_budget_compresses_within_the_cap_and_grows_with_the_mass(tiny_model, tiny_tokenizer, chunk_size):
    compressor = FinchCompressor(tiny_model, tiny_tokenizer, FinchConfig(progress=False))
    kept = []
    for mass in (0.3, 0.6, 0.9, 1.0):
        config = FinchConfig(
            target_tokens="auto", attention_mass=mass, max_target_tokens=120, chunk_size=chunk_size, progress=False
        )
        compressed = compressor.compress(PASSAGES, QUESTION, config=config)
        assert 1 <= compressed.kept_tokens <= 120 < compressed.original_tokens
        assert all(positions.shape[-1] == compressed.kept_tokens for positions in compressed.cache.kept_positions)
        assert compressed.cache.keys[0].shape[2] == compressed.cache.prefix_length + compressed.kept_tokens
        kept.append(compressed.kept_tokens)
    assert kept == sorted(kept) and kept[0] < kept[-1] == 120
    assert isinstance(compressor.generate(compressed, max_new_tokens=3), str)


def test_auto_budget_equals_the_fixed_budget_it_picks_in_one_pass(tiny_models, tiny_tokenizer):
    """With one pass the automatic B keeps exactly what a fixed budget of that size keeps."""
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer, FinchConfig(progress=False))
    auto = FinchConfig(target_tokens="auto", attention_mass=0.6, chunk_size=None, progress=False)
    compressed = compressor.compress(PASSAGES, QUESTION, config=auto)
    fixed = compressor.compress(PASSAGES, QUESTION, config=auto.replace(target_tokens=compressed.kept_tokens))
    assert torch.equal(compressed.cache.kept_positions[0], fixed.cache.kept_positions[0])


@pytest.mark.slow
def test_auto_budget_on_the_embedded_model(real_model):
    model, tokenizer = real_model
    compressor = FinchCompressor(model, tokenizer, FinchConfig(progress=False))
    config = FinchConfig(target_tokens="auto", max_target_tokens=96, chunk_size=32, progress=False)
    low = compressor.compress(PASSAGES * 4, QUESTION, config=config.replace(attention_mass=0.5))
    high = compressor.compress(PASSAGES * 4, QUESTION, config=config)
    assert 1 <= low.kept_tokens < high.kept_tokens <= 96 < high.original_tokens
    assert "4817" in high.kept_text(threshold=1.0)
    assert compressor.generate(high, max_new_tokens=8).strip()
