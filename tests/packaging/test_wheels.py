"""The three distributions as users install them: built wheels, installed (not editable) into a fresh virtualenv.

``python -m build`` makes the wheels of finch-rag, langchain-finch and llama-index-finch from copies of their sources
(so the checkout gets no ``build/`` folders). A new venv gets them with ``pip install --no-deps --no-index``. To stay
offline and fast, the venv sees this environment's site-packages for third-party dependencies (torch, transformers,
langchain-core, llama-index-core, the embedded model wheels) through a ``.pth`` line; that line does not run the
editable installs' import hooks, so finch_rag, langchain_finch and llama_index.*.finch can only come from the wheels,
which the script asserts from their ``__file__``. It then compresses and answers, calls ChatFinch, and runs the
LlamaIndex postprocessor there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist", "tests")
# What each distribution's build needs: its pyproject, its README and its package folder.
SOURCES = {
    "finch-rag": (ROOT, ["pyproject.toml", "README.md", "finch_rag"]),
    "langchain-finch": (ROOT / "integrations/langchain", ["pyproject.toml", "README.md", "langchain_finch"]),
    "llama-index-finch": (ROOT / "integrations/llama_index", ["pyproject.toml", "README.md", "llama_index"]),
}

SCRIPT = """
import importlib.metadata, json, sys
import finch_rag, langchain_finch
import llama_index.llms.finch, llama_index.postprocessor.finch
from finch_rag import FinchCompressor, FinchConfig, load_model
from langchain_core.documents import Document
from langchain_finch import ChatFinch
from llama_index.core.schema import NodeWithScore, TextNode
from llama_index.postprocessor.finch import FinchNodePostprocessor

passages = [
    "Every Saturday a cheese market fills the square in front of the town hall.",
    "The clock tower of Marrowby has a bell called Old Hannah that rings at noon.",
    "The river Sallow runs east of the town and freezes over almost every winter.",
]
question = "What is the name of the bell in the clock tower?"
model, tokenizer = load_model()
compressor = FinchCompressor(model, tokenizer, FinchConfig(target_tokens=32, chunk_size=64, progress=False))
compressed = compressor.compress(passages, question)
answer = compressor.generate(compressed, max_new_tokens=16)
reply = ChatFinch(compressor=compressor, max_tokens=16).invoke(
    question, documents=[Document(page_content=text) for text in passages]
)
nodes = FinchNodePostprocessor(compressor=compressor).postprocess_nodes(
    [NodeWithScore(node=TextNode(text=text, id_=str(i)), score=1.0) for i, text in enumerate(passages)],
    query_str=question,
)
modules = [finch_rag, langchain_finch, llama_index.llms.finch, llama_index.postprocessor.finch]
print(json.dumps({
    "prefix": sys.prefix,
    "files": {module.__name__: module.__file__ for module in modules},
    "requires": {name: importlib.metadata.requires(name) for name in ("langchain-finch", "llama-index-finch")},
    "direct_url": importlib.metadata.distribution("finch-rag").read_text("direct_url.json"),
    "kept": [compressed.original_tokens, compressed.kept_tokens],
    "answer": answer,
    "reply": [reply.content, reply.response_metadata["finch_context_source"], reply.response_metadata["kept_tokens"]],
    "nodes": [[n.node.node_id, n.node.metadata.get("finch_kept_fraction")] for n in nodes],
}))
"""


def _run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_wheels_install_and_run_in_a_fresh_venv(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    for name, (folder, parts) in SOURCES.items():
        source = tmp_path / "src" / name
        source.mkdir(parents=True)
        for part in parts:
            path = folder / part
            if path.is_dir():
                shutil.copytree(path, source / part, ignore=IGNORED)
            else:
                shutil.copy2(path, source / part)
        # No build isolation: setuptools comes from this environment, so nothing is downloaded.
        _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(wheels), str(source)])
    built = sorted(path.name.split("-")[0] for path in wheels.glob("*.whl"))
    assert built == ["finch_rag", "langchain_finch", "llama_index_finch"]

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q"]
    _run([*pip, *map(str, sorted(wheels.glob("*.whl")))])

    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    report = json.loads(_run([str(python), "-I", str(script)], cwd=tmp_path).stdout.strip().splitlines()[-1])

    assert Path(report["prefix"]) == venv
    for module, file in report["files"].items():
        assert Path(file).is_relative_to(site), f"{module} was imported from {file}, not from the installed wheel"
    assert all("finch-rag>=0.1.0" in requires for requires in report["requires"].values())
    assert report["direct_url"] is None or '"editable": true' not in report["direct_url"]
    original, kept = report["kept"]
    assert kept == 32 < original
    assert "Old Hannah" in report["answer"]
    content, source, reply_kept = report["reply"]
    assert content and source == "documents" and reply_kept < original
    assert [node_id for node_id, _ in report["nodes"]] == ["0", "1", "2"]
    assert all(fraction is not None for _, fraction in report["nodes"])
