"""The resumable journal every long suite writes: one JSON record a line, appended as soon as it is done.

A rerun with the same ``--journal`` reads the records already there and runs only the rest, so a stopped
run resumes; ``--report-only`` writes a suite's report from the journal alone, running nothing.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def read_records(path: str | Path) -> list[Record]:
    """The records of a JSON-lines file, in order (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class Journal:
    """A JSON-lines file of finished records, keyed by what makes a record unique in its suite.

    Parameters
    ----------
    path : path, optional
        The file; ``None`` journals nothing (every record runs, nothing is written).
    key : callable
        ``key(record)``: the record's identity, a tuple whose first fields group a question's records.
    """

    def __init__(self, path: str | Path | None, key: Callable[[Mapping[str, Any]], Hashable]) -> None:
        self.path = Path(path) if path else None
        self.key = key
        self.records = read_records(self.path) if self.path is not None and self.path.exists() else []
        self.done: dict[Hashable, Record] = {key(record): record for record in self.records}
        """The records found when the run started, by key (a later one with the same key wins)."""

    def __contains__(self, key: Hashable) -> bool:
        return key in self.done

    def done_under(self, *prefix: Any) -> list[Record]:
        """The records found at the start whose (tuple) key begins with ``prefix``, e.g. one question's."""
        return [record for key, record in self.done.items() if key[: len(prefix)] == prefix]  # type: ignore[index]

    def append(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Write ``records`` at the end of the file at once (flushed on return); nothing without a path."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in records)


def add_journal_options(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--journal PATH`` and ``--report-only``, the same on every suite that resumes."""
    where = f" (default: {default})" if default else ""
    parser.add_argument("--journal", help=f"JSON-lines file: append each record, resume from it after a stop{where}")
    parser.add_argument("--report-only", action="store_true", help="write the results of --journal, run nothing")


def report_only_records(parser: argparse.ArgumentParser, journal: str | Path | None) -> list[Record]:
    """The records ``--report-only`` reports on; a parser error without ``--journal``."""
    if not journal:
        parser.error("--report-only needs --journal")
    return read_records(journal)
