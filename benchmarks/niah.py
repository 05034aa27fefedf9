"""Needle in a haystack: can the model still find one inserted fact after compression?

A short fact (the needle) is inserted at a chosen depth into Paul Graham's essays cut to a chosen
token length on sentence boundaries. The context is compressed for the needle's question, the model
answers from the compressed cache, and each record holds:

- ``contains``: 1 when a gold answer occurs in the answer (SQuAD normalisation), plus ``em`` and ``f1``;
- ``retention``: the fraction of the needle's KV entries that survived (`CompressedContext.kept_fraction`),
  averaged over layers and KV heads, and ``retention_per_layer``.

Methods, at the same budget ``B`` (context KV entries per layer and KV head):

- ``finch``: the compressor's own config (the library default) at each ratio;
- ``finchpress``: ``selection="per_head", chunk_size=None, normalize_scores=True``, which keeps the same
  entries as kvpress's ``FinchPress``;
- ``full``: no compression (only where the whole prompt fits the model's window);
- controls ``random``, ``recency`` (the last ``B``), ``first`` (the first ``B``): the same chunk loop as
  FINCH with a fixed rule in place of attention scores;
- ``truncation``: the haystack cut to its first ``B`` tokens in reading order. The QA suites' truncation
  (passages in order until ``B`` tokens) is exactly that for one haystack, so it runs as the ``first`` control
  under the name ``truncation``: the kept entries are the first ``B`` and, the attention being causal, they
  hold the same keys and values as a prefill of the cut text (only the cost differs: the whole haystack is read);
- any ``label:key=value,...`` spec: the compressor's config with those `FinchConfig` fields changed,
  e.g. ``shared_s21:selection=shared,smoothing=21,chunk_size=512``; ``score_layers=upper`` is the
  upper half of the layers, ``score_layers=a..b`` a range (inclusive), ``none`` is ``None``.

The selection study behind the default config (``docs/results/niah_study_*.md``) ran such specs; its
command is in ``docs/results/README.md``.

    python -m benchmarks niah --lengths 2000 8000 --depths 0.1 0.5 0.9 --methods full finch recency

``--plot depth`` draws depth curves (contains and retention against depth, one panel per length) in place of
the depth x length heatmaps.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from finch_rag import CompressedContext, FinchCompressor, FinchConfig
from finch_rag.prompts import as_passages, build_prompt

from . import plots
from .common import (
    RESULTS_DIR,
    answer_scores,
    command_line,
    machine_description,
    markdown_table,
    meta_lines,
    write_json,
)
from .datasets import NEEDLES, Haystack, Needle, needles_by_key, split_passages
from .journal import Journal, add_journal_options, report_only_records
from .methods import METHOD_GROUPS, PRESETS, Method, expand_methods, method_config, parse_method
from .stats import group_means

TRUNCATION = Method("truncation", options={"selection": "first"})
"""``truncation`` of one haystack: its first ``B`` tokens, run as the ``first`` control (see the module docstring)."""

logger = logging.getLogger(__name__)


# -------------------------------------------------------------------- runs
def needle_retention(compressed: CompressedContext, span: tuple[int, int, int]) -> tuple[float, list[float]]:
    """Fraction of the needle's KV entries kept: overall, and per layer."""
    per_layer = compressed.kept_fraction_per_layer([span])
    return compressed.kept_fraction([span]), [round(value, 4) for value in per_layer]


CASE = ("method", "length", "depth", "needle", "ratio", "passages")
"""The fields that name one case: a journal holds at most one record per case."""


def _case_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(record[field] for field in CASE)


def run_niah(
    compressor: FinchCompressor,
    lengths: Sequence[int] = (1500, 4000),
    depths: Sequence[float] = (0.1, 0.5, 0.9),
    methods: Sequence[str | Method] = ("full", "finch", "finchpress", "random", "recency", "first"),
    ratios: Sequence[float] = (0.75, 0.9),
    needles: Sequence[Needle] | None = None,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
    *,
    data: str | Path | None = None,
    passage_tokens: int | None = None,
    max_new_tokens: int = 24,
    answer: bool = True,
    journal: str | Path | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every (needle, length, depth, method, ratio) case and return one record per case.

    Parameters
    ----------
    compressor : FinchCompressor
        Its config is the base of every ``finch`` method (the ratio and the method's options override it).
    lengths : sequence of int
        Context lengths in tokens (haystack plus needle).
    depths : sequence of float
        Where the needle goes, as a fraction of the haystack (0 = start, 1 = end).
    methods : sequence of str or Method
        See the module docstring; group names (``"baselines"``, ...) expand.
    ratios : sequence of float
        Compression ratios (fraction removed): 0.75 is 4x, 0.9 is 10x. ``full`` ignores them.
    needles : sequence of Needle, optional
        Default: the built-in `NEEDLES`; ``limit`` keeps the first ``limit`` of them.
    limit : int, optional
        Use only the first ``limit`` needles.
    seed : int
        Seeds torch (the ``random`` control keeps `RandomSelection`'s own seed-0 set).
    progress : bool
        A tqdm bar over cases.
    data : path, optional
        The benchmark data folder (see `benchmarks.common.data_dir`).
    passage_tokens : int, optional
        Split the haystack into passages of about this many tokens (default: one passage).
    max_new_tokens : int
        Answer length limit (greedy decoding).
    answer : bool
        ``False`` skips decoding and records only the needle retention (much faster).
    journal : path, optional
        A JSON-lines file: every record is appended as soon as it is done, and records already there are
        not run again, so an interrupted run resumes. Records are matched by method name, so give
        differently configured methods different names.
    on_record : callable, optional
        Called with each record as soon as it is done.
    """
    torch.manual_seed(seed)
    resolved = [TRUNCATION if method.kind == "truncation" else method for method in expand_methods(methods)]
    if TRUNCATION in resolved:
        logger.info("niah: 'truncation' keeps the first B tokens of the haystack; it runs as the 'first' control.")
    chosen_needles = list(needles if needles is not None else NEEDLES)[: limit if limit else None]
    num_layers = compressor.model.config.get_text_config(decoder=True).num_hidden_layers
    haystack = Haystack(compressor.tokenizer, data)
    journal_file = Journal(journal, _case_key)
    window = compressor.context_window
    jobs = []
    for length in lengths:
        for depth in depths:
            for needle in chosen_needles:
                for method in resolved:
                    for ratio in [0.0] if method.kind == "full" else ratios:
                        jobs.append((length, depth, needle, method, ratio))
    from tqdm.auto import tqdm

    records = []
    case_cache: dict[tuple[int, float, str], tuple[list[str], tuple[int, int, int]]] = {}
    for length, depth, needle, method, ratio in tqdm(jobs, desc="niah", unit="case", disable=not progress):
        key = (method.name, length, depth, needle.key, ratio, passage_tokens)
        if key in journal_file:
            records.append(journal_file.done[key])
            continue
        if (length, depth, needle.key) not in case_cache:
            context, start, end = haystack.with_needle(length, needle, depth)
            case_cache = {
                (length, depth, needle.key): split_passages(compressor.tokenizer, context, (start, end), passage_tokens)
            }
        passages, span = case_cache[(length, depth, needle.key)]
        record: dict[str, Any] = {
            "method": method.name,
            "kind": method.kind,
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in method.options.items()},
            "length": length,
            "depth": depth,
            "needle": needle.key,
            "ratio": ratio,
            "passages": passage_tokens,
            "num_passages": len(passages),
        }
        config = method_config(compressor.config, method, num_layers, ratio=ratio)
        record["config"] = {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in config.to_dict().items()
            if k not in ("progress", "system_prompt", "chat_template")
        }
        if method.kind == "full" and window:
            parts = build_prompt(
                compressor.tokenizer,
                as_passages(passages),
                needle.question,
                chat_template=config.chat_template,
                system_prompt=config.system_prompt,
            )
            needed = sum(map(len, (parts.prefix_ids, parts.context_ids, parts.question_ids, parts.suffix_ids)))
            if needed + max_new_tokens > window:
                record.update(
                    skipped=f"the full prompt needs {needed + max_new_tokens} positions, past the window of {window}"
                )
                _finish(record, records, journal_file, on_record)
                continue
        started = time.perf_counter()
        try:
            compressed = compressor.compress(passages, needle.question, config=config)
        except ValueError as error:  # e.g. the full context does not fit the window
            record.update(skipped=str(error))
            _finish(record, records, journal_file, on_record)
            continue
        record["compress_s"] = round(time.perf_counter() - started, 3)
        record["context_tokens"] = compressed.original_tokens
        record["kept_tokens"] = compressed.kept_tokens
        record["num_chunks"] = compressed.cache.num_chunks
        record["retention"], record["retention_per_layer"] = needle_retention(compressed, span)
        if answer:
            needed = (
                compressed.cache_length + len(compressed.question_ids) + len(compressed.suffix_ids) + max_new_tokens
            )
            if window and needed > window:
                record.update(skipped=f"answering needs {needed} positions, past the window of {window}")
            else:
                started = time.perf_counter()
                text = compressor.generate(compressed, max_new_tokens=max_new_tokens)
                record["generate_s"] = round(time.perf_counter() - started, 3)
                record["answer"] = text
                record.update(answer_scores(text, needle.answers))
        _finish(record, records, journal_file, on_record)
    return records


def _finish(
    record: dict[str, Any],
    records: list[dict[str, Any]],
    journal: Journal,
    on_record: Callable[[dict[str, Any]], None] | None,
) -> None:
    records.append(record)
    journal.append([record])
    if on_record is not None:
        on_record(record)
    logger.info(
        "%s len=%s depth=%s needle=%s ratio=%s -> contains=%s retention=%s answer=%r",
        record["method"],
        record["length"],
        record["depth"],
        record["needle"],
        record["ratio"],
        record.get("contains"),
        None if "retention" not in record else round(record["retention"], 3),
        record.get("answer", record.get("skipped")),
    )


# ------------------------------------------------------------------ output
SUMMARY_METRICS = ("contains", "em", "f1", "retention", "compress_s", "generate_s")


def summarize(
    records: Sequence[Mapping[str, Any]], by: Sequence[str] = ("method", "ratio", "length")
) -> list[dict[str, Any]]:
    """Mean metrics per group, over the records that ran (skipped ones are counted apart)."""
    ran = [record for record in records if "skipped" not in record]
    rows = group_means(ran, list(by), SUMMARY_METRICS)
    for row in rows:
        row["x"] = "full" if row.get("ratio") == 0.0 else (f"{1 / (1 - row['ratio']):.0f}x" if "ratio" in row else None)
    return rows


def overview_table(records: Sequence[Mapping[str, Any]]) -> str:
    """One row per method, one column per (length, compression): "accuracy / needle retention"."""
    ran = [record for record in records if "skipped" not in record]
    settings = sorted({(r["length"], r["ratio"]) for r in ran if r["ratio"] != 0.0})
    rows = []
    for method in dict.fromkeys(r["method"] for r in ran):
        row: dict[str, Any] = {"method": method}
        for length, ratio in settings:
            cases = [r for r in ran if r["method"] == method and r["length"] == length and r["ratio"] in (ratio, 0.0)]
            scored = [r["contains"] for r in cases if r.get("contains") is not None]
            accuracy = f"{sum(scored) / len(scored):.2f}" if scored else "-"
            retention = f"{sum(r['retention'] for r in cases) / len(cases):.2f}" if cases else "-"
            row[f"{length} tok, {1 / (1 - ratio):.0f}x"] = f"{accuracy} / {retention}" if cases else "-"
        rows.append(row)
    columns = ["method"] + [f"{length} tok, {1 / (1 - ratio):.0f}x" for length, ratio in settings]
    return markdown_table(rows, columns)


def _curve_label(method: str, ratio: float) -> str:
    return method if ratio == 0.0 else f"{method} {1 / (1 - ratio):.0f}x"


def depth_curves(records: Sequence[Mapping[str, Any]], metric: str) -> dict[int, dict[str, list[tuple[float, float]]]]:
    """``{length: {"method Nx": [(depth, mean metric), ...]}}`` over the records that ran, depths ascending."""
    ran = [r for r in records if "skipped" not in r and r.get(metric) is not None]
    groups = group_means(ran, ["length", "method", "ratio", "depth"], [metric])
    curves: dict[int, dict[str, list[tuple[float, float]]]] = {}
    for row in sorted(groups, key=lambda row: (row["length"], row["depth"])):
        label = _curve_label(row["method"], row["ratio"])
        curves.setdefault(row["length"], {}).setdefault(label, []).append((row["depth"], row[metric]))
    return curves


def depth_table(records: Sequence[Mapping[str, Any]], length: int) -> str:
    """One row per needle depth, one column per method at ``length``: "contains / retention"."""
    contains, retention = (depth_curves(records, metric).get(length, {}) for metric in ("contains", "retention"))
    labels = list(dict.fromkeys([*retention, *contains]))
    depths = sorted({depth for curve in retention.values() for depth, _ in curve})
    rows = []
    for depth in depths:
        row: dict[str, Any] = {"depth": f"{depth:.1f}"}
        for label in labels:
            c = dict(contains.get(label, [])).get(depth)
            k = dict(retention.get(label, [])).get(depth)
            row[label] = f"{'-' if c is None else f'{c:.2f}'} / {'-' if k is None else f'{k:.2f}'}"
        rows.append(row)
    return markdown_table(rows, ["depth", *labels])


def markdown_report(records: Sequence[Mapping[str, Any]], title: str = "Needle in a haystack") -> str:
    """Tables: overview; per method and ratio; per method, ratio and length; per method, ratio and depth."""
    sections = [f"# {title}", ""]
    sections += [
        "## Overview: contains-gold accuracy / needle retention",
        "",
        "(`full` is uncompressed, so its cells repeat across compression columns.)",
        "",
        overview_table(records),
        "",
    ]
    columns = ["method", "x", "n", "contains", "retention", "f1", "compress_s", "generate_s"]
    sections += [
        "## By method and compression",
        "",
        markdown_table(summarize(records, ("method", "ratio")), columns),
        "",
    ]
    sections += [
        "## By context length",
        "",
        markdown_table(summarize(records, ("method", "ratio", "length")), ["method", "x", "length", *columns[2:6]]),
        "",
        "## By needle depth",
        "",
        markdown_table(summarize(records, ("method", "ratio", "depth")), ["method", "x", "depth", *columns[2:6]]),
        "",
    ]
    for length in sorted({r["length"] for r in records if "skipped" not in r}):
        heading = f"## By needle depth at {length} tokens: contains / retention"
        sections += [heading, "", depth_table(records, length), ""]
    skipped = [record for record in records if "skipped" in record]
    if skipped:
        reasons = sorted({f"{r['method']} at {r['length']} tokens: {r['skipped']}" for r in skipped})
        sections += ["## Skipped", "", *[f"- {reason}" for reason in reasons], ""]
    return "\n".join(sections)


def plot_heatmaps(records: Sequence[Mapping[str, Any]], path: str | Path, metric: str = "contains") -> Path:
    """PNG grid of depth x length heatmaps of ``metric``: one row per ratio, one column per method."""
    return plots.heatmaps(records, path, metric)


def plot_depth_curves(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """PNG of depth curves: contains (top row) and needle retention (bottom row) against needle depth.

    One column per context length, one line per method (and compression).
    """
    titles = {"contains": "contains gold", "retention": "needle retention"}
    return plots.depth_panels({title: depth_curves(records, metric) for metric, title in titles.items()}, path)


PLOTS = {"heatmap": plot_heatmaps, "depth": plot_depth_curves}
"""``--plot`` choices: the depth x length heatmap grid of ``contains``, or depth curves per length."""


def write_results(
    records: Sequence[Mapping[str, Any]],
    out: str | Path = RESULTS_DIR,
    name: str = "niah",
    meta: Mapping[str, Any] | None = None,
    plot: bool = True,
    figure: str = "heatmap",
) -> dict[str, Path]:
    """Write ``{name}.json`` (records, summary, machine), ``{name}.md`` and ``{name}.png`` under ``out``.

    ``figure`` picks the PNG from `PLOTS`: ``"heatmap"`` or ``"depth"``.
    """
    if figure not in PLOTS:
        raise ValueError(f"Unknown figure {figure!r}; use one of {sorted(PLOTS)}.")
    folder = Path(out)
    info = {"machine": machine_description(), **(meta or {})}
    paths = {
        "json": write_json(
            folder / f"{name}.json",
            {"meta": info, "summary": summarize(records, ("method", "ratio", "length")), "records": list(records)},
        )
    }
    report = markdown_report(records)
    header = "\n".join(meta_lines(info))
    paths["md"] = folder / f"{name}.md"
    paths["md"].write_text(report.replace("\n", f"\n\n{header}\n", 1) + "\n")
    if plot:
        paths["png"] = PLOTS[figure](records, folder / f"{name}.png")
    return paths


# --------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks niah``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks niah", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="benchmark data folder (default: ../shared/data from the working directory)")
    parser.add_argument("--model", help="model path or hub id (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument(
        "--config",
        help="change the base FinchConfig (what 'finch', the controls and 'label:...' methods start from), "
        "e.g. 'smoothing=21,score_layers=upper'",
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[1500, 4000], help="context lengths in tokens")
    parser.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9], help="needle depths in [0, 1]")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.75, 0.9], help="compression ratios (removed)")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=METHOD_GROUPS["baselines"],
        help="methods: finch, finchpress, full, random, recency, first, ..., the group 'baselines', or "
        "'label:key=value,...' with FinchConfig fields",
    )
    parser.add_argument("--needles", nargs="+", help=f"needle keys (default: all of {[n.key for n in NEEDLES]})")
    parser.add_argument("--limit", type=int, help="use only the first LIMIT needles")
    parser.add_argument("--passage-tokens", type=int, help="split the haystack into passages of about this size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--no-answer", action="store_true", help="record needle retention only, no decoding")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 needle, 1,500 tokens, depth 0.5")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output folder")
    parser.add_argument("--name", default="niah", help="output file stem")
    add_journal_options(parser)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--plot",
        choices=sorted(PLOTS),
        default="heatmap",
        help="the PNG: depth x length heatmaps of contains, or depth curves of contains and retention per length",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if args.quick:
        args.lengths, args.depths, args.limit = [1500], [0.5], 1
    command = command_line("python -m benchmarks niah", argv)
    if args.report_only:
        records = report_only_records(parser, args.journal)
        paths = write_results(
            records, args.out, args.name, meta={"command": command}, plot=not args.no_plot, figure=args.plot
        )
        print("wrote " + ", ".join(str(path) for path in paths.values()))
        return 0

    from finch_rag import load_model

    model, tokenizer = load_model(args.model) if args.model else load_model()
    base = parse_method(f"finch:{args.config}") if args.config else PRESETS["finch"]
    num_layers = model.config.get_text_config(decoder=True).num_hidden_layers
    compressor = FinchCompressor(model, tokenizer, method_config(FinchConfig(), base, num_layers, ratio=0.75))
    records = run_niah(
        compressor,
        lengths=args.lengths,
        depths=args.depths,
        methods=args.methods,
        ratios=args.ratios,
        needles=needles_by_key(args.needles),
        limit=args.limit,
        seed=args.seed,
        progress=not args.quiet,
        data=args.data,
        passage_tokens=args.passage_tokens,
        max_new_tokens=args.max_new_tokens,
        answer=not args.no_answer,
        journal=args.journal,
    )
    meta = {
        "command": command,
        "model": compressor.model_name,
        "base_config": {k: v for k, v in compressor.config.to_dict().items() if k != "progress"},
    }
    paths = write_results(records, args.out, args.name, meta=meta, plot=not args.no_plot, figure=args.plot)
    print(markdown_report(records))
    print("\nwrote " + ", ".join(str(path) for path in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
