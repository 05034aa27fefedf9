"""``python -m benchmarks reliability {fuzz,soak,replica-kill}``: the server under faults.

- ``fuzz``: schemathesis against the server's own OpenAPI schema (`benchmarks.reliability.fuzz`).
- ``soak``: thousands of mixed requests against one server process, RSS and latency over time
  (`benchmarks.reliability.soak`).
- ``replica-kill``: Ray Serve with 2 replicas under 32 clients, one replica's process killed mid-run
  (`benchmarks.reliability.replica_kill`).

Each writes ``reliability_<command>.json`` under ``--out`` (default ``docs/results``) and prints a summary;
``docs/results/reliability.md`` quotes the figures with their commands.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

COMMANDS = {"fuzz": "fuzz", "soak": "soak", "replica-kill": "replica_kill"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks reliability", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=list(COMMANDS), help="which run")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the run's options (COMMAND --help)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"{__name__}.{COMMANDS[args.command]}")
    return int(module.main(args.options) or 0)
