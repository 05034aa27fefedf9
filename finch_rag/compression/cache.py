"""Cache and model access: the one place that touches transformers' cache objects and decoder.

The chunk loop, key rotation and generation all read and build caches through these helpers, so how a
`DynamicCache` is opened up (its public per-layer ``keys`` / ``values``) is written once. Tensors are
``[batch, num_kv_heads, length, head_dim]`` throughout; padding is always on the left of the length axis,
where a left-padded batch's attention mask puts its zeros.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence

import torch
from transformers import Cache, DynamicCache, PreTrainedModel
from transformers.cache_utils import CacheLayerMixin

LayerTensors = tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]
"""Per-layer keys and values of one cache, ``([k_0, k_1, ...], [v_0, v_1, ...])``."""


def cache_over(keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> DynamicCache:
    """A `DynamicCache` whose layers hold these tensors themselves, without the copy ``update`` would make."""
    cache = DynamicCache()
    for layer, (layer_keys, layer_values) in enumerate(zip(keys, values, strict=True)):
        cache.update(layer_keys[:, :, :0], layer_values[:, :, :0], layer)
        entry = attention_layer(cache, layer)
        entry.keys = layer_keys
        entry.values = layer_values
    return cache


def attention_layer(cache: DynamicCache, layer: int) -> CacheLayerMixin:
    """``cache.layers[layer]`` as a key/value layer (transformers also types it as linear-attention or dummy)."""
    entry = cache.layers[layer]
    if not isinstance(entry, CacheLayerMixin):
        raise TypeError(f"Cache layer {layer} is a {type(entry).__name__}; finch-rag needs key/value attention layers.")
    return entry


def layer_tensors(cache: DynamicCache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values that ``cache.layers[layer]`` holds."""
    entry = attention_layer(cache, layer)
    if entry.keys is None or entry.values is None:
        raise ValueError(f"Cache layer {layer} holds no keys and values.")
    return entry.keys, entry.values


def all_layer_tensors(cache: DynamicCache) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every layer's keys and values, as two lists."""
    tensors = [layer_tensors(cache, layer) for layer in range(len(cache.layers))]
    return [keys for keys, _ in tensors], [values for _, values in tensors]


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes the tensors' elements take (what a cache bounded in bytes counts)."""
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def decoder_of(model: PreTrainedModel) -> torch.nn.Module:
    """The base model without the LM head: compression needs no logits."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model


def cache_kwargs(module: torch.nn.Module, cache: Cache) -> dict[str, Cache]:
    """``{name: cache}`` for ``module(..., **cache_kwargs(module, cache))``, under the name its forward takes.

    Newer transformers 5.x call the argument ``cache`` and deprecate ``past_key_values``; earlier 5.x only
    know ``past_key_values``. The name is read from the forward's signature, once per module class.
    """
    return {_cache_argument(type(module)): cache}


_CACHE_ARGUMENTS: dict[type, str] = {}  # module class -> the keyword its forward takes the cache under


def _cache_argument(module_type: type[torch.nn.Module]) -> str:
    name = _CACHE_ARGUMENTS.get(module_type)
    if name is None:
        try:
            parameters = inspect.signature(module_type.forward).parameters
            name = "cache" if "cache" in parameters else "past_key_values"
        except (TypeError, ValueError):  # no introspectable signature: the long-standing name
            name = "past_key_values"
        _CACHE_ARGUMENTS[module_type] = name  # the same answer whichever thread writes it first
    return name


def left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """``tensor`` ``[b, h, l, d]`` with zeros prepended on dim 2 up to ``length`` (unchanged when already there)."""
    missing = length - tensor.shape[2]
    if missing < 0:
        raise ValueError(f"Cannot left-pad {tensor.shape[2]} entries to {length}: the target is shorter.")
    return tensor if missing == 0 else torch.nn.functional.pad(tensor, (0, 0, missing, 0))


def stack_left_padded(items: Sequence[DynamicCache | LayerTensors], length: int | None = None) -> DynamicCache:
    """Several one-row caches stacked on the batch axis, each left-padded with zeros to a common length.

    Parameters
    ----------
    items : sequence of DynamicCache or (keys, values)
        One cache per batch row. A ``(keys, values)`` pair gives per-layer ``[1, kvh, l, d]`` tensors; empty
        lists stand for a row that holds nothing yet (all padding).
    length : int, optional
        Entries per row in the result; default the longest row.

    Returns
    -------
    DynamicCache
        ``[len(items), kvh, length, d]`` per layer; an empty cache when every row is empty. A single row
        that needs no padding is returned over its own tensors, without a copy.
    """
    rows = [all_layer_tensors(item) if isinstance(item, DynamicCache) else item for item in items]
    filled = [row for row in rows if len(row[0])]
    if not filled:
        return DynamicCache()
    longest = max(row_keys[0].shape[2] for row_keys, _ in filled)
    length = longest if length is None else length
    if len(rows) == 1 and longest == length:
        return cache_over(*rows[0])
    template_keys, template_values = filled[0]
    keys, values = [], []
    for layer in range(len(template_keys)):
        empty_keys, empty_values = template_keys[layer][:, :, :0], template_values[layer][:, :, :0]
        keys.append(torch.cat([left_pad(row[0][layer] if len(row[0]) else empty_keys, length) for row in rows]))
        values.append(torch.cat([left_pad(row[1][layer] if len(row[1]) else empty_values, length) for row in rows]))
    return cache_over(keys, values)
