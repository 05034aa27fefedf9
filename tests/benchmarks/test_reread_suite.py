"""``python -m benchmarks reread``'s report: paired scores of the two answer caches, per ratio and per task."""

from __future__ import annotations

from benchmarks.reread import markdown, summarize


def _record(case: str, task: str, ratio: float, compressed: float, reread: float) -> dict:
    return {
        "case": case,
        "task": task,
        "ratio": ratio,
        "score_compressed": compressed,
        "score_reread": reread,
        "compress_s": 10.0,
        "reread_s": 1.0,
    }


def test_summary_pairs_the_two_caches_by_example_per_ratio_and_task():
    records = [
        _record("niah_single_1/0", "niah_single_1", 0.875, 0.0, 1.0),
        _record("niah_single_1/1", "niah_single_1", 0.875, 1.0, 1.0),
        _record("niah_multikey_1/0", "niah_multikey_1", 0.875, 1.0, 0.0),
        _record("niah_single_1/0", "niah_single_1", 0.9375, 0.0, 1.0),
    ]
    summary = summarize(records, [0.875, 0.9375, 0.5])
    first, second = summary["rows"]  # no row for a ratio without records
    assert (first["ratio"], first["examples"], first["won / lost"]) == (0.875, 3, "1 / 1")
    assert first["reread - compressed"].startswith("+0.000")
    assert first["compressed"].startswith("0.67") and first["reread"].startswith("0.67")
    assert (second["examples"], second["won / lost"]) == (1, "1 / 0")
    by_task = {(row["ratio"], row["task"]): row for row in summary["task_rows"]}
    assert by_task[(0.875, "niah_single_1")]["compressed"] == 0.5 and by_task[(0.875, "niah_single_1")]["reread"] == 1
    assert by_task[(0.875, "niah_multikey_1")]["reread"] == 0
    meta = {"command": "c", "model": "m", "seed": 1, "per_task": 5, "max_new_tokens": 48, "machine": "here"}
    text = markdown(summary, meta)
    assert "| 0.875 | 3 |" in text and "niah_multikey_1" in text
