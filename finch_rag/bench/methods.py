"""Ways to fill a KV budget, shared by every benchmark suite: FINCH variants, the baselines and controls.

A `Method` is one of these kinds, all held to the same budget ``B`` (context KV entries per layer and KV head,
DESIGN §4):

- ``finch``: `FinchCompressor.compress` with `FinchConfig` changes (``options``), e.g. ``finch`` (the library
  default, iterative, chunk loop, best passage packed last), ``finch_rag`` (`FinchRAG`'s default
  ``retrieval_weighted`` allocation: the same, with whole sentences competing), ``finch_single`` (one pass
  over the whole context), ``finchpress`` (per-head, single pass: the entries kvpress's ``FinchPress``
  keeps) and ``finch_global`` (the default selection over passages packed in retrieval order, i.e. plain
  FINCH without the pipeline's allocation);
- ``full``: no compression, where the whole prompt fits the model's window;
- ``truncation``: top-k truncation, passages in retrieval order until ``B`` tokens, the last one cut;
- ``control``: a fixed rule in place of attention, ``random``, ``recency`` (the last ``B``) or ``first``.

``packing`` says how retrieved passages (best first) are laid out: ``"best_last"`` is what `FinchRAG`'s
default ``retrieval_weighted`` allocation does (`finch_rag.allocation.pack_best_last`), ``"rank"`` keeps the
retriever's order. Suites without a ranking (single passage, needle haystack) ignore it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from .._locks import model_lock
from ..allocation import RankWeighting
from ..compression.chunking import chunk_bounds
from ..compression.loop import CompressedCache, attention_layer, decoder_of, layer_tensors
from ..compression.rotation import KeyRotation
from ..compressor import FinchCompressor
from ..config import FinchConfig
from ..context import CompressedContext
from ..prompts import Passage, as_passages, build_prompt

PACKINGS = ("best_last", "rank")


@dataclass(frozen=True)
class Method:
    """A way to fill the budget: ``kind`` is ``"finch"``, ``"full"``, ``"truncation"`` or ``"control"``."""

    name: str
    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)
    packing: str = "rank"

    def __post_init__(self) -> None:
        if self.kind not in ("finch", "full", "truncation", "control"):
            raise ValueError(f"Unknown method kind {self.kind!r}.")
        if self.packing not in PACKINGS:
            raise ValueError(f"packing must be one of {PACKINGS}, got {self.packing!r}.")


FINCHPRESS = {
    "selection": "per_head",
    "chunk_size": None,
    "normalize_scores": True,
    "smoothing": 1,
    "score_layers": None,
}

BUILTIN_METHODS: dict[str, Method] = {
    "full": Method("full", "full"),
    "truncation": Method("truncation", "truncation"),
    "finch": Method("finch", "finch", packing="best_last"),
    "finch_rag": Method("finch_rag", "finch", {"granularity": RankWeighting().granularity}, packing="best_last"),
    "finch_single": Method("finch_single", "finch", {"chunk_size": None}, packing="best_last"),
    "finch_global": Method("finch_global", "finch"),
    "finchpress": Method("finchpress", "finch", FINCHPRESS),
    "random": Method("random", "control", {"rule": "random"}),
    "recency": Method("recency", "control", {"rule": "recency"}),
    "first": Method("first", "control", {"rule": "first"}),
}
"""Methods by name; ``finch`` is the library's default config, ``finch_rag`` `FinchRAG`'s default allocation."""

METHOD_GROUPS: dict[str, list[str]] = {
    "all": ["full", "truncation", "finch", "finch_rag", "finch_single", "finch_global", "random", "recency", "first"],
    "baselines": ["full", "finch", "finchpress", "random", "recency", "first"],
    "allocation": ["full", "truncation", "finch_global", "finch", "finch_rag"],
}


def _parse_value(key: str, raw: str) -> Any:
    lowered = raw.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if key == "score_layers":
        if lowered in ("upper", "lower", "all", "upper_half"):
            return {"all": None, "upper": "upper_half"}.get(lowered, lowered)
        if ".." in lowered:
            first, last = (int(part) for part in lowered.split(".."))
            return tuple(range(first, last + 1))
        return tuple(int(part) for part in lowered.replace("+", " ").split())
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def parse_method(spec: str, extra: Mapping[str, Method] | None = None) -> Method:
    """A built-in method (or one of ``extra``) by name, or ``label:key=value,...``.

    The keys of a spec are `FinchConfig` fields, plus ``packing=best_last|rank`` (default ``best_last``, like
    ``finch``): ``shared_s1:smoothing=1,chunk_size=512``. ``score_layers=upper`` is the upper half of the
    layers, ``score_layers=a..b`` a range (inclusive), ``none`` every layer.
    """
    known = {**BUILTIN_METHODS, **(extra or {})}
    if spec in known:
        return known[spec]
    if ":" not in spec:
        names = sorted({*known, *METHOD_GROUPS})
        raise ValueError(f"Unknown method {spec!r}: use one of {names} or 'label:key=value,...'.")
    label, _, body = spec.partition(":")
    options: dict[str, Any] = {}
    packing = "best_last"
    for item in filter(None, body.split(",")):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"In method {spec!r}, {item!r} is not key=value.")
        if key.strip() == "packing":
            packing = raw.strip()
        else:
            options[key.strip()] = _parse_value(key.strip(), raw)
    return Method(label.strip(), "finch", options, packing=packing)


def expand_methods(
    specs: Iterable[str | Method],
    extra: Mapping[str, Method] | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> list[Method]:
    """Methods from names, group names (`METHOD_GROUPS` and ``groups``) and specs, without repeats."""
    all_groups = {**METHOD_GROUPS, **(groups or {})}
    methods: list[Method] = []
    for spec in specs:
        if isinstance(spec, Method):
            found = [spec]
        else:
            found = [parse_method(name, extra) for name in all_groups.get(spec, [spec])]
        methods += [method for method in found if method.name not in {m.name for m in methods}]
    return methods


def method_config(
    base: FinchConfig,
    method: Method,
    num_layers: int,
    *,
    ratio: float | None = None,
    target_tokens: int | None = None,
) -> FinchConfig:
    """``base`` with the method's `FinchConfig` options and one budget (a ratio or ``B``), no progress bars."""
    if (ratio is None) == (target_tokens is None):
        raise ValueError("Give exactly one of ratio and target_tokens.")
    options = {key: value for key, value in method.options.items() if key != "rule"}
    if options.get("score_layers") == "lower":
        options["score_layers"] = tuple(range(num_layers // 2))
    budget: dict[str, Any] = {"compression_ratio": ratio} if ratio is not None else {"target_tokens": target_tokens}
    return base.replace(progress=False, **budget, **options)


# ---------------------------------------------------------------- controls
def control_context(
    compressor: FinchCompressor,
    passages: Sequence[str | Passage],
    question: str,
    rule: str,
    config: FinchConfig,
    seed: int = 0,
) -> CompressedContext:
    """A `CompressedContext` whose kept positions follow a fixed ``rule`` instead of attention.

    ``rule`` is ``"random"`` (a uniformly random set of ``B`` positions, fixed by ``seed``), ``"recency"``
    (the last ``B``) or ``"first"`` (the first ``B``). The rule fixes the final set up front; the context
    is then read in chunks of ``config.chunk_size`` like FINCH, and after each chunk every entry outside
    that set is evicted and the survivors are re-rotated to contiguous positions. So the controls keep
    exactly the rule's ``B`` entries, their cache never holds more than ``|P| + B + S`` entries (FINCH's
    bound), and later chunks are read over an already-evicted cache, as with FINCH. Unlike FINCH there is
    no per-step budget ``B_t``: a fixed rule has nothing to gain from re-competing, and with ``B_t`` the
    early chunks could not keep their share of the first ``B`` tokens.
    """
    if rule not in ("random", "recency", "first"):
        raise ValueError(f"rule must be 'random', 'recency' or 'first', got {rule!r}.")
    model, tokenizer = compressor.model, compressor.tokenizer
    items = as_passages(list(passages))
    parts = build_prompt(
        tokenizer, items, question, chat_template=config.chat_template, system_prompt=config.system_prompt
    )
    n = len(parts.context_ids)
    budget = config.budget(n)
    if rule == "random":
        final = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:budget]
    elif rule == "recency":
        final = torch.arange(n - budget, n)
    else:
        final = torch.arange(budget)
    in_final = torch.zeros(n, dtype=torch.bool)
    in_final[final] = True
    device = compressor.device
    rotation = KeyRotation.from_model(model)
    decoder = decoder_of(model)
    context_ids = torch.tensor([parts.context_ids], device=device)
    bounds = chunk_bounds(n, config.chunk_size, parts.passage_token_starts)
    started = time.perf_counter()
    cache = DynamicCache()
    kept = torch.zeros(0, dtype=torch.long)
    peak = 0
    with model_lock(model), torch.inference_mode():
        if parts.prefix_ids:
            decoder(input_ids=torch.tensor([parts.prefix_ids], device=device), past_key_values=cache, use_cache=True)
        prefix_length = len(parts.prefix_ids)
        for start, end in bounds:
            decoder(input_ids=context_ids[:, start:end], past_key_values=cache, use_cache=True)
            peak = max(peak, cache.get_seq_length())
            candidates = torch.cat((kept, torch.arange(start, end)))
            chosen = in_final[candidates].nonzero().flatten()
            kept = candidates[chosen]
            if chosen.shape[0] < candidates.shape[0]:
                for layer in range(len(cache.layers)):
                    _pack_layer(cache, layer, chosen.to(device), prefix_length, rotation)
    layer_kv = [layer_tensors(cache, layer) for layer in range(len(cache.layers))]
    keys, values = [kv[0] for kv in layer_kv], [kv[1] for kv in layer_kv]
    return CompressedContext(
        cache=CompressedCache(
            keys=keys,
            values=values,
            prefix_length=prefix_length,
            kept_positions=[kept.to(device).expand(layer_keys.shape[1], -1) for layer_keys in keys],
            kept_scores=None,
            peak_kv_entries=peak,
            num_chunks=len(bounds),
            seconds=time.perf_counter() - started,
        ),
        prefix_ids=torch.tensor(parts.prefix_ids, dtype=torch.long),
        context_ids=torch.tensor(parts.context_ids, dtype=torch.long),
        question_ids=torch.tensor(parts.question_ids, dtype=torch.long),
        suffix_ids=torch.tensor(parts.suffix_ids, dtype=torch.long),
        config=config,
        tokenizer=tokenizer,
        model_name=compressor.model_name,
        question=question,
        passages=items,
        context_text=parts.context_text,
        token_offsets=parts.token_offsets,
        passage_text_spans=parts.passage_text_spans,
        passage_token_starts=parts.passage_token_starts,
    )


def _pack_layer(
    cache: DynamicCache, layer: int, chosen: torch.Tensor, prefix_length: int, rotation: KeyRotation
) -> None:
    """Keep the prefix and the ``chosen`` candidates (ascending), re-rotated to contiguous positions."""
    keys, values = layer_tensors(cache, layer)
    index = chosen + prefix_length
    shift = torch.arange(chosen.shape[0], device=chosen.device) - chosen
    kept_keys = rotation.rerotate(layer, keys.index_select(2, index), shift)
    entry = attention_layer(cache, layer)
    entry.keys = torch.cat((keys[:, :, :prefix_length], kept_keys), dim=2)
    entry.values = torch.cat((values[:, :, :prefix_length], values.index_select(2, index)), dim=2)
