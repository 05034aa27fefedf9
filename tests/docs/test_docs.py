"""The code in the documentation works: README.md, docs/*.md and integrations/*/README.md.

Every ```python block compiles (fast) and runs top to bottom in a fresh namespace with the repository root as
working directory (slow: most load the embedded model). A block whose imports are not installed is skipped,
and a block right after a ``<!-- docs-test: skip REASON -->`` comment is only compiled (a GPU, a hub
download). In ```bash blocks, each ``finch-rag ...`` line must parse with the CLI's own parser and each
``make TARGET`` must name a Makefile target; nothing else in them is run.
"""

from __future__ import annotations

import ast
import gc
import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "integrations").glob("*/README.md")])
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
SKIP_MARK = re.compile(r"<!--\s*docs-test:\s*skip\b(.*?)-->")


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    skip_reason: str | None

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening or not opening.group(2):
            index += 1
            continue
        indent, language = opening.group(1), opening.group(2).lower()
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and not FENCE.match(lines[index]):
            body.append(lines[index][len(indent) :] if lines[index].startswith(indent) else lines[index])
            index += 1
        previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
        mark = SKIP_MARK.search(previous)
        skip = (mark.group(1).strip() or "marked skip") if mark else None
        found.append(Block(path, start + 1, language, "\n".join(body) + "\n", skip))
        index += 1
    return found


ALL = [block for path in DOC_FILES for block in blocks(path)]
PYTHON = [block for block in ALL if block.language in ("python", "py")]
SHELL = [block for block in ALL if block.language in ("bash", "sh", "shell", "console")]


def test_docs_have_python_blocks() -> None:
    assert len(PYTHON) >= 5, [block.id for block in PYTHON]


@pytest.mark.parametrize("block", PYTHON, ids=[block.id for block in PYTHON])
def test_python_block_compiles(block: Block) -> None:
    compile(block.code, block.id, "exec")


def _missing_module(code: str) -> str | None:
    """The first top-level import of ``code`` that is not installed, if any."""
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            try:
                if importlib.util.find_spec(name) is None:
                    return name
            except ModuleNotFoundError:
                return name
    return None


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON, ids=[block.id for block in PYTHON])
def test_python_block_runs(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    if block.skip_reason:
        pytest.skip(f"{block.id} is only compiled: {block.skip_reason}")
    missing = _missing_module(block.code)
    if missing:
        pytest.skip(f"{block.id} needs {missing}, which is not installed")
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict[str, object] = {"__name__": "__docs__"}
    try:
        exec(compile(block.code, block.id, "exec"), namespace)
    finally:
        namespace.clear()
        gc.collect()


def _commands(block: Block) -> list[list[str]]:
    commands = []
    for line in block.code.replace("\\\n", " ").splitlines():
        line = line.strip().removeprefix("$ ")
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        # Leading environment assignments (HF_HUB_OFFLINE=1 finch-rag ...) are not part of the command.
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words.pop(0)
        if words:
            commands.append(words)
    return commands


CLI_LINES = [(block, words) for block in SHELL for words in _commands(block) if words[0] in ("finch-rag", "make")]


@pytest.mark.parametrize(
    ("block", "words"), CLI_LINES, ids=[f"{block.id}:{' '.join(words)[:40]}" for block, words in CLI_LINES]
)
def test_shell_command_is_valid(block: Block, words: list[str]) -> None:
    if words[0] == "make":
        targets = set(re.findall(r"^([\w.-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))
        for target in words[1:]:
            if not target.startswith("-") and "=" not in target:
                assert target in targets, f"{block.id}: `make {target}` but the Makefile has {sorted(targets)}"
        return
    from finch_rag.cli import build_parser

    try:
        build_parser().parse_args(words[1:])
    except SystemExit as error:
        if error.code not in (0, None):  # --help exits 0
            pytest.fail(f"{block.id}: `{' '.join(words)}` does not parse with finch_rag.cli.build_parser")
