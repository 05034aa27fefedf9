"""Ways to fill a KV budget, shared by every benchmark suite: FINCH variants, the baselines and the controls.

Every method is named one way: `FinchConfig` field names. A `Method` holds `FinchConfig` changes (``options``)
and how retrieved passages are packed; the suites apply them to the compressor's config with one budget ``B``
(context KV entries per layer and KV head, DESIGN §4) and call `FinchCompressor.compress`. A spec on the
command line reads ``label:key=value,...``, e.g. ``ph:selection=per_head,chunk_size=None,granularity=sentence``.

Presets (`PRESETS`):

- ``finch``: the library's default config, best passage packed last;
- ``finch_rag``: `FinchRAG`'s default ``retrieval_weighted`` allocation: the same, with whole sentences
  competing (``granularity="sentence"``);
- ``finch_single``: one pass over the whole context (``chunk_size=None``);
- ``finchpress``: ``selection="per_head", chunk_size=None``, no smoothing, every layer: the entries kvpress's
  ``FinchPress`` keeps;
- ``finch_global``: the default config over passages in retrieval order (plain FINCH, no allocation);
- controls ``random``, ``recency`` (the last ``B``) and ``first`` (the first ``B``): ``selection`` set to that
  rule, a fixed choice in place of attention in the same chunk loop;
- baselines that are not a compression: ``full`` (no compression, where the whole prompt fits the model's
  window) and ``truncation`` (top-k truncation: passages in retrieval order until ``B`` tokens, the last one
  cut).

``packing`` (the one key that is not a `FinchConfig` field) says how retrieved passages (best first) are laid
out: ``"best_last"`` is what `FinchRAG`'s default allocation does (`finch_rag.allocation.pack_best_last`),
``"rank"`` keeps the retriever's order. Suites without a ranking (one passage, a needle haystack) ignore it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from finch_rag import CompressedContext, FinchCompressor, FinchConfig
from finch_rag._locks import model_lock
from finch_rag.compression.cache import attention_layer, decoder_of, layer_tensors
from finch_rag.compression.chunking import chunk_bounds
from finch_rag.compression.loop import CompressedCache
from finch_rag.compression.rotation import KeyRotation
from finch_rag.prompts import Passage, as_passages, build_prompt

PACKINGS = ("best_last", "rank")
KINDS = ("finch", "full", "truncation")
CONTROLS = ("random", "recency", "first")
"""``selection`` values that are a fixed rule instead of attention (benchmark controls)."""
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(FinchConfig))


@dataclass(frozen=True)
class Method:
    """A way to fill the budget.

    Parameters
    ----------
    name : str
        The label in result files.
    kind : {"finch", "full", "truncation"}
        ``"finch"`` compresses with ``options``; ``"full"`` and ``"truncation"`` are the uncompressed baselines.
    options : mapping
        `FinchConfig` field changes (``"finch"`` only).
    packing : {"best_last", "rank"}
        Passage order: best passage last (`FinchRAG`'s default), or the retriever's order.
    """

    name: str
    kind: str = "finch"
    options: Mapping[str, Any] = field(default_factory=dict)
    packing: str = "rank"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Unknown method kind {self.kind!r}; use one of {KINDS}.")
        if self.packing not in PACKINGS:
            raise ValueError(f"packing must be one of {PACKINGS}, got {self.packing!r}.")
        unknown = sorted(set(self.options) - set(CONFIG_FIELDS))
        if unknown:
            raise ValueError(f"Method {self.name!r}: {unknown} are not FinchConfig fields; use {CONFIG_FIELDS}.")

    @property
    def control(self) -> str | None:
        """The control rule (``"random"``, ``"recency"``, ``"first"``) this method selects by, or None."""
        selection = self.options.get("selection")
        return selection if selection in CONTROLS else None


FINCHPRESS: dict[str, Any] = {
    "selection": "per_head",
    "chunk_size": None,
    "normalize_scores": True,
    "smoothing": 1,
    "score_layers": "all",
}

PRESETS: dict[str, Method] = {
    "full": Method("full", "full"),
    "truncation": Method("truncation", "truncation"),
    "finch": Method("finch", packing="best_last"),
    "finch_rag": Method("finch_rag", options={"granularity": "sentence"}, packing="best_last"),
    "finch_single": Method("finch_single", options={"chunk_size": None}, packing="best_last"),
    "finch_global": Method("finch_global"),
    "finchpress": Method("finchpress", options=FINCHPRESS),
    **{rule: Method(rule, options={"selection": rule}) for rule in CONTROLS},
}
"""Methods by name; ``finch`` is the library's default config, ``finch_rag`` `FinchRAG`'s default allocation."""
BUILTIN_METHODS = PRESETS  # the name the suites and tests used before the presets became FinchConfig fields

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
    return raw.strip()


def parse_method(spec: str) -> Method:
    """A preset by name, or ``label:key=value,...``.

    The keys of a spec are `FinchConfig` fields, plus ``packing=best_last|rank`` (default ``best_last``, like
    ``finch``): ``shared_s1:smoothing=1,chunk_size=512``. ``score_layers=upper`` is the upper half of the
    layers, ``score_layers=lower`` the lower half, ``score_layers=a..b`` a range (inclusive), ``all`` or
    ``none`` every layer. ``selection=random|recency|first`` is a control.
    """
    if spec in PRESETS:
        return PRESETS[spec]
    if ":" not in spec:
        names = sorted({*PRESETS, *METHOD_GROUPS})
        raise ValueError(f"Unknown method {spec!r}: use one of {names} or 'label:key=value,...'.")
    label, _, body = spec.partition(":")
    options: dict[str, Any] = {}
    packing = "best_last"
    for item in filter(None, body.split(",")):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"In method {spec!r}, {item!r} is not key=value.")
        if key == "packing":
            packing = raw.strip()
        elif key not in CONFIG_FIELDS:
            raise ValueError(f"In method {spec!r}, {key!r} is neither packing nor a FinchConfig field {CONFIG_FIELDS}.")
        else:
            options[key] = _parse_value(key, raw)
    return Method(label.strip(), "finch", options, packing=packing)


def expand_methods(specs: Iterable[str | Method]) -> list[Method]:
    """Methods from preset names, group names (`METHOD_GROUPS`) and specs, without repeats."""
    methods: list[Method] = []
    for spec in specs:
        found = [spec] if isinstance(spec, Method) else [parse_method(name) for name in METHOD_GROUPS.get(spec, [spec])]
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
    options = dict(method.options)
    if method.control is not None:
        del options["selection"]  # the rule runs in `control_context` until the loop takes it as a policy
    if options.get("score_layers") == "lower":
        options["score_layers"] = tuple(range(num_layers // 2))
    budget: dict[str, Any] = {"compression_ratio": ratio} if ratio is not None else {"target_tokens": target_tokens}
    return base.replace(progress=False, **budget, **options)


def compress_with(
    compressor: FinchCompressor,
    method: Method,
    passages: Sequence[str | Passage],
    question: str,
    config: FinchConfig,
    seed: int = 0,
) -> CompressedContext:
    """``method``'s compression of ``passages`` for ``question`` under ``config`` (from `method_config`)."""
    if method.control is not None:
        return control_context(compressor, passages, question, method.control, config, seed)
    return compressor.compress(passages, question, config=config)


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
