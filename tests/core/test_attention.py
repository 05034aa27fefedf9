"""Question-row attention is exact: it matches the attention maps of an eager copy of the model.

The eager twin with ``output_attentions=True`` is a test-only reference; the core never uses either.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import PASSAGES, QUESTION, build_tiny_model, eager_twin
from transformers import DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from finch_rag import FinchCompressor, FinchConfig
from finch_rag.compression.attention import (
    CAPTURE_KWARG,
    CAUSAL_BLOCK_ROWS,
    QuestionAttentionCapture,
    blocked_attention,
    capturing_attention,
    fill_cache,
    grouped_sdpa_attention,
    question_row_scores,
    stopping_layer,
)
from finch_rag.compression.cache import all_layer_tensors, cache_kwargs

PREFIX = torch.tensor([[1, 6, 7, 8, 9]])
CONTEXT = torch.tensor([[(7 * i + 3) % 110 + 8 for i in range(40)]])  # longer than Gemma 3's window of 16
QUESTION_IDS = torch.tensor([[11, 12, 13, 14, 15, 16]])


def reference_scores(eager_model, input_ids: torch.Tensor, prefix: int, n: int, m: int, normalize: bool):
    """Per layer ``[num_heads, n]``: mean over the question rows of the eager attention to each context column."""
    with torch.no_grad():
        attentions = eager_model(input_ids=input_ids, output_attentions=True, use_cache=False).attentions
    total = input_ids.shape[1]
    assert total == prefix + n + m
    out = []
    for weights in attentions:
        rows = weights[0, :, total - m :, :].double()  # [heads, m, total]
        if normalize:
            rows = rows * torch.arange(total - m, total, dtype=torch.float64)[None, :, None]
        out.append(rows.mean(dim=1)[:, prefix : prefix + n])
    return out


def captured_scores(model, prefix_ids, context_ids, question_ids, normalize: bool, prefill_prefix: bool):
    m = question_ids.shape[1]
    capture = QuestionAttentionCapture(
        question_length=m, first_candidate=prefix_ids.shape[1], normalize_scores=normalize
    )
    cache = DynamicCache()
    decoder = model.get_decoder()
    with torch.no_grad():
        if prefill_prefix:  # as the chunk loop does: prefix in the cache, then [chunk ; question] on top
            decoder(input_ids=prefix_ids, use_cache=True, **cache_kwargs(decoder, cache))
            step = torch.cat((context_ids, question_ids), dim=1)
        else:
            step = torch.cat((prefix_ids, context_ids, question_ids), dim=1)
        with capturing_attention(model):
            decoder(input_ids=step, use_cache=True, **cache_kwargs(decoder, cache), **{CAPTURE_KWARG: capture})
    scores = []
    for layer in range(model.config.num_hidden_layers):
        layer_scores = capture.scores[layer]  # [1, kvh, group, n]
        assert layer_scores.dtype == torch.float32
        scores.append(layer_scores.reshape(-1, layer_scores.shape[-1]).double())  # head h = kv * group + g
    return scores


@pytest.mark.parametrize("prefill_prefix", [False, True], ids=["one-pass", "prefix-cached"])
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "norm"])
def test_question_rows_match_eager(tiny_model, normalize, prefill_prefix):
    eager = eager_twin(tiny_model)
    n, m, prefix = CONTEXT.shape[1], QUESTION_IDS.shape[1], PREFIX.shape[1]
    full = torch.cat((PREFIX, CONTEXT, QUESTION_IDS), dim=1)
    expected = reference_scores(eager, full, prefix, n, m, normalize)
    got = captured_scores(tiny_model, PREFIX, CONTEXT, QUESTION_IDS, normalize, prefill_prefix)
    scale = (prefix + n + m) if normalize else 1.0
    for layer, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.shape == b.shape == (tiny_model.config.num_attention_heads, n)
        torch.testing.assert_close(
            a / scale, b / scale, atol=1e-5, rtol=1e-4, msg=lambda s, layer=layer: f"layer {layer}: {s}"
        )
    if tiny_model.config.model_type == "gemma3_text":
        # The sliding layer (window 16) gives the question rows nothing of the early context.
        assert float(got[0][:, : n - 16].abs().max()) == 0.0
        assert float(got[1][:, : n - 16].abs().max()) > 0.0


@pytest.mark.parametrize(
    ("arch", "overrides"),
    [
        ("mistral", {"sliding_window": 16}),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}),
        ("qwen3", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}),
    ],
)
def test_question_rows_match_eager_sliding_variants(arch, overrides):
    """Sliding windows on every layer (Mistral) or on upper layers only (Qwen2/3 ``max_window_layers``)."""
    got = _matches_eager_after_the_prefix(build_tiny_model(arch, **overrides), CONTEXT)
    windowed = [float(a[:, : CONTEXT.shape[1] - 16].abs().max()) == 0.0 for a in got]
    assert windowed == ([True, True] if arch == "mistral" else [False, True])


def test_a_long_step_after_a_cache_matches_eager(tiny_model):
    """A step longer than two blocks of rows runs its attention in blocks (`blocked_attention`).

    Every later layer's question rows still see what eager attention gives.
    """
    _matches_eager_after_the_prefix(tiny_model, torch.tensor([[(13 * i + 5) % 110 + 8 for i in range(300)]]))
    assert 300 + QUESTION_IDS.shape[1] > 2 * CAUSAL_BLOCK_ROWS  # the step runs in blocks


def _matches_eager_after_the_prefix(model, context: torch.Tensor) -> list[torch.Tensor]:
    """Captured scores of ``[context ; question]`` read after the cached prefix, checked against eager attention."""
    n, m, prefix = context.shape[1], QUESTION_IDS.shape[1], PREFIX.shape[1]
    full = torch.cat((PREFIX, context, QUESTION_IDS), dim=1)
    expected = reference_scores(eager_twin(model), full, prefix, n, m, normalize=True)
    got = captured_scores(model, PREFIX, context, QUESTION_IDS, normalize=True, prefill_prefix=True)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a / full.shape[1], b / full.shape[1], atol=1e-5, rtol=1e-4)
    return got


@pytest.mark.parametrize("selection", ["per_head", "per_layer", "shared"])
def test_single_pass_keeps_top_of_reference(tiny_model, tiny_tokenizer, selection):
    """End to end: a single pass keeps the top-B context columns of the eager reference scores."""
    budget = 12
    config = FinchConfig(
        target_tokens=budget,
        chunk_size=None,
        selection=selection,
        normalize_scores=True,
        smoothing=1,
        score_layers="all",
        progress=False,
    )
    cc = FinchCompressor(tiny_model, tiny_tokenizer, config).compress(PASSAGES, QUESTION)
    prefix, n, m = int(cc.prefix_ids.shape[0]), cc.original_tokens, int(cc.question_ids.shape[0])
    full = torch.cat((cc.prefix_ids, cc.context_ids, cc.question_ids))[None]
    reference = reference_scores(eager_twin(tiny_model), full, prefix, n, m, normalize=True)
    kvh = tiny_model.config.num_key_value_heads
    group = tiny_model.config.num_attention_heads // kvh

    def top(scores: torch.Tensor) -> torch.Tensor:
        return scores.topk(budget, dim=-1).indices.sort(dim=-1).values

    if selection == "shared":
        # Sliding-window layers do not vote (their question rows cannot see the whole context).
        layer_types = getattr(tiny_model.config, "layer_types", None) or ["full_attention"] * len(reference)
        voting = [layer for layer, kind in zip(reference, layer_types, strict=True) if kind != "sliding_attention"]
        votes = [layer.mean(dim=0) / layer.mean(dim=0).sum() for layer in voting]
        expected = top(torch.stack(votes).mean(dim=0))
        for positions in cc.kept_positions:
            assert torch.equal(positions, expected.expand(kvh, -1))
        return
    for layer, scores in enumerate(reference):
        if selection == "per_head":
            expected = top(scores.view(kvh, group, n).mean(dim=1))
        else:
            expected = top(scores.mean(dim=0)).expand(kvh, -1)
        assert torch.equal(cc.kept_positions[layer], expected), f"layer {layer}"


def _manual(query, key, scaling, m, first, softcap=None, window=None, normalize=False):
    """Dense reference over every row, then the last ``m``; query heads expand over KV heads."""
    group = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(group, dim=1)
    logits = (query.double() @ k.double().transpose(-1, -2)) * scaling
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    q_len, k_len = query.shape[2], key.shape[2]
    rows = torch.arange(k_len - q_len, k_len)[:, None]
    cols = torch.arange(k_len)[None, :]
    visible = cols <= rows
    if window is not None:
        visible &= cols > rows - window
    weights = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)[:, :, -m:]
    if normalize:
        weights = weights * torch.arange(k_len - m, k_len, dtype=torch.float64)[:, None]
    return weights.mean(dim=2)[..., first : k_len - m]


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("window", [None, 7])
def test_question_row_scores_direct(mask_kind, softcap, window):
    """The function alone, on random tensors: masks given as None, bool or additive float; soft-capping."""
    torch.manual_seed(0)
    batch, heads, kvh, q_len, past, dim, m, first = 1, 4, 2, 9, 11, 8, 4, 3
    k_len = past + q_len
    query = torch.randn(batch, heads, q_len, dim) * 2
    key = torch.randn(batch, kvh, k_len, dim) * 2
    rows = torch.arange(past, k_len)[:, None]
    cols = torch.arange(k_len)[None, :]
    visible = cols <= rows
    if window is not None:
        visible &= cols > rows - window
    mask = None
    if mask_kind == "bool":
        mask = visible[None, None]
    elif mask_kind == "additive":
        mask = torch.zeros(1, 1, q_len, k_len).masked_fill(~visible, torch.finfo(torch.float32).min)
    capture = QuestionAttentionCapture(question_length=m, first_candidate=first, normalize_scores=True)
    got = question_row_scores(None, query, key, mask, 0.35, capture, sliding_window=window, softcap=softcap)
    expected = _manual(query, key, 0.35, m, first, softcap=softcap, window=window, normalize=True)
    assert got.shape == (batch, kvh, heads // kvh, k_len - m - first)
    torch.testing.assert_close(got.double().reshape(batch, heads, -1), expected, atol=1e-5, rtol=1e-5)


def _step_inputs(cached: int, q_len: int, window: int | None = None):
    """A step of ``q_len`` rows after ``cached`` entries and its boolean 4-D mask (causal, banded with a window)."""
    generator = torch.Generator().manual_seed((window or 0) + cached + q_len)
    k_len = cached + q_len
    query = torch.randn(2, 4, q_len, 8, generator=generator)
    key, value = torch.randn(2, 2, k_len, 8, generator=generator), torch.randn(2, 2, k_len, 8, generator=generator)
    rows, columns = torch.arange(cached, k_len)[:, None], torch.arange(k_len)[None, :]
    visible = columns <= rows
    if window is not None:
        visible &= columns > rows - window
    mask = visible[None, None].repeat(2, 1, 1, 1)
    mask[1, ..., :3] = False  # the second row of the batch is left-padded
    return query, key, value, mask


def _in_blocks(query, key, value, mask, block_rows: int, window: int | None = None):
    """`blocked_attention`'s output, SDPA's over the whole step, and the (rows, keys) of each inner call."""
    calls = []

    def counting(*args, **kwargs):
        calls.append((args[1].shape[2], args[2].shape[2]))
        return sdpa_attention_forward(*args, **kwargs)

    module = SimpleNamespace(num_key_value_groups=2, is_causal=True)
    expected = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)[0]
    got = blocked_attention(counting, module, query, key, value, mask, block_rows, window=window, scaling=0.3)[0]
    return got, expected, calls


@pytest.mark.parametrize(("cached", "q_len"), [(5, 70), (0, 33), (40, 100)])
def test_blocked_attention_is_the_layer_s_own(cached, q_len):
    # Gemma 3's sliding layers read a long pass block by block: the same output as SDPA over the whole mask.
    got, expected, _ = _in_blocks(*_step_inputs(cached, q_len, window=16), 16, window=16)
    torch.testing.assert_close(got, expected)


def test_blocked_attention_runs_whole_when_the_mask_reaches_past_the_window():
    query, key, value, mask = _step_inputs(5, 70, window=16)
    mask[0, 0, -1, 0] = True  # the last row also sees the first key, out of any band
    got, expected, calls = _in_blocks(query, key, value, mask, 16, window=16)
    assert calls == [(70, 75)]  # one call, over every row
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(("cached", "q_len", "block_rows"), [(40, 100, 16), (3, 64, 16), (0, 50, 7)])
def test_causal_blocks_are_the_layer_s_own(cached, q_len, block_rows):
    # A step after a cache gets a 4-D mask; its rows run in blocks over only the keys up to their own.
    got, expected, calls = _in_blocks(*_step_inputs(cached, q_len), block_rows)
    torch.testing.assert_close(got, expected)
    starts = range(0, q_len, block_rows)
    assert calls == [(min(block_rows, q_len - start), cached + min(start + block_rows, q_len)) for start in starts]


def test_causal_blocks_run_whole_when_a_row_sees_a_later_key():
    query, key, value, mask = _step_inputs(10, 64)
    mask[0, 0, 0, -1] = True  # the first row also sees the last key: not causal
    got, expected, calls = _in_blocks(query, key, value, mask, 16)
    assert calls == [(64, 74)]
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(("cached", "q_len", "window"), [(40, 100, None), (0, 50, None), (5, 70, 16)])
def test_grouped_sdpa_is_transformers_sdpa(cached, q_len, window):
    """With a mask, SDPA on the KV heads as they are gives what transformers' SDPA gives on repeated heads."""
    query, key, value, mask = _step_inputs(cached, q_len, window=window)
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True)
    expected = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)[0]
    torch.testing.assert_close(grouped_sdpa_attention(module, query, key, value, mask, scaling=0.3)[0], expected)
    blocks = blocked_attention(grouped_sdpa_attention, module, query, key, value, mask, 16, window=window, scaling=0.3)
    torch.testing.assert_close(blocks[0], expected)


def test_a_masked_step_on_a_cpu_repeats_no_kv_heads(tiny_model, monkeypatch):
    """The capturing twin of SDPA runs a step after a cache (a 4-D mask) without transformers' ``repeat_kv``."""
    import transformers.integrations.sdpa_attention as sdpa_module

    repeated: list[int] = []
    original = sdpa_module.repeat_kv

    def counting(states: torch.Tensor, n_rep: int) -> torch.Tensor:
        repeated.append(n_rep)
        return original(states, n_rep)

    monkeypatch.setattr(sdpa_module, "repeat_kv", counting)
    context = torch.tensor([[(13 * i + 5) % 110 + 8 for i in range(300)]])
    _matches_eager_after_the_prefix(tiny_model, context)  # the question rows still see what eager attention gives
    assert tiny_model.config.num_key_value_heads < tiny_model.config.num_attention_heads
    assert repeated == []


def _step_after_prefix(model, last_layer):
    """Cache and captured scores of one [context ; question] step after the prefix, and the final norm's calls."""
    decoder = model.get_decoder()
    norm_calls = []
    hook = decoder.norm.register_forward_hook(lambda *_: norm_calls.append(1))
    capture = QuestionAttentionCapture(question_length=QUESTION_IDS.shape[1], first_candidate=PREFIX.shape[1])
    cache = DynamicCache()
    step = torch.cat((CONTEXT, QUESTION_IDS), dim=1)
    try:
        with torch.no_grad(), capturing_attention(model):
            fill_cache(decoder, last_layer, input_ids=PREFIX, use_cache=True, **cache_kwargs(decoder, cache))
            kwargs = cache_kwargs(decoder, cache) | {CAPTURE_KWARG: capture}
            fill_cache(decoder, last_layer, input_ids=step, use_cache=True, **kwargs)
    finally:
        hook.remove()
    return all_layer_tensors(cache), capture.scores, len(norm_calls)


def test_a_pass_that_fills_the_cache_stops_after_the_last_layer_s_update(tiny_model):
    last_layer = stopping_layer(tiny_model.get_decoder(), tiny_model.config.num_hidden_layers)
    (keys, values), scores, norm_calls = _step_after_prefix(tiny_model, last_layer)
    (whole_keys, whole_values), whole_scores, whole_norm_calls = _step_after_prefix(tiny_model, None)
    assert (norm_calls, whole_norm_calls) == (0, 2)  # the stopped passes never reach the final norm
    for got, expected in zip(keys + values, whole_keys + whole_values, strict=True):
        assert torch.equal(got, expected)
    assert scores.keys() == whole_scores.keys() == set(range(tiny_model.config.num_hidden_layers))
    for layer, layer_scores in scores.items():
        assert torch.equal(layer_scores, whole_scores[layer])


def test_a_model_with_accelerate_hooks_runs_whole(tiny_models):
    # An offloading hook moves weights back in its post-forward, so no pass may end inside a hooked module.
    hooks = pytest.importorskip("accelerate.hooks")
    model = tiny_models("llama")
    layer = model.get_decoder().layers[0]
    hooks.add_hook_to_module(layer, hooks.ModelHook())
    try:
        last_layer = stopping_layer(model.get_decoder(), model.config.num_hidden_layers)
        (keys, _), scores, norm_calls = _step_after_prefix(model, last_layer)
    finally:
        hooks.remove_hook_from_module(layer)
    assert norm_calls == 2
    assert len(keys) == len(scores) == model.config.num_hidden_layers
