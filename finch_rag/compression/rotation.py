"""Re-rotation of kept keys to their new, contiguous positions.

Keys sit in the cache already rotated by RoPE at their original position ``p``. After eviction the kept
keys are packed at positions ``|P|..|P|+B_t-1``; rotating a cached key by the angle of ``q - p`` gives
exactly the key the model would have computed at ``q``, because RoPE rotations compose. Based on FINCH
(Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167), Sec. 3.3, and kvpress's
``KeyRerotationPress``; unlike kvpress we read the frequencies once per model, not per layer call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from transformers import PreTrainedModel

from .cache import decoder_of


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


@dataclass(frozen=True)
class KeyRotation:
    """The RoPE inverse frequencies of each layer, ``[rotary_dim / 2]`` float32 each."""

    inv_freq_per_layer: tuple[torch.Tensor, ...]

    @classmethod
    def from_model(cls, model: PreTrainedModel) -> KeyRotation:
        """Read each layer's frequencies from the model's rotary-embedding module.

        Models with per-layer-type RoPE (Gemma 3: local and global theta) expose ``{layer_type}_inv_freq``.
        """
        config = model.config.get_text_config(decoder=True)
        rotary = _find_rotary_module(model)
        layer_types = getattr(config, "layer_types", None)
        frequencies = []
        for layer in range(config.num_hidden_layers):
            inv_freq = None
            if layer_types is not None:
                inv_freq = getattr(rotary, f"{layer_types[layer]}_inv_freq", None)
            if inv_freq is None:
                inv_freq = getattr(rotary, "inv_freq", None)
            if inv_freq is None:
                raise NotImplementedError(
                    f"{type(rotary).__name__} has no `inv_freq` buffer for layer {layer}; finch-rag needs it to "
                    "re-rotate kept keys."
                )
            frequencies.append(inv_freq.detach().float())
        return cls(tuple(frequencies))

    def rerotate(self, layer: int, keys: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """Move ``keys`` by ``shift`` positions.

        Parameters
        ----------
        keys : torch.Tensor
            ``[batch, num_kv_heads, k, head_dim]``, rotated at their current positions.
        shift : torch.Tensor
            ``[batch, num_kv_heads, k]`` or broadcastable, ``new_position - old_position``.
        """
        inv_freq = self.inv_freq_per_layer[layer].to(keys.device)
        rotary_dim = 2 * inv_freq.shape[0]
        angles = shift.to(torch.float32).unsqueeze(-1) * inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        rotary, passthrough = keys[..., :rotary_dim], keys[..., rotary_dim:]
        rotary = rotary.float()
        rotated = (rotary * angles.cos() + _rotate_half(rotary) * angles.sin()).to(keys.dtype)
        return torch.cat((rotated, passthrough), dim=-1) if passthrough.shape[-1] else rotated


def _find_rotary_module(model: PreTrainedModel) -> torch.nn.Module:
    base = decoder_of(model)
    # Module attributes are typed Tensor | Module; `rotary_emb` is the rotary module.
    candidates = [cast(torch.nn.Module, base.rotary_emb)] if hasattr(base, "rotary_emb") else []
    candidates += [module for name, module in base.named_modules() if type(module).__name__.endswith("RotaryEmbedding")]
    if not candidates:
        raise NotImplementedError(
            f"{type(model).__name__} has no rotary position embedding module (`*RotaryEmbedding`). finch-rag packs "
            "kept keys at new positions by re-rotating them, so it supports RoPE models only (Llama, Qwen2/3, "
            "Mistral, Phi-3, Gemma 3, ...)."
        )
    return candidates[0]
