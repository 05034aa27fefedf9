"""Question-row capture with flash attention's 2-D padding masks, checked on CPU.

Flash attention gets no 4-D mask from transformers: a 2-D ``[batch, k_len]`` padding mask, or ``None`` when
nothing is padded. The capture must then add the causal and sliding-window masks itself and hide padded
columns. A CPU stand-in for flash attention (`_flash_like`: SDPA driven by the same 2-D masks that
transformers' flash mask function produces) runs the whole loop on that path.
"""

from __future__ import annotations

import pytest
import torch
from conftest import PASSAGES, QUESTION, build_tiny_model
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from finch_rag import FinchConfig
from finch_rag.compression.attention import QuestionAttentionCapture, question_row_scores
from finch_rag.compression.loop import CompressionRequest, compress_batch
from finch_rag.compression.selection import PerHeadSelection, RecordingSelection
from finch_rag.prompts import as_passages, build_prompt

FLASH_LIKE = "test_padding_mask_2d"  # no "flash" in the name: transformers would look for a kernel


def _visible(q_len: int, k_len: int, window: int | None) -> torch.Tensor:
    rows = torch.arange(k_len - q_len, k_len)[:, None]
    columns = torch.arange(k_len)[None, :]
    visible = columns <= rows
    if window is not None:
        visible &= columns > rows - window
    return visible  # [q_len, k_len]


@pytest.mark.parametrize("window", [None, 7])
@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.long])
def test_2d_padding_mask_equals_the_4d_mask(window, softcap, mask_dtype):
    """The same scores from a 2-D padding mask as from the 4-D mask SDPA would get; padded columns get none."""
    torch.manual_seed(0)
    batch, heads, kvh, q_len, past, dim, m = 2, 4, 2, 9, 11, 8, 4
    k_len = past + q_len
    query, key = torch.randn(batch, heads, q_len, dim) * 2, torch.randn(batch, kvh, k_len, dim) * 2
    padding = torch.ones(batch, k_len, dtype=torch.bool)
    padding[0, :3] = False  # row 0: three left-padded cache columns
    four_d = _visible(q_len, k_len, window)[None, None] & padding[:, None, None, :]
    capture = QuestionAttentionCapture(question_length=m, first_candidate=0, normalize_scores=True)
    kwargs = {"sliding_window": window, "softcap": softcap}
    expected = question_row_scores(None, query, key, four_d, 0.35, capture, **kwargs)
    got = question_row_scores(None, query, key, padding.to(mask_dtype), 0.35, capture, **kwargs)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert float(got[0, ..., :3].abs().max()) == 0.0
    # A longer 2-D mask (more seen tokens than this layer's keys) is read from the right, as transformers does.
    longer = torch.cat((torch.zeros(batch, 5, dtype=mask_dtype), padding.to(mask_dtype)), dim=1)
    torch.testing.assert_close(question_row_scores(None, query, key, longer, 0.35, capture, **kwargs), expected)
    # Without the padding mask, row 0's softmax spreads over its padded columns (the bug this guards against),
    # unless the window hides them anyway.
    unmasked = question_row_scores(None, query, key, None, 0.35, capture, **kwargs)
    assert torch.allclose(unmasked[0], expected[0], atol=1e-4) == (window is not None)
    torch.testing.assert_close(unmasked[1], expected[1], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="2-D padding mask"):
        question_row_scores(None, query, key, padding[:, :5], 0.35, capture, **kwargs)


def _flash_like(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA computing what flash attention computes from its inputs: causal, window, and a 2-D padding mask."""
    assert attention_mask is None or attention_mask.dim() == 2, "flash attention gets 2-D masks or none"
    batch, q_len, k_len = query.shape[0], query.shape[2], key.shape[2]
    visible = _visible(q_len, k_len, kwargs.get("sliding_window"))[None, None].expand(batch, 1, -1, -1)
    if attention_mask is not None:
        visible = visible & attention_mask[:, None, None, -k_len:].bool()
    return sdpa_attention_forward(module, query, key, value, visible, scaling=scaling, dropout=dropout, **kwargs)


@pytest.fixture(scope="module")
def flash_like_key() -> str:
    AttentionInterface.register(FLASH_LIKE, _flash_like)
    AttentionMaskInterface.register(FLASH_LIKE, flash_attention_mask)
    return FLASH_LIKE


def _requests(tokenizer) -> list[CompressionRequest]:
    def ids(values: list[int]) -> torch.Tensor:
        return torch.tensor([values], dtype=torch.long)

    requests = []
    for passages, question in ((PASSAGES, QUESTION), (PASSAGES[1:3], "Where does the fox jump?")):
        parts = build_prompt(tokenizer, as_passages(passages), question)
        requests.append(CompressionRequest(ids(parts.prefix_ids), ids(parts.context_ids), ids(parts.question_ids)))
    return requests


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_padded_batch_on_flash_masks_equals_sdpa(arch, tiny_tokenizer, flash_like_key):
    """The loop on the 2-D-mask path records the same scores and keeps the same entries as on SDPA."""
    sdpa = build_tiny_model(arch)
    flash = build_tiny_model(arch, attn_implementation=flash_like_key)
    requests = _requests(tiny_tokenizer)
    config = FinchConfig(target_tokens=10, chunk_size=12, selection="per_head", smoothing=1, progress=False)
    results, recorders = [], []
    for model in (sdpa, flash):
        recorder = RecordingSelection(PerHeadSelection())
        with torch.inference_mode():
            results.append(compress_batch(model, requests, config, policy=recorder))
        recorders.append(recorder)
        assert model.config._attn_implementation in ("sdpa", flash_like_key)
    assert len(recorders[0].steps) == len(recorders[1].steps) > 4
    for expected, got in zip(recorders[0].steps, recorders[1].steps, strict=True):
        for a, b in zip(expected.layer_scores, got.layer_scores, strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    for expected, got in zip(*results, strict=True):
        for a, b in zip(expected.kept_positions, got.kept_positions, strict=True):
            assert torch.equal(a, b)
        for a, b in zip(expected.keys, got.keys, strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_registration_goes_through_the_public_interfaces(tiny_models, tiny_tokenizer):
    requests = _requests(tiny_tokenizer)[:1]
    with torch.inference_mode():
        compress_batch(tiny_models("llama"), requests, FinchConfig(target_tokens=8, progress=False))
    assert "finch_sdpa" in AttentionInterface()
    assert AttentionMaskInterface()["finch_sdpa"] is AttentionMaskInterface()["sdpa"]


def test_flash_attention_models_compress_on_the_sdpa_twin(tiny_tokenizer):
    """A flash-attention model compresses on SDPA's twin, with SDPA's result, and gets its own back after.

    transformers' flash wrapper finds its kernel by the config's implementation name, so under a renamed
    capturing key it would look for a kernel of that name.
    """
    sdpa = build_tiny_model("qwen2")
    flash = build_tiny_model("qwen2")
    flash.config._attn_implementation = "flash_attention_2"  # never run here: no flash-attn on a CPU
    seen: list[str] = []
    flash.model.layers[0].register_forward_pre_hook(lambda module, args: seen.append(flash.config._attn_implementation))
    requests = _requests(tiny_tokenizer)
    config = FinchConfig(target_tokens=10, chunk_size=12, progress=False)
    with torch.inference_mode():
        expected = compress_batch(sdpa, requests, config)
        got = compress_batch(flash, requests, config)
    assert set(seen) == {"finch_sdpa"}
    assert flash.config._attn_implementation == "flash_attention_2"
    for a, b in zip(expected, got, strict=True):
        for positions, other in zip(a.kept_positions, b.kept_positions, strict=True):
            assert torch.equal(positions, other)
