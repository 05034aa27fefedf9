"""The budget flags that ``finch-rag ask``/``demo`` and ``finch-rag serve`` share, derived from `BudgetOptions`.

One flag per `BudgetOptions` field (the options the integrations and the server's requests take): ``--target-tokens
N|auto`` or ``--ratio R`` (``compression_ratio``; one of them), ``--chunk-size``, ``--attention-mass`` and
``--max-target-tokens`` (for ``--target-tokens auto``, the automatic budget, `finch_rag.compression.auto_budget`),
``--min-target-tokens`` (the floor on a ratio budget), ``--allocation`` and ``--answer-cache``. A field added to
`BudgetOptions` without a flag here is an error at import. Range checks are left to `FinchConfig`, whose errors
name the field and its legal values. Beside them, ``--dtype`` (`add_dtype_argument`): the weights' dtype
`finch_rag.load_model` loads.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from .allocation import ALLOCATIONS
from .config import ANSWER_CACHES, AUTO_OPTIONS
from .frontends import CONFIG_FIELDS, BudgetOptions
from .models import DTYPES


def target_tokens(value: str) -> int | str:
    """``--target-tokens``: an int, or ``"auto"`` (any case)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an int (the budget B) or 'auto' (the automatic budget), got {value!r}"
        ) from None


def chunk_size(value: str) -> int | str | None:
    """``--chunk-size``: an int, ``"auto"`` (the default rule), or ``"none"``/``"all"`` for one pass (any case)."""
    word = value.strip().lower()
    if word == "auto":
        return "auto"
    if word in {"none", "all"}:
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an int (tokens per step), 'auto' (one pass when it fits, else 512) or 'none' (one pass), "
            f"got {value!r}"
        ) from None


FLAGS: dict[str, str] = {name: "--" + name.replace("_", "-") for name in BudgetOptions.model_fields}
FLAGS["compression_ratio"] = "--ratio"  # the short spelling the CLI has always had
"""The flag of each `BudgetOptions` field."""

_ARGUMENTS: dict[str, dict[str, Any]] = {
    "target_tokens": {
        "type": target_tokens,
        "metavar": "N|auto",
        "help": "context KV entries kept (the budget B); 'auto': the fewest holding --attention-mass of the "
        "question's attention, at most --max-target-tokens (for questions whose best B you cannot pick)",
    },
    "compression_ratio": {"type": float, "metavar": "R", "help": "fraction of the context removed"},
    "chunk_size": {
        "type": chunk_size,
        "metavar": "S|auto|none",
        "help": "context tokens read per step; 'auto': one pass when it fits, else 512; 'none': one pass",
    },
    "attention_mass": {
        "type": float,
        "metavar": "M",
        "help": "with --target-tokens auto: share of the question's attention the kept tokens hold, in (0, 1] "
        "(default 0.9)",
    },
    "max_target_tokens": {
        "type": int,
        "metavar": "N",
        "help": "with --target-tokens auto: the most tokens it may keep (default 1024)",
    },
    "min_target_tokens": {
        "type": int,
        "metavar": "N",
        "help": "floor on a --ratio budget: keep at least min(N, context length) tokens; with no budget flag the "
        "default is --ratio 0.75 with a floor of 128, and an explicit --ratio has none unless this is given",
    },
    "allocation": {"choices": ALLOCATIONS, "help": "how the passages (best first) share the budget"},
    "answer_cache": {
        "choices": ANSWER_CACHES,
        "help": "the cache the answer reads: 'compressed' (as the chunked read computed it), 'reread' (the kept tokens "
        "after the first chunk read again, one more prefill of them) or 'auto' (re-read on models with "
        "sliding-window layers such as Gemma 3; default)",
    },
}
_missing = set(BudgetOptions.model_fields) - set(_ARGUMENTS)
if _missing:
    raise RuntimeError(f"BudgetOptions fields {sorted(_missing)} have no flag in finch_rag.arguments.")


def add_budget_arguments(
    group: Any,
    *,
    defaults: Mapping[str, Any] | None = None,
    notes: Mapping[str, str] | None = None,
) -> None:
    """Add a flag for each `BudgetOptions` field to ``group`` (a parser or an argument group).

    ``defaults`` and ``notes`` (appended to a flag's help) are per field name. ``--target-tokens`` and
    ``--ratio`` form argparse's mutually exclusive group, so the usage line shows that one budget is given.
    """
    defaults, notes = defaults or {}, notes or {}
    budget = group.add_mutually_exclusive_group()
    for name in BudgetOptions.model_fields:
        # A flag left out leaves no attribute (SUPPRESS), so "not given" differs from `--chunk-size none` (None).
        options = dict(_ARGUMENTS[name], default=defaults.get(name, argparse.SUPPRESS))
        if name in notes:
            options["help"] = f"{options['help']} {notes[name]}"
        (budget if name in ("target_tokens", "compression_ratio") else group).add_argument(FLAGS[name], **options)


def add_dtype_argument(group: Any) -> None:
    """``--dtype``: the weights' dtype, for `finch_rag.load_model` (default: float32 on a CPU, bfloat16 on CUDA)."""
    group.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="weights' dtype (default: float32 on a CPU, bfloat16 on CUDA). On a CPU with bfloat16 instructions "
        "(AVX512-BF16, AMX) bfloat16 compresses and serves batches about 1.7x as fast (one sequence's decoding "
        "is not faster); its answers may differ from float32's",
    )


_NOT_GIVEN = object()


def _value(args: argparse.Namespace, name: str) -> Any:
    return getattr(args, FLAGS[name].removeprefix("--").replace("-", "_"), _NOT_GIVEN)


def budget_options(args: argparse.Namespace) -> dict[str, Any]:
    """`FinchConfig` keyword arguments for the budget flags given or defaulted (`CONFIG_FIELDS`; a flag left out: none).

    Raises ``ValueError`` when ``--attention-mass`` or ``--max-target-tokens`` comes without
    ``--target-tokens auto``, or ``--min-target-tokens`` with ``--target-tokens``: they would be ignored.
    """
    options = {name: value for name in CONFIG_FIELDS if (value := _value(args, name)) is not _NOT_GIVEN}
    auto = [FLAGS[name] for name in AUTO_OPTIONS if name in options]
    if auto and options.get("target_tokens") != "auto":
        raise ValueError(
            f"{' and '.join(auto)} only {'apply' if len(auto) > 1 else 'applies'} with --target-tokens auto "
            "(the automatic budget); add --target-tokens auto, or leave "
            f"{'them' if len(auto) > 1 else 'it'} out."
        )
    if "min_target_tokens" in options and "target_tokens" in options:
        raise ValueError(
            f"{FLAGS['min_target_tokens']} is a floor on a {FLAGS['compression_ratio']} budget, and "
            f"--target-tokens {options['target_tokens']} fixes the budget already; leave "
            f"{FLAGS['min_target_tokens']} out, or give {FLAGS['compression_ratio']} instead."
        )
    return options
