"""From captured question attention to one score per candidate entry and KV head.

Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167), Sec. 3: a context
entry's relevance is the attention the question rows pay to it. This module only reduces scores; which
entries survive is decided in `selection`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def per_head_scores(layer_scores: torch.Tensor) -> torch.Tensor:
    """Average each KV group's query heads: ``[b, kvh, g, n] -> [b, kvh, n]`` (kvpress's ``FinchPress``)."""
    return layer_scores.mean(dim=2)


def per_layer_scores(layer_scores: torch.Tensor) -> torch.Tensor:
    """Average over every head of the layer, repeated per KV head: ``[b, kvh, g, n] -> [b, kvh, n]``.

    The authors' reference code: all heads of a layer keep the same columns.
    """
    batch, num_kv_heads, _, n = layer_scores.shape
    return layer_scores.mean(dim=(1, 2)).unsqueeze(1).expand(batch, num_kv_heads, n)


def shared_scores(all_layer_scores: Sequence[torch.Tensor], voting_layers: Sequence[int]) -> torch.Tensor:
    """One score per column for the whole model: ``list of [b, kvh, g, n] -> [b, n]``.

    Each voting layer's head-averaged scores are normalised to sum 1 so that no layer dominates by scale
    (normalised scores grow with position), then the layers are averaged.
    """
    votes = []
    for layer in voting_layers:
        layer_mean = all_layer_scores[layer].mean(dim=(1, 2))
        votes.append(layer_mean / layer_mean.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(layer_mean.dtype).tiny))
    return torch.stack(votes).mean(dim=0)


def smooth_scores(scores: torch.Tensor, width: int) -> torch.Tensor:
    """Moving average of ``width`` tokens along the last axis, same length (edges average what exists).

    A token's score then reflects its neighbours', so a relevant span is kept whole rather than as the
    scattered handful of its tokens that happen to draw attention.
    """
    if width <= 1 or scores.shape[-1] <= 1:
        return scores
    shape = scores.shape
    flat = scores.reshape(-1, 1, shape[-1])
    smoothed = F.avg_pool1d(flat, kernel_size=width, stride=1, padding=width // 2, count_include_pad=False)
    return smoothed[..., : shape[-1]].reshape(shape)


def resolve_layers(
    score_layers: Sequence[int] | str | None, num_layers: int, layer_types: Sequence[str] | None = None
) -> list[int]:
    """Turn ``score_layers`` into sorted layer indices.

    ``"upper_half"`` and ``"all"`` (``None`` too) name layer sets; sliding-window layers (Gemma 3's local
    layers) are left out of them, because their question rows cannot see earlier survivors and would only
    vote "keep the most recent". A model made only of sliding layers votes with all of its set. Explicit
    indices (negative ones count from the end) are taken as given.
    """
    if score_layers is None or isinstance(score_layers, str):
        first = num_layers // 2 if score_layers == "upper_half" else 0
        chosen = list(range(first, num_layers))
        if layer_types is not None:
            global_layers = [layer for layer in chosen if layer_types[layer] != "sliding_attention"]
            if global_layers:
                return global_layers
        return chosen
    resolved = set()
    for layer in score_layers:
        index = layer + num_layers if layer < 0 else layer
        if not 0 <= index < num_layers:
            raise ValueError(f"score_layers contains {layer}, but the model has {num_layers} layers.")
        resolved.add(index)
    return sorted(resolved)


def pool_spans(scores: torch.Tensor, span_ids: torch.Tensor) -> torch.Tensor:
    """Replace each score by the mean score of its span (e.g. its sentence), same shape.

    ``span_ids`` (long, broadcastable to ``scores``) labels each entry's span. Top-k over pooled scores then
    keeps spans whole, best mean first, and only the last span admitted may be cut.
    """
    span_ids = span_ids.expand_as(scores).reshape(-1, scores.shape[-1])
    flat = scores.reshape(-1, scores.shape[-1])
    _, labels = torch.unique(span_ids, return_inverse=True)
    count = int(labels.max()) + 1 if labels.numel() else 0
    sums = flat.new_zeros(flat.shape[0], count).scatter_add_(1, labels, flat)
    sizes = flat.new_zeros(flat.shape[0], count).scatter_add_(1, labels, torch.ones_like(flat))
    return (sums / sizes.clamp(min=1)).gather(1, labels).reshape(scores.shape)
