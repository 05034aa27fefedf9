"""Property tests of the core (hypothesis) on tiny models, against the invariants of DESIGN.md section 1.

Drawn: passages, questions, budgets, chunk sizes, selections, architectures. Checked:

- the budget: exactly ``min(B, n)`` context entries kept, ``|P| + kept`` in the cache;
- the memory bound: the cache never held more than ``|P| + B + S + m`` entries per layer and KV head;
- kept positions in ``[0, n)``, strictly increasing per KV head;
- deterministic: the same input gives the same positions and keys;
- a padded batch gives what each request gives alone;
- any option value either builds a config or raises ``ValueError``/``TypeError`` naming the option.

Example counts are sized so the file runs in under a minute on 2 busy cores; ``docs/results/reliability.md``
reports them. The draws are derandomized: every run checks the same examples.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CORPUS

from finch_rag import FinchCompressor, FinchConfig

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the dev extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

WORDS = sorted(set(CORPUS.replace(".", " ").replace("?", " ").replace(",", " ").split()))
SELECTIONS = ("per_head", "per_layer", "shared", "random", "recency", "first")
ARCHS = ("llama", "qwen3", "gemma3")  # plain, q/k-normed, sliding-window layers


def examples(count: int) -> settings:
    """``count`` examples, derandomized (the same draws every run), no deadline: tiny models on a busy machine."""
    return settings(
        max_examples=count,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


sentences = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(lambda words: " ".join(words) + ".")
passages = st.lists(sentences, min_size=1, max_size=5)
questions = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(lambda words: " ".join(words) + "?")
budgets = st.integers(min_value=1, max_value=120)
chunk_sizes = st.one_of(st.none(), st.integers(min_value=1, max_value=80))


@pytest.fixture(scope="module")
def compressors(tiny_models, tiny_tokenizer):
    return {arch: FinchCompressor(tiny_models(arch), tiny_tokenizer, FinchConfig(progress=False)) for arch in ARCHS}


def check_invariants(cc, budget: int, chunk_size: int | None) -> None:
    n = cc.original_tokens
    stats = cc.stats
    prefix, m = stats["prefix_tokens"], stats["question_tokens"]
    kept = min(budget, n)
    assert cc.kept_tokens == kept
    assert cc.cache_length == prefix + kept
    step = n if chunk_size is None else chunk_size
    assert stats["peak_kv_entries"] <= prefix + budget + step + m
    for layer, positions in enumerate(cc.kept_positions):
        assert positions.shape[-1] == kept, layer
        assert cc.cache.keys[layer].shape[2] == prefix + kept
        if kept:
            assert int(positions.min()) >= 0 and int(positions.max()) < n
            assert bool((positions[:, 1:] > positions[:, :-1]).all()), f"layer {layer} not strictly increasing"


@examples(120)
@given(
    arch=st.sampled_from(ARCHS),
    context=passages,
    question=questions,
    budget=budgets,
    chunk_size=chunk_sizes,
    selection=st.sampled_from(SELECTIONS),
    normalize=st.booleans(),
)
def test_budget_bound_positions_and_determinism(
    compressors, arch, context, question, budget, chunk_size, selection, normalize
):
    compressor = compressors[arch]
    config = FinchConfig(
        target_tokens=budget, chunk_size=chunk_size, selection=selection, normalize_scores=normalize, progress=False
    )
    cc = compressor.compress(context, question, config=config)
    check_invariants(cc, budget, chunk_size)
    again = compressor.compress(context, question, config=config)
    for first, second in zip(cc.kept_positions, again.kept_positions, strict=True):
        assert torch.equal(first, second)
    for first, second in zip(cc.cache.keys, again.cache.keys, strict=True):
        assert torch.equal(first, second)


@examples(40)
@given(
    arch=st.sampled_from(ARCHS),
    requests=st.lists(st.tuples(passages, questions), min_size=2, max_size=4),
    budget=budgets,
    chunk_size=chunk_sizes,
    selection=st.sampled_from(("per_head", "shared", "recency")),
)
def test_a_batch_equals_its_requests_alone(compressors, arch, requests, budget, chunk_size, selection):
    compressor = compressors[arch]
    config = FinchConfig(target_tokens=budget, chunk_size=chunk_size, selection=selection, progress=False)
    contexts = [context for context, _ in requests]
    asked = [question for _, question in requests]
    batched = compressor.compress_batch(contexts, asked, config=config, batch_size=len(requests))
    for context, question, together in zip(contexts, asked, batched, strict=True):
        alone = compressor.compress(context, question, config=config)
        check_invariants(together, budget, chunk_size)
        assert together.original_tokens == alone.original_tokens
        for got, expected in zip(together.kept_positions, alone.kept_positions, strict=True):
            assert torch.equal(got, expected)
        for got, expected in zip(together.cache.keys, alone.cache.keys, strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
)


@examples(400)
@given(
    option=st.sampled_from(
        (
            "target_tokens",
            "compression_ratio",
            "min_target_tokens",
            "chunk_size",
            "selection",
            "smoothing",
            "normalize_scores",
        )
    ),
    value=anything,
)
def test_any_option_value_builds_a_config_or_raises_a_clear_error(option, value):
    try:
        config = FinchConfig(**{option: value}, progress=False)
    except (ValueError, TypeError) as error:
        assert option in str(error) or option.replace("_", " ") in str(error), str(error)
        return
    if option == "target_tokens" and value is not None and value != "auto":
        assert isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if option == "compression_ratio" and value is not None:
        assert isinstance(value, float | int) and math.isfinite(value) and 0 <= value < 1
    if option in ("chunk_size", "min_target_tokens") and value is not None:
        assert isinstance(value, int) and not isinstance(value, bool) and value >= 1
    assert config.progress is False


@examples(150)
@given(
    context=st.one_of(passages, st.just([]), st.just(""), st.lists(st.just(""), min_size=1, max_size=3), anything),
    question=st.one_of(questions, st.just(""), st.just("   "), anything),
    budget=budgets,
)
def test_any_input_compresses_or_raises_a_clear_error(compressors, context, question, budget):
    compressor = compressors["llama"]
    config = FinchConfig(target_tokens=budget, chunk_size=16, progress=False)
    try:
        cc = compressor.compress(context, question, config=config)
    except (ValueError, TypeError) as error:
        assert str(error), "an error without a message"
        return
    check_invariants(cc, budget, 16)
