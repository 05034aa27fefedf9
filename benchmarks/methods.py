"""Ways to fill a KV budget, shared by every benchmark suite: FINCH variants, the baselines and the controls.

Every method is named one way: `FinchConfig` field names. A `Method` holds `FinchConfig` changes (``options``)
and how retrieved passages are packed; the suites apply them to the compressor's config with one budget ``B``
(context KV entries per layer and KV head, DESIGN §4) and call `FinchCompressor.compress`. A spec on the
command line reads ``label:key=value,...``, e.g. ``ph:selection=per_head,chunk_size=None,granularity=sentence``.

Presets (`PRESETS`):

- ``finch``: the library's default config, best passage packed last;
- ``finch_rag``: `FinchRAG`'s default ``retrieval_weighted`` allocation: the same, with whole sentences
  competing (``granularity="sentence"``), and the embedder's sentence scores fused in when the passages are
  pieces of one document (`RankWeighting.sentence_fusion_scope`; the suites that apply it say so);
- ``finch_single``: one pass over the whole context (``chunk_size=None``);
- ``finchpress``: ``selection="per_head", chunk_size=None``, no smoothing, every layer: the entries kvpress's
  ``FinchPress`` keeps;
- ``finch_global``: the default config over passages in retrieval order (plain FINCH, no allocation);
- controls ``random``, ``recency`` (the last ``B``) and ``first`` (the first ``B``): ``selection`` set to that
  rule, the library's control policy (`finch_rag.compression.selection.ControlSelection`), a fixed choice in
  place of attention in the same chunk loop; ``random`` keeps the set of `RandomSelection`'s seed 0;
- baselines that are not a compression: ``full`` (no compression, where the whole prompt fits the model's
  window) and ``truncation`` (top-k truncation: passages in retrieval order until ``B`` tokens, the last one
  cut).

``packing`` (the one key that is not a `FinchConfig` field) says how retrieved passages (best first) are laid
out, through the library's `PassageAllocation` (`allocation_of`): ``"best_last"`` is `FinchRAG`'s default
``retrieval_weighted`` allocation, ``"rank"`` its ``"global"`` one, the retriever's order. Suites without a
ranking (one passage, a needle haystack) ignore it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from finch_rag import FinchConfig, PassageAllocation, RankWeighting

PACKINGS = ("best_last", "rank")
KINDS = ("finch", "full", "truncation")
CONTROLS = ("random", "recency", "first")
"""``selection`` values that are a fixed rule instead of attention: the library's benchmark-control policies."""
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(FinchConfig))
WEIGHTING_FIELDS = (
    "tau",
    "floor",
    "link_boost",
    "link_sources",
    "fusion_temperature",
    "sentence_fusion_temperature",
    "sentence_fusion_scope",
    "passage_fusion_temperature",
)
"""`RankWeighting` fields a method spec may set (granularity is the config's, packing is ``packing``)."""


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
    weighting : mapping
        `RankWeighting` field changes for ``packing="best_last"`` (`WEIGHTING_FIELDS`), e.g. ``link_boost``.
    """

    name: str
    kind: str = "finch"
    options: Mapping[str, Any] = field(default_factory=dict)
    packing: str = "rank"
    weighting: Mapping[str, Any] = field(default_factory=dict)

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
    "finch_rag": Method(
        "finch_rag",
        options={"granularity": "sentence"},
        packing="best_last",
        weighting={"sentence_fusion_temperature": RankWeighting().sentence_fusion_temperature},
    ),
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
    ``finch``) and the `RankWeighting` fields of `WEIGHTING_FIELDS`: ``shared_s1:smoothing=1,chunk_size=512``,
    ``no_links:granularity=sentence,link_boost=1``. ``score_layers=upper`` is the upper half of the
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
    weighting: dict[str, Any] = {}
    packing = "best_last"
    for item in filter(None, body.split(",")):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"In method {spec!r}, {item!r} is not key=value.")
        if key == "packing":
            packing = raw.strip()
        elif key in WEIGHTING_FIELDS:
            weighting[key] = _parse_value(key, raw)
        elif key not in CONFIG_FIELDS:
            raise ValueError(
                f"In method {spec!r}, {key!r} is neither packing, a RankWeighting field {WEIGHTING_FIELDS} nor a "
                f"FinchConfig field {CONFIG_FIELDS}."
            )
        else:
            options[key] = _parse_value(key, raw)
    return Method(label.strip(), "finch", options, packing=packing, weighting=weighting)


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
    if options.get("score_layers") == "lower":
        options["score_layers"] = tuple(range(num_layers // 2))
    budget: dict[str, Any] = {"compression_ratio": ratio} if ratio is not None else {"target_tokens": target_tokens}
    return base.replace(progress=False, **budget, **options)


def allocation_of(method: Method, config: FinchConfig) -> PassageAllocation:
    """How ``method`` lays out ranked passages, as the library's `PassageAllocation`.

    ``packing="best_last"``: `FinchRAG`'s default ``"retrieval_weighted"`` allocation (best passage last, no rank
    factor, passage links) keeping ``config``'s granularity, so that ``finch`` stays token-level and ``finch_rag``
    is exactly ``PassageAllocation()``; ``method.weighting`` changes the rest (``link_boost=1``: no links).
    Sentence fusion is off unless the method sets ``sentence_fusion_temperature`` (``finch_rag`` sets the
    library's default), so that ``finch`` and the controls stay the core's selection.
    ``packing="rank"``: plain FINCH's ``"global"`` allocation.
    """
    if method.packing == "rank":
        return PassageAllocation("global")
    weighting = {"sentence_fusion_temperature": None, **method.weighting}
    return PassageAllocation(weighting=RankWeighting(granularity=config.granularity, **weighting))
