"""Selection levers on L-Eval ``natural_question`` as a chunked corpus (issue 18, item 3): record once, replay many.

The ``rag`` setting of `benchmarks.leval` (each page cut into 120-word chunks, the ``--top-k`` best by the default
retriever, budget ``B``): `FinchRAG`'s default allocation packs them best last and whole sentences compete on the
question's attention. Here each question is read **once** in a single pass (``chunk_size=None``, as
`benchmarks.single_pass` records it) and its voted token scores, sentence ids, packed passages and retriever scores
are saved (``record``); every lever is then a different selection from the same scores (``replay``), so a screen of
ten levers costs one forward per question.

Levers (each a function of the recorded scores; ``default`` is exactly the policy's own selection, checked):

- ``fuse_T``: each passage's sentence scores times ``exp((s - s_max) / T)``, ``s`` its retriever (cosine) score: the
  embedder's chunk scores fused with attention (`RankWeighting.fusion_temperature`).
- ``tau_R``: the rank prior ``exp(-(r - 1) / R)`` that `RankWeighting.tau` already has.
- ``norm``: each passage's scores divided by their mean over the passage, so the recency that favours the passage
  read last no longer decides between passages; within a passage attention still ranks sentences.
- ``detrend``: each score divided by a 513-token moving average of the scores (recency as a smooth trend).
- ``dedup``: among sentences that are near duplicates (word sets with Jaccard >= 0.8, >= 3 words), only the best
  scored competes; the others score 0 (the echoing reference titles).
- ``lastR``: the scores voted from only the last ``R`` question rows' attention (SnapKV's observation window
  inside the question) instead of all of them. They need a forward of their own: ``record --last-rows R ...``
  runs one more pass per question that scores every window at once (`last_rows_shared`).
- combinations joined by ``+``.

Truncation is top-k truncation over the same ranking (the first ``B`` context tokens). Metric: ``kept_gold``, 1 when
some occurrence of the gold answer keeps at least half of its tokens.

    python -m benchmarks.leval_lead record --pages 0 1 2 3 --store /work/runs/leval/lead_record
    python -m benchmarks.leval_lead replay --pages 0 1 2 3 --out docs/results/leval_lead_screen
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface

from finch_rag import FinchConfig, RankWeighting, load_model
from finch_rag.compression.attention import QuestionAttentionCapture, question_row_scores
from finch_rag.compression.cache import cache_kwargs
from finch_rag.compression.scoring import pool_spans
from finch_rag.compression.selection import select_top
from finch_rag.retrieval import EmbeddingRetriever, load_embedding_model

from .common import command_line, machine_description, markdown_table, meta_lines, write_json
from .datasets import load_leval, word_chunks
from .leval import cut_to_budget, masked_fractions, occurrences
from .single_pass import RecordedPass, record_pass
from .stats import bootstrap_difference, mean, ratio_interval, won_lost

_WORD = re.compile(r"[a-z0-9]+")
_LAST_ROWS_KEY = "leval_lead_last_rows_sdpa"
_LAST_ROWS_KWARG = "leval_last_rows"


def _last_rows_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDPA that also fills every capture passed as ``leval_last_rows`` (one per window of question rows)."""
    captures: dict[int, QuestionAttentionCapture] | None = kwargs.pop(_LAST_ROWS_KWARG, None)
    for capture in (captures or {}).values():
        capture.scores[int(module.layer_idx)] = question_row_scores(
            module,
            query,
            key,
            attention_mask,
            scaling if scaling is not None else query.shape[-1] ** -0.5,
            capture,
            sliding_window=kwargs.get("sliding_window"),
            softcap=kwargs.get("softcap"),
        )
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)


def last_rows_shared(
    model: Any, recorded: RecordedPass, windows: Sequence[int], config: FinchConfig
) -> dict[int, torch.Tensor]:
    """``{R: [n]}``: the policy's voted scores from only the last ``R`` question rows, all windows in one forward.

    The pass is the recorded one (prefix in the cache, then context and question); each window is a
    `QuestionAttentionCapture` whose ``question_mask`` lets only its last ``R`` rows vote. The window of every
    row is computed too and must match the recorded scores (up to the summation order of the core's blocks).
    """
    AttentionInterface.register(_LAST_ROWS_KEY, _last_rows_attention)
    AttentionMaskInterface.register(_LAST_ROWS_KEY, AttentionMaskInterface()["sdpa"])
    parts = recorded.parts
    prefix, n, m = len(parts.prefix_ids), len(parts.context_ids), len(parts.question_ids)
    captures = {
        rows: QuestionAttentionCapture(
            question_length=m,
            first_candidate=prefix,
            normalize_scores=config.normalize_scores,
            question_mask=(torch.arange(m) >= m - rows).view(1, m),
            last_column=prefix + n,
        )
        for rows in {*windows, m}
    }
    decoder = model.get_decoder()
    cache = DynamicCache()
    original = model.config._attn_implementation
    model.config._attn_implementation = _LAST_ROWS_KEY
    try:
        with torch.inference_mode():
            decoder(input_ids=torch.tensor([parts.prefix_ids]), use_cache=True, **cache_kwargs(decoder, cache))
            step = torch.tensor([parts.context_ids + parts.question_ids])
            decoder(input_ids=step, use_cache=True, **cache_kwargs(decoder, cache), **{_LAST_ROWS_KWARG: captures})
    finally:
        model.config._attn_implementation = original

    def voted(capture: QuestionAttentionCapture) -> torch.Tensor:
        layer_scores = [capture.scores[layer] for layer in range(len(capture.scores))]
        candidates = dataclasses.replace(recorded.candidates, layer_scores=layer_scores)
        return recorded.policy.shared(candidates)[0].float()  # type: ignore[attr-defined]

    every_row = voted(captures[m])
    recorded_shared = recorded.policy.shared(recorded.candidates)[0].float()  # type: ignore[attr-defined]
    torch.testing.assert_close(every_row, recorded_shared, rtol=1e-3, atol=1e-6)
    return {rows: voted(captures[rows]) for rows in windows}


def record(args: argparse.Namespace) -> None:
    """One single pass per question whose gold answer is retrieved; one ``.pt`` file each (resumable)."""
    store = Path(args.store)
    store.mkdir(parents=True, exist_ok=True)
    rows = load_leval(args.data)
    model, tokenizer = load_model(args.model)
    config = FinchConfig(target_tokens=args.budget, progress=False)
    for page in args.pages:
        row = rows[page]
        retriever = None
        for index, (question, gold) in enumerate(zip(row["instructions"], row["outputs"], strict=True)):
            path = store / f"p{page}q{index}.pt"
            skip = store / f"p{page}q{index}.none"
            if path.exists() or skip.exists():
                continue
            if retriever is None:
                retriever = EmbeddingRetriever(word_chunks(row["input"], args.words), progress=False)
            retrieved = retriever.retrieve(question, args.top_k)
            ranked = [passage.to_passage() for passage in retrieved]
            if not any(occurrences(passage.text, gold) for passage in ranked):
                skip.write_text("gold not retrieved\n")
                continue
            started = time.perf_counter()
            recorded = record_pass(model, tokenizer, ranked, question, config)
            parts, candidates = recorded.parts, recorded.candidates
            shared = recorded.policy.shared(candidates)[0]  # type: ignore[attr-defined]
            spans = parts.sentence_ids()
            starts = parts.passage_token_starts
            passage_of = torch.zeros(len(parts.context_ids), dtype=torch.long)
            for number, start in enumerate(starts[1:], 1):
                passage_of[start:] = number
            sentences = {}
            for token, span in enumerate(spans.tolist()):
                low, high = parts.token_offsets[token]
                old = sentences.get(span, (low, high))
                sentences[span] = (min(old[0], low), max(old[1], high))
            texts = {span: parts.context_text[low:high] for span, (low, high) in sentences.items()}
            gold_masks = []
            for start, end in parts.passage_text_spans:
                offsets = torch.tensor(parts.token_offsets, dtype=torch.long).reshape(-1, 2)
                for low, high in occurrences(parts.context_text[start:end], gold):
                    gold_masks.append((offsets[:, 0] < start + high) & (offsets[:, 1] > start + low))
            truncated_parts, truncated_kept, _ = cut_to_budget(tokenizer, ranked, question, args.budget)
            last_rows = last_rows_shared(model, recorded, args.last_rows, config) if args.last_rows else {}
            torch.save(
                {
                    "page": page,
                    "question": index,
                    "text": question,
                    "gold": gold,
                    "shared": shared.float(),
                    "shared_last": last_rows,
                    "spans": spans,
                    "passage_of": passage_of,
                    "packed_scores": [retrieved[i].score for i in recorded.plan.order],
                    "packed_ranks": [retrieved[i].rank for i in recorded.plan.order],
                    "sentence_texts": texts,
                    "gold_masks": gold_masks,
                    "policy_kept": recorded.kept(args.budget),
                    "truncation_fractions": masked_fractions(truncated_parts, truncated_kept, gold),
                    "seconds": time.perf_counter() - started,
                },
                path,
            )
            print(f"page {page} question {index}: {time.perf_counter() - started:.0f} s", flush=True)


# ----------------------------------------------------------------------------------------------- levers


def _passage_means(scores: torch.Tensor, passage_of: torch.Tensor) -> torch.Tensor:
    count = int(passage_of.max()) + 1
    sums = torch.zeros(count).scatter_add_(0, passage_of, scores)
    sizes = torch.zeros(count).scatter_add_(0, passage_of, torch.ones_like(scores))
    return (sums / sizes.clamp(min=1))[passage_of]


def lever_norm(scores: torch.Tensor, item: dict[str, Any]) -> torch.Tensor:
    return scores / _passage_means(scores, item["passage_of"]).clamp(min=1e-12)


def lever_detrend(scores: torch.Tensor, item: dict[str, Any]) -> torch.Tensor:
    width = 513
    trend = torch.nn.functional.avg_pool1d(
        scores.view(1, 1, -1), kernel_size=width, stride=1, padding=width // 2, count_include_pad=False
    ).view(-1)[: scores.shape[0]]
    return scores / trend.clamp(min=1e-12)


def lever_dedup(scores: torch.Tensor, item: dict[str, Any]) -> torch.Tensor:
    spans = item["spans"]
    words = {span: frozenset(_WORD.findall(text.lower())) for span, text in item["sentence_texts"].items()}
    best_first = sorted(words, key=lambda span: -float(scores[spans == span].mean()))
    dropped: set[int] = set()
    kept_sets: list[frozenset[str]] = []
    for span in best_first:
        bag = words[span]
        if len(bag) >= 3 and any(len(bag & other) / len(bag | other) >= 0.8 for other in kept_sets):
            dropped.add(span)
        elif len(bag) >= 3:
            kept_sets.append(bag)
    if not dropped:
        return scores
    mask = torch.isin(spans, torch.tensor(sorted(dropped)))
    return scores.masked_fill(mask, 0.0)


def fuse(temperature: float) -> Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]:
    def lever(scores: torch.Tensor, item: dict[str, Any]) -> torch.Tensor:
        weighting = RankWeighting(fusion_temperature=temperature)
        weights = weighting.fusion_weights(item["packed_scores"])
        assert weights is not None
        return scores * torch.tensor(weights)[item["passage_of"]]

    return lever


def tau(length: float) -> Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]:
    def lever(scores: torch.Tensor, item: dict[str, Any]) -> torch.Tensor:
        weights = RankWeighting(tau=length).weights(item["packed_ranks"])
        assert weights is not None
        return scores * torch.tensor(weights)[item["passage_of"]]

    return lever


def sentence_similarity(item: dict[str, Any], store: Path, embedder: Any) -> torch.Tensor:
    """``[n]``: the cosine similarity of each token's sentence to the question (the retriever's embedder), cached."""
    path = store / f"p{item['page']}q{item['question']}.sentences.pt"
    if path.exists():
        return torch.load(path)
    spans = sorted(item["sentence_texts"])
    texts = [item["sentence_texts"][span] for span in spans]
    vectors = embedder.encode([item["text"], *texts], convert_to_tensor=True, normalize_embeddings=True).float().cpu()
    per_span = vectors[1:] @ vectors[0]
    lookup = torch.zeros(max(spans) + 1)
    lookup[torch.tensor(spans)] = per_span
    similarity = lookup[item["spans"]]
    torch.save(similarity, path)
    return similarity


def sentence_fuse(temperature: float) -> Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]:
    def lever(scores: torch.Tensor, item: dict[str, Any]) -> torch.Tensor:
        similarity = item["sentence_similarity"]
        return scores * torch.exp((similarity - similarity.max()) / temperature)

    return lever


def lever_embedder_only(scores: torch.Tensor, item: dict[str, Any]) -> torch.Tensor:
    return item["sentence_similarity"].clone()


def lever_reciprocal_rank(scores: torch.Tensor, item: dict[str, Any]) -> torch.Tensor:
    """Reciprocal-rank fusion (k = 60) of the attention's and the embedder's sentence orders."""

    def ranks(values: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(values, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        return rank.float()

    spans = item["spans"]
    first = torch.unique(spans, return_inverse=True)[1]
    heads = torch.zeros(int(first.max()) + 1, dtype=torch.long).scatter_(
        0, first.flip(0), torch.arange(len(spans)).flip(0)
    )
    attention_rank = ranks(scores[heads])
    embedder_rank = ranks(item["sentence_similarity"][heads])
    fused = 1 / (60 + attention_rank) + 1 / (60 + embedder_rank)
    return fused[first]


LEVERS: dict[str, Callable[[torch.Tensor, dict[str, Any]], torch.Tensor]] = {
    "norm": lever_norm,
    "detrend": lever_detrend,
    "dedup": lever_dedup,
    **{f"fuse{t:g}": fuse(t) for t in (0.01, 0.02, 0.05, 0.1)},
    **{f"tau{r:g}": tau(r) for r in (2, 4)},
    **{f"sent{t:g}": sentence_fuse(t) for t in (0.02, 0.05, 0.1)},
    "embedder": lever_embedder_only,
    "rrf": lever_reciprocal_rank,
}
VARIANTS = [
    "default",
    "norm",
    "detrend",
    "dedup",
    "tau2",
    "tau4",
    "fuse0.01",
    "fuse0.02",
    "fuse0.05",
    "fuse0.1",
    "norm+fuse0.02",
    "norm+fuse0.05",
    "dedup+fuse0.02",
    "dedup+fuse0.05",
    "norm+dedup+fuse0.05",
    "embedder",
    "rrf",
    "sent0.02",
    "sent0.05",
    "sent0.1",
    "dedup+sent0.05",
    "norm+sent0.05",
    "fuse0.05+sent0.05",
]


_LAST = re.compile(r"last([0-9]+)")


def kept_under(variant: str, item: dict[str, Any], budget: int) -> torch.Tensor:
    """``[n]`` 0/1: what the variant keeps at ``budget`` (sentence pooling first, as the policy does).

    A ``lastR`` part, first in the variant, votes from the last ``R`` question rows' scores instead.
    """
    names = [] if variant == "default" else variant.split("+")
    voted = item["shared"]
    if names and (window := _LAST.fullmatch(names[0])):
        voted, names = item["shared_last"][int(window.group(1))], names[1:]
    scores = pool_spans(voted.view(1, -1), item["spans"].view(1, -1)).view(-1)
    for name in names:
        scores = LEVERS[name](scores, item)
    chosen = select_top(scores.view(1, -1), min(budget, scores.shape[0]))
    kept = torch.zeros(scores.shape[0])
    kept[chosen[0]] = 1.0
    return kept


def replay(args: argparse.Namespace, argv: Sequence[str] | None) -> None:
    store = Path(args.store)
    items = []
    for page in args.pages:
        items += [
            torch.load(path, weights_only=False)
            for path in sorted(store.glob(f"p{page}q*.pt"))
            if not path.name.endswith(".sentences.pt")
        ]
    items.sort(key=lambda item: (item["page"], item["question"]))
    embedder = load_embedding_model()
    for item in items:
        item["sentence_similarity"] = sentence_similarity(item, store, embedder)
    # Windows recorded for every question (`record --last-rows`), alone and with the chosen sentence fusion.
    windows = sorted(set.intersection(*(set(item.get("shared_last", {})) for item in items))) if items else []
    variants = VARIANTS + [f"last{rows}{extra}" for rows in windows for extra in ("", "+sent0.1")]
    records = []
    for item in items:
        kept_default = kept_under("default", item, args.budget)
        if not torch.equal(kept_default, item["policy_kept"]):
            raise AssertionError(f"replay of page {item['page']} question {item['question']} differs from the policy")
        record_ = {
            "page": item["page"],
            "question": item["question"],
            "gold": item["gold"],
            "occurrences": len(item["gold_masks"]),
            "truncation": float(any(fraction >= 0.5 for fraction in item["truncation_fractions"])),
            "truncation_best": max(item["truncation_fractions"], default=0.0),
            "gold_ranks": sorted(
                {item["packed_ranks"][int(item["passage_of"][mask][0])] for mask in item["gold_masks"] if mask.any()}
            ),
            "record_seconds": item["seconds"],
        }
        for variant in variants:
            kept = kept_under(variant, item, args.budget)
            fractions = [float(kept[mask].mean()) for mask in item["gold_masks"]]
            record_[variant] = float(any(fraction >= 0.5 for fraction in fractions))
            record_[f"{variant}_best"] = max(fractions, default=0.0)
        records.append(record_)
    meta = {
        "command": command_line("python -m benchmarks.leval_lead", argv).strip(),
        "machine": machine_description(),
        "model": args.model or "SmolLM2-135M-Instruct (embedded default)",
        "budget": args.budget,
        "pages": args.pages,
    }
    write_json(Path(args.out).with_suffix(".json"), {"meta": meta, "records": records})
    Path(args.out).with_suffix(".md").write_text(report(records, meta, variants) + "\n")


def report(records: Sequence[dict[str, Any]], meta: dict[str, Any], variants: Sequence[str]) -> str:
    lines = ["# L-Eval natural_question, `rag` setting: levers replayed from one single pass", "", *meta_lines(meta)]
    lines += [f"- questions (gold among the retrieved chunks): {len(records)}", ""]
    generator = random.Random(0)
    rows = [
        {
            "method": "truncation",
            "kept_gold": f"{mean(r['truncation'] for r in records):.2f}",
            "best_fraction": f"{mean(r['truncation_best'] for r in records):.2f}",
        }
    ]
    for variant in variants:
        differences = [r[variant] - r["truncation"] for r in records]
        rows.append(
            {
                "method": variant,
                "kept_gold": f"{mean(r[variant] for r in records):.2f}",
                "best_fraction": f"{mean(r[variant + '_best'] for r in records):.2f}",
                "x truncation [95%]": ratio_interval([(r[variant], r["truncation"]) for r in records]),
                "minus truncation [95%]": bootstrap_difference(differences, generator),
                "won / lost": won_lost(differences),
            }
        )
    columns = ["method", "kept_gold", "best_fraction", "x truncation [95%]", "minus truncation [95%]", "won / lost"]
    lines += [markdown_table(rows, columns), ""]
    first = sum(1 in r["gold_ranks"] for r in records)
    lines += [
        f"Questions with a gold occurrence in the rank-1 chunk: {first} of {len(records)} (truncation's 256 tokens are "
        "about one chunk of this markup-heavy text).",
        "",
        "Paired per question against truncation: mean difference and 95% bootstrap interval (1,000 resamples, "
        "seed 0); the ratio's interval resamples the questions (seed 1).",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.leval_lead", description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("record", "replay"))
    parser.add_argument("--pages", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--store", default="/work/runs/leval/lead_record", help="folder of the recorded passes")
    parser.add_argument("--data", default=None, help="folder holding leval-natural-question-part.jsonl")
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--words", type=int, default=120)
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--last-rows", type=int, nargs="*", default=[], help="record: also the scores of these last-row windows"
    )
    parser.add_argument("--out", default="docs/results/leval_lead_screen", help="replay: output stem")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.step == "record":
        record(args)
    else:
        replay(args, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
