"""``python -m benchmarks SUITE [options]``: run one benchmark suite (``--help`` lists them)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import SUITES, run_suite

PROG = "python -m benchmarks"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: a suite name, then that suite's own options (``SUITE --help`` shows them)."""
    suites = "\n".join(f"  {name:<10} {suite.description}" for name, suite in SUITES.items())
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="finch-rag's benchmark suites. Each writes JSON, Markdown and PNG under --out "
        "(default docs/results) from the data in --data (default ../shared/data), both relative to the "
        "working directory.",
        epilog=f"suites:\n{suites}\n\nOptions of one suite: {PROG} SUITE --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("suite", choices=list(SUITES), metavar="SUITE", help="one of: " + ", ".join(SUITES))
    parser.add_argument("suite_args", nargs=argparse.REMAINDER, help="the suite's options")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) and run the suite; returns its exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    return run_suite(args.suite, args.suite_args)


if __name__ == "__main__":
    raise SystemExit(main())
