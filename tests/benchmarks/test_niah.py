"""The needle suite's truncation baseline and its depth curves (tiny model, synthetic records)."""

from __future__ import annotations

import pytest

from benchmarks.niah import (
    NEEDLES,
    TRUNCATION,
    depth_curves,
    depth_table,
    plot_depth_curves,
    run_niah,
    write_results,
)
from finch_rag import FinchCompressor, FinchConfig

ESSAY = " ".join(f"Essay line {i} says that the harbour froze and the ships waited for the thaw." for i in range(12))


@pytest.fixture(scope="module")
def compressor(tiny_models, tiny_tokenizer):
    return FinchCompressor(tiny_models("llama"), tiny_tokenizer, FinchConfig(chunk_size=48, progress=False))


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "paul_graham_essays"
    folder.mkdir()
    (folder / "essay.txt").write_text(ESSAY)
    return tmp_path


def test_truncation_keeps_the_first_b_tokens_under_its_own_name(compressor, data):
    """At 4x the first quarter survives: a needle at depth 0 is kept whole, one at depth 1 is lost."""
    records = run_niah(
        compressor,
        lengths=[240],
        depths=[0.0, 1.0],
        methods=["truncation", "first"],
        ratios=[0.75],
        needles=NEEDLES[:1],
        progress=False,
        data=data,
        answer=False,
    )
    assert [(r["method"], r["depth"]) for r in records] == [
        ("truncation", 0.0),
        ("first", 0.0),
        ("truncation", 1.0),
        ("first", 1.0),
    ]
    truncation = [r for r in records if r["method"] == "truncation"]
    assert all(r["config"]["selection"] == "first" for r in truncation)
    assert all(r["kept_tokens"] == r["context_tokens"] // 4 for r in truncation)
    assert [r["retention"] for r in truncation] == [1.0, 0.0]
    assert [r["retention"] for r in records if r["method"] == "first"] == [1.0, 0.0], "the same as the control"
    assert TRUNCATION.control == "first"


def _record(method, ratio, length, depth, contains, retention):
    return {
        "method": method,
        "ratio": ratio,
        "length": length,
        "depth": depth,
        "contains": contains,
        "retention": retention,
    }


RECORDS = [
    _record("full", 0.0, 2000, 0.0, 1.0, 1.0),
    _record("full", 0.0, 2000, 0.5, 0.0, 1.0),
    _record("full", 0.0, 2000, 0.5, 1.0, 1.0),
    _record("full", 0.0, 2000, 1.0, 1.0, 1.0),
    _record("finch_rag", 0.875, 2000, 0.0, 1.0, 0.5),
    _record("finch_rag", 0.875, 2000, 1.0, 0.0, 0.25),
    _record("finch_rag", 0.875, 8000, 0.5, 1.0, 0.75),
    {**_record("full", 0.0, 8000, 0.5, None, None), "skipped": "past the window"},
]


def test_depth_curves_average_per_length_method_and_depth():
    contains = depth_curves(RECORDS, "contains")
    assert contains == {
        2000: {"full": [(0.0, 1.0), (0.5, 0.5), (1.0, 1.0)], "finch_rag 8x": [(0.0, 1.0), (1.0, 0.0)]},
        8000: {"finch_rag 8x": [(0.5, 1.0)]},
    }, "skipped records are left out, and depths come sorted"
    assert depth_curves(RECORDS, "retention")[2000]["finch_rag 8x"] == [(0.0, 0.5), (1.0, 0.25)]
    table = depth_table(RECORDS, 2000).splitlines()
    assert table[0] == "| depth | full | finch_rag 8x |"
    assert table[2:] == [
        "| 0.0 | 1.00 / 1.00 | 1.00 / 0.50 |",
        "| 0.5 | 0.50 / 1.00 | - / - |",
        "| 1.0 | 1.00 / 1.00 | 0.00 / 0.25 |",
    ]


def test_depth_plot_is_written_by_plot_depth(tmp_path):
    path = plot_depth_curves(RECORDS, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    paths = write_results(RECORDS, tmp_path, "litm", figure="depth")
    assert paths["png"].stat().st_size > 10_000
    report = paths["md"].read_text()
    assert "## By needle depth at 2000 tokens: contains / retention" in report
    assert "## By needle depth at 8000 tokens: contains / retention" in report
    with pytest.raises(ValueError, match="Unknown figure 'bars'"):
        write_results(RECORDS, tmp_path, "litm", figure="bars")
