"""The ``finch-rag`` command line: argument handling and output on a tiny model; ``demo``/``ask`` end to end (slow)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSAGES, QUESTION

from finch_rag.cli import build_parser, load_demo_corpus, main


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = []
    for name, text in (("fox.txt", PASSAGES[0]), ("france.txt", PASSAGES[1]), ("fruit.txt", PASSAGES[2])):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def _file_args(paths: list[Path]) -> list[str]:
    return [arg for path in paths for arg in ("--file", str(path))]


# ------------------------------------------------------------------------------------ fast: tiny model
def test_ask_prints_answer_sources_and_stats(
    tiny_model_dir: Path, files: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    level = logging.getLogger("finch_rag").level
    argv = ["ask", *_file_args(files), QUESTION, "--model", str(tiny_model_dir), "--target-tokens", "20"]
    assert main([*argv, "--chunk-size", "32", "--max-new-tokens", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"Q: {QUESTION}" in out and "\nA: " in out
    # One source line per file, in the order given, titled by file name, with no retrieval score.
    sources = re.findall(r"^\s+(\d+)\. (\S+)\s+score\s+-\s+kept\s+(\d+)%$", out, flags=re.M)
    assert [(rank, title) for rank, title, _ in sources] == [("1", "fox.txt"), ("2", "france.txt"), ("3", "fruit.txt")]
    assert all(0 <= int(kept) <= 100 for _, _, kept in sources)
    match = re.search(r"Compression: (\d+) -> 20 context tokens \((\d+\.\d)x\) in (\d+) chunk", out)
    assert match and int(match[1]) > 20 and int(match[3]) >= 2
    assert re.search(r"Time: retrieval 0\.00 s, compression \d+\.\d\d s, generation \d+\.\d\d s", out)
    assert logging.getLogger("finch_rag").level == level  # main() leaves logging as it found it


def test_ask_cuts_a_long_file_into_ranked_pieces(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A long file as one passage loses its middle to recency; ask ranks its pieces with the embedder instead."""
    words = [f"filler{index}" for index in range(300)]
    words[150:150] = "The secret code of the vault is written here.".split()
    page = tmp_path / "page.txt"
    page.write_text(" ".join(words), encoding="utf-8")
    argv = ["ask", "--file", str(page), QUESTION, "--model", str(tiny_model_dir), "--target-tokens", "20"]
    assert main([*argv, "--chunk-size", "128", "--max-new-tokens", "2", "--no-progress"]) == 0
    sources = re.findall(r"^\s+(\d+)\. (.+?)\s+score\s+(\S+)\s+kept", capsys.readouterr().out, flags=re.M)
    assert sorted(title for _, title, _ in sources) == [f"page.txt (part {n} of 3)" for n in (1, 2, 3)]
    assert sources[0][1] == "page.txt (part 2 of 3)" and sources[0][2] != "-"  # the piece with the code, scored


@pytest.mark.parametrize(("allocation", "unit"), [("retrieval_weighted", "sentences"), ("global", "tokens")])
def test_ask_with_the_automatic_budget(
    tiny_model_dir: Path, files: list[Path], allocation: str, unit: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--target-tokens auto`` keeps the fewest tokens holding the share, below the cap that a fixed B fills."""
    argv = ["ask", *_file_args(files), QUESTION, "--model", str(tiny_model_dir), "--allocation", allocation]
    argv += ["--chunk-size", "32", "--max-new-tokens", "1", "--no-progress"]

    def run(*budget: str) -> tuple[str, int]:
        assert main([*argv, *budget]) == 0
        out = capsys.readouterr().out
        match = re.search(r"Compression: \d+ -> (\d+) context tokens", out)
        assert match, out
        return out, int(match[1])

    out, auto = run("--target-tokens", "auto", "--attention-mass", "0.5", "--max-target-tokens", "40")
    assert f"keep the {unit} holding 50% of the question's attention, at most 40 tokens," in out
    assert 0 < auto < run("--target-tokens", "40")[1] == 40


def test_ask_quiet_prints_only_the_answer(
    tiny_model_dir: Path, files: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ask", *_file_args(files[:1]), QUESTION, "--model", str(tiny_model_dir), "--max-new-tokens", "2", "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and "Compression" not in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ratio", "1.5"], "compression_ratio"),
        (["--chunk-size", "0"], "chunk_size"),
        (["--target-tokens", "0"], "target_tokens"),
        (["--target-tokens", "auto", "--attention-mass", "1.5"], "attention_mass .* must be in \\(0, 1\\]"),
        (["--target-tokens", "auto", "--max-target-tokens", "0"], "max_target_tokens .* must be an int >= 1"),
        (["--attention-mass", "0.5"], "--attention-mass only applies with --target-tokens auto"),
        (["--target-tokens", "8", "--attention-mass", "0.5", "--max-target-tokens", "64"], "add --target-tokens auto"),
    ],
)
def test_ask_bad_options_fail_cleanly(
    files: list[Path], extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ask", *_file_args(files), QUESTION, *extra]) == 2
    assert re.search(rf"^finch-rag: error: .*{message}", capsys.readouterr().err)


def test_demo_refuses_automatic_options_without_auto(capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before any model loads: the demo's default budget is a ratio."""
    assert main(["demo", "--max-target-tokens", "64"]) == 2
    assert "finch-rag: error: --max-target-tokens only applies with --target-tokens auto" in capsys.readouterr().err


def test_ask_missing_or_empty_file_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "--file", str(tmp_path / "nope.txt"), QUESTION]) == 2
    assert "cannot read" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    assert main(["ask", "--file", str(empty), QUESTION]) == 2
    assert "empty.txt is empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [],  # a subcommand is required
        ["ask", QUESTION],  # --file is required
        ["ask", "--file", "a.txt", QUESTION, "--ratio", "0.5", "--target-tokens", "8"],  # one budget only
        ["ask", "--file", "a.txt", QUESTION, "--ratio", "0.5", "--target-tokens", "auto"],
        ["ask", "--file", "a.txt", QUESTION, "--target-tokens", "lots"],  # an int or auto
        ["demo", "--allocation", "local"],
        ["bench", "quick"],  # benchmarks are not part of the library: python -m benchmarks quick
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "demo" in out and "ask" in out
    assert "bench" not in out, "the benchmarks live outside the library (python -m benchmarks)"


def test_demo_corpus_ships_with_answerable_questions() -> None:
    corpus = load_demo_corpus()
    passages = corpus["passages"]
    assert 12 <= len(passages) <= 20
    assert len({p["title"] for p in passages}) == len(passages)
    assert all(p["title"].strip() and len(p["text"].split()) >= 30 for p in passages)
    assert 2 <= len(corpus["questions"]) <= 3
    for item in corpus["questions"]:
        assert any(item["expected"] in p["text"] for p in passages), item


# ------------------------------------------------------------------------ slow: the embedded models
@pytest.mark.slow
def test_demo_runs_offline_and_answers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("\nQ: ") + out.startswith("Q: ") == 3 and out.count("\nA: ") == 3
    answers = re.findall(r"^A: (.*)$", out, flags=re.M)
    assert "Port Ellery" in answers[0] and "Mount Caddow" in answers[1], answers
    assert "Geography of Tarrowen" in out and "kept" in out
    assert len(re.findall(r"\(2\.0x\)", out)) == 3
    assert out.count("Time: retrieval") == 3


@pytest.mark.slow
def test_ask_files_with_the_embedded_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    by_title = {p["title"]: p["text"] for p in load_demo_corpus()["passages"]}
    paths = []
    for name, title in (("geography.txt", "Geography of Tarrowen"), ("food.txt", "Food"), ("sport.txt", "Sport")):
        paths.append(tmp_path / name)
        paths[-1].write_text(by_title[title], encoding="utf-8")
    argv = ["ask", *_file_args(paths), "What is the highest mountain on Tarrowen?", "--ratio", "0.25"]
    # The 135M model drops the name at 2x on this three-passage context in one chunk; 1.3x keeps it.
    assert main([*argv, "--max-new-tokens", "32", "--no-progress"]) == 0
    out = capsys.readouterr().out
    answer: Any = re.search(r"^A: (.*)$", out, flags=re.M)
    assert answer and "Mount Caddow" in answer[1], out
    assert "geography.txt" in out and "food.txt" in out and "(1.3x)" in out and "Time: retrieval" in out
