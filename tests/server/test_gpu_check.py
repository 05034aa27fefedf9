"""``scripts/gpu_check.py --smoke``: the GPU check's code paths on CPU with a tiny model, in seconds."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "gpu_check.py"


def test_the_gpu_check_smoke_run_measures_and_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclasses look their module up
    spec.loader.exec_module(gpu_check)

    assert gpu_check.main(["--smoke", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu.json").read_text(encoding="utf-8"))
    assert [row["context_tokens"] for row in report["contexts"]] == [256, 1024]
    for row in report["contexts"]:
        assert row["kept_tokens"] == 32 and row["chunks"] >= row["context_tokens"] // 64
        assert row["compress_s"] > 0 and row["full_prefill_s"] > 0
        # A difference of two timings of a random model (it may stop early): measured, not asserted positive.
        assert math.isfinite(row["decode_ms_per_token_compressed"]) and math.isfinite(row["decode_ms_per_token_full"])
    assert [row["batch"] for row in report["batches"]] == [1, 4]
    checks = {check["check"]: check for check in report["checks"]}
    assert checks["padded batch equals alone (cpu, sdpa)"]["kept_positions_shared"] == [1.0] * 4
    assert all(check["passed"] for check in report["checks"])
    table = (tmp_path / "gpu.md").read_text(encoding="utf-8")
    assert "| 1,024 |" in table and "## Checks" in table
