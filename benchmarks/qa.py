"""Question-answering suites: ``squad``, ``rag-squad`` and ``hotpotqa``, every method at equal budget.

Suites (data from ``--data``, default ``../shared/data``; questions drawn with a fixed seed):

- ``squad``: the paper's setting, one SQuAD v1.1 dev paragraph and its question;
- ``rag-squad``: every paragraph of ``squad-v1.1-dev-part.json`` is a document; all-MiniLM-L6-v2 retrieves
  the top ``--top-k`` for each question (best first), and the methods fit them into the budget
  (``--corpus-limit N``: a smaller corpus of the first N paragraphs plus the sampled questions' own, for quick
  runs; embedding all 1,023 takes minutes on a CPU);
- ``hotpotqa``: the 10 paragraphs of each HotpotQA distractor question, ranked by all-MiniLM-L6-v2.

Each method (`benchmarks.methods`) runs at each budget of ``--budgets``: ``4x`` is ``B = floor(n / 4)``
of the ``n`` context tokens, ``256`` is ``B = 256``. Metrics per question (DESIGN §4):

- ``retention``: fraction of the gold evidence's KV entries that survive, over layers and KV heads (the answer
  spans in SQuAD, the supporting sentences in HotpotQA); ``retention_per_layer`` in the JSON;
- ``all_hops``: 1 when every piece of evidence (supporting sentence, answer occurrence) keeps at least half of
  its entries (all-hops coverage in HotpotQA, answer-span coverage in SQuAD);
- ``contains``, ``em``, ``f1``: the greedy answer against the gold answers (SQuAD normalisation);
- ``compress_s``, ``generate_s``: seconds to build the cache (compression, or the prefill for ``full`` and
  ``truncation``) and to answer (greedy, up to ``--max-new-tokens``, stopping at a newline).

Truncation keeps passages in retrieval order until ``B`` tokens and answers with full attention over them;
its retention counts the evidence tokens inside those first ``B``. ``full`` reads everything.

    python -m benchmarks hotpotqa --limit 200 --budgets 128 256 512 --methods allocation
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from finch_rag import CompressedContext, FinchCompressor, FinchConfig, Passage
from finch_rag.prompts import PromptParts, build_prompt

from .common import (
    RESULTS_DIR,
    answer_scores,
    data_dir,
    group_means,
    machine_description,
    markdown_table,
    write_json,
)
from .methods import Method, allocation_of, expand_methods, method_config

SUITES = ("squad", "rag-squad", "hotpotqa")
SQUAD_FILE = "squad-v1.1-dev-part.json"
HOTPOTQA_FILE = "hotpotqa-dev-distractor-part.json"
Span = tuple[int, int, int]  # (passage index, char start, char end) in that passage's text


@dataclass
class Example:
    """One question with its passages in retrieval order (best first) and its gold evidence.

    ``evidence`` holds one span per piece of evidence (an answer occurrence, a supporting sentence); a piece
    whose passage was not retrieved is absent, and ``missing_evidence`` counts it. ``unretrieved_evidence`` holds
    the text of pieces that a smaller retrieval cut off (`retrieve_more`): they count as evidence that nothing
    kept, so retention and all-hops fall when retrieval misses.
    """

    suite: str
    qid: str
    question: str
    passages: list[Passage]
    answers: list[str]
    evidence: list[Span]
    missing_evidence: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    unretrieved_evidence: list[str] = field(default_factory=list)


# --------------------------------------------------------------------- data
def _sample(items: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order[: limit or None]]


def _squad_records(path: Path) -> tuple[list[tuple[str, str]], list[tuple[int, dict[str, Any]]]]:
    """Distinct paragraphs ``(title, text)`` and every question as ``(paragraph index, qa)``."""
    articles = json.loads(path.read_text())["data"]
    paragraphs: list[tuple[str, str]] = []
    questions: list[tuple[int, dict[str, Any]]] = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            paragraphs.append((article["title"].replace("_", " "), paragraph["context"]))
            questions += [(len(paragraphs) - 1, qa) for qa in paragraph["qas"]]
    return paragraphs, questions


def _answer_spans(qa: Mapping[str, Any], passage: int) -> list[Span]:
    spans = {(passage, a["answer_start"], a["answer_start"] + len(a["text"])) for a in qa["answers"] if a["text"]}
    return sorted(spans)


def load_squad(data: Path, limit: int | None, seed: int) -> list[Example]:
    """The paper's setting: each question with its own paragraph."""
    paragraphs, questions = _squad_records(data / SQUAD_FILE)
    examples = []
    for paragraph, qa in _sample(questions, limit, seed):
        title, text = paragraphs[paragraph]
        examples.append(
            Example(
                "squad",
                qa["id"],
                qa["question"],
                [Passage(text, title)],
                [a["text"] for a in qa["answers"]],
                _answer_spans(qa, 0),
            )
        )
    return examples


def load_rag_squad(
    data: Path,
    limit: int | None,
    seed: int,
    top_k: int,
    embedder: Any = None,
    corpus_limit: int | None = None,
) -> list[Example]:
    """Retrieval over the paragraphs of the SQuAD file; evidence is the answer spans in the gold paragraph.

    The corpus is every paragraph, or with ``corpus_limit`` the first ``corpus_limit`` plus the gold
    paragraphs of the sampled questions.
    """
    from finch_rag import EmbeddingRetriever

    paragraphs, questions = _squad_records(data / SQUAD_FILE)
    sample = _sample(questions, limit, seed)
    corpus: Sequence[int] = range(len(paragraphs))
    if corpus_limit is not None:
        corpus = sorted(set(range(min(corpus_limit, len(paragraphs)))) | {paragraph for paragraph, _ in sample})
    retriever = EmbeddingRetriever(
        [(paragraphs[index][1], {"title": paragraphs[index][0], "paragraph": index}) for index in corpus],
        model=embedder,
        progress=False,
    )
    examples = []
    for paragraph, qa in sample:
        retrieved = retriever.retrieve(qa["question"], top_k)
        found = [p.metadata["paragraph"] for p in retrieved]
        gold_rank = found.index(paragraph) + 1 if paragraph in found else None
        evidence = _answer_spans(qa, gold_rank - 1) if gold_rank else []
        examples.append(
            Example(
                "rag-squad",
                qa["id"],
                qa["question"],
                [Passage(p.text, p.title) for p in retrieved],
                [a["text"] for a in qa["answers"]],
                evidence,
                missing_evidence=0 if gold_rank else 1,
                info={"gold_rank": gold_rank, "retrieval_scores": [round(float(p.score or 0), 4) for p in retrieved]},
            )
        )
    return examples


def load_hotpotqa(data: Path, limit: int | None, seed: int, embedder: Any = None) -> list[Example]:
    """Each question's 10 paragraphs ranked by MiniLM similarity; evidence is the supporting sentences."""
    from finch_rag import EmbeddingRetriever

    records = _sample(json.loads((data / HOTPOTQA_FILE).read_text()), limit, seed)
    examples = []
    for record in records:
        texts, sentence_spans = [], {}
        for title, sentences in record["context"]:
            pieces = [sentence.strip() for sentence in sentences]
            starts = [sum(len(p) + 1 for p in pieces[:i]) for i in range(len(pieces))]
            sentence_spans[title] = [(start, start + len(p)) for start, p in zip(starts, pieces, strict=True)]
            texts.append((title, " ".join(pieces)))
        retriever = EmbeddingRetriever([(t, {"title": title}) for title, t in texts], model=embedder, progress=False)
        embedder = retriever.model
        retrieved = retriever.retrieve(record["question"], len(texts))
        index_of = {p.title: i for i, p in enumerate(retrieved)}
        evidence, missing = [], 0
        for title, sentence in record["supporting_facts"]:
            spans = sentence_spans.get(title, [])
            if title not in index_of or sentence >= len(spans) or spans[sentence][1] <= spans[sentence][0]:
                missing += 1  # a few HotpotQA facts point past the paragraph
                continue
            evidence.append((index_of[title], *spans[sentence]))
        examples.append(
            Example(
                "hotpotqa",
                record["_id"],
                record["question"],
                [Passage(p.text, p.title) for p in retrieved],
                [record["answer"]],
                sorted(set(evidence)),
                missing_evidence=missing,
                info={
                    "type": record.get("type"),
                    "gold_ranks": sorted({index_of[t] + 1 for t, _ in record["supporting_facts"] if t in index_of}),
                },
            )
        )
    return examples


def load_suite(
    suite: str,
    data: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    top_k: int = 8,
    corpus_limit: int | None = None,
) -> list[Example]:
    """The examples of one suite (see the module docstring); ``corpus_limit`` shrinks rag-squad's corpus."""
    folder = data_dir(data)
    if suite == "squad":
        return load_squad(folder, limit, seed)
    if suite == "rag-squad":
        return load_rag_squad(folder, limit, seed, top_k, corpus_limit=corpus_limit)
    if suite == "hotpotqa":
        return load_hotpotqa(folder, limit, seed)
    raise ValueError(f"Unknown suite {suite!r}; use one of {SUITES}.")


# -------------------------------------------------------------------- budgets
def budget_of(label: str, context_tokens: int) -> int:
    """``"4x"`` -> ``floor(n / 4)`` (at least 1); ``"256"`` -> 256 (at most ``n``)."""
    text = str(label).strip().lower()
    try:
        if text.endswith("x"):
            factor = float(text[:-1])
            if factor < 1:
                raise ValueError
            return max(1, math.floor(context_tokens / factor))
        tokens = int(text)
        if tokens < 1:
            raise ValueError
        return min(tokens, context_tokens)
    except ValueError:
        raise ValueError(
            f"Budget {label!r} is neither a compression factor like '4x' (>= 1) nor a token count like '256'."
        ) from None


# ---------------------------------------------------------------------- runs
def _truncated(parts: PromptParts, passages: Sequence[Passage], budget: int) -> list[Passage]:
    """Passages in order until ``budget`` context tokens, the last one cut at a token boundary.

    A budget that ends inside the first passage's title keeps that title and one character of text.
    """
    end_char = parts.token_offsets[budget - 1][1]
    kept = []
    for passage, (start, end) in zip(passages, parts.passage_text_spans, strict=True):
        if end <= end_char:
            kept.append(passage)
        else:
            if end_char > start:
                kept.append(Passage(passage.text[: end_char - start], passage.title))
            break
    return kept or [Passage(passages[0].text[:1], passages[0].title)]


def _evidence_metrics(
    kept: torch.Tensor, per_layer: torch.Tensor | None, evidence_masks: list[torch.Tensor], unretrieved_tokens: int = 0
) -> dict:
    """Retention, all-hops and per-layer retention from ``kept`` ``[n]`` (fraction of (layer, head) pairs).

    ``unretrieved_tokens`` evidence tokens were never retrieved: they count as not kept, and fail all-hops.
    """
    if not evidence_masks:
        return {"retention": 0.0, "all_hops": 0.0}
    union = torch.stack(evidence_masks).any(0)
    share = int(union.sum()) / (int(union.sum()) + unretrieved_tokens)
    result: dict[str, Any] = {
        "retention": float(kept[union].mean()) * share,
        "all_hops": float(not unretrieved_tokens and all(float(kept[mask].mean()) >= 0.5 for mask in evidence_masks)),
    }
    if per_layer is not None:
        result["retention_per_layer"] = [round(float(v) * share, 4) for v in per_layer[:, union].mean(1)]
    return result


def run_example(
    compressor: FinchCompressor,
    example: Example,
    methods: Sequence[Method],
    budgets: Sequence[str],
    *,
    max_new_tokens: int = 32,
    answer: bool = True,
    skip: Callable[[str, str], bool] | None = None,
) -> list[dict[str, Any]]:
    """One record per (method, budget) for ``example``; ``full`` gives one record with budget ``"full"``.

    ``skip(method_name, budget_label)`` returning True leaves that record out (a resumed run).
    """
    base = compressor.config
    tokenizer = compressor.tokenizer
    num_layers = compressor.model.config.get_text_config(decoder=True).num_hidden_layers
    rank_parts = build_prompt(
        tokenizer,
        example.passages,
        example.question,
        chat_template=base.chat_template,
        system_prompt=base.system_prompt,
    )
    n = len(rank_parts.context_ids)
    unretrieved = sum(len(tokenizer(text, add_special_tokens=False).input_ids) for text in example.unretrieved_evidence)
    common = {
        "suite": example.suite,
        "qid": example.qid,
        "context_tokens": n,
        "passages": len(example.passages),
        "missing_evidence": example.missing_evidence,
        **example.info,
    }
    records: list[dict[str, Any]] = []
    contexts: list[CompressedContext] = []
    for method in methods:
        labels = ["full"] if method.kind == "full" else list(budgets)
        for label in labels:
            if skip is not None and skip(method.name, label):
                continue
            budget = n if label == "full" else budget_of(label, n)
            record = common | {"method": method.name, "budget": label, "B": budget, "factor": n / budget}
            passages = list(example.passages)
            started = time.perf_counter()
            if method.kind in ("full", "truncation"):
                kept = (torch.arange(n) < budget).float()
                masks = [rank_parts.span_tokens([span]) for span in example.evidence]
                record |= _evidence_metrics(kept, None, masks, unretrieved)
                if not answer:  # what truncation keeps is known without a prefill
                    record |= {"compress_s": 0.0, "kept_tokens": budget}
                    records.append(record)
                    continue
                if method.kind == "truncation" and budget < n:
                    passages = _truncated(rank_parts, example.passages, budget)
                config = base.replace(compression_ratio=0.0, chunk_size=None, progress=False)
                try:
                    compressed = compressor.compress(passages, example.question, config=config)
                except ValueError as error:  # the whole prompt does not fit the window
                    records.append(record | {"skipped": str(error)})
                    continue
            else:
                config = method_config(base, method, num_layers, target_tokens=budget)
                plan = allocation_of(method, config).plan(passages, config)
                compressed = compressor.compress(
                    plan.packed, example.question, config=plan.config, passage_weights=plan.passage_weights
                )
                packed_index = {ranked: packed for packed, ranked in enumerate(plan.order)}
                masks = [compressed.span_tokens([(packed_index[p], s, e)]) for p, s, e in example.evidence]
                record |= _evidence_metrics(compressed.kept_mask(), compressed.kept_per_layer(), masks, unretrieved)
            record["compress_s"] = round(time.perf_counter() - started, 4)
            record["kept_tokens"] = compressed.kept_tokens
            records.append(record)
            contexts.append(compressed)
    if answer:
        answered = [record for record in records if "skipped" not in record]
        for record, compressed in zip(answered, contexts, strict=True):
            started = time.perf_counter()
            try:
                text = compressor.generate(compressed, max_new_tokens=max_new_tokens, stop=["\n"])
            except ValueError as error:  # the answer would pass the model's window
                record["answer_skipped"] = str(error)
                continue
            record |= {"generate_s": round(time.perf_counter() - started, 4), "answer": text.strip()}
            record |= answer_scores(text, example.answers)
    return records


def _record_key(record: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (record["suite"], record["qid"], record["method"], str(record["budget"]))


def run_suite(
    compressor: FinchCompressor,
    examples: Sequence[Example],
    methods: Sequence[str | Method],
    budgets: Sequence[str],
    *,
    max_new_tokens: int = 32,
    answer: bool = True,
    seed: int = 0,
    progress: bool = True,
    journal: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Every example through every method and budget; records in order.

    ``journal`` is a JSON-lines file: each record is appended as it is done, and a rerun skips the records
    already there, so an interrupted run resumes.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    resolved = expand_methods(methods)
    for label in budgets:
        budget_of(label, 10_000)  # fail on a bad label before any model work
    done: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    journal_path = Path(journal) if journal else None
    if journal_path and journal_path.exists():
        done = {_record_key(r): r for r in map(json.loads, journal_path.read_text().splitlines()) if r}
    records = []
    for example in tqdm(examples, desc=examples[0].suite if examples else "qa", unit="q", disable=not progress):

        def already_done(method: str, label: str, key: tuple[str, str] = (example.suite, example.qid)) -> bool:
            return (*key, method, label) in done

        previous = [r for key, r in done.items() if key[:2] == (example.suite, example.qid)]
        fresh = run_example(
            compressor,
            example,
            resolved,
            budgets,
            max_new_tokens=max_new_tokens,
            answer=answer,
            skip=already_done,
        )
        if journal_path is not None and fresh:
            journal_path.parent.mkdir(parents=True, exist_ok=True)
            with journal_path.open("a") as handle:
                handle.writelines(json.dumps(record) + "\n" for record in fresh)
        records += previous + fresh
    return records


# -------------------------------------------------------------------- output
METRICS = ("factor", "retention", "all_hops", "contains", "em", "f1", "compress_s", "generate_s")


def summarize(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Means per (method, budget) over the records that ran."""
    ran = [record for record in records if "skipped" not in record]
    return group_means(ran, ["method", "budget"], METRICS)


def markdown_report(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> str:
    suite = records[0]["suite"] if records else "?"
    rows = summarize(records)
    budgets = list(dict.fromkeys(str(r["budget"]) for r in rows if r["budget"] != "full"))
    columns = ["method", "n", "factor", "retention", "all_hops", "contains", "em", "f1", "compress_s", "generate_s"]
    lines = [f"# Benchmark `{suite}`", ""]
    lines += [f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}" for key, value in meta.items()]
    lines += [
        "",
        "retention = gold-evidence KV entries kept (over layers and KV heads); contains = a gold answer occurs in "
        "the answer; em, f1 = SQuAD exact match and token F1; factor = context tokens / B (mean); seconds per "
        "question (compress_s is the prefill for full and truncation, 0 when answers are off: none is needed).",
        "",
    ]
    lines += [
        "all_hops = every piece of evidence (a supporting sentence in HotpotQA, an answer occurrence in SQuAD) "
        "keeps at least half of its KV entries.",
        "",
    ]
    full = [r for r in rows if r["budget"] == "full"]
    for budget in budgets:
        table = [r for r in rows if str(r["budget"]) == budget] + full
        lines += [f"## Budget {budget}", "", markdown_table(table, columns), ""]
    # The pipeline's default allocation (older runs without it: the library default) against the baselines.
    default = next((m for m in ("finch_rag", "finch") if any(r["method"] == m for r in records)), None)
    if default is not None:
        for baseline in ("truncation", "finch_global"):
            lines += paired_comparison(records, budgets, default, baseline)
    skipped = [r for r in records if "skipped" in r]
    if skipped:
        lines += [f"Skipped records: {len(skipped)} (e.g. {skipped[0]['method']}: {skipped[0]['skipped']})", ""]
    return "\n".join(lines)


def paired_comparison(
    records: Sequence[Mapping[str, Any]], budgets: Sequence[str], method: str = "finch", baseline: str = "truncation"
) -> list[str]:
    """Markdown lines: ``method`` minus ``baseline`` per question, mean with a 95% bootstrap interval."""
    by_key = {(r["qid"], r["method"], str(r["budget"])): r for r in records if "skipped" not in r}
    metrics = [m for m in ("retention", "all_hops", "contains", "f1") if any(m in r for r in by_key.values())]
    rows = []
    generator = random.Random(0)
    for budget in budgets:
        pairs = [
            (by_key[(qid, method, budget)], by_key[(qid, baseline, budget)])
            for qid, name, label in by_key
            if name == method and label == budget and (qid, baseline, budget) in by_key
        ]
        if not pairs:
            continue
        row: dict[str, Any] = {"budget": budget, "questions": len(pairs)}
        for metric in metrics:
            differences = [a[metric] - b[metric] for a, b in pairs if metric in a and metric in b]
            if not differences:
                continue
            means = sorted(
                sum(generator.choices(differences, k=len(differences))) / len(differences) for _ in range(1000)
            )
            mean_difference = sum(differences) / len(differences)
            row[metric] = f"{mean_difference:+.3f} [{means[25]:+.3f}, {means[974]:+.3f}]"
            if metric == "all_hops":
                wins = sum(d > 0 for d in differences)
                row["all_hops won / lost"] = f"{wins} / {sum(d < 0 for d in differences)}"
                row["all_hops ratio"] = _ratio_interval([(a[metric], b[metric]) for a, b in pairs])
        rows.append(row)
    if not rows:
        return []
    hops_columns = ["all_hops won / lost", "all_hops ratio"] if "all_hops" in metrics else []
    columns = ["budget", "questions", *metrics, *hops_columns]
    return [
        f"## Paired: {method} minus {baseline}",
        "",
        "Per question, then the mean and a 95% bootstrap interval (1,000 resamples, seed 0); all_hops ratio = "
        f"{method}'s mean over {baseline}'s, resampling the same questions (seed 1).",
        "",
        markdown_table(rows, columns),
        "",
    ]


def _ratio_interval(pairs: Sequence[tuple[float, float]]) -> str:
    """``mean(a) / mean(b)`` of paired values with a 95% bootstrap interval over the pairs; "-" when ``b`` is all 0."""
    if not sum(b for _, b in pairs):
        return "-"
    generator = random.Random(1)
    ratios = []
    for _ in range(1000):
        sample = generator.choices(pairs, k=len(pairs))
        denominator = sum(b for _, b in sample)
        ratios.append(sum(a for a, _ in sample) / denominator if denominator else math.inf)
    ratios.sort()
    estimate = sum(a for a, _ in pairs) / sum(b for _, b in pairs)
    return f"{estimate:.2f}x [{ratios[25]:.2f}, {ratios[974]:.2f}]"


def plot_quality(records: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """PNG: answer quality and evidence retention against compression factor, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarize(records)
    metrics = [m for m in ("contains", "f1", "retention") if any(r.get(m) is not None for r in rows)]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False, layout="constrained")
    for axis, metric in zip(axes[0], metrics, strict=True):
        for method in dict.fromkeys(r["method"] for r in rows):
            points = sorted(
                (r["factor"], r[metric]) for r in rows if r["method"] == method and r.get(metric) is not None
            )
            if not points:
                continue
            if method == "full":
                axis.axhline(points[0][1], color="black", linestyle="--", linewidth=1, label="full")
                continue
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("compression factor (context tokens / B)")
        axis.set_ylabel(metric)
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    figure.suptitle(title, fontsize=10)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target


def write_results(
    records: Sequence[Mapping[str, Any]], out: str | Path, name: str, meta: Mapping[str, Any], plot: bool = True
) -> dict[str, Path]:
    """``{name}.json`` (meta, summary, records), ``{name}.md`` and ``{name}.png`` under ``out``."""
    folder = Path(out)
    info = {"machine": machine_description(), **meta}
    ranks = {r["qid"]: r["gold_rank"] for r in records if "gold_rank" in r}
    if ranks:
        info["gold paragraph retrieved (recall@k)"] = round(sum(v is not None for v in ranks.values()) / len(ranks), 3)
    paths = {
        "json": write_json(folder / f"{name}.json", {"meta": info, "summary": summarize(records), "records": records})
    }
    paths["md"] = folder / f"{name}.md"
    paths["md"].write_text(markdown_report(records, info) + "\n")
    if plot and records:
        paths["png"] = plot_quality(
            records, folder / f"{name}.png", title=f"{records[0]['suite']}: {info.get('model', '')}"
        )
    return paths


# ----------------------------------------------------------------------- CLI
QUICK = {"limit": 3, "budgets": ["4x", "8x", "16x", "32x"]}


def build_parser(suite: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks {suite}" if suite else "python -m benchmarks.qa",
        description=__doc__.split("\n\n")[0],
    )
    if suite is None:
        parser.add_argument("suite", choices=SUITES)
    parser.add_argument("--data", help="benchmark data folder (default: ../shared/data from the working directory)")
    parser.add_argument("--model", help="model path or hub id (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--limit", type=int, default=50, help="questions (drawn with --seed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--start", type=int, default=0, help="skip the first START of the --limit questions (split a run in parts)"
    )
    parser.add_argument(
        "--budgets", nargs="+", default=["4x", "8x", "16x", "32x"], help="compression factors like 4x or B like 256"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["all"],
        help="full, truncation, finch, finch_rag, finch_single, finch_global, finchpress, random, recency, first; "
        "groups 'all', 'baselines', 'allocation'; or 'label:key=value,...' with FinchConfig fields",
    )
    parser.add_argument("--top-k", type=int, default=8, help="rag-squad: passages retrieved per question")
    parser.add_argument(
        "--corpus-limit",
        type=int,
        help="rag-squad: retrieve from the first N paragraphs plus the questions' own (default: all 1,023)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=32, help="answer length cap (answers stop at a newline)")
    parser.add_argument("--no-answer", action="store_true", help="evidence retention only, no decoding")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help=f"a short run: {QUICK}")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output folder")
    parser.add_argument("--name", help="output file stem (default: the suite name)")
    parser.add_argument("--journal", help="JSON-lines file: append each record, resume from it after a stop")
    parser.add_argument("--report-only", action="store_true", help="write the results of --journal, run nothing")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None, suite: str | None = None) -> int:
    args = build_parser(suite).parse_args(argv)
    suite = suite or args.suite
    if args.quick:
        args.limit, args.budgets = QUICK["limit"], QUICK["budgets"]
    if argv is None:
        command = "python -m benchmarks.qa " + " ".join(sys.argv[1:])
    else:
        command = f"python -m benchmarks {suite} " + " ".join(argv)
    name = args.name or suite
    if args.report_only:
        if not args.journal:
            raise SystemExit("--report-only needs --journal")
        torch.set_num_threads(args.threads)  # so the machine line names the run's thread count
        records = [json.loads(line) for line in Path(args.journal).read_text().splitlines() if line.strip()]
        run_command = command.replace(" --report-only", "")
        meta = {
            "command": run_command,
            "model": args.model or "SmolLM2-135M-Instruct (embedded default)",
            "questions": len({r["qid"] for r in records}),
            "report": "from --journal",
        }
        paths = write_results(records, args.out, name, meta, plot=not args.no_plot)
        print("wrote " + ", ".join(map(str, paths.values())))
        return 0
    from finch_rag import load_model

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model) if args.model else load_model()
    compressor = FinchCompressor(model, tokenizer, FinchConfig(progress=False))
    started = time.perf_counter()
    examples = load_suite(suite, args.data, args.limit, args.seed, args.top_k, args.corpus_limit)[args.start :]
    records = run_suite(
        compressor,
        examples,
        args.methods,
        args.budgets,
        max_new_tokens=args.max_new_tokens,
        answer=not args.no_answer,
        seed=args.seed,
        progress=not args.quiet,
        journal=args.journal,
    )
    meta = {
        "command": command,
        "model": compressor.model_name,
        "questions": len(examples),
        "seconds": round(time.perf_counter() - started, 1),
    }
    paths = write_results(records, args.out, name, meta, plot=not args.no_plot)
    print(markdown_report(records, meta))
    print("wrote " + ", ".join(map(str, paths.values())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
