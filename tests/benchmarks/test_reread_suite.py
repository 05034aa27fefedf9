"""``python -m benchmarks reread``'s report: paired scores of the two answer caches, per ratio and per task."""

from __future__ import annotations

from benchmarks.reread import against_before, markdown, summarize


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


def test_a_run_is_paired_against_an_earlier_journal_of_the_same_examples():
    before = [
        _record("niah_single_1/0", "niah_single_1", 0.875, 0.0, 1.0),
        _record("niah_single_3/0", "niah_single_3", 0.875, 1.0, 1.0),
        _record("cwe/0", "cwe", 0.875, 0.2, 0.2),  # not in this run: left out
    ]
    after = [
        _record("niah_single_1/0", "niah_single_1", 0.875, 0.0, 1.0),
        _record("niah_single_3/0", "niah_single_3", 0.875, 1.0, 0.0),
        _record("niah_single_3/0", "niah_single_3", 0.9375, 1.0, 0.0),  # no earlier record at this ratio
    ]
    rows = {row["cache"]: row for row in against_before(after, before, [0.875, 0.9375])}
    assert set(rows) == {"compressed", "reread"} and rows["reread"]["examples"] == 2
    assert (rows["reread"]["before"], rows["reread"]["after"], rows["reread"]["won / lost"]) == (1.0, 0.5, "0 / 1")
    assert rows["reread"]["changed"] == "niah_single_3/0 1 -> 0" and rows["compressed"]["changed"] == ""
    assert rows["reread"]["after - before"].startswith("-0.500")
    summary = summarize(after, [0.875]) | {"before_rows": list(rows.values())}
    meta = {"command": "c", "model": "m", "seed": 1, "per_task": 5, "max_new_tokens": 48, "machine": "here"}
    text = markdown(summary, meta | {"before": "old.jsonl"})
    assert "Against `old.jsonl`" in text and "niah_single_3/0 1 -> 0" in text
