"""The peers harness: replayed pruning equals the real press (kvpress env), and the finch-side metrics and report.

The first test needs kvpress, which pins transformers < 5.3 and so lives in its own environment. It skips here
unless kvpress is importable; run it there with

    /work/kvpress-venv/bin/python -P benchmarks/peers_kvpress.py --self-check

(``scripts/setup_kvpress_env.sh`` builds that environment).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.peers import bootstrap, evidence_retention, report, summarize, truncated_ids

WORKER = Path(__file__).resolve().parents[2] / "benchmarks" / "peers_kvpress.py"


def test_replayed_scores_keep_what_each_press_keeps_at_every_ratio():
    if importlib.util.find_spec("kvpress") is None:
        pytest.skip(
            "kvpress is not importable in this interpreter (it pins transformers < 5.3); run "
            "`/work/kvpress-venv/bin/python -P benchmarks/peers_kvpress.py --self-check` in the kvpress environment "
            "built by scripts/setup_kvpress_env.sh"
        )
    spec = importlib.util.spec_from_file_location("peers_kvpress", WORKER)
    assert spec is not None and spec.loader is not None
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    presses = [name for name in worker.PRESSES if name != "kvzip"]
    assert worker.self_check(presses, list(worker.RATIOS)) == []
    # Gemma 3: sliding layers left whole, per-type rotary embedding, q/k norms.
    assert worker.self_check(presses, list(worker.RATIOS), model=worker.tiny_gemma3()) == []


def test_evidence_retention_counts_entries_over_layers_and_heads():
    kept = [torch.tensor([[0, 1, 2], [2, 3, 4]]), torch.tensor([[1, 2, 3], [1, 2, 3]])]
    # evidence tokens 1 and 2: layer 0 heads keep 2/2 and 1/2, layer 1 heads 2/2 and 2/2
    assert evidence_retention(kept, [1, 2]) == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert evidence_retention(kept, [1, 2], layers=[0]) == pytest.approx((1 + 0.5) / 2)  # Gemma 3's full layers
    assert math.isnan(evidence_retention(kept, []))


def test_truncation_keeps_the_first_tokens_of_the_ranked_documents():
    case = {
        "context_ids": list(range(100, 112)),
        "ranked_documents": [(8, 12), (2, 5), (5, 8)],  # token ranges, best first; tokens 0-1 are the head
        "evidence_tokens": [3, 9],
    }
    ids, share = truncated_ids(case, 6)
    assert ids == [100, 101, 108, 109, 110, 111]
    assert share == 0.5
    ids, share = truncated_ids(case, 9)
    assert ids[-3:] == [102, 103, 104] and share == 1.0


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    mean, low, high = bootstrap(values)
    assert mean == pytest.approx(0.625) and low <= mean <= high and 0 <= low < high <= 1
    assert bootstrap(values) == (mean, low, high)
    assert all(math.isnan(x) for x in bootstrap([float("nan")]))


def _records() -> list[dict]:
    records = []
    for case, (task, full_answer) in enumerate([("niah_single_1", "1234567"), ("cwe", "nothing")]):
        answers = ["1234567"] if task == "niah_single_1" else ["alpha", "beta"]
        base = {"case": f"{task}/{case}", "task": task, "metric": "all", "answers": answers}
        records.append(
            base | {"method": "full", "ratio": 0.0, "retention": 1.0, "context_kept": 1.0, "answer": full_answer}
        )
        for method, retention, answer in (("finch", 1.0, "1234567"), ("snapkv", 0.25, "7654321")):
            for ratio in (0.5, 0.75):
                records.append(
                    base
                    | {
                        "method": method,
                        "ratio": ratio,
                        "retention": retention,
                        "context_kept": 1 - ratio,
                        "answer": answer,
                    }
                )
    return records


def test_summary_scores_only_the_tasks_full_context_solves():
    from benchmarks.peers import scored

    summary = summarize(scored(_records()))
    assert summary["solved_tasks"] == ["niah_single_1"]
    rows = {(r["method"], r["ratio"]): r for r in summary["rows"]}
    assert rows[("finch", 0.5)]["score"][0] == 1.0 and rows[("finch", 0.5)]["n_scored"] == 1
    assert rows[("snapkv", 0.75)]["score"][0] == 0.0
    assert rows[("snapkv", 0.75)]["retention"][0] == 0.25
    assert "score/cwe" not in rows[("finch", 0.5)] and rows[("finch", 0.5)]["retention/cwe"] == 1.0


def test_only_cases_every_method_finished_are_counted():
    from benchmarks.peers import complete

    records = _records()
    partial = [r for r in records if not (r["case"] == "cwe/1" and r["method"] == "snapkv" and r["ratio"] == 0.75)]
    assert {r["case"] for r in complete(partial)} == {"niah_single_1/0"}
    assert len(complete(records)) == len(records)


def test_report_writes_tables_and_plot(tmp_path):
    journal = tmp_path / "journal.jsonl"
    journal.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    report(
        [journal],
        tmp_path,
        "tiny",
        {"model": "tiny", "command": "python -m benchmarks peers", "per_task": 1, "seed": 0, "ratios": [0.5, 0.75]},
    )
    text = (tmp_path / "peers_tiny.md").read_text()
    assert "Prompt length 4096 tokens." in text  # the default, when the meta does not name one
    assert "| finch | 0.5 | 2 | 1.00 [1.00, 1.00] | 1 | 1.00 | 0.50 |" in text
    assert "| snapkv | 0.75 | 0.00 | 0.25 |" not in text and "| snapkv | 0.75 | 0.25 | 0.25 |" in text
    assert (tmp_path / "peers_tiny.png").stat().st_size > 1000
    assert json.loads((tmp_path / "peers_tiny.json").read_text())["summary"]["solved_tasks"] == ["niah_single_1"]


def test_paired_differences_use_the_answered_examples_both_methods_have():
    from benchmarks.peers import paired_differences, scored

    records = _records()
    # finch_rag answers the solved example wrongly at 0.5 only; on cwe (not solved) it is never scored.
    for record in [r for r in records if r["method"] == "finch"]:
        answer = "wrong" if record["ratio"] == 0.5 else record["answer"]
        records.append(record | {"method": "finch_rag", "answer": answer})
    summary = summarize(scored(records))
    paired = {(d["pair"], d["ratio"]): d for d in summary["paired"]}
    assert paired[("finch_rag - finch", 0.5)]["n"] == 1
    assert paired[("finch_rag - finch", 0.5)]["difference"] == (-1.0, -1.0, -1.0)
    assert paired[("finch_rag - finch", 0.75)]["difference"][0] == 0.0
    assert not any(d["pair"].endswith("chunkkv_snapkv") for d in summary["paired"])  # no ChunkKV records
    assert paired_differences(scored(records), set(), [0.5]) == []


def test_finch_side_writes_both_rows_and_decodes_only_where_asked(tmp_path, tiny_model_dir):
    from benchmarks.peers import run_finch
    from benchmarks.ruler import Sources, encode, generate
    from finch_rag import load_model

    _, tokenizer = load_model(str(tiny_model_dir))
    essays = tmp_path / "data" / "paul_graham_essays"
    essays.mkdir(parents=True)
    (essays / "a.txt").write_text(" ".join(f"Sentence number {i} says little. It ends here." for i in range(80)))
    cases = [
        encode(tokenizer, generate("niah_single_2", index, tokenizer, Sources(tmp_path / "data"), length=400)).to_json()
        for index in range(2)
    ]
    journal = tmp_path / "finch.jsonl"
    answered = {cases[0]["key"]}
    run_finch(cases, journal, [0.75], str(tiny_model_dir), 2, ("finch", "finch_rag"), answer_only=answered)
    records = {(r["case"], r["method"]): r for r in map(json.loads, journal.read_text().splitlines())}
    assert set(records) == {(case["key"], method) for case in cases for method in ("finch", "finch_rag")}
    for (case, _), record in records.items():
        assert 0.0 <= record["retention"] <= 1.0
        assert record["context_kept"] == pytest.approx(0.25, abs=0.01)
        assert record["chunks"] == 1  # "auto": one pass, the context is under 512 tokens
        assert (record["answer"] is None) == (case not in answered)
    run_finch(cases, journal, [0.75], str(tiny_model_dir), 2, ("finch", "finch_rag"))  # resumes: nothing left
    assert len(journal.read_text().splitlines()) == 4
    # --chunk-size reaches the compressor: chunks of 64 tokens still keep the ratio's budget.
    chunked = tmp_path / "chunked.jsonl"
    run_finch(cases[:1], chunked, [0.75], str(tiny_model_dir), 0, ("finch",), chunk_size=64)
    (record,) = map(json.loads, chunked.read_text().splitlines())
    assert record["context_kept"] == pytest.approx(0.25, abs=0.01) and record["answer"] is None
    assert record["chunks"] > 1


def test_chunk_size_option():
    from benchmarks.peers import build_parser

    assert build_parser().parse_args([]).chunk_size == "auto"
    assert build_parser().parse_args(["--chunk-size", "none"]).chunk_size is None
    assert build_parser().parse_args(["--chunk-size", "512"]).chunk_size == 512


def test_length_option():
    from benchmarks.peers import build_parser

    assert build_parser().parse_args([]).length == 4096  # RULER's 4k
    assert build_parser().parse_args(["--length", "1024"]).length == 1024


def test_report_over_chosen_ratios_keeps_the_cases_complete_there(tmp_path):
    records = _records()
    # A screen ran a third method at 0.5 only: over 0.5 it is complete, over both ratios no case would be.
    records += [r | {"method": "finch_rag"} for r in records if r["method"] == "finch" and r["ratio"] == 0.5]
    journal = tmp_path / "journal.jsonl"
    journal.write_text("".join(json.dumps(r) + "\n" for r in records))
    meta = {"model": "tiny", "command": "c", "per_task": 1, "seed": 0, "ratios": [0.5]}
    summary = report([journal], tmp_path, "tiny", meta, ratios=[0.5])
    assert {(r["method"], r["ratio"]) for r in summary["rows"]} == {
        ("full", 0.0),
        ("finch", 0.5),
        ("finch_rag", 0.5),
        ("snapkv", 0.5),
    }
    assert all(r["n"] == 2 for r in summary["rows"])
    assert report([journal], tmp_path, "tiny", meta)["rows"] == []
