"""Every notebook in examples/ runs top to bottom on the embedded models (slow: each loads the model).

Each notebook is executed from a temporary copy with its working directory set to ``examples/``, so relative
paths resolve as they do for a user; the copy in the repository keeps no outputs.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds per cell; every notebook takes about 2 minutes in all on 2 CPU cores
NEEDS = {
    "langchain_rag.ipynb": ("langchain_finch", "langchain_classic"),
    "llamaindex_rag.ipynb": ("llama_index.llms.finch", "llama_index.postprocessor.finch"),
}
# Notebooks that read the real benchmark data beside the repository (never inside it), like the benchmarks.
NEEDS_DATA = {"compression_explorer.ipynb": "squad-v1.1-dev-part.json"}


def test_examples_exist() -> None:
    names = {path.name for path in NOTEBOOKS}
    assert {"quickstart.ipynb", "langchain_rag.ipynb", "llamaindex_rag.ipynb", "compression_explorer.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_is_stripped(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: commit notebooks without outputs"


# The explorer's budget sweep (32 compressions and answers) takes about 100 s on 2 CPU cores: `make test-heavy`.
HEAVY = {"compression_explorer.ipynb"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    [pytest.param(path, marks=[pytest.mark.heavy] if path.name in HEAVY else []) for path in NOTEBOOKS],
    ids=[path.name for path in NOTEBOOKS],
)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in NEEDS.get(path.name, ()):
        pytest.importorskip(module)
    if path.name in NEEDS_DATA:
        from benchmarks.common import data_dir

        try:
            data = data_dir()
        except FileNotFoundError:
            pytest.skip("no benchmark data folder (../shared/data or $FINCH_RAG_DATA)")
        if not (data / NEEDS_DATA[path.name]).is_file():
            pytest.skip(f"{NEEDS_DATA[path.name]} is not in {data}")
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    notebook = nbformat.read(copy, as_version=4)
    # The kernel inherits this environment: offline, non-interactive plots, a quiet tokenizer.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    # One torch thread unless told otherwise: on a small shared CPU, more threads than free cores make a
    # 135M model 10-20x slower (see docs/troubleshooting.md).
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    started = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - started
    nbformat.write(notebook, copy)  # executed copy, for a look after a failure
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    print(f"{path.name}: {seconds:.0f} s")
    if os.environ.get("FINCH_NOTEBOOK_OUT"):
        shutil.copy(copy, Path(os.environ["FINCH_NOTEBOOK_OUT"]) / path.name)
