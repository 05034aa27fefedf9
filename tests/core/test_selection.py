"""Selection policies: FINCH's modes, the benchmark controls in the real loop, recording, a custom policy."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import PASSAGES, QUESTION
from transformers import DynamicCache

from finch_rag import FinchCompressor, FinchConfig
from finch_rag.compression.attention import CAPTURE_KWARG, QuestionAttentionCapture, capturing_attention
from finch_rag.compression.cache import cache_kwargs
from finch_rag.compression.chunking import chunk_bounds
from finch_rag.compression.loop import CompressionRequest, compress_batch
from finch_rag.compression.registry import selection_policy
from finch_rag.compression.rotation import KeyRotation
from finch_rag.compression.scoring import per_head_scores, per_layer_scores, pool_spans, shared_scores, smooth_scores
from finch_rag.compression.selection import (
    CandidateScores,
    FirstSelection,
    PerHeadSelection,
    PerLayerSelection,
    RandomSelection,
    RecencySelection,
    RecordingSelection,
    SelectionPolicy,
    SharedSelection,
    select_top,
    step_budget,
)
from finch_rag.prompts import as_passages, build_prompt

BUDGET, CHUNK = 20, 16


def _candidates(seed: int = 0, layers: int = 3, kvh: int = 2, group: int = 2, c: int = 30) -> CandidateScores:
    generator = torch.Generator().manual_seed(seed)
    positions = torch.arange(c).expand(1, kvh, c)
    return CandidateScores(
        layer_scores=[torch.rand(1, kvh, group, c, generator=generator) for _ in range(layers)],
        positions=[positions] * layers,
        context_length=c,
        budget=10,
    )


def test_per_head_and_per_layer_keep_their_top_scores():
    candidates = _candidates()
    for policy, reduce in ((PerHeadSelection(smoothing=3), per_head_scores), (PerLayerSelection(), per_layer_scores)):
        indices, scores = policy.select(candidates, 7)
        for layer, layer_scores in enumerate(candidates.layer_scores):
            expected = smooth_scores(reduce(layer_scores), policy.smoothing)
            assert torch.equal(indices[layer], select_top(expected, 7))
            torch.testing.assert_close(scores[layer], expected.gather(-1, indices[layer]))
        assert indices[0].shape == (1, 2, 7)


def test_shared_selection_pools_sentences_and_applies_priors_once():
    base = _candidates(seed=1)
    c = base.context_length
    spans = torch.arange(c).div(5, rounding_mode="floor").expand(1, 2, c)
    weights = torch.linspace(0.0, 1.0, c).expand(1, 2, c)
    candidates = CandidateScores(
        layer_scores=base.layer_scores,
        positions=base.positions,
        weights=[weights] * 3,
        spans=[spans] * 3,
        context_length=c,
        budget=10,
    )
    policy = SharedSelection(voting_layers=(1, 2), smoothing=21)
    indices, scores = policy.select(candidates, 10)
    expected = pool_spans(shared_scores(base.layer_scores, [1, 2]), spans[:, 0]) * weights[:, 0]
    chosen = select_top(expected, 10)
    for layer in range(3):
        assert torch.equal(indices[layer], chosen.unsqueeze(1).expand(-1, 2, -1))
        torch.testing.assert_close(scores[layer][:, 0], expected.gather(-1, chosen))
    # score() gives the same voted scores (before adjust) in every layer and head.
    assert all(torch.equal(layer[:, 1], policy.shared(candidates)) for layer in policy.score(candidates))


def test_selection_policy_follows_the_config():
    assert selection_policy(FinchConfig(selection="per_head", smoothing=5), 4) == PerHeadSelection(smoothing=5)
    assert selection_policy(FinchConfig(selection="per_layer"), 4) == PerLayerSelection(smoothing=21)
    shared = selection_policy(FinchConfig(), 4, ["full_attention", "full_attention", "sliding_attention", "full"])
    assert shared == SharedSelection(voting_layers=(3,), smoothing=21)
    assert isinstance(selection_policy(FinchConfig(selection="random"), 4), RandomSelection)
    assert isinstance(selection_policy(FinchConfig(selection="recency"), 4), RecencySelection)
    assert isinstance(selection_policy(FinchConfig(selection="first"), 4), FirstSelection)
    with pytest.raises(ValueError, match="recency"):
        FinchConfig(selection="last")
    assert [PerHeadSelection().needs_attention, RandomSelection().needs_attention] == [True, False]
    assert PerHeadSelection().step_keep(10, 30, 60) == step_budget(10, 30, 60) == 5
    assert RecencySelection().step_keep(10, 30, 60) == 10


def _expected_final(rule: str, n: int, budget: int) -> torch.Tensor:
    """The final set the benchmark controls fixed up front (their former implementation)."""
    if rule == "random":
        return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:budget].sort().values
    return torch.arange(n - budget, n) if rule == "recency" else torch.arange(budget)


def _reference_control_cache(model, cc, final: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """The controls' former loop: read chunk by chunk (no question), evict everything outside ``final``."""
    n = cc.original_tokens
    in_final = torch.zeros(n, dtype=torch.bool)
    in_final[final] = True
    rotation = KeyRotation.from_model(model)
    decoder = model.get_decoder()
    prefix = int(cc.prefix_ids.shape[0])
    cache, kept, peak = DynamicCache(), torch.zeros(0, dtype=torch.long), 0
    with torch.no_grad():
        decoder(input_ids=cc.prefix_ids[None], use_cache=True, **cache_kwargs(decoder, cache))
        for start, end in chunk_bounds(n, CHUNK, cc.passage_token_starts):
            decoder(input_ids=cc.context_ids[None, start:end], use_cache=True, **cache_kwargs(decoder, cache))
            peak = max(peak, cache.get_seq_length())
            candidates = torch.cat((kept, torch.arange(start, end)))
            chosen = in_final[candidates].nonzero().flatten()
            kept = candidates[chosen]
            for layer, entry in enumerate(cache.layers):
                index = chosen + prefix
                shift = torch.arange(chosen.shape[0]) - chosen
                kept_keys = rotation.rerotate(layer, entry.keys.index_select(2, index), shift)
                entry.keys = torch.cat((entry.keys[:, :, :prefix], kept_keys), dim=2)
                entry.values = torch.cat((entry.values[:, :, :prefix], entry.values.index_select(2, index)), dim=2)
    return [entry.keys for entry in cache.layers], peak


@pytest.mark.parametrize("rule", ["random", "recency", "first"])
def test_controls_in_the_loop_match_their_former_implementation(tiny_model, tiny_tokenizer, rule):
    """Same final positions, same packed keys and the same peak as the controls' own copy of the loop had.

    The packed keys are the compressed cache's (``answer_cache="compressed"``: on the tiny Gemma 3, ``"auto"`` would
    re-read them).
    """
    config = FinchConfig(
        target_tokens=BUDGET, chunk_size=CHUNK, selection=rule, progress=False, answer_cache="compressed"
    )
    compressor = FinchCompressor(tiny_model, tiny_tokenizer, config)
    before = tiny_model.config._attn_implementation
    seen: list[str] = []
    hook = (
        tiny_model.get_decoder()
        .layers[0]
        .register_forward_pre_hook(lambda module, args: seen.append(tiny_model.config._attn_implementation))
    )
    try:
        cc = compressor.compress(PASSAGES * 2, QUESTION)
    finally:
        hook.remove()
    assert set(seen) == {before}, "a control must not switch on the attention capture"
    n, prefix = cc.original_tokens, int(cc.prefix_ids.shape[0])
    assert n > 4 * BUDGET and cc.stats["num_chunks"] > 4
    final = _expected_final(rule, n, BUDGET)
    for positions in cc.kept_positions:
        assert torch.equal(positions, final.expand(positions.shape[0], -1))
    keys, peak = _reference_control_cache(tiny_model, cc, final)
    for layer, expected in enumerate(keys):
        torch.testing.assert_close(cc.cache.keys[layer], expected, atol=1e-5, rtol=1e-4)
    assert cc.stats["peak_kv_entries"] == peak <= prefix + BUDGET + CHUNK
    assert cc.kept_tokens == BUDGET
    assert compressor.generate(cc, max_new_tokens=3) == compressor.generate(cc, max_new_tokens=3)


@pytest.mark.parametrize("rule", ["random", "recency", "first"])
def test_controls_batch_equals_one_at_a_time(tiny_models, tiny_tokenizer, rule):
    config = FinchConfig(target_tokens=12, chunk_size=8, selection=rule, progress=False)
    compressor = FinchCompressor(tiny_models("qwen2"), tiny_tokenizer, config)
    contexts, questions = [PASSAGES, PASSAGES[2:], [PASSAGES[1]]], [QUESTION, "Where is the fox?", QUESTION]
    for together, context, question in zip(
        compressor.compress_batch(contexts, questions), contexts, questions, strict=True
    ):
        alone = compressor.compress(context, question)
        for got, expected in zip(together.kept_positions, alone.kept_positions, strict=True):
            assert torch.equal(got, expected)
        for got, expected in zip(together.cache.keys, alone.cache.keys, strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def _request(tokenizer, passages, question) -> CompressionRequest:
    parts = build_prompt(tokenizer, as_passages(passages), question)

    def ids(values):
        return torch.tensor([values], dtype=torch.long)

    return CompressionRequest(ids(parts.prefix_ids), ids(parts.context_ids), ids(parts.question_ids))


def test_recording_policy_exposes_the_single_pass_scores(tiny_models, tiny_tokenizer):
    """With chunk_size=None a recorder's one step holds the question's attention to every context token."""
    model = tiny_models("llama")
    config = FinchConfig(target_tokens=8, chunk_size=None, selection="per_head", progress=False)
    request = _request(tiny_tokenizer, PASSAGES, QUESTION)
    recorder = RecordingSelection(PerHeadSelection())
    with torch.inference_mode():
        (result,) = compress_batch(model, [request], config, policy=recorder)
    (step,) = recorder.steps
    n = request.context_ids.shape[1]
    assert step.context_length == n and step.budget == 8 and step.request == 0

    capture = QuestionAttentionCapture(
        question_length=request.question_ids.shape[1], first_candidate=request.prefix_ids.shape[1]
    )
    cache = DynamicCache()
    with torch.no_grad():
        model.model(input_ids=request.prefix_ids, use_cache=True, **cache_kwargs(model.model, cache))
        with capturing_attention(model):
            model.model(
                input_ids=torch.cat((request.context_ids, request.question_ids), dim=1),
                **cache_kwargs(model.model, cache),
                use_cache=True,
                **{CAPTURE_KWARG: capture},
            )
    for layer, scores in enumerate(step.layer_scores):
        assert scores.shape == (1, 2, 2, n)
        torch.testing.assert_close(scores, capture.scores[layer], atol=1e-6, rtol=1e-5)
        assert torch.equal(step.positions[layer], torch.arange(n).expand(1, 2, n))
        expected = select_top(per_head_scores(capture.scores[layer]), 8)[0]
        assert torch.equal(result.kept_positions[layer], expected)


@dataclass(frozen=True)
class _LargestTokenId(SelectionPolicy):
    """A custom policy written the kvpress way, overriding score() only: keep the largest token ids."""

    context_ids: torch.Tensor
    needs_attention = False

    def score(self, candidates: CandidateScores) -> list[torch.Tensor]:
        return [self.context_ids[positions].float() + positions / 1000 for positions in candidates.positions]


def test_a_custom_policy_runs_in_the_real_loop(tiny_models, tiny_tokenizer):
    model = tiny_models("mistral")
    config = FinchConfig(target_tokens=6, chunk_size=None, progress=False)
    request = _request(tiny_tokenizer, PASSAGES[:2], QUESTION)
    context = request.context_ids[0]
    with torch.inference_mode():
        (result,) = compress_batch(model, [request], config, policy=_LargestTokenId(context_ids=context))
    expected = select_top(context.float() + torch.arange(len(context)) / 1000, 6)
    for positions in result.kept_positions:
        assert torch.equal(positions, expected.expand(positions.shape[0], -1))
