"""The chunk loop: read the context chunk by chunk with the question appended, keep the best entries.

Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167), Alg. 1. Differences
from the paper's code, on purpose: the question's own KV entries are dropped after every step (they are
fed again when answering), attention weights come from a capturing twin of SDPA instead of eager
attention, the protected prefix is never scored, and the selection may be shared across layers
(`FinchConfig.selection`).

Memory bound: during a step the cache holds ``|P| + B_{t-1} + |c_t| + m <= |P| + B + S + m`` entries
and activations cover ``|c_t| + m`` tokens, whatever the context length.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel

from ..config import FinchConfig
from .attention import CAPTURE_KWARG, QuestionAttentionCapture, capturing_attention
from .chunking import chunk_bounds
from .rotation import KeyRotation
from .scoring import per_head_scores, per_layer_scores, resolve_layers, shared_scores, smooth_scores
from .selection import select_top, step_budget


@dataclass
class CompressedCache:
    """What the loop leaves behind: the packed cache and where each kept entry came from.

    ``keys[l]`` / ``values[l]`` are ``[1, num_kv_heads, |P| + B, head_dim]``: the prefix, then the kept
    context entries in original order at contiguous positions. ``kept_positions[l]`` is
    ``[num_kv_heads, B]``, 0-based positions in the context; ``kept_scores[l]`` the matching scores of the
    last step (``None`` when nothing was compressed).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    prefix_length: int
    kept_positions: list[torch.Tensor]
    kept_scores: list[torch.Tensor] | None
    peak_kv_entries: int
    num_chunks: int
    seconds: float

    def as_cache(self) -> DynamicCache:
        """A fresh `DynamicCache` over the same tensors. Appending to it never touches ``self``,
        because `DynamicLayer.update` concatenates into new tensors."""
        cache = DynamicCache()
        for layer, (keys, values) in enumerate(zip(self.keys, self.values)):
            cache.update(keys[:, :, :0], values[:, :, :0], layer)
            cache.layers[layer].keys = keys
            cache.layers[layer].values = values
        return cache


def decoder_of(model: PreTrainedModel) -> torch.nn.Module:
    """The base model without the LM head: compression needs no logits."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model


def compress_cache(
    model: PreTrainedModel,
    prefix_ids: torch.Tensor,
    context_ids: torch.Tensor,
    question_ids: torch.Tensor,
    config: FinchConfig,
    passage_starts: Sequence[int] = (),
    rotation: KeyRotation | None = None,
    token_weights: torch.Tensor | None = None,
) -> CompressedCache:
    """Run FINCH over one context and return the compressed cache.

    Parameters
    ----------
    prefix_ids, context_ids, question_ids : torch.LongTensor
        ``[1, |P|]``, ``[1, n]``, ``[1, m]`` on the model's device. The prefix is always kept.
    config : FinchConfig
        Budget, chunk size and selection.
    passage_starts : sequence of int
        Token offsets where passages begin, so chunks can end on them.
    token_weights : torch.Tensor, optional
        ``[n]`` non-negative prior per context token, multiplied onto the (smoothed) scores before
        selection; `FinchRAG` uses it to fold the retriever's ranking into the choice.
    """
    started = time.perf_counter()
    context_length = context_ids.shape[1]
    prefix_length = prefix_ids.shape[1]
    budget = config.budget(context_length)
    decoder = decoder_of(model)
    text_config = model.config.get_text_config(decoder=True)
    num_layers = text_config.num_hidden_layers
    cache = DynamicCache()
    peak = 0

    if prefix_length:
        decoder(input_ids=prefix_ids, past_key_values=cache, use_cache=True)
        peak = prefix_length

    if context_length <= budget:
        # Nothing to drop: prefill the context as is (in chunks, to bound activations).
        bounds = chunk_bounds(context_length, config.chunk_size, passage_starts)
        for start, end in bounds:
            decoder(input_ids=context_ids[:, start:end], past_key_values=cache, use_cache=True)
            peak = max(peak, cache.get_seq_length())
        kept = torch.arange(context_length, device=context_ids.device)
        return CompressedCache(
            keys=[layer.keys for layer in cache.layers],
            values=[layer.values for layer in cache.layers],
            prefix_length=prefix_length,
            kept_positions=[kept.expand(layer.keys.shape[1], -1) for layer in cache.layers],
            kept_scores=None,
            peak_kv_entries=peak,
            num_chunks=len(bounds),
            seconds=time.perf_counter() - started,
        )

    rotation = rotation or KeyRotation.from_model(model)
    voting_layers = resolve_layers(config.score_layers, num_layers, getattr(text_config, "layer_types", None))
    question_length = question_ids.shape[1]
    bounds = chunk_bounds(context_length, config.chunk_size, passage_starts)
    kept_positions: list[torch.Tensor] = []  # per layer [1, kvh, B_t]
    kept_scores: list[torch.Tensor] = []
    kept_count = 0
    progress = tqdm(bounds, desc="finch: compressing", unit="chunk", disable=not config.progress or len(bounds) < 2)

    with capturing_attention(model):
        for start, end in progress:
            capture = QuestionAttentionCapture(
                question_length=question_length,
                first_candidate=prefix_length,
                normalize_scores=config.normalize_scores,
            )
            step_input = torch.cat((context_ids[:, start:end], question_ids), dim=1)
            decoder(input_ids=step_input, past_key_values=cache, use_cache=True, **{CAPTURE_KWARG: capture})
            peak = max(peak, cache.get_seq_length())
            if len(capture.scores) != num_layers:
                raise NotImplementedError(
                    f"{type(model).__name__}: question attention was captured for {len(capture.scores)} of "
                    f"{num_layers} layers. Its attention layers must call transformers' AttentionInterface and "
                    "forward keyword arguments to it."
                )
            keep = min(step_budget(budget, end, context_length), kept_count + end - start)
            candidate_positions = _candidate_positions(kept_positions, start, end, cache, num_layers)
            candidate_weights = None
            if token_weights is not None:
                candidate_weights = [token_weights[positions] for positions in candidate_positions]
            selected, selected_scores = _select(capture, config, voting_layers, num_layers, keep, candidate_weights)
            kept_positions, kept_scores = [], []
            for layer in range(num_layers):
                indices = selected[layer]
                kept_positions.append(candidate_positions[layer].gather(-1, indices))
                kept_scores.append(selected_scores[layer])
                _pack_layer(cache, layer, indices, prefix_length, rotation)
            kept_count = keep

    return CompressedCache(
        keys=[layer.keys for layer in cache.layers],
        values=[layer.values for layer in cache.layers],
        prefix_length=prefix_length,
        kept_positions=[positions[0] for positions in kept_positions],
        kept_scores=[scores[0] for scores in kept_scores],
        peak_kv_entries=peak,
        num_chunks=len(bounds),
        seconds=time.perf_counter() - started,
    )


def _candidate_positions(
    kept_positions: list[torch.Tensor], start: int, end: int, cache: DynamicCache, num_layers: int
) -> list[torch.Tensor]:
    """Context position of every candidate (previous survivors, then this chunk), per layer and KV head."""
    candidates = []
    for layer in range(num_layers):
        keys = cache.layers[layer].keys
        chunk = torch.arange(start, end, device=keys.device).expand(keys.shape[0], keys.shape[1], -1)
        candidates.append(torch.cat((kept_positions[layer], chunk), dim=-1) if kept_positions else chunk)
    return candidates


def _select(
    capture: QuestionAttentionCapture,
    config: FinchConfig,
    voting_layers: list[int],
    num_layers: int,
    keep: int,
    candidate_weights: list[torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Candidate indices ``[1, kvh, keep]`` to keep per layer, and their scores."""
    layer_scores = [capture.scores[layer] for layer in range(num_layers)]
    if config.selection == "shared":
        scores = smooth_scores(shared_scores(layer_scores, voting_layers), config.smoothing)
        if candidate_weights is not None:
            # Shared selection keeps the same candidates in every head, so any head's positions will do.
            scores = scores * candidate_weights[0][:, 0]
        chosen = select_top(scores, keep)  # [b, keep]
        kept = scores.gather(-1, chosen)
        out_indices, out_scores = [], []
        for layer in range(num_layers):
            num_kv_heads = layer_scores[layer].shape[1]
            out_indices.append(chosen.unsqueeze(1).expand(-1, num_kv_heads, -1))
            out_scores.append(kept.unsqueeze(1).expand(-1, num_kv_heads, -1))
        return out_indices, out_scores
    reduce = per_head_scores if config.selection == "per_head" else per_layer_scores
    out_indices, out_scores = [], []
    for layer, scores in enumerate(layer_scores):
        head_scores = smooth_scores(reduce(scores), config.smoothing)
        if candidate_weights is not None:
            head_scores = head_scores * candidate_weights[layer]
        chosen = select_top(head_scores, keep)
        out_indices.append(chosen)
        out_scores.append(head_scores.gather(-1, chosen))
    return out_indices, out_scores


def _pack_layer(
    cache: DynamicCache, layer: int, indices: torch.Tensor, prefix_length: int, rotation: KeyRotation
) -> None:
    """Keep the prefix and the chosen candidates of one layer, packed at contiguous positions."""
    cache_layer = cache.layers[layer]
    keys, values = cache_layer.keys, cache_layer.values
    head_dim = keys.shape[-1]
    cache_indices = (indices + prefix_length).unsqueeze(-1)
    kept_keys = keys.gather(2, cache_indices.expand(-1, -1, -1, head_dim))
    kept_values = values.gather(2, cache_indices.expand(-1, -1, -1, values.shape[-1]))
    # Candidate i sits at position prefix + i (earlier packing keeps positions contiguous); it moves to
    # prefix + its rank among the kept.
    shift = torch.arange(indices.shape[-1], device=indices.device) - indices
    kept_keys = rotation.rerotate(layer, kept_keys, shift)
    cache_layer.keys = torch.cat((keys[:, :, :prefix_length], kept_keys), dim=2)
    cache_layer.values = torch.cat((values[:, :, :prefix_length], kept_values), dim=2)
