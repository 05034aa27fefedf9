"""Pair one method's records across two result files: the same questions, before and after a change.

Each result file (`benchmarks.qa`'s ``.json``, or a screen's) holds per-question records. This joins the
records of ``--method`` in ``BEFORE`` and ``AFTER`` by question and budget, and writes the paired
difference (after minus before) with bootstrap intervals, as the suites' own paired tables.

    python -m benchmarks.compare docs/results/hotpotqa_heldout300.json docs/results/links_heldout300.json
        --method finch_rag --labels "without links" "with links" --out docs/results/links_heldout300_paired

``--after-method`` pairs two methods of one run instead (give the same file twice). A peers journal
(`benchmarks.peers`' JSON lines, ``.jsonl``) pairs by case and ratio, with RULER's score of each answer:

    python -m benchmarks.compare chunked.jsonl one_pass.jsonl --labels chunks "one pass" --out DIR/NAME
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import command_line, markdown_table
from .stats import PAIRED_METRICS, group_means, paired_comparison


def _records(path: str) -> list[dict[str, Any]]:
    """A result file's per-question records; a peers journal's as ``qid`` (its case) and ``budget`` (its ratio)."""
    if not path.endswith(".jsonl"):
        return list(json.loads(Path(path).read_text())["records"])
    from .peers import scored

    journal = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r | {"qid": r["case"], "budget": r["ratio"]} for r in scored(journal) if r.get("score") is not None]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--method", default="finch_rag", help="the method whose records are paired")
    parser.add_argument(
        "--after-method",
        help="pair --method in BEFORE with this method in AFTER (two methods of one run: give the file twice)",
    )
    parser.add_argument("--labels", nargs=2, default=["before", "after"], metavar=("BEFORE", "AFTER"))
    parser.add_argument("--out", help="write OUT.md (else print only)")
    args = parser.parse_args(argv)
    before_label, after_label = args.labels
    if before_label == after_label:
        parser.error("--labels must differ")
    records = []
    after_method = args.after_method or args.method
    for path, label, method in ((args.before, before_label, args.method), (args.after, after_label, after_method)):
        found = [r for r in _records(path) if r.get("method") == method]
        if not found:
            parser.error(f"{path} has no records of method {method!r}")
        records += [r | {"method": label} for r in found]
    budgets = list(dict.fromkeys(str(r["budget"]) for r in records))  # in the files' order, as the suites' reports
    common = {(r["qid"], str(r["budget"])) for r in records if r["method"] == before_label}
    common &= {(r["qid"], str(r["budget"])) for r in records if r["method"] == after_label}
    paired = [r for r in records if (r["qid"], str(r["budget"])) in common]
    metrics = tuple(m for m in PAIRED_METRICS if any(m in r for r in paired))
    lines = [
        f"# {args.method if after_method == args.method else f'{after_method} against {args.method}'}: "
        f"{after_label} against {before_label}",
        "",
        f"- command: `{command_line('python -m benchmarks.compare', argv)}`",
        f"- {before_label}: `{args.before}`; {after_label}: `{args.after}`",
        f"- questions in both: {len({qid for qid, _ in common})}",
        "",
        markdown_table(group_means(paired, ["budget", "method"], metrics), ["budget", "method", "n", *metrics]),
        "",
        *paired_comparison(paired, budgets, after_label, before_label),
    ]
    if args.out:
        Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
