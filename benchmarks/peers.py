"""finch-rag against kvpress's presses on the RULER-style suite: the same token ids, model and ratios for all.

``python -m benchmarks peers`` does four things, each resumable:

1. generates and encodes the suite (`benchmarks.ruler`; finch-rag's own prompt ids, chat template included)
   into ``--work``/``cases_<model>.jsonl``;
2. runs finch-rag at each ratio (`run_finch`): the core's default on the ids (``finch``), the front ends'
   default on the text (``finch_rag``: whole sentences compete) and, on the QA tasks, top-k truncation over the
   embedder's document ranking (the first ``B`` context tokens of the ranked documents), appending to
   ``--journal`` (default ``docs/results/peers_<model>_finch.jsonl``);
3. runs kvpress's presses, and full context, in kvpress's own environment (``--kvpress-python``, built by
   ``scripts/setup_kvpress_env.sh``) with ``benchmarks/peers_kvpress.py``: one capture per input, pruned per
   ratio by each press's own ``compress()``, appending to ``docs/results/peers_<model>_kvpress.jsonl``;
4. reads both journals and writes ``peers_<model>.md``, ``.json`` and ``.png``: RULER's score and evidence
   retention per task, method and ratio, averages with 95% bootstrap intervals over the examples.

Every method keeps the same share of what it compresses: finch-rag ``floor(n (1 - r))`` of the ``n`` context
tokens (the template prefix is protected, the question is not cached); a kvpress press
``int(L (1 - r))`` of the ``L`` tokens it sees (template prefix, context and, for the query-aware presses, the
question), as kvpress's own evaluation counts it. ``context_kept`` records the share of context entries each
method actually kept.

    python -m benchmarks peers --per-task 1 --model-tag smollm2
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import RESULTS_DIR, add_chunk_size_option, machine_description, markdown_table, write_json
from .ruler import DEFAULT_LENGTH, TASKS, encode_suite, generate_suite, score

RATIOS = (0.5, 0.75, 0.875, 0.9375)
KVPRESS_PYTHON = "/work/kvpress-venv/bin/python"
WORKER = Path(__file__).with_name("peers_kvpress.py")
METHOD_ORDER = (
    "full",
    "finch_rag",
    "finch",
    "finchpress",
    "snapkv",
    "adakv_snapkv",
    "chunkkv_snapkv",
    "expected_attention",
    "kvzip",
    "keydiff",
    "tova",
    "streaming_llm",
    "truncation",
)
FINCH_METHODS = ("finch", "finch_rag", "truncation")
"""finch-rag's side: the core default (``FinchConfig()``), the front ends' default, and top-k truncation."""
PAIRED = (
    ("finch_rag", "finch"),
    ("finch_rag", "chunkkv_snapkv"),
    ("finch", "chunkkv_snapkv"),
    ("finch_rag", "kvzip"),
)
"""Score differences reported paired by example, where both methods ran: the strongest presses on this suite are
ChunkKV(SnapKV) and, where it ran (its own reconstruction pass costs 2-3 prefills), KVzip."""
SOLVED = 0.3
"""A task whose full-context score is below this reports retention only (the model does not solve it)."""


# ------------------------------------------------------------------ finch side
def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _append(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def evidence_retention(
    kept_positions: Sequence[Any], evidence: Sequence[int], layers: Sequence[int] | None = None
) -> float:
    """The share of the evidence's (layer, KV head, token) entries kept; ``kept_positions`` as `CompressedContext`.

    ``layers`` limits the count to those layers (on Gemma 3, its full-attention ones: the only layers kvpress
    compresses there).
    """
    import torch

    if not evidence:
        return float("nan")
    index = torch.tensor(list(evidence))
    shares = []
    chosen = range(len(kept_positions)) if layers is None else layers
    for positions in (kept_positions[layer] for layer in chosen):  # [kv_heads, B] per layer
        for head in positions:
            shares.append(float(torch.isin(index, head).float().mean()))
    return sum(shares) / len(shares)


def truncated_ids(case: Mapping[str, Any], budget: int) -> tuple[list[int], float]:
    """The first ``budget`` context tokens of the ranked documents, and the share of evidence tokens among them."""
    context = case["context_ids"]
    first_doc = min(start for start, _ in case["ranked_documents"])
    order = list(range(first_doc)) + [i for start, end in case["ranked_documents"] for i in range(start, end)]
    kept = order[:budget]
    evidence = set(case["evidence_tokens"])
    share = len(evidence.intersection(kept)) / len(evidence) if evidence else float("nan")
    return [context[i] for i in kept], share


def run_finch(
    cases: Sequence[Mapping[str, Any]],
    journal: Path,
    ratios: Sequence[float],
    model: str | None,
    max_new_tokens: int,
    methods: Sequence[str] = FINCH_METHODS,
    answer_only: set[str] | None = None,
    chunk_size: int | str | None = "auto",
) -> None:
    """finch-rag's ``methods`` at each ratio; skips what ``journal`` already holds.

    - ``finch``: the core's default, `FinchCompressor.compress_ids` on the case's ids with ``FinchConfig()``;
    - ``finch_rag``: what every front end (`FinchRAG`, LangChain, LlamaIndex, the server, the CLI) does with a
      text context by default: `PassageAllocation().configure` of that config, i.e. whole sentences compete
      (``granularity="sentence"``), compressed from the text through `FinchCompressor.compress` (the same
      prompt the ids were built from; sentences need the text);
    - ``truncation``, on the QA tasks only: the first B context tokens of the embedder's document ranking.

    ``answer_only``: decode answers only for these cases (as the kvpress worker does, where full context
    answers); ``None`` decodes every case. ``chunk_size`` is `FinchConfig`'s (default ``"auto"``: chunks of 512
    for the suite's 4k contexts; ``None`` reads each in one pass, ``docs/results/chunking_quality.md``).
    """
    import torch

    from finch_rag import FinchCompressor, FinchConfig, PassageAllocation, load_model

    loaded, tokenizer = load_model(model)
    compressor = FinchCompressor(loaded, tokenizer, FinchConfig(chunk_size=chunk_size, progress=False))
    full_layers = full_attention_layers(loaded.config)
    for case in cases:
        # Re-read for each case, so that two processes sharing the journal (say, over other --part) skip each
        # other's finished work.
        done = {(r["case"], r["method"], r["ratio"]) for r in _read(journal)}
        prefix, context, question, suffix = (
            case[k] for k in ("prefix_ids", "context_ids", "question_ids", "suffix_ids")
        )
        example = case["example"]
        for ratio in ratios:
            base = {
                "case": case["key"],
                "task": case["task"],
                "ratio": ratio,
                "metric": example["metric"],
                "answers": example["answers"],
            }
            config = compressor.config.replace(compression_ratio=ratio)
            for method in ("finch", "finch_rag"):
                if method not in methods or (case["key"], method, ratio) in done:
                    continue
                started = time.perf_counter()
                if method == "finch":
                    compressed = compressor.compress_ids(context, question, prefix, suffix_ids=suffix, config=config)
                else:
                    front_end_config = PassageAllocation().configure(config)
                    compressed = compressor.compress(example["context"], example["question"], config=front_end_config)
                compress_s = time.perf_counter() - started
                started = time.perf_counter()
                answer = None
                if max_new_tokens and (answer_only is None or case["key"] in answer_only):
                    answer = compressor.generate(compressed, max_new_tokens=max_new_tokens)
                _append(
                    journal,
                    base
                    | {
                        "method": method,
                        "retention": evidence_retention(
                            compressed.kept_positions, case["evidence_tokens"], full_layers
                        ),
                        "context_kept": compressed.kept_tokens / len(context),
                        "chunks": compressed.stats["num_chunks"],
                        "answer": answer,
                        "compress_s": round(compress_s, 2),
                        "generate_s": round(time.perf_counter() - started, 2),
                    },
                )
            if (
                "truncation" in methods
                and case.get("ranked_documents")
                and (case["key"], "truncation", ratio) not in done
            ):
                budget = FinchConfig(compression_ratio=ratio).budget(len(context))
                kept, share = truncated_ids(case, budget)
                answer = None
                if max_new_tokens:
                    ids = torch.tensor([prefix + kept + question + suffix])
                    with torch.inference_mode():
                        out = loaded.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
                    answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
                _append(
                    journal,
                    base
                    | {
                        "method": "truncation",
                        "retention": share,
                        "context_kept": len(kept) / len(context),
                        "answer": answer,
                    },
                )
        print(f"finch: {case['key']} done", flush=True)


def start_kvpress(
    cases_path: Path,
    journal: Path,
    python: str,
    model_dir: str,
    presses: Sequence[str] | None,
    ratios: Sequence[float],
    max_new_tokens: int,
) -> subprocess.Popen[bytes]:
    """Start the kvpress worker (it runs beside finch-rag's side: one core each)."""
    if not Path(python).exists():
        raise FileNotFoundError(
            f"No kvpress environment at {python}. Build it with scripts/setup_kvpress_env.sh (or pass "
            "--kvpress-python), or run with --skip-kvpress."
        )
    # -P: the worker's own folder must not come first on sys.path, or kvpress's `import datasets` finds
    # benchmarks/datasets.py instead of Hugging Face's package.
    command = [
        python,
        "-P",
        str(WORKER),
        "--cases",
        str(cases_path),
        "--model-dir",
        model_dir,
        "--journal",
        str(journal),
        "--max-new-tokens",
        str(max_new_tokens),
        "--ratios",
        *map(str, ratios),
    ]
    if presses:
        command += ["--presses", *presses]
    return subprocess.Popen(command)


# ---------------------------------------------------------------------- report
def bootstrap(values: Sequence[float], resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile bootstrap interval over ``values``."""
    items = [v for v in values if not math.isnan(v)]
    if not items:
        return float("nan"), float("nan"), float("nan")
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(items, k=len(items))) / len(items) for _ in range(resamples))
    return sum(items) / len(items), means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def scored(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records with RULER's ``score`` of their answer (``None`` when none was decoded)."""
    out = []
    for record in records:
        answer = record.get("answer")
        value = None if answer is None else score(record["metric"], answer, record["answers"])
        out.append(dict(record) | {"score": value})
    return out


def _cell(stats: tuple[float, float, float], n: int) -> str:
    mean, low, high = stats
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if n < 2 else f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def _signed(stats: tuple[float, float, float]) -> str:
    mean, low, high = stats
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def full_score_by_task(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Full context's mean score per task, over `scored` records."""
    full = {}
    present = {r["task"] for r in records}
    for task in [t for t in TASKS if t in present] + sorted(present.difference(TASKS)):
        values = [r["score"] for r in records if r["task"] == task and r["method"] == "full" and r["score"] is not None]
        if values:
            full[task] = sum(values) / len(values)
    return full


def solved_tasks(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The tasks whose full-context score averages at least ``SOLVED``."""
    return sorted(task for task, value in full_score_by_task(records).items() if value >= SOLVED)


def answered_cases(records: Sequence[Mapping[str, Any]]) -> set[str]:
    """The cases whose answers are scored: full context answers them (>= ``SOLVED``) on a solved task.

    The kvpress worker decodes press answers only there, so every method is scored on the same examples.
    """
    solved = solved_tasks(records)
    return {
        r["case"]
        for r in records
        if r["method"] == "full" and r["score"] is not None and r["score"] >= SOLVED and r["task"] in solved
    }


def full_attention_layers(config: Any) -> list[int] | None:
    """Gemma 3's full-attention layers (the only ones kvpress compresses there); ``None``: every layer counts."""
    layer_types = getattr(config, "layer_types", None) or []
    return [index for index, kind in enumerate(layer_types) if kind != "sliding_attention"] or None


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per task x method x ratio means, and averages over the examples of all tasks (and of solved tasks)."""
    full = full_score_by_task(records)
    solved = solved_tasks(records)
    answered = answered_cases(records)
    methods = [m for m in METHOD_ORDER if any(r["method"] == m for r in records)]
    ratios = sorted({r["ratio"] for r in records if r["method"] != "full"})
    rows = []
    for method in methods:
        for ratio in [0.0] if method == "full" else ratios:
            chosen = [r for r in records if r["method"] == method and r["ratio"] == ratio]
            if not chosen:
                continue
            retention = [r["retention"] for r in chosen]
            scores = [r["score"] for r in chosen if r["case"] in answered and r["score"] is not None]
            row = {
                "method": method,
                "ratio": ratio,
                "n": len(chosen),
                "retention": bootstrap(retention),
                "n_scored": len(scores),
                "score": bootstrap(scores),
                "context_kept": sum(r["context_kept"] for r in chosen) / len(chosen),
            }
            for task in TASKS:
                of_task = [r for r in chosen if r["task"] == task]
                if of_task:
                    row[f"retention/{task}"] = sum(r["retention"] for r in of_task) / len(of_task)
                    task_scores = [r["score"] for r in of_task if r["case"] in answered and r["score"] is not None]
                    if task_scores and task in solved:
                        row[f"score/{task}"] = sum(task_scores) / len(task_scores)
            rows.append(row)
    return {
        "full_score_by_task": full,
        "solved_tasks": solved,
        "answered_cases": sorted(answered),
        "rows": rows,
        "paired": paired_differences(records, answered, ratios),
    }


def paired_differences(
    records: Sequence[Mapping[str, Any]], answered: set[str], ratios: Sequence[float]
) -> list[dict[str, Any]]:
    """Per `PAIRED` pair and ratio, the mean score difference over the answered examples both methods have.

    Pairing by example removes most of the between-example spread that makes the per-method intervals overlap.
    """
    by_key = {(r["method"], r["case"], r["ratio"]): r["score"] for r in records if r["score"] is not None}
    out = []
    for first, second in PAIRED:
        for ratio in ratios:
            cases = sorted(
                case for case in answered if (first, case, ratio) in by_key and (second, case, ratio) in by_key
            )
            if cases:
                differences = [by_key[(first, case, ratio)] - by_key[(second, case, ratio)] for case in cases]
                out.append(
                    {
                        "pair": f"{first} - {second}",
                        "ratio": ratio,
                        "n": len(cases),
                        "difference": bootstrap(differences),
                    }
                )
    return out


def markdown(summary: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    rows, solved = summary["rows"], summary["solved_tasks"]
    lines = [f"# Peers on the RULER-style suite: {meta['model']}", "", f"Command: `{meta['command']}`", ""]
    lines += [
        f"Machine: {meta['machine']}. Prompt length {meta.get('length', DEFAULT_LENGTH)} tokens. Examples per task "
        f"asked: {meta['per_task']} (seed {meta['seed']}); cases "
        f"complete for every method: {meta.get('cases_complete')} of {meta.get('cases_started')} started (only "
        "complete cases are counted).",
        "",
    ]
    full = summary["full_score_by_task"]
    lines += ["Full-context score per task (RULER metric; tasks under 0.3 report retention only):", ""]
    lines += [
        markdown_table(
            [{"task": t, "full": v, "scored": "yes" if t in solved else "no"} for t, v in full.items()],
            ["task", "full", "scored"],
        )
    ]
    lines += ["", "## Averages over all examples (95% bootstrap interval over examples)", ""]
    table = [
        {
            "method": r["method"],
            "ratio": f"{r['ratio']:g}",
            "n": r["n"],
            "retention": _cell(r["retention"], r["n"]),
            "n answered": r["n_scored"],
            "score (solved tasks)": _cell(r["score"], r["n_scored"]),
            "context kept": r["context_kept"],
        }
        for r in rows
    ]
    lines += [
        markdown_table(
            table, ["method", "ratio", "n", "retention", "n answered", "score (solved tasks)", "context kept"]
        )
    ]
    if summary.get("paired"):
        lines += ["", "## Paired score differences on the answered examples (95% bootstrap interval)", ""]
        table = [
            {"pair": d["pair"], "ratio": f"{d['ratio']:g}", "n": d["n"], "difference": _signed(d["difference"])}
            for d in summary["paired"]
        ]
        lines += [markdown_table(table, ["pair", "ratio", "n", "difference"])]
    for metric in ("retention", "score"):
        tasks = [t for t in TASKS if any(f"{metric}/{t}" in r for r in rows)]
        if not tasks:
            continue
        lines += ["", f"## {metric.capitalize()} per task (mean over the task's examples)", ""]
        table = [
            {"method": r["method"], "ratio": f"{r['ratio']:g}"} | {t: r.get(f"{metric}/{t}") for t in tasks}
            for r in rows
        ]
        lines += [markdown_table(table, ["method", "ratio", *tasks])]
    return "\n".join(lines) + "\n"


def plot(summary: Mapping[str, Any], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, metric, label in (
        (axes[0], "score", "RULER score (solved tasks)"),
        (axes[1], "retention", "evidence retention"),
    ):
        full = [r for r in rows if r["method"] == "full"]
        for method in [m for m in METHOD_ORDER if m != "full"]:
            points = [
                (r["ratio"], r[metric][0]) for r in rows if r["method"] == method and not math.isnan(r[metric][0])
            ]
            if points:
                style = {
                    "finch_rag": {"linewidth": 2.5, "color": "black"},
                    "finch": {"linewidth": 2.0, "color": "0.35", "linestyle": "--"},
                }.get(method, {})
                axis.plot(*zip(*points, strict=True), marker="o", label=method, **style)
        if full and not math.isnan(full[0][metric][0]):
            axis.axhline(full[0][metric][0], linestyle=":", color="0.4", label="full context")
        axis.set_xlabel("compression ratio")
        axis.set_ylabel(label)
        axis.set_xticks(list(RATIOS), [f"{ratio:g}" for ratio in RATIOS])
        axis.grid(alpha=0.3)
    if axes[1].get_legend_handles_labels()[0]:  # a report with no complete case has no lines
        axes[1].legend(fontsize=8, loc="lower left")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def complete(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records of the cases every method has finished (full context and each method at each ratio).

    A run still in progress (or a press added later) leaves some cases partial; averaging them would compare
    methods on different inputs. Truncation exists only where a ranking does, so it is not required.
    """
    ratios = {r["ratio"] for r in records if r["method"] != "full"}
    methods = {r["method"] for r in records if r["method"] not in ("full", "truncation")}
    required = {("full", 0.0)} | {(m, ratio) for m in methods for ratio in ratios}
    have: dict[str, set[tuple[str, float]]] = {}
    for record in records:
        have.setdefault(record["case"], set()).add((record["method"], record["ratio"]))
    return [r for r in records if required <= have[r["case"]]]


def report(
    journals: Sequence[Path],
    out: Path,
    tag: str,
    meta: dict[str, Any],
    ratios: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Write ``peers_<tag>.md/.json/.png`` from ``journals``, over ``ratios`` only when given."""
    every, seen = [], set()
    for record in (r for path in journals for r in _read(path)):
        if ratios is not None and record["method"] != "full" and record["ratio"] not in ratios:
            continue
        key = (record["case"], record["method"], record["ratio"])
        if key not in seen:  # the first record of each, should two processes have done one twice
            seen.add(key)
            every.append(record)
    records = complete(every)
    meta = meta | {
        "cases_complete": len({r["case"] for r in records}),
        "cases_started": len({r["case"] for r in every}),
    }
    summary = summarize(scored(records))
    cases = {r["case"] for r in records}
    meta = meta | {"machine": machine_description()}
    write_json(out / f"peers_{tag}.json", {"meta": meta, "summary": summary})
    (out / f"peers_{tag}.md").write_text(markdown(summary, meta))
    length = meta.get("length", DEFAULT_LENGTH)
    plot(summary, out / f"peers_{tag}.png", f"{meta['model']}: RULER-style suite at {length} tokens, n={len(cases)}")
    return summary


# --------------------------------------------------------------------- command
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks peers", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="benchmark data folder (default ../shared/data)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="where journals and reports go (default docs/results)")
    parser.add_argument("--work", default="/tmp/finch-peers", help="where the encoded cases go (large; not results)")
    parser.add_argument("--model", default=None, help="model for finch-rag (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--model-tag", default="smollm2", help="names the output files")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, metavar="TASK")
    parser.add_argument("--per-task", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--length", type=int, default=DEFAULT_LENGTH, help=f"prompt tokens per example (default {DEFAULT_LENGTH})"
    )
    parser.add_argument("--start", type=int, default=0, help="first example index of each task")
    parser.add_argument("--limit", type=int, default=None, help="run at most this many cases (all tasks interleaved)")
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    parser.add_argument("--max-new-tokens", type=int, default=24, help="0: retention only, no answers")
    parser.add_argument("--presses", nargs="+", default=None, help="kvpress presses (default: all of the worker's)")
    parser.add_argument("--kvpress-python", default=KVPRESS_PYTHON)
    parser.add_argument("--journal", default=None, help="finch-rag's journal (default OUT/peers_TAG_finch.jsonl)")
    parser.add_argument(
        "--extra-journals", nargs="+", default=[], help="more journals the report reads (e.g. a screen's)"
    )
    parser.add_argument("--name", default=None, help="the report's tag (default: --model-tag)")
    parser.add_argument("--finch-methods", nargs="+", default=list(FINCH_METHODS), choices=FINCH_METHODS)
    add_chunk_size_option(parser)
    parser.add_argument(
        "--part", type=int, nargs=2, default=(0, 1), metavar=("I", "N"), help="finch-rag's side: every Nth case from I"
    )
    parser.add_argument(
        "--answer-only-answered",
        action="store_true",
        help="finch-rag's side decodes only where the finished kvpress journal's full context answers",
    )
    parser.add_argument("--skip-finch", action="store_true")
    parser.add_argument("--skip-kvpress", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="only write the report from the journals")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from finch_rag import load_model
    from finch_rag.models import converted_dir, default_gguf_path

    out, work = Path(args.out), Path(args.work)
    cases_path = work / f"cases_{args.model_tag}_seed{args.seed}.jsonl"
    finch_journal = Path(args.journal) if args.journal else out / f"peers_{args.model_tag}_finch.jsonl"
    kvpress_journal = out / f"peers_{args.model_tag}_kvpress.jsonl"
    if not args.report_only:
        _, tokenizer = load_model(args.model)
        examples = generate_suite(
            tokenizer,
            args.data,
            tasks=args.tasks,
            per_task=args.start + args.per_task,
            seed=args.seed,
            length=args.length,
        )
        examples = [e for e in examples if e.index >= args.start]
        examples.sort(key=lambda e: (e.index, TASKS.index(e.task)))  # tasks interleaved, so --limit covers all
        examples = examples[: args.limit]
        cases = [case.to_json() for case in encode_suite(tokenizer, examples)]
        work.mkdir(parents=True, exist_ok=True)
        cases_path.write_text("".join(json.dumps(case) + "\n" for case in cases))
        worker = None
        if not args.skip_kvpress:
            # The worker loads with transformers 5.2, which reads the safetensors copy finch-rag converts a GGUF to.
            model_dir = args.model
            if args.model is None or args.model.endswith(".gguf"):
                model_dir = str(converted_dir(Path(args.model) if args.model else default_gguf_path()))
            worker = start_kvpress(
                cases_path,
                kvpress_journal,
                args.kvpress_python,
                model_dir,
                args.presses,
                args.ratios,
                args.max_new_tokens,
            )
        if not args.skip_finch:
            answer_only = None
            if args.answer_only_answered:
                full = scored([r for r in _read(kvpress_journal) if r["method"] == "full"])
                if not {case["key"] for case in cases} <= {r["case"] for r in full}:
                    raise SystemExit(f"--answer-only-answered needs full context on every case in {kvpress_journal}.")
                answer_only = answered_cases(full)
            part = cases[args.part[0] :: args.part[1]]
            run_finch(
                part,
                finch_journal,
                args.ratios,
                args.model,
                args.max_new_tokens,
                args.finch_methods,
                answer_only,
                args.chunk_size,
            )
        if worker is not None and worker.wait() != 0:
            raise RuntimeError(f"The kvpress worker failed (exit {worker.returncode}); its journal keeps what it did.")
    meta = {
        "model": Path(args.model).name if args.model else "SmolLM2-135M-Instruct (embedded)",
        "command": "python -m benchmarks peers " + " ".join(sys.argv[2:] if argv is None else argv),
        "per_task": args.per_task,
        "seed": args.seed,
        "length": args.length,
        "ratios": args.ratios,
    }
    journals = [finch_journal, kvpress_journal, *map(Path, args.extra_journals)]
    name = args.name or args.model_tag
    report(journals, out, name, meta, args.ratios)
    print(f"wrote {out / f'peers_{name}.md'}")
    return 0
