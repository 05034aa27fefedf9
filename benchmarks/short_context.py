"""The default budget on short contexts: a ratio alone against a ratio with a floor (``min_target_tokens``).

A ratio squeezes a short context below what an answer needs: at ``compression_ratio=0.75`` the README's three
Halvard Bridge passages (56 context tokens) keep 14 entries and the bridge's length is lost. This benchmark answers
short multi-passage contexts through `FinchRAG.answer_from` (the default ``retrieval_weighted`` allocation, greedy
answers) under each budget rule, on the embedded SmolLM2-135M-Instruct, and reports contains-gold, F1 and the
context entries kept.

Contexts: the README's Halvard Bridge passages, then SQuAD questions (seeded sample) whose context is a window of
1 to 6 consecutive sentences of their paragraph, the one holding the answer among them, cut into 1 to 3 passages
(titled by the article), kept when the passages' text has ``--min-tokens`` to ``--max-tokens`` tokens. The
passages keep the paragraph's order, which is their rank. Budget rules that give the same ``B`` for a question
compress the same input to the same ``B`` and so the same answer: each distinct ``B`` is answered once and shared.

    OMP_NUM_THREADS=1 python -m benchmarks.short_context --limit 80
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from finch_rag import FinchCompressor, FinchConfig, FinchRAG, Passage, load_model

from .common import (
    RESULTS_DIR,
    answer_scores,
    command_line,
    data_dir,
    machine_description,
    markdown_table,
    meta_lines,
    write_json,
)
from .datasets import SQUAD_FILE, _squad_records, sample
from .stats import bootstrap_difference, mean, won_lost

HALVARD = {
    "qid": "halvard",
    "question": "How long is the Halvard Bridge?",
    "passages": [
        ("The Halvard Bridge in Tromsvik opened in 1931 and is 412 metres long.", "Halvard Bridge"),
        ("Tromsvik's harbour freezes for about six weeks every winter.", "Harbour"),
        ("The herring festival is held on the second Saturday of June. It ends with a boat parade.", "Festival"),
    ],
    "answers": ["412 metres", "412 meters", "412"],
}
"""The README's FinchRAG example, asked about the bridge: the case the issue reports."""

METHODS: dict[str, dict[str, Any]] = {
    "ratio 0.75, no floor (old default)": {"compression_ratio": 0.75},
    "ratio 0.75, floor 64": {"compression_ratio": 0.75, "min_target_tokens": 64},
    "ratio 0.75, floor 128": {"compression_ratio": 0.75, "min_target_tokens": 128},
    'target_tokens="auto"': {"target_tokens": "auto"},
    "full context": {"compression_ratio": 0.0},
}
"""Budget rules compared: `FinchConfig` keyword arguments (``{}`` is the default)."""
UNCHANGED = """## What the floor does not change

The floor only raises `B` where `floor(n (1 - r)) < min_target_tokens`: with the default ratio 0.75 and floor 128,
contexts of more than 512 tokens (`128 / (1 - 0.75)`; 256 for a floor of 64) keep `floor(n / 4)` entries as before.
It is set only when no budget is given: an explicit `compression_ratio` or `target_tokens` (fixed or `"auto"`) has
no floor. So the published suites are unaffected by construction: the RULER-style suite and the kvpress peers
(`benchmarks.peers`: 4k-token contexts at explicit ratios 0.5-0.9375, finch-rag via
`config.replace(compression_ratio=r)`, which clears the floor), HotpotQA, rag-SQuAD and SQuAD (`benchmarks.qa`: a
fixed `target_tokens` per question, B = 128/256/512 or `floor(n / f)` for `squad`'s 4x-32x), L-Eval
(`benchmarks.leval`: fixed `target_tokens`, B = 256 and 512), the needle suite (explicit ratios), the
automatic-budget study (fixed and `"auto"` budgets), and cost, batch and serve (fixed `target_tokens`).
"""

OLD = "ratio 0.75, no floor (old default)"
FLOORS = ("ratio 0.75, floor 64", "ratio 0.75, floor 128")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def sentences(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the sentences of ``text``."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return [(a, b) for a, b in spans if b > a]


def short_examples(
    data: Path, tokenizer: Any, limit: int, seed: int, min_tokens: int, max_tokens: int
) -> list[dict[str, Any]]:
    """``limit`` SQuAD questions with a short context of 1-3 passages (see the module docstring), seeded."""
    paragraphs, questions = _squad_records(data / SQUAD_FILE)
    generator = random.Random(seed)
    examples: list[dict[str, Any]] = []
    for paragraph, qa in sample(questions, None, seed):
        if len(examples) == limit:
            break
        title, text = paragraphs[paragraph]
        spans = sentences(text)
        answer = qa["answers"][0]
        gold = next((i for i, (a, b) in enumerate(spans) if a <= answer["answer_start"] < b), None)
        width = generator.randint(1, 6)
        first = generator.randint(max(0, (gold or 0) - width + 1), gold or 0)
        window = spans[first : first + width]
        count = generator.randint(1, 3)
        if gold is None or not any(
            a <= answer["answer_start"] and answer["answer_start"] + len(answer["text"]) <= b for a, b in window
        ):
            continue
        groups = [window[i * len(window) // count : (i + 1) * len(window) // count] for i in range(count)]
        passages = [(text[group[0][0] : group[-1][1]], title) for group in groups if group]
        tokens = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p, _ in passages)
        if not min_tokens <= tokens <= max_tokens:
            continue
        examples.append(
            {
                "qid": qa["id"],
                "question": qa["question"],
                "passages": passages,
                "answers": [a["text"] for a in qa["answers"]],
            }
        )
    return examples


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.short_context", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="benchmark data folder (default ../shared/data)")
    parser.add_argument("--limit", type=int, default=80, help="SQuAD questions (besides the Halvard Bridge case)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-tokens", type=int, default=40, help="fewest passage tokens of a context")
    parser.add_argument("--max-tokens", type=int, default=200, help="most passage tokens of a context")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="answer length (greedy)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS_DIR / "short_context_default"))
    return parser


def run_example(compressor: FinchCompressor, example: dict[str, Any], max_new_tokens: int) -> list[dict[str, Any]]:
    """One record per method for ``example``; answers are shared between methods with the same ``B``."""
    passages = [Passage(text, title) for text, title in example["passages"]]
    answers: dict[Any, dict[str, Any]] = {}
    records = []
    n = None
    for method, options in METHODS.items():
        config = FinchConfig(progress=False, **options)
        key: Any = ("auto",) if config.target_tokens == "auto" else (None if n is None else config.budget(n))
        if key not in answers:
            rag = FinchRAG(compressor=compressor, config=config, max_new_tokens=max_new_tokens)
            answer = rag.answer_from(example["question"], passages)
            n = answer.stats["tokens_before"]
            if key is None:
                key = config.budget(n)
            answers[key] = {
                "answer": answer.text,
                "kept": answer.stats["tokens_after"],
                **answer_scores(answer.text, example["answers"]),
            }
        records.append({"qid": example["qid"], "method": method, "n": n, **answers[key]})
    return records


def summarise(records: Sequence[dict[str, Any]], bins: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    rows = []
    for low, high in bins:
        for method in METHODS:
            items = [r for r in records if r["method"] == method and low <= r["n"] <= high]
            if items:
                rows.append(
                    {
                        "context tokens n": f"{low}-{high}",
                        "method": method,
                        "questions": len(items),
                        "mean n": mean(r["n"] for r in items),
                        "mean kept": mean(r["kept"] for r in items),
                        "contains": mean(r["contains"] for r in items),
                        "f1": mean(r["f1"] for r in items),
                    }
                )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer = load_model()
    compressor = FinchCompressor(model, tokenizer, FinchConfig(progress=False))
    examples = short_examples(data_dir(args.data), tokenizer, args.limit, args.seed, args.min_tokens, args.max_tokens)
    records: list[dict[str, Any]] = []
    halvard = run_example(compressor, HALVARD, args.max_new_tokens)
    for index, example in enumerate(examples, 1):
        records += run_example(compressor, example, args.max_new_tokens)
        if index % 10 == 0:
            print(f"{index}/{len(examples)} questions, {time.perf_counter() - started:.0f} s", flush=True)
    upper = max(r["n"] for r in records)
    bins = [(0, 64), (65, 128), (129, upper), (0, upper)]
    summary = summarise(records, bins)
    old = {r["qid"]: r for r in records if r["method"] == OLD}
    paired = []
    generator = random.Random(0)
    for floor in FLOORS:
        new = {r["qid"]: r for r in records if r["method"] == floor}
        for low, high in bins:
            qids = [q for q in new if low <= new[q]["n"] <= high]
            if qids:
                differences = [new[q]["contains"] - old[q]["contains"] for q in qids]
                paired.append(
                    {
                        "method": floor,
                        "context tokens n": f"{low}-{high}",
                        "questions": len(qids),
                        "contains, minus old default": bootstrap_difference(differences, generator),
                        "won / lost": won_lost(differences),
                    }
                )
    meta = {
        "command": command_line("OMP_NUM_THREADS=1 python -m benchmarks.short_context", argv),
        "machine": machine_description(),
        "model": "SmolLM2-135M-Instruct (embedded default), greedy answers of at most "
        f"{args.max_new_tokens} tokens, FinchRAG.answer_from (retrieval_weighted allocation, chunk_size auto)",
        "questions": f"{len(examples)} SQuAD (seed {args.seed}, {args.min_tokens}-{args.max_tokens} passage tokens) "
        "and the Halvard Bridge case",
        "seconds": round(time.perf_counter() - started),
    }
    out = Path(args.out)
    write_json(
        out.with_suffix(".json"),
        {"meta": meta, "halvard": halvard, "summary": summary, "paired": paired, "records": records},
    )
    lines = ["# The default budget on short contexts", ""]
    lines += meta_lines(meta)
    lines += ["", "## The Halvard Bridge case (README passages)", ""]
    lines += [markdown_table(halvard, ["method", "n", "kept", "contains", "answer"]), ""]
    lines += [
        "## SQuAD short contexts",
        "",
        "n counts the context tokens the compressor sees (passages with their "
        "titles); kept is B, the entries kept per layer and KV head.",
        "",
    ]
    lines += [
        markdown_table(summary, ["context tokens n", "method", "questions", "mean n", "mean kept", "contains", "f1"]),
        "",
    ]
    lines += [
        "## Paired: each floor minus the old default (contains-gold)",
        "",
        "Per question, mean and 95% bootstrap interval (1,000 resamples, seed 0).",
        "",
    ]
    lines += [
        markdown_table(
            paired, ["method", "context tokens n", "questions", "contains, minus old default", "won / lost"]
        ),
        "",
        UNCHANGED,
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(json.dumps({"halvard": halvard, "summary": summary, "paired": paired}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
