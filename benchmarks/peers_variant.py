"""finch-rag with sentence granularity on the peers suite's answered examples, against its default and ChunkKV.

A screen, not a table of record: it reruns finch-rag with ``granularity="sentence"`` (whole sentences compete on
their mean score; `FinchRAG`'s default allocation) on the examples where full context scores at least 0.3 and
whose task the report scores, at the given ratios, and pairs it with the default's and ChunkKV(SnapKV)'s answers
from the journals ``python -m benchmarks peers`` wrote. Sentences need the text, so it compresses through
`FinchCompressor.compress` on the example's context and question (the same prompt the cases' ids were built from).

    python -m benchmarks.peers_variant --model-tag gemma3_48 --model GEMMA.gguf --ratios 0.875 0.9375 \
        --cases /work/runs/peers-gemma-work/cases_gemma3_48_seed0.jsonl \
        --journal docs/results/peers_gemma3_48_sentence.jsonl
    python -m benchmarks.peers_variant --model-tag gemma3_48 --journal docs/results/peers_gemma3_48_sentence.jsonl \
        --report-only
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import RESULTS_DIR
from .peers import _append, _read, answered_cases, bootstrap, evidence_retention, full_attention_layers, scored
from .ruler import score

BEST_PRESS = "chunkkv_snapkv"


def scored_cases(kvpress_journal: Path) -> set[str]:
    """The cases the peers report scores (`benchmarks.peers.answered_cases`)."""
    return answered_cases(scored([r for r in _read(kvpress_journal) if r["method"] == "full"]))


def run(cases: Sequence[dict[str, Any]], journal: Path, ratios: Sequence[float], model: str | None) -> None:
    from finch_rag import FinchCompressor, FinchConfig, load_model

    loaded, tokenizer = load_model(model)
    compressor = FinchCompressor(loaded, tokenizer, FinchConfig(progress=False))
    full_layers = full_attention_layers(loaded.config)
    for case in cases:
        done = {(r["case"], r["ratio"]) for r in _read(journal)}
        for ratio in ratios:
            if (case["key"], ratio) in done:
                continue
            config = compressor.config.replace(compression_ratio=ratio, granularity="sentence")
            example = case["example"]
            compressed = compressor.compress(example["context"], example["question"], config=config)
            answer = compressor.generate(compressed, max_new_tokens=48)
            retention = evidence_retention(compressed.kept_positions, case["evidence_tokens"], full_layers)
            record = {"case": case["key"], "task": case["task"], "ratio": ratio, "retention": retention}
            _append(journal, record | {"score": score(example["metric"], answer, example["answers"]), "answer": answer})


def report(journal: Path, tag: str, out: Path) -> str:
    """Mean score on the scored cases: sentence granularity, the default and the best press, paired differences."""
    scored = scored_cases(out / f"peers_{tag}_kvpress.jsonl")
    sentence = {(r["case"], r["ratio"]): r["score"] for r in _read(journal) if r["case"] in scored}
    answers = {
        (r["method"], r["case"], r["ratio"]): score(r["metric"], r["answer"] or "", r["answers"])
        for path in (out / f"peers_{tag}_finch.jsonl", out / f"peers_{tag}_kvpress.jsonl")
        for r in _read(path)
        if r["method"] in ("finch", BEST_PRESS) and r["case"] in scored
    }
    lines = [
        "| ratio | n | sentence granularity | finch-rag default | ChunkKV(SnapKV) | sentence - default (95%) |",
        "|---|---|---|---|---|---|",
    ]
    for ratio in sorted({ratio for _, ratio in sentence}):
        keys = sorted(case for case, r in sentence if r == ratio)
        ours = [sentence[(case, ratio)] for case in keys]
        default = [answers[("finch", case, ratio)] for case in keys]
        press = [answers[(BEST_PRESS, case, ratio)] for case in keys]
        mean, low, high = bootstrap([a - b for a, b in zip(ours, default, strict=True)])
        lines.append(
            f"| {ratio} | {len(keys)} | {sum(ours) / len(keys):.2f} | {sum(default) / len(keys):.2f} | "
            f"{sum(press) / len(keys):.2f} | {mean:+.2f} [{low:+.2f}, {high:+.2f}] |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers_variant", description=__doc__.split("\n")[0])
    parser.add_argument("--model-tag", required=True, help="the peers run whose journals to read")
    parser.add_argument("--model", default=None, help="model for finch-rag (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--cases", help="the peers run's encoded cases (its --work folder)")
    parser.add_argument("--journal", required=True, help="JSON lines of this screen (resumable)")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.875, 0.9375])
    parser.add_argument("--part", type=int, nargs=2, default=(0, 1), metavar=("I", "N"), help="every Nth case from I")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="where the peers journals are")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    out, journal = Path(args.out), Path(args.journal)
    if not args.report_only:
        if not args.cases:
            parser.error("--cases is needed to run (or --report-only).")
        scored = scored_cases(out / f"peers_{args.model_tag}_kvpress.jsonl")
        cases = [json.loads(line) for line in Path(args.cases).read_text().splitlines() if line.strip()]
        cases = [case for case in cases if case["key"] in scored][args.part[0] :: args.part[1]]
        run(cases, journal, args.ratios, args.model)
    print(report(journal, args.model_tag, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
