"""Integration tests on the real embedded model (SmolLM2-135M-Instruct): slow, run through the public API."""

from __future__ import annotations

import pytest
import torch
from test_attention import captured_scores, reference_scores

from finch_rag import FinchCompressor, FinchConfig, load_model

pytestmark = pytest.mark.slow

FILLER = [
    "The weather in the valley was mild that spring, and farmers planted wheat and barley in long rows.",
    "Old stone bridges cross the river in three places, and the market opens every Tuesday morning.",
    "The library keeps maps of the region drawn by travellers over two centuries.",
]
NEEDLE = "The secret code for the vault is 4817."
QUESTION = "What is the secret code for the vault?"


def test_no_compression_matches_model_generate(real_model):
    model, tokenizer = real_model
    compressor = FinchCompressor(model, tokenizer, FinchConfig(compression_ratio=0.0, chunk_size=64, progress=False))
    cc = compressor.compress([*FILLER, NEEDLE, *FILLER[:1]], QUESTION)
    assert cc.kept_tokens == cc.original_tokens and cc.stats["num_chunks"] > 1
    assert torch.equal(cc.kept_positions[0][0], torch.arange(cc.original_tokens))
    ids = torch.cat((cc.prefix_ids, cc.context_ids, cc.question_ids, cc.suffix_ids))[None]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12)
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    answer = compressor.generate(cc, max_new_tokens=12)
    assert answer == expected
    assert "4817" in answer


@pytest.mark.parametrize("selection", ["shared", "per_head"])
def test_compress_and_answer(real_model, selection):
    model, tokenizer = real_model
    budget, chunk = 64, 128
    compressor = FinchCompressor(
        model, tokenizer, FinchConfig(target_tokens=budget, chunk_size=chunk, selection=selection, progress=False)
    )
    context = FILLER * 4 + [NEEDLE] + FILLER * 4
    cc = compressor.compress(context, QUESTION)
    n, prefix, m = cc.original_tokens, int(cc.prefix_ids.shape[0]), int(cc.question_ids.shape[0])
    assert n > 6 * budget
    assert cc.cache_length == prefix + budget
    for positions in cc.kept_positions:
        assert positions.shape == (model.config.num_key_value_heads, budget)
        assert (positions[:, 1:] > positions[:, :-1]).all()
    assert cc.stats["peak_kv_entries"] <= prefix + budget + chunk + m
    # The question steers the choice: the needle's wording is kept far more often than the average token.
    needle = NEEDLE.index("secret code for the vault")
    relevant = cc.kept_fraction([(12, needle, needle + len("secret code for the vault"))])
    assert relevant > 3 * budget / n, (relevant, budget / n)
    keys = [k.clone() for k in cc.cache.keys]
    first = compressor.generate(cc, max_new_tokens=10)
    assert first.strip()
    assert compressor.generate(cc, max_new_tokens=10) == first
    assert all(torch.equal(a, b) for a, b in zip(cc.cache.keys, keys, strict=True))


def test_question_rows_match_eager_on_real_model(real_model):
    """SmolLM2 has 9 query heads over 3 KV heads and 30 layers: the capture matches eager attention there too."""
    model, tokenizer = real_model
    eager, _ = load_model(attn_implementation="eager")
    ids = lambda text: torch.tensor([tokenizer(text, add_special_tokens=False).input_ids])  # noqa: E731
    prefix, context, question = ids("<|im_start|>user\n"), ids(" ".join(FILLER) + " " + NEEDLE), ids(" " + QUESTION)
    full = torch.cat((prefix, context, question), dim=1)
    n, m = context.shape[1], question.shape[1]
    expected = reference_scores(eager, full, prefix.shape[1], n, m, normalize=True)
    got = captured_scores(model, prefix, context, question, normalize=True, prefill_prefix=True)
    scale = full.shape[1]
    for layer, (a, b) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(
            a / scale, b / scale, atol=1e-5, rtol=1e-4, msg=lambda s, layer=layer: f"layer {layer}: {s}"
        )


@pytest.mark.heavy  # compresses 24k tokens: about 2 minutes on 2 CPU cores
def test_three_windows_of_context_compress_and_answer(real_model):
    """An input three times the model's 8,192-position window compresses and answers; no position reaches it."""
    model, tokenizer = real_model
    window = model.config.max_position_embeddings
    budget, chunk = 256, 512
    filler_ids = tokenizer(" ".join(FILLER * 4), add_special_tokens=False).input_ids
    context = (filler_ids * (3 * window // len(filler_ids) + 2))[: 3 * window]
    needle_at = len(context) // 2
    context[needle_at:needle_at] = tokenizer(" " + NEEDLE + " ", add_special_tokens=False).input_ids
    question = tokenizer("\n\nQuestion: " + QUESTION, add_special_tokens=False).input_ids
    compressor = FinchCompressor(model, tokenizer, FinchConfig(target_tokens=budget, chunk_size=chunk, progress=False))
    cc = compressor.compress_ids(context, question)
    assert cc.original_tokens > 3 * window and cc.kept_tokens == budget
    assert cc.stats["peak_kv_entries"] <= budget + chunk + len(question)
    assert cc.cache_length == budget
    positions = []

    def record(_module, args, kwargs, _output):
        positions.append(int((args[1] if len(args) > 1 else kwargs["position_ids"]).max()))

    hook = model.model.rotary_emb.register_forward_hook(record, with_kwargs=True)
    try:
        answer = compressor.generate(cc, max_new_tokens=8)
    finally:
        hook.remove()
    assert isinstance(answer, str) and answer
    assert max(positions) < budget + len(question) + 8 < window
