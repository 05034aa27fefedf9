"""`FinchConfig`: every knob of the compression, validated at construction."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

Selection = Literal["per_head", "per_layer", "shared", "random", "recency", "first"]
SELECTIONS: tuple[str, ...] = ("per_head", "per_layer", "shared", "random", "recency", "first")
ATTENTION_SELECTIONS: tuple[str, ...] = ("per_head", "per_layer", "shared")  # the others are fixed-rule controls
SEPARATE_SELECTIONS: tuple[str, ...] = ("per_head", "per_layer")  # a set of kept positions per head or per layer
Granularity = Literal["token", "sentence"]
GRANULARITIES: tuple[str, ...] = ("token", "sentence")
AnswerCache = Literal["auto", "compressed", "reread"]
ANSWER_CACHES: tuple[str, ...] = ("auto", "compressed", "reread")
LayerSet = Literal["upper_half", "all"]
LAYER_SETS: tuple[str, ...] = ("upper_half", "all")
AUTO_OPTIONS: tuple[str, ...] = ("attention_mass", "max_target_tokens")
"""`FinchConfig` fields that only the automatic budget (``target_tokens="auto"``) reads."""
DEFAULT_COMPRESSION_RATIO = 0.75
"""The ratio a `FinchConfig` given no budget compresses by (4x), with `DEFAULT_MIN_TARGET_TOKENS` as its floor."""
DEFAULT_MIN_TARGET_TOKENS = 128
"""The floor of the default budget: a context of up to this many tokens is kept whole, and ``B`` never drops below it.

A ratio alone squeezes a short context below what an answer needs (56 tokens at 0.75 keep 14), and the answer goes
wrong; see ``docs/results/short_context_default.md``. Contexts of more than ``128 / (1 - 0.75) = 512`` tokens get
the ratio's own budget.
"""


@dataclass(frozen=True)
class FinchConfig:
    """Parameters of prompt-guided KV-cache compression.

    The context is read chunk by chunk with the question appended; after each chunk only the key/value
    entries the question attends to most are kept, so that exactly ``B`` context entries remain at the
    end. Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167).

    Parameters
    ----------
    target_tokens : int or "auto", optional
        ``B``, the number of context KV entries kept per layer and KV head. Give this or
        ``compression_ratio``. ``"auto"`` picks ``B`` per question: the fewest entries that hold
        ``attention_mass`` of the question's attention at the last step, at most ``max_target_tokens``
        (`finch_rag.compression.auto_budget`; not in the paper).
    compression_ratio : float, optional
        Fraction of the context removed (kvpress's convention): ``B = floor(n * (1 - r))``. ``0`` keeps
        everything. With neither budget given the default is ``0.75`` with ``min_target_tokens=128``.
    chunk_size : int, "auto" or None
        ``S``, context tokens read per step. ``None`` reads the whole context in one pass (kvpress's
        ``FinchPress``); memory then grows with the context. ``"auto"`` (the default) reads it in one pass
        when that fits the model's window and the context has at most 512 tokens, and in chunks of 512 otherwise
        (`finch_rag.compression.chunking.resolve_chunk_size`; ``docs/configuration.md``).
    selection : {"per_head", "per_layer", "shared", "random", "recency", "first"}
        ``"per_head"``: each KV head keeps its own columns, scored by the mean over its query group
        (kvpress). ``"per_layer"``: all heads of a layer keep the same columns (the authors' code).
        ``"shared"``: one set of columns for every layer and head; each layer's scores are normalised to
        sum 1, then averaged over ``score_layers``. Not in the paper: see ``docs/algorithm.md``.
        ``"random"``, ``"recency"`` and ``"first"`` are benchmark controls, not compression methods: they
        keep a seeded random set, the last or the first ``B`` context tokens, read chunk by chunk without
        attention (`compression.selection.ControlSelection`). Each name is one policy of
        `compression.selection`.
    normalize_scores : bool
        Multiply each question row's attention by its 0-based absolute position before averaging
        (kvpress's convention), so late rows are not diluted by the longer softmax.
    smoothing : int
        Width of a moving average over the token axis of the scores before selection (``1`` = off).
        Neighbouring tokens then survive together, which keeps spans such as names and numbers whole.
        Not in the paper.
    granularity : {"token", "sentence"}
        What competes for the budget. ``"token"``: each entry on its own score (after ``smoothing``).
        ``"sentence"``: each sentence of the passages scores the mean of its tokens' scores, so whole
        sentences are kept, best first, and only the last one admitted may be cut; ``smoothing`` is then
        not applied. Needs text to find sentences (`FinchCompressor.compress`, not ``compress_ids``).
        `FinchRAG`'s default allocation uses it: see ``docs/results/allocation_study.md``. Not in the paper.
    score_layers : "upper_half", "all" or tuple of int
        Layers whose scores vote in ``"shared"`` selection: the upper half of the layers (the default: it
        kept as much of the needle as all layers or more, rows ``shared_s21_upper`` and ``shared_s21`` of
        ``docs/results/niah_study_1500.md`` and ``docs/results/niah_study_4000.md``), all of them, or
        explicit indices (negative ones count from the end). Sliding-window layers, whose question rows
        cannot see earlier survivors, never vote unless named explicitly.
    chat_template : bool or None
        Wrap the prompt in the tokenizer's chat template. ``None`` uses it when the tokenizer has one.
    system_prompt : str, optional
        System message for the chat template; ``None`` keeps the template's default.
    progress : bool
        Show a tqdm bar over chunks, when stderr is a terminal and ``TQDM_DISABLE`` is not set
        (`finch_rag.progress`).
    attention_mass : float
        With ``target_tokens="auto"``: the share of the question's attention (after sentence pooling and
        priors) that the kept entries must hold, in ``(0, 1]``.
    max_target_tokens : int
        With ``target_tokens="auto"``: the cap on ``B``, and the budget the chunk loop runs with until its
        last step (so memory is bounded as with ``target_tokens=max_target_tokens``).
    min_target_tokens : int, optional
        A floor on a ``compression_ratio`` budget: ``B = max(floor(n * (1 - r)), min(n, min_target_tokens))``,
        so a context of up to ``min_target_tokens`` tokens is kept whole. Set to `DEFAULT_MIN_TARGET_TOKENS`
        (128) only when neither ``target_tokens`` nor ``compression_ratio`` is given; an explicit
        ``compression_ratio`` keeps kvpress's exact ``floor(n * (1 - r))`` unless this is given too. Not with
        ``target_tokens``, which fixes ``B`` already. Not in the paper or kvpress.
    answer_cache : {"auto", "compressed", "reread"}
        The cache an answer reads. ``"compressed"``: the kept entries as the chunked read computed them (FINCH
        as published). ``"reread"``: the kept tokens of every chunk after the first read again by the model, in
        order, over the prefix and the first chunk's kept entries (which that chunk computed as a plain read
        does), into a fresh cache at the same packed positions; it costs one prefill of those kept tokens and
        needs one set of kept positions for every layer and head (``selection`` other than
        ``"per_head"``/``"per_layer"``).
        What is kept does not change. ``"auto"`` (the default) re-reads a context read in more than one chunk on
        a model with sliding-window layers (Gemma 3), and keeps the compressed cache otherwise
        (`finch_rag.compression.loop.resolve_answer_cache`): Gemma 3 270M misread needles it had kept whole from
        the compressed cache of a chunked read (``docs/results/reread.md``). Not in the paper.
    """

    target_tokens: int | Literal["auto"] | None = None
    compression_ratio: float | None = None
    chunk_size: int | Literal["auto"] | None = "auto"
    selection: Selection = "shared"
    normalize_scores: bool = True
    smoothing: int = 21
    granularity: Granularity = "token"
    score_layers: tuple[int, ...] | LayerSet = "upper_half"
    chat_template: bool | None = None
    system_prompt: str | None = None
    progress: bool = True
    attention_mass: float = 0.9
    max_target_tokens: int = 1024
    min_target_tokens: int | None = None
    answer_cache: AnswerCache = "auto"

    def __post_init__(self) -> None:
        if self.target_tokens is None and self.compression_ratio is None:
            object.__setattr__(self, "compression_ratio", DEFAULT_COMPRESSION_RATIO)
            if self.min_target_tokens is None:
                object.__setattr__(self, "min_target_tokens", DEFAULT_MIN_TARGET_TOKENS)
        if self.target_tokens is not None and self.compression_ratio is not None:
            raise ValueError(
                "FinchConfig takes target_tokens or compression_ratio, not both "
                f"(got target_tokens={self.target_tokens}, compression_ratio={self.compression_ratio})."
            )
        if self.target_tokens is not None and self.target_tokens != "auto":
            if isinstance(self.target_tokens, bool) or not isinstance(self.target_tokens, int):
                raise TypeError(f'target_tokens must be an int >= 1 or "auto", got {self.target_tokens!r}.')
            if self.target_tokens < 1:
                raise ValueError(f"target_tokens (the budget B) must be >= 1, got {self.target_tokens}.")
        if self.compression_ratio is not None:
            ratio = self.compression_ratio
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or math.isnan(ratio):
                raise TypeError(f"compression_ratio must be a float in [0, 1), got {ratio!r}.")
            if not 0 <= ratio < 1:
                raise ValueError(
                    f"compression_ratio is the fraction of the context removed and must be in [0, 1), got {ratio}. "
                    "For a 4x compression use 0.75."
                )
        floor = self.min_target_tokens
        if floor is not None:
            if isinstance(floor, bool) or not isinstance(floor, int) or floor < 1:
                raise ValueError(
                    f"min_target_tokens (the floor on a compression_ratio budget) must be an int >= 1, got {floor!r}."
                )
            if self.target_tokens is not None:
                raise ValueError(
                    f"min_target_tokens is a floor on a compression_ratio budget, but the budget here is "
                    f"target_tokens={self.target_tokens!r}; leave min_target_tokens out, or give compression_ratio "
                    "instead of target_tokens."
                )
        if self.chunk_size is not None and self.chunk_size != "auto":
            if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int):
                raise TypeError(f'chunk_size must be an int >= 1, "auto" or None, got {self.chunk_size!r}.')
            if self.chunk_size < 1:
                raise ValueError(f"chunk_size must be >= 1 (or None for a single pass), got {self.chunk_size}.")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {self.selection!r}.")
        if isinstance(self.smoothing, bool) or not isinstance(self.smoothing, int) or self.smoothing < 1:
            raise ValueError(f"smoothing is a window width in tokens and must be an int >= 1, got {self.smoothing!r}.")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}.")
        if self.score_layers is None:  # accepted for "every layer", the pre-0.1 spelling
            object.__setattr__(self, "score_layers", "all")
        elif isinstance(self.score_layers, str):
            if self.score_layers not in LAYER_SETS:
                raise ValueError(
                    f"score_layers must be one of {LAYER_SETS} or a tuple of layer indices, got {self.score_layers!r}."
                )
        else:
            layers = tuple(self.score_layers)
            if not layers or not all(isinstance(layer, int) and not isinstance(layer, bool) for layer in layers):
                raise ValueError(f"score_layers must be a non-empty tuple of layer indices, got {self.score_layers!r}.")
            object.__setattr__(self, "score_layers", layers)
        mass = self.attention_mass
        if isinstance(mass, bool) or not isinstance(mass, (int, float)) or not 0 < mass <= 1:
            raise ValueError(
                f"attention_mass is the share of the question's attention to keep and must be in (0, 1], got {mass!r}."
            )
        cap = self.max_target_tokens
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"max_target_tokens (the cap on an automatic B) must be an int >= 1, got {cap!r}.")
        if self.answer_cache not in ANSWER_CACHES:
            raise ValueError(f"answer_cache must be one of {ANSWER_CACHES}, got {self.answer_cache!r}.")
        if self.answer_cache == "reread" and self.selection in SEPARATE_SELECTIONS:
            raise ValueError(
                f'answer_cache="reread" reads the kept tokens again, which needs one set of kept positions for every '
                f'layer and head; selection={self.selection!r} keeps one per head or layer. Use selection="shared", '
                'or answer_cache="compressed".'
            )
        if self.target_tokens == "auto" and self.selection not in ATTENTION_SELECTIONS:
            raise ValueError(
                f'target_tokens="auto" keeps a share of the question\'s attention, and selection={self.selection!r} '
                f"uses none; use a fixed target_tokens with it, or one of {ATTENTION_SELECTIONS}."
            )

    def budget(self, context_length: int) -> int:
        """``B`` for a context of ``context_length`` tokens (never more than the context itself).

        With ``compression_ratio``: ``floor(n * (1 - r))``, at least ``min(n, min_target_tokens)`` when a floor is
        set (the default budget's is 128). With ``target_tokens="auto"`` this is the cap the chunk loop runs with:
        ``max_target_tokens``, and below the context length so that the selection always runs (it then keeps fewer,
        see `finch_rag.compression.auto_budget`).
        """
        if self.target_tokens == "auto":
            return max(1, min(self.max_target_tokens, context_length - 1))
        if self.target_tokens is not None:
            return min(self.target_tokens, context_length)
        assert self.compression_ratio is not None  # set in __post_init__
        # round() first: 100 * (1 - 0.9) is 9.999999999999998 in floating point, and must give 10.
        budget = max(1, math.floor(round(context_length * (1 - self.compression_ratio), 6)))
        if self.min_target_tokens is not None:
            budget = max(budget, min(context_length, self.min_target_tokens))
        return budget

    def replace(self, **changes: Any) -> FinchConfig:
        """A copy with ``changes`` applied and validated.

        Giving a budget (``target_tokens`` or ``compression_ratio``) clears the other one, and the floor
        ``min_target_tokens`` unless it is given too: an explicit ratio is kvpress's exact rule, whether or not the
        config it replaces had the default budget's floor. Both budgets set to ``None`` give the default again.
        """
        if "target_tokens" in changes and "compression_ratio" not in changes:
            changes["compression_ratio"] = None
        if "compression_ratio" in changes and "target_tokens" not in changes:
            changes["target_tokens"] = None
        if "target_tokens" in changes and "min_target_tokens" not in changes:
            changes["min_target_tokens"] = None
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_auto_options(config: FinchConfig, given: Iterable[str]) -> None:
    """Refuse `AUTO_OPTIONS` set explicitly (names in ``given``) when ``config``'s budget is not ``"auto"``.

    A front end calls this with the options its user set: with a fixed budget they would be silently ignored.
    """
    given = set(given)
    named = [name for name in AUTO_OPTIONS if name in given]
    if not named or config.target_tokens == "auto":
        return
    if config.target_tokens is not None:
        budget = f"target_tokens={config.target_tokens}"
    else:
        budget = f"compression_ratio={config.compression_ratio}"
        if config.min_target_tokens is not None:
            budget += f" with min_target_tokens={config.min_target_tokens}"
    raise ValueError(
        f'{" and ".join(named)} only {"apply" if len(named) > 1 else "applies"} with target_tokens="auto" (the '
        f'automatic budget), but the budget here is {budget}; set target_tokens="auto", or leave '
        f"{'them' if len(named) > 1 else 'it'} out."
    )


_NONE_MEANS_SOMETHING = ("chunk_size",)  # chunk_size=None is a single pass; for the other options None is "not set"


def merged_config(base: FinchConfig, explicit: Mapping[str, Any]) -> FinchConfig:
    """``base`` with the options a user set explicitly (a budget given in one mode clears the other).

    ``explicit`` maps `FinchConfig` field names to values, as a front end's options or a request give them. An
    explicit ``chunk_size=None`` is kept (a single pass); any other explicit ``None`` means "not set". Errors are
    `FinchConfig`'s own (both budgets at once, a value out of range), and `check_auto_options`'s:
    ``attention_mass`` or ``max_target_tokens`` with a budget that is not ``"auto"`` is a ``ValueError``, since
    they would be ignored.
    """
    changes = {name: value for name, value in explicit.items() if value is not None or name in _NONE_MEANS_SOMETHING}
    config = base.replace(**changes) if changes else base
    check_auto_options(config, changes)
    return config


def budget_params(config: FinchConfig) -> dict[str, Any]:
    """``config``'s budget for a framework's identifying parameters (LangChain's ``_identifying_params``).

    ``target_tokens`` and ``compression_ratio``, ``min_target_tokens`` when a floor is set, and with
    ``target_tokens="auto"`` also ``attention_mass`` and ``max_target_tokens``, which then change what is kept.
    """
    params: dict[str, Any] = {"target_tokens": config.target_tokens, "compression_ratio": config.compression_ratio}
    if config.min_target_tokens is not None:
        params["min_target_tokens"] = config.min_target_tokens
    if config.target_tokens == "auto":
        params |= {name: getattr(config, name) for name in AUTO_OPTIONS}
    return params
