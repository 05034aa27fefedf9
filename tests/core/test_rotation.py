"""Re-rotation: a cached key moved by ``q - p`` equals the key the model computes at position ``q``."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_model
from transformers import DynamicCache

from finch_rag.compression.cache import cache_kwargs
from finch_rag.compression.rotation import KeyRotation

TOKENS = torch.tensor([[5, 17, 42, 99, 3, 64, 27, 81, 12, 55, 7, 90, 33, 71, 20, 48, 9, 61, 38, 84]])


def _cached_keys(model, input_ids: torch.Tensor, position_ids: torch.Tensor) -> list[torch.Tensor]:
    cache = DynamicCache()  # keeps every entry, also on sliding-window layers
    with torch.no_grad():
        decoder = model.get_decoder()
        decoder(input_ids=input_ids, position_ids=position_ids, use_cache=True, **cache_kwargs(decoder, cache))
    return [layer.keys for layer in cache.layers]


@pytest.mark.parametrize("shift", [37, -11, 150])
def test_rerotate_uniform_shift_every_layer(tiny_model, shift):
    """Every layer's keys at ``p + shift`` are the keys at ``p`` rotated by ``shift``.

    Shifting every position by the same amount leaves hidden states unchanged (RoPE is relative).
    """
    rotation = KeyRotation.from_model(tiny_model)
    length = TOKENS.shape[1]
    start = 20
    at_p = _cached_keys(tiny_model, TOKENS, torch.arange(start, start + length)[None])
    at_q = _cached_keys(tiny_model, TOKENS, torch.arange(start + shift, start + shift + length)[None])
    for layer, (keys_p, keys_q) in enumerate(zip(at_p, at_q, strict=True)):
        assert not torch.allclose(keys_p, keys_q, atol=1e-3), "positions must matter"
        moved = rotation.rerotate(layer, keys_p, torch.full(keys_p.shape[:3], shift))
        torch.testing.assert_close(
            moved, keys_q, atol=2e-5, rtol=1e-5, msg=lambda m, layer=layer: f"layer {layer}: {m}"
        )
        # A scalar shift broadcasts the same way.
        torch.testing.assert_close(rotation.rerotate(layer, keys_p, torch.tensor(shift)), moved, atol=1e-6, rtol=0)


def test_rerotate_per_token_shift_layer0(tiny_model):
    """Each key moves by its own ``q - p``, forwards and backwards, as `_pack_layer` does.

    Layer 0's keys depend on the token and its own position only, so scattered positions can be compared.
    """
    rotation = KeyRotation.from_model(tiny_model)
    length = TOKENS.shape[1]
    old = torch.tensor(sorted(torch.randperm(120, generator=torch.Generator().manual_seed(0))[:length].tolist()))
    new = torch.arange(length) + 30  # some keys move backwards, some forwards
    assert (new - old).min() < 0 < (new - old).max()
    keys_p = _cached_keys(tiny_model, TOKENS, old[None])[0]
    keys_q = _cached_keys(tiny_model, TOKENS, new[None])[0]
    shift = (new - old).expand(1, keys_p.shape[1], -1)
    torch.testing.assert_close(rotation.rerotate(0, keys_p, shift), keys_q, atol=2e-5, rtol=1e-5)
    # Zero shift is the identity.
    torch.testing.assert_close(rotation.rerotate(0, keys_p, torch.zeros_like(shift)), keys_p, atol=0, rtol=0)


def test_gemma3_rotation_per_layer_type(tiny_models):
    """Gemma 3 uses a local theta on sliding layers and a global theta on full-attention layers."""
    model = tiny_models("gemma3")
    rotation = KeyRotation.from_model(model)
    rotary = model.get_decoder().rotary_emb
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    torch.testing.assert_close(rotation.inv_freq_per_layer[0], rotary.sliding_attention_inv_freq.float())
    torch.testing.assert_close(rotation.inv_freq_per_layer[1], rotary.full_attention_inv_freq.float())
    assert not torch.allclose(rotation.inv_freq_per_layer[0], rotation.inv_freq_per_layer[1])


def test_phi3_partial_rotary_passthrough(tiny_models):
    """Phi-3 with partial_rotary_factor=0.5 rotates only the first half of each head; the rest passes through."""
    model = tiny_models("phi3")
    rotation = KeyRotation.from_model(model)
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    assert 2 * rotation.inv_freq_per_layer[0].shape[0] == head_dim // 2
    keys = torch.randn(1, 2, 5, head_dim)
    moved = rotation.rerotate(0, keys, torch.full((1, 2, 5), 9))
    torch.testing.assert_close(moved[..., head_dim // 2 :], keys[..., head_dim // 2 :], atol=0, rtol=0)
    assert not torch.allclose(moved[..., : head_dim // 2], keys[..., : head_dim // 2])


def test_rerotate_keeps_dtype():
    model = build_tiny_model("llama")
    rotation = KeyRotation.from_model(model)
    keys = torch.randn(1, 2, 4, 8, dtype=torch.bfloat16)
    moved = rotation.rerotate(1, keys, torch.tensor([3, 2, 1, 0]))
    assert moved.dtype == torch.bfloat16 and moved.shape == keys.shape
    torch.testing.assert_close(moved[..., -1, :], keys[..., -1, :], atol=0, rtol=0)
