"""L-Eval ``natural_question``: real long Wikipedia pages (15-27k words, table markup kept), used as a user would.

Two settings (issue 13, item 6), each page's Natural Questions asked about it:

- ``rag``: the page cut into ``--words``-word chunks (120) is the corpus of a `FinchRAG` with the default retriever;
  ``--top-k`` chunks (16) per question at budget ``B`` (256). ``finch_rag`` is `FinchRAG`'s default allocation
  (``answer_from`` over the retrieved chunks); ``truncation`` keeps the same ranking's chunks in order until ``B``
  tokens, the last one cut, and answers from them with full attention.
- ``page``: the whole page as one passage, compressed to ``B`` (512). ``finch_rag`` is what
  ``finch-rag ask --file page.txt`` does (`FinchRAG.answer_from` with the page); ``finch`` is
  `FinchCompressor.compress` with the library's default config (token granularity); ``first`` and ``last`` keep
  the page's first or last ``B`` tokens and answer from them; ``ranked`` is `FinchRAG` over the page cut into
  ``--words``-word pieces, all of them, ranked by the retriever and packed best last (nothing is left out);
  ``ask_file`` is what ``finch-rag ask --file page.txt`` runs now (`FinchRAG.answer_from_documents`: the same
  ranked pieces, cut by the library).

A method name may end in ``+strip``: the page's markup tags (``<Td>``, ``</Tr>``, ...) are removed before chunking;
``+sentT``, ``+passT`` and ``+fuseT`` (``rag``'s ``finch_rag`` only) set `RankWeighting`'s
``sentence_fusion_temperature``, ``passage_fusion_temperature`` and ``fusion_temperature`` to ``T`` (issue 18's
levers, ``docs/results/leval_lead.md``); ``+nosent`` turns sentence fusion off (the default before it was on for
pieces of one document, as these chunks are), and ``+nopass`` its passage factor (the default before
2026-12-07's second change); ``+punct`` is the
ablation of the sentence split: sentences end at ``. ! ?`` and line breaks only, as before block markup and
`finch_rag.prompts.MAX_SENTENCE_TOKENS` split them.

Metrics per question: ``occurrences``, the gold answer's case-insensitive occurrences in what the method was given
(retrieved chunks, or the page); ``kept_gold`` 1 when at least one occurrence keeps at least half of its KV entries
(over its tokens, layers and KV heads); ``best_fraction`` the best occurrence's kept fraction; ``contains`` 1 when
the greedy answer contains the gold answer (SQuAD normalisation). ``rag`` reports the questions whose gold answer
occurs in the retrieved chunks (``--all-questions`` keeps the others in the journal too).

    python -m benchmarks.leval --setting rag --budget 256 --top-k 16
    python -m benchmarks.leval --setting page --budget 512 --pages 6 7
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from finch_rag import FinchCompressor, FinchConfig, FinchRAG, Passage, RankWeighting, load_model
from finch_rag.prompts import PASSAGE_SEPARATOR, PromptParts, build_prompt
from finch_rag.retrieval import EmbeddingRetriever

from .common import (
    RESULTS_DIR,
    add_chunk_size_option,
    command_line,
    contains_gold,
    machine_description,
    markdown_table,
    meta_lines,
    write_json,
)
from .datasets import MARKUP_TAG, load_leval, strip_markup, word_chunks
from .journal import Journal, add_journal_options
from .stats import bootstrap_difference, mean, won_lost

METHODS = {
    "rag": ("truncation", "finch_rag"),
    "page": ("first", "last", "finch_rag", "finch", "ranked", "ask_file"),
}
BASELINES = {"rag": ("truncation",), "page": ("first", "last")}
_PUNCTUATION = re.compile(r"[.!?][\"')\]]*\s+|\n+")


def occurrences(text: str, gold: str) -> list[tuple[int, int]]:
    """Character spans of ``gold`` in ``text``, case-insensitive, overlapping ones included."""
    lowered, needle = text.lower(), gold.lower().strip()
    spans: list[tuple[int, int]] = []
    start = 0
    while needle and (found := lowered.find(needle, start)) >= 0:
        spans.append((found, found + len(needle)))
        start = found + 1
    return spans


def cut_to_budget(
    tokenizer: Any, passages: Sequence[Passage], question: str, budget: int, last: bool = False
) -> tuple[PromptParts, torch.Tensor, list[Passage]]:
    """Truncation's view of ``passages``: the first (or last) ``budget`` context tokens.

    Returns the prompt, the ``[n]`` mask of the kept tokens, and the passages cut to them (what truncation
    answers from).
    """
    parts = build_prompt(tokenizer, passages, question)
    n = len(parts.context_ids)
    keep = min(budget, n)
    kept = torch.zeros(n, dtype=torch.bool)
    kept[slice(n - keep, n) if last else slice(0, keep)] = True
    low = parts.token_offsets[n - keep][0] if last else 0
    high = len(parts.context_text) if last else parts.token_offsets[keep - 1][1]
    cut = []
    for passage, (start, end) in zip(passages, parts.passage_text_spans, strict=True):
        if min(end, high) > max(start, low):
            title = passage.title if low <= start else None
            cut.append(Passage(parts.context_text[max(start, low) : min(end, high)], title))
    return parts, kept, cut


def masked_fractions(parts: PromptParts, kept: torch.Tensor, gold: str) -> list[float]:
    """Kept fraction of each gold occurrence when the tokens in ``kept`` survive in every layer and head."""
    offsets = torch.tensor(parts.token_offsets, dtype=torch.long).reshape(-1, 2)
    fractions = []
    for start, end in parts.passage_text_spans:
        for low, high in occurrences(parts.context_text[start:end], gold):
            tokens = (offsets[:, 0] < start + high) & (offsets[:, 1] > start + low)
            fractions.append(float(kept[tokens].float().mean()))
    return fractions


def compressed_fractions(compressed: Any, gold: str) -> list[float]:
    """Kept fraction of each gold occurrence in a `CompressedContext`'s passages."""
    return [
        compressed.kept_fraction([(index, low, high)])
        for index, passage in enumerate(compressed.passages)
        for low, high in occurrences(passage.text, gold)
    ]


PROFILE_KEYS = ("kept_markup", "markup_base", "kept_echo", "echo_base", "kept_tail", "tail_base")
_STOPWORDS = frozenset("the and for was who what when where which how did does are is of in on to a an by".split())


def kept_profile(compressed: Any, question: str) -> dict[str, float]:
    """Where the budget went, for the diagnosis.

    Shares of the kept tokens that are markup, echo a question word, or sit in the context's last tenth, each
    with the context's own share (``*_base``) for comparison.
    """
    kept = compressed.kept_mask() >= 0.5
    text, offsets = compressed.context_text, compressed.token_offsets
    in_tag = torch.zeros(len(text) + 1, dtype=torch.bool)
    for match in MARKUP_TAG.finditer(text):
        in_tag[match.start() : match.end()] = True
    markup = torch.tensor([bool(in_tag[start:end].any()) and end > start for start, end in offsets])
    words = {word for word in re.findall(r"[a-z0-9]+", question.lower()) if len(word) > 2} - _STOPWORDS
    echo = torch.tensor([text[start:end].strip().lower() in words for start, end in offsets])
    tail = torch.zeros(len(offsets), dtype=torch.bool)
    tail[int(0.9 * len(offsets)) :] = True
    profile = {}
    for name, flags in (("markup", markup), ("echo", echo), ("tail", tail)):
        profile[f"kept_{name}"] = float(flags[kept].float().mean()) if kept.any() else 0.0
        profile[f"{name}_base"] = float(flags.float().mean())
    return profile


@contextlib.contextmanager
def punctuation_sentences() -> Iterator[None]:
    """Ablation: sentences end at ``. ! ?`` and line breaks only, as before block markup and the length cap.

    Swaps `PromptParts.sentence_ids` for the duration of one call of this (single-threaded) harness and restores
    it; the library itself never does this.
    """

    def sentence_ids(parts: PromptParts) -> torch.Tensor:
        cuts = {0}
        for text_start, text_end in parts.passage_text_spans:
            block_start = parts.context_text.rfind(PASSAGE_SEPARATOR, 0, text_start)
            cuts.add(0 if block_start < 0 else block_start + len(PASSAGE_SEPARATOR))
            cuts.update(match.end() for match in _PUNCTUATION.finditer(parts.context_text, text_start, text_end))
        boundaries = torch.tensor(sorted(cuts), dtype=torch.long)
        last_chars = torch.tensor([max(end - 1, 0) for _, end in parts.token_offsets], dtype=torch.long)
        return torch.searchsorted(boundaries, last_chars, right=True) - 1

    original = PromptParts.sentence_ids
    PromptParts.sentence_ids = sentence_ids  # type: ignore[method-assign]
    try:
        yield
    finally:
        PromptParts.sentence_ids = original  # type: ignore[method-assign]


class Runner:
    """One model and compressor for every method; ``run`` gives one journal record."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        model, self.tokenizer = load_model(args.model)
        self.config = FinchConfig(target_tokens=args.budget, chunk_size=args.chunk_size, progress=False)
        self.compressor = FinchCompressor(model, self.tokenizer, self.config)
        self.retrievers: dict[tuple[int, bool], EmbeddingRetriever] = {}

    def answer_whole(self, passages: Sequence[Passage], question: str) -> str:
        """Greedy answer from ``passages`` read in full (they fit the budget already)."""
        full = self.config.replace(target_tokens=10**9)
        compressed = self.compressor.compress(list(passages), question, config=full)
        return self.compressor.generate(compressed, max_new_tokens=self.args.max_new_tokens)

    def rag(
        self,
        page: int,
        text: str,
        question: str,
        gold: str,
        method: str,
        strip: bool,
        weighting: RankWeighting | None = None,
    ) -> dict[str, Any] | None:
        key = (page, strip)
        if key not in self.retrievers:
            self.retrievers[key] = EmbeddingRetriever(word_chunks(text, self.args.words), progress=False)
        retriever = self.retrievers[key]
        retrieved = retriever.retrieve(question, self.args.top_k)
        ranked = [passage.to_passage() for passage in retrieved]
        retrieved_occurrences = sum(len(occurrences(passage.text, gold)) for passage in ranked)
        if not retrieved_occurrences and not self.args.all_questions:
            return None
        # 1-based ranks of the retrieved chunks that hold the gold answer (for the diagnosis).
        gold_ranks = [rank for rank, passage in enumerate(ranked, 1) if occurrences(passage.text, gold)]
        if method == "truncation":
            parts, kept, cut = cut_to_budget(self.tokenizer, ranked, question, self.args.budget)
            return {
                "fractions": masked_fractions(parts, kept, gold),
                "answer": self.answer_whole(cut, question),
                "gold_ranks": gold_ranks,
            }
        if method == "finch_rag":
            rag = FinchRAG(
                retriever=retriever,
                compressor=self.compressor,
                config=self.config,
                top_k=self.args.top_k,
                max_new_tokens=self.args.max_new_tokens,
                weighting=weighting,
            )
            answer = rag.answer_from(question, retrieved)
            return {
                "fractions": compressed_fractions(answer.compressed, gold),
                "answer": answer.text,
                "gold_ranks": gold_ranks,
                "kept_by_rank": [source.kept_fraction for source in answer.sources],
                **kept_profile(answer.compressed, question),
            }
        raise ValueError(f"Unknown rag method {method!r}; use one of {METHODS['rag']}.")

    def page(self, text: str, question: str, gold: str, method: str) -> dict[str, Any]:
        passages = [Passage(text, "page.txt")]
        if method in ("first", "last"):
            parts, kept, cut = cut_to_budget(
                self.tokenizer, passages, question, self.args.budget, last=method == "last"
            )
            return {"fractions": masked_fractions(parts, kept, gold), "answer": self.answer_whole(cut, question)}
        if method == "finch_rag":
            rag = FinchRAG(compressor=self.compressor, config=self.config, max_new_tokens=self.args.max_new_tokens)
            answer = rag.answer_from(question, passages)
            return {
                "fractions": compressed_fractions(answer.compressed, gold),
                "answer": answer.text,
                **kept_profile(answer.compressed, question),
            }
        if method == "ranked":
            # The page cut into --words-word pieces, all of them ranked by the retriever and packed best last.
            retriever = EmbeddingRetriever(word_chunks(text, self.args.words), progress=False)
            retrieved = retriever.retrieve(question, len(retriever))
            tokens = self.args.max_new_tokens
            rag = FinchRAG(retriever=retriever, compressor=self.compressor, config=self.config, max_new_tokens=tokens)
            answer = rag.answer_from(question, retrieved)
            return {
                "fractions": compressed_fractions(answer.compressed, gold),
                "answer": answer.text,
                **kept_profile(answer.compressed, question),
            }
        if method == "ask_file":
            # Exactly what `finch-rag ask --file page.txt` runs: FinchRAG.answer_from_documents with the page.
            tokens = self.args.max_new_tokens
            rag = FinchRAG(compressor=self.compressor, config=self.config, max_new_tokens=tokens)
            answer = rag.answer_from_documents(question, passages, piece_words=self.args.words)
            return {
                "fractions": compressed_fractions(answer.compressed, gold),
                "answer": answer.text,
                **kept_profile(answer.compressed, question),
            }
        if method == "finch":
            compressed = self.compressor.compress(passages, question, config=self.config)
            generated = self.compressor.generate(compressed, max_new_tokens=self.args.max_new_tokens)
            return {
                "fractions": compressed_fractions(compressed, gold),
                "answer": generated,
                **kept_profile(compressed, question),
            }
        raise ValueError(f"Unknown page method {method!r}; use one of {METHODS['page']}.")


_FUSION_FLAG = re.compile(r"(sent|pass|fuse)([0-9.]+)")
_FUSION_FIELDS = {
    "sent": "sentence_fusion_temperature",
    "pass": "passage_fusion_temperature",
    "fuse": "fusion_temperature",
}


def weighting_of(flags: Sequence[str]) -> RankWeighting | None:
    """The `RankWeighting` of a method's fusion flags (``None`` without any: the default weighting).

    ``sentT``, ``passT`` and ``fuseT`` set ``sentence_fusion_temperature``, ``passage_fusion_temperature`` and
    ``fusion_temperature`` to ``T``; ``nosent`` and ``nopass`` set the first two to ``None``.
    """
    options: dict[str, float | None] = {}
    for flag in flags:
        if flag.startswith("no") and flag[2:] in ("sent", "pass"):
            options[_FUSION_FIELDS[flag[2:]]] = None
        if match := _FUSION_FLAG.fullmatch(flag):
            options[_FUSION_FIELDS[match[1]]] = float(match[2])
    return RankWeighting(**options) if options else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.leval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=sorted(METHODS), required=True)
    parser.add_argument("--data", default=None, help="folder holding leval-natural-question-part.jsonl")
    parser.add_argument("--pages", type=int, nargs="+", default=list(range(10)), help="page indices (0-9)")
    parser.add_argument("--budget", type=int, default=None, help="B (default 256 for rag, 512 for page)")
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--words", type=int, default=120, help="words per chunk in the rag setting")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method of the setting")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    add_chunk_size_option(parser)
    parser.add_argument("--model", default=None, help="model name or path (default: the embedded SmolLM2)")
    parser.add_argument("--all-questions", action="store_true", help="rag: also questions whose gold is not retrieved")
    add_journal_options(parser, default="/tmp/leval_SETTING_BUDGET.jsonl")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="output stem (default docs/results/leval_SETTING)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.budget = args.budget or (256 if args.setting == "rag" else 512)
    methods = args.methods or list(METHODS[args.setting])
    torch.set_num_threads(args.threads)
    journal = Journal(args.journal or f"/tmp/leval_{args.setting}_{args.budget}.jsonl", _record_key)
    records = journal.records
    if not args.report_only:
        rows = load_leval(args.data)
        runner = Runner(args)
        for page in args.pages:
            row = rows[page]
            for index, (question, gold) in enumerate(zip(row["instructions"], row["outputs"], strict=True)):
                for method in methods:
                    if (page, index, method) in journal:
                        continue
                    base, *flags = method.split("+")
                    text = strip_markup(row["input"]) if "strip" in flags else row["input"]
                    started = time.perf_counter()
                    split = punctuation_sentences() if "punct" in flags else contextlib.nullcontext()
                    with split:
                        if args.setting == "rag":
                            result = runner.rag(page, text, question, gold, base, "strip" in flags, weighting_of(flags))
                        else:
                            result = runner.page(text, question, gold, base)
                    if result is None:
                        continue
                    record = _record(result, [gold], time.perf_counter() - started)
                    record |= {"page": page, "question": index, "method": method, "budget": args.budget}
                    records.append(record)
                    journal.append([record])
    meta = {
        "command": command_line("python -m benchmarks.leval", argv).strip(),
        "machine": machine_description(),
        "model": args.model or "SmolLM2-135M-Instruct (embedded default)",
        "setting": args.setting,
        "budget": args.budget,
    }
    stem = Path(args.out) if args.out else RESULTS_DIR / f"leval_{args.setting}"
    write_json(stem.with_suffix(".json"), {"meta": meta, "records": records})
    stem.with_suffix(".md").write_text(markdown_report(records, meta, args.setting) + "\n")
    return 0


def _record_key(record: Mapping[str, Any]) -> tuple[int, int, str]:
    return (record["page"], record["question"], record["method"])


def _record(result: Mapping[str, Any], golds: Sequence[str], seconds: float) -> dict[str, Any]:
    fractions = result["fractions"]
    answer = result["answer"].strip()
    return {
        "occurrences": len(fractions),
        "kept_gold": float(any(fraction >= 0.5 for fraction in fractions)),
        "best_fraction": max(fractions, default=0.0),
        "contains": max(contains_gold(answer, gold) for gold in golds),
        "answer": answer,
        "seconds": seconds,
        **{key: value for key, value in result.items() if key not in ("fractions", "answer")},
    }


def markdown_report(records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], setting: str) -> str:
    methods = list(dict.fromkeys(r["method"] for r in records))
    questions = sorted({(r["page"], r["question"]) for r in records})
    # Only questions every method answered, so each row is over the same questions.
    common = [
        q
        for q in questions
        if all(any((r["page"], r["question"], r["method"]) == (*q, m) for r in records) for m in methods)
    ]
    by_key = {(r["page"], r["question"], r["method"]): r for r in records}
    rows = []
    for method in methods:
        items = [by_key[(*q, method)] for q in common]
        rows.append(
            {
                "method": method,
                "n": len(items),
                "occurrences": mean(r["occurrences"] for r in items),
                "kept_gold": mean(r["kept_gold"] for r in items),
                "best_fraction": mean(r["best_fraction"] for r in items),
                "contains": mean(r["contains"] for r in items),
                "seconds": mean(r["seconds"] for r in items),
                **{key: mean(r[key] for r in items) for key in PROFILE_KEYS if all(key in r for r in items)},
            }
        )
    lines = [f"# L-Eval natural_question, setting `{setting}`", ""]
    lines += meta_lines(meta)
    lines += [f"- pages: {sorted({p for p, _ in common})}, questions: {len(common)}", ""]
    columns = ["method", "n", "occurrences", "kept_gold", "best_fraction", "contains", "seconds"]
    lines += [markdown_table(rows, columns), ""]
    profiled = [row for row in rows if "kept_markup" in row]
    if profiled:
        lines += [
            "Where the budget went (share of kept tokens; `*_base`: share of all context tokens): markup tags, "
            "tokens that repeat a question word, the context's last tenth.",
            "",
            markdown_table(profiled, ["method", *PROFILE_KEYS]),
            "",
        ]
    generator = random.Random(0)
    paired = []
    for method in methods:
        for baseline in BASELINES[setting]:
            if method == baseline or baseline not in methods or method in BASELINES[setting]:
                continue
            row: dict[str, Any] = {"pair": f"{method} - {baseline}"}
            for metric in ("kept_gold", "contains"):
                differences = [by_key[(*q, method)][metric] - by_key[(*q, baseline)][metric] for q in common]
                row[metric] = bootstrap_difference(differences, generator)
                row[f"{metric} won / lost"] = won_lost(differences)
            paired.append(row)
    if paired:
        lines += ["Paired per question, mean and 95% bootstrap interval (1,000 resamples, seed 0):", ""]
        lines += [
            markdown_table(paired, ["pair", "kept_gold", "kept_gold won / lost", "contains", "contains won / lost"]),
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
