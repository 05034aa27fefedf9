"""The budget arguments that ``finch-rag ask``/``demo`` and ``finch-rag serve`` share, and how they become a config.

``--target-tokens N`` or ``--ratio R`` (one of them), and for ``--target-tokens auto`` (the automatic budget,
`finch_rag.compression.auto_budget`) ``--attention-mass`` and ``--max-target-tokens``. Range checks are left to
`FinchConfig`, whose errors name the field and its legal values.
"""

from __future__ import annotations

import argparse
from typing import Any

from .config import AUTO_OPTIONS


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


def add_budget_arguments(group: Any, ratio_help: str) -> None:
    """Add the budget arguments to ``group`` (a parser or an argument group)."""
    budget = group.add_mutually_exclusive_group()
    budget.add_argument(
        "--target-tokens",
        type=target_tokens,
        metavar="N|auto",
        help="context KV entries kept (the budget B); 'auto': the fewest holding --attention-mass of the "
        "question's attention, at most --max-target-tokens (for questions whose best B you cannot pick)",
    )
    budget.add_argument("--ratio", type=float, metavar="R", help=ratio_help)
    group.add_argument(
        "--attention-mass",
        type=float,
        metavar="M",
        help="with --target-tokens auto: share of the question's attention the kept tokens hold, in (0, 1] "
        "(default 0.9)",
    )
    group.add_argument(
        "--max-target-tokens",
        type=int,
        metavar="N",
        help="with --target-tokens auto: the most tokens it may keep (default 1024)",
    )


def budget_options(args: argparse.Namespace) -> dict[str, Any]:
    """`FinchConfig` keyword arguments for the budget arguments given (none given: none).

    Raises ``ValueError`` when ``--attention-mass`` or ``--max-target-tokens`` comes without
    ``--target-tokens auto``: they would be ignored.
    """
    options: dict[str, Any] = {}
    if args.target_tokens is not None:
        options["target_tokens"] = args.target_tokens
    elif args.ratio is not None:
        options["compression_ratio"] = args.ratio
    auto = {name: getattr(args, name) for name in AUTO_OPTIONS if getattr(args, name) is not None}
    if auto and args.target_tokens != "auto":
        flags = [f"--{name.replace('_', '-')}" for name in auto]
        raise ValueError(
            f"{' and '.join(flags)} only {'apply' if len(flags) > 1 else 'applies'} with --target-tokens auto "
            "(the automatic budget); add --target-tokens auto, or leave "
            f"{'them' if len(flags) > 1 else 'it'} out."
        )
    return options | auto
