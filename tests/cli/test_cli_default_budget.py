"""``finch-rag ask`` with no budget flag: ratio 0.75 with a floor of 128, so a short context is kept whole."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import PASSAGES, QUESTION

from finch_rag.cli import main


def ask(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, int, str]:
    """``(context tokens, kept tokens, output)`` of ``finch-rag ask`` on two short files with ``flags``."""
    argv = ["ask", QUESTION, "--model", str(tiny_model_dir), "--max-new-tokens", "1", "--no-progress", *flags]
    for index, text in enumerate(PASSAGES[:2]):
        path = tmp_path / f"{index}.txt"
        path.write_text(text, encoding="utf-8")
        argv += ["--file", str(path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    match = re.search(r"Compression: (\d+) -> (\d+) context tokens", out)
    assert match, out
    return int(match[1]), int(match[2]), out


def test_ask_keeps_a_short_context_whole_by_default(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n, kept, out = ask(tiny_model_dir, tmp_path, capsys)
    assert n < 128 and kept == n
    assert "remove 75% but keep at least 128 tokens" in out
    assert ask(tiny_model_dir, tmp_path, capsys, "--ratio", "0.75")[:2] == (n, n // 4)  # explicit: no floor
    assert ask(tiny_model_dir, tmp_path, capsys, "--ratio", "0.9", "--min-target-tokens", "32")[:2] == (n, 32)


def test_a_floor_with_a_fixed_budget_is_a_one_line_error(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["ask", QUESTION, "--file", __file__, "--model", str(tiny_model_dir)]
    assert main([*argv, "--target-tokens", "8", "--min-target-tokens", "16"]) == 2
    error = capsys.readouterr().err
    assert "--min-target-tokens is a floor on a --ratio budget" in error and "leave --min-target-tokens out" in error
