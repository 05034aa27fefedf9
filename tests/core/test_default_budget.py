"""The default budget: ratio 0.75 with a floor (``min_target_tokens``), so short contexts are not squeezed.

An explicit ``compression_ratio`` keeps kvpress's exact ``floor(n (1 - r))`` (FinchPress parity depends on it)
unless a floor is given too; fixed and automatic ``target_tokens`` take no floor.
"""

from __future__ import annotations

import math

import pytest
from conftest import PASSAGES, QUESTION

from finch_rag import FinchCompressor, FinchConfig, FinchRAG
from finch_rag.config import DEFAULT_COMPRESSION_RATIO, DEFAULT_MIN_TARGET_TOKENS, budget_params, merged_config

FLOOR = DEFAULT_MIN_TARGET_TOKENS


def test_the_default_is_ratio_three_quarters_with_a_floor() -> None:
    config = FinchConfig()
    assert (config.target_tokens, config.compression_ratio, config.min_target_tokens) == (None, 0.75, 128)
    assert (DEFAULT_COMPRESSION_RATIO, FLOOR) == (0.75, 128)
    assert FinchConfig(min_target_tokens=32).compression_ratio == 0.75  # a floor alone keeps the default ratio


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, 1),
        (56, 56),  # the three short passages: kept whole, not 14
        (127, 127),
        (128, 128),
        (129, 128),
        (300, 128),
        (512, 128),  # floor(512 / 4) = 128: where the ratio takes over
        (515, 128),
        (516, 129),
        (1000, 250),
        (4096, 1024),
    ],
)
def test_default_budget_at_the_boundaries(n: int, expected: int) -> None:
    assert FinchConfig().budget(n) == expected == max(math.floor(n * 0.25), min(n, FLOOR))


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.875, 0.9, 0.9375])
@pytest.mark.parametrize("n", [1, 7, 56, 100, 129, 512, 1000, 4096])
def test_an_explicit_ratio_is_kvpress_exact_rule(ratio: float, n: int) -> None:
    config = FinchConfig(compression_ratio=ratio)
    assert config.min_target_tokens is None
    assert config.budget(n) == max(1, math.floor(round(n * (1 - ratio), 6)))


def test_an_explicit_ratio_with_a_floor() -> None:
    config = FinchConfig(compression_ratio=0.9, min_target_tokens=64)
    assert [config.budget(n) for n in (10, 64, 100, 640, 1000)] == [10, 64, 64, 64, 100]


def test_target_tokens_fixed_and_auto_are_unaffected() -> None:
    assert FinchConfig(target_tokens=16).min_target_tokens is None
    assert [FinchConfig(target_tokens=16).budget(n) for n in (10, 56, 1000)] == [10, 16, 16]
    auto = FinchConfig(target_tokens="auto")
    assert auto.min_target_tokens is None and [auto.budget(n) for n in (56, 5000)] == [55, 1024]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_target_tokens": 0}, r"min_target_tokens .* must be an int >= 1, got 0"),
        ({"min_target_tokens": -5}, r"min_target_tokens .* must be an int >= 1"),
        ({"min_target_tokens": 2.5}, r"min_target_tokens .* must be an int >= 1"),
        ({"min_target_tokens": True}, r"min_target_tokens .* must be an int >= 1"),
        ({"min_target_tokens": "64"}, r"min_target_tokens .* must be an int >= 1"),
        ({"target_tokens": 32, "min_target_tokens": 64}, r"target_tokens=32; leave min_target_tokens out"),
        ({"target_tokens": "auto", "min_target_tokens": 64}, r"target_tokens='auto'; leave min_target_tokens out"),
    ],
)
def test_a_bad_floor_is_a_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FinchConfig(**kwargs)


def test_replace_does_not_carry_the_default_floor_into_an_explicit_budget() -> None:
    default = FinchConfig()
    assert default.replace(compression_ratio=0.75) == FinchConfig(compression_ratio=0.75)
    assert default.replace(compression_ratio=0.75).budget(56) == 14
    assert default.replace(target_tokens=32) == FinchConfig(target_tokens=32)
    assert default.replace(target_tokens="auto").min_target_tokens is None
    assert default.replace(compression_ratio=0.5, min_target_tokens=32).budget(56) == 32
    # Options other than the budget keep the floor; the floor alone keeps the ratio.
    assert default.replace(chunk_size=64).min_target_tokens == FLOOR
    assert default.replace(min_target_tokens=32) == FinchConfig(min_target_tokens=32)
    # Clearing a fixed budget gives the default again, floor included.
    assert FinchConfig(target_tokens=32).replace(target_tokens=None) == default
    with pytest.raises(ValueError, match="leave min_target_tokens out"):
        FinchConfig(target_tokens=32).replace(min_target_tokens=64)


def test_merged_config_applies_the_same_rule() -> None:
    """What every front end does with a user's explicit options over the compressor's config."""
    default = FinchConfig()
    assert merged_config(default, {"compression_ratio": 0.5}).min_target_tokens is None
    assert merged_config(default, {"target_tokens": 32}).min_target_tokens is None
    assert merged_config(default, {"min_target_tokens": None}) == default  # None means "not set"
    floored = merged_config(default, {"min_target_tokens": 32})
    assert (floored.compression_ratio, floored.min_target_tokens) == (0.75, 32)
    ratio = merged_config(FinchConfig(target_tokens=8), {"compression_ratio": 0.5, "min_target_tokens": 16})
    assert (ratio.target_tokens, ratio.compression_ratio, ratio.min_target_tokens) == (None, 0.5, 16)
    with pytest.raises(ValueError, match="leave min_target_tokens out"):
        merged_config(FinchConfig(target_tokens=8), {"min_target_tokens": 16})


def test_budget_params_name_the_floor() -> None:
    assert budget_params(FinchConfig())["min_target_tokens"] == FLOOR
    assert "min_target_tokens" not in budget_params(FinchConfig(compression_ratio=0.75))


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_the_compressor_keeps_a_short_context_whole_by_default(tiny_models, tiny_tokenizer, chunk_size) -> None:
    """On a tiny model: the default keeps every entry of a short context; an explicit ratio keeps a quarter."""
    default = FinchConfig(chunk_size=chunk_size, progress=False)
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer, default)
    whole = compressor.compress(PASSAGES[:2], QUESTION)
    assert whole.original_tokens < FLOOR and whole.kept_tokens == whole.original_tokens
    ratio = compressor.compress(PASSAGES[:2], QUESTION, config=default.replace(compression_ratio=0.75))
    assert ratio.kept_tokens == whole.original_tokens // 4
    assert all(positions.shape[-1] == ratio.kept_tokens for positions in ratio.kept_positions)


def test_finch_rag_keeps_a_short_context_whole_by_default(tiny_models, tiny_tokenizer) -> None:
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer, FinchConfig(progress=False))
    rag = FinchRAG(compressor=compressor, max_new_tokens=1)
    assert rag.config.min_target_tokens == FLOOR
    stats = rag.answer_from(QUESTION, PASSAGES[:2]).stats
    assert stats["tokens_before"] < FLOOR and stats["tokens_after"] == stats["tokens_before"]
    explicit = FinchRAG(compressor=compressor, config=FinchConfig(compression_ratio=0.75), max_new_tokens=1)
    assert explicit.answer_from(QUESTION, PASSAGES[:2]).stats["tokens_after"] == stats["tokens_before"] // 4


def test_the_floor_holds_between_floor_and_a_quarter_and_memory_stays_bounded(tiny_models, tiny_tokenizer) -> None:
    """A context of FLOOR < n < 4 FLOOR keeps exactly FLOOR; the chunk loop's peak stays within |P| + B + S + m."""
    passages = PASSAGES * 2
    config = FinchConfig(chunk_size=32, progress=False)
    cc = FinchCompressor(tiny_models("llama"), tiny_tokenizer, config).compress(passages, QUESTION)
    n = cc.original_tokens
    assert FLOOR < n < 4 * FLOOR, n  # the inputs must sit in the floor's range for this test to mean anything
    assert cc.kept_tokens == FLOOR and cc.kept_tokens > math.floor(n * 0.25)
    prefix, question = int(cc.prefix_ids.shape[0]), int(cc.question_ids.shape[0])
    assert cc.stats["peak_kv_entries"] <= prefix + FLOOR + 32 + question
    assert cc.cache_length == prefix + FLOOR
