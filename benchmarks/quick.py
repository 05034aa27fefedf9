"""Every suite at a small size, one after another: under 3 minutes on 2 CPU cores, or ``--smoke`` in about one.

Each suite writes its JSON, Markdown and PNG under ``--out`` (default ``docs/results/quick``) as it would on its
own; `QUICK` and `SMOKE` are the options each suite runs with. The full-size runs and their commands are in
``docs/results/README.md``.

    python -m benchmarks quick
    python -m benchmarks quick --smoke --out /tmp/finch-smoke
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import run_suite
from .common import RESULTS_DIR

QUICK: list[tuple[str, list[str]]] = [
    ("squad", ["--limit", "1", "--budgets", "8x", "--methods", "all", "--max-new-tokens", "4"]),
    (
        "rag-squad",
        ["--limit", "1", "--top-k", "4", "--corpus-limit", "64", "--budgets", "4x"]
        + ["--methods", "truncation", "finch_rag", "--max-new-tokens", "4"],
    ),
    ("hotpotqa", ["--limit", "1", "--budgets", "256", "--methods", "truncation", "finch_rag", "--max-new-tokens", "4"]),
    (
        "niah",
        ["--lengths", "1000", "--depths", "0.5", "--limit", "1", "--ratios", "0.75"]
        + ["--methods", "full", "finch", "recency", "--max-new-tokens", "6", "--threads", "1"],
    ),
    ("cost", ["--lengths", "512", "--repeats", "1", "--threads", "1", "--new-tokens", "2"]),
    (
        "batch",
        ["--requests", "2", "--batch-sizes", "2", "--top-k", "2", "--corpus-limit", "64", "--max-new-tokens", "2"],
    ),
    ("reliability", ["soak", "--requests", "40", "--warmup", "10", "--clients", "2", "--sample-every", "10"]),
]
# The shared flags each suite takes beyond --out (default: all of them); `suite_argv` adds only these.
SHARED_FLAGS: dict[str, tuple[str, ...]] = {
    "cost": ("--data", "--model"),
    "batch": ("--data", "--model"),
    "reliability": ("--model",),  # the soak serves a model; it reads no data and has no --quiet
}
SMOKE: list[tuple[str, list[str]]] = [
    ("squad", ["--limit", "1", "--budgets", "4x", "--methods", "full", "truncation", "finch", "first"]),
    ("hotpotqa", ["--limit", "1", "--budgets", "8x", "--methods", "truncation", "finch_rag", "--no-answer"]),
    ("niah", ["--lengths", "600", "--depths", "0.5", "--limit", "1", "--methods", "finch", "--ratios", "0.75"]),
]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks quick``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks quick", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the ~1-minute run that `make test` does")
    parser.add_argument("--out", help="output folder (default: docs/results/quick, or docs/results/smoke)")
    parser.add_argument("--data", help="benchmark data folder (default: ../shared/data from the working directory)")
    parser.add_argument("--model", help="model path or hub id (default: the embedded SmolLM2-135M-Instruct)")
    return parser


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the cost suite's workers).

    On a machine shared with other work this is about the wall time the run takes on an idle core, as every
    suite runs on one thread.
    """
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def suite_argv(
    suite: str, options: Sequence[str], out: Path, data: str | None, model: str | None, smoke: bool
) -> list[str]:
    """The command line `main` runs ``suite`` with: its plan's options, then the shared flags it takes."""
    flags = SHARED_FLAGS.get(suite, ("--data", "--model", "--quiet"))
    argv = [*options, "--out", str(out)]
    argv += ["--data", data] if data and "--data" in flags else []
    argv += ["--model", model] if model and "--model" in flags else []
    argv += ["--quiet"] if "--quiet" in flags else []
    if smoke:
        argv += ["--max-new-tokens", "4"] if suite != "niah" else ["--max-new-tokens", "4", "--no-plot"]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = SMOKE if args.smoke else QUICK
    out = Path(args.out or RESULTS_DIR / ("smoke" if args.smoke else "quick"))
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    for suite, options in plan:
        command = suite_argv(suite, options, out, args.data, args.model, args.smoke)
        print(f"\n=== python -m benchmarks {suite} {' '.join(command)}", file=sys.stderr)
        suite_started, suite_cpu = time.perf_counter(), _cpu_seconds()
        status = run_suite(suite, command)
        wall, cpu = time.perf_counter() - suite_started, _cpu_seconds() - suite_cpu
        print(f"=== {suite}: {wall:.0f} s ({cpu:.0f} CPU s)", file=sys.stderr)
        if status:
            return status
    wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
    print(f"\nAll suites done in {wall:.0f} s ({cpu:.0f} CPU s); results under {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
