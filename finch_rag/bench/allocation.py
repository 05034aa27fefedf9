"""HotpotQA allocation study, behind the default allocation: how much multi-hop evidence survives?

Setting (see ``docs/results/allocation_study.md``): for each HotpotQA dev (distractor) question, its 10
paragraphs are ranked by all-MiniLM-L6-v2 similarity to the question (`EmbeddingRetriever` over that
question's paragraphs), and packed as ``Passage(text=" ".join(sentences), title=title)`` in rank order
(``order=rank``) or reversed, top rank last, next to the question (``order=rev``). Budgets: ``4x``
(``B = floor(n / 4)`` of the packed context tokens) and fixed ``B`` (128, 256, 512).

Metrics, per question and then averaged:

- ``retention``: fraction of the supporting sentences' tokens whose KV entry survives, averaged over
  layers and KV heads (what `CompressedContext.kept_fraction` computes);
- ``all_hops``: 1 when EVERY supporting sentence keeps >= 0.5 of its tokens' entries;
- ``top_passage``/``last_passage``: kept fraction of the rank-1 passage and of the last-packed passage.

Methods:
- ``truncation``: passages in rank order until ``B`` tokens, the last one cut; computed exactly from the
  token counts of the same prompt (`build_prompt`), no model run;
- FINCH designs, a spec ``label:key=value,...`` (see `Design`): ``sel`` (shared | per_head),
  ``s`` (smoothing), ``L`` (all | upper), ``tau``/``floor`` (rank prior ``max(floor, exp(-(r-1)/tau))``,
  ``tau=inf`` = none), ``norm`` (1: each passage's scores divided by their mean before the prior),
  ``order`` (rank | rev), ``reserve`` (share of ``B`` given to the rank-order head of the context before
  FINCH chooses the rest), ``span`` (0: token scores; 1: sentence means over `PromptParts.sentence_ids`, each
  title with its passage's first sentence, what ``granularity="sentence"`` does; 2: the same with each title
  line a sentence of its own).

Two modes. ``--mode sim`` (default): one forward pass per question and packing order captures the
question's attention (`QuestionAttentionCapture`), and every design and budget is selected from it,
which is exactly what `FinchCompressor.compress` keeps with ``chunk_size=None`` (checked by
``--check``). ``--mode compress``: the real `FinchCompressor.compress` with the library's
``chunk_size=512`` chunk loop and ``passage_weights`` (designs with ``norm=1``, ``reserve`` or ``span=2`` are
not expressible there and are skipped).

Run: ``python -m finch_rag.bench.allocation --limit 40 --methods prune --out docs/results/hotpotqa_prune``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..compression.attention import CAPTURE_KWARG, QuestionAttentionCapture, capturing_attention
from ..compression.loop import decoder_of
from ..compression.scoring import per_head_scores, pool_spans, resolve_layers, shared_scores, smooth_scores
from ..config import FinchConfig
from ..prompts import Passage, PromptParts, build_prompt
from .common import data_dir, machine_description, markdown_table, mean, write_json
from .qa import Example, budget_of, load_hotpotqa

DEFAULT_BUDGETS = ("4x", "128", "256", "512")


# ------------------------------------------------------------------ designs
@dataclass(frozen=True)
class Design:
    label: str
    sel: str = "shared"
    s: int = 1
    L: str = "all"
    tau: float = math.inf
    floor: float = 0.0
    norm: int = 0
    order: str = "rank"
    reserve: float = 0.0
    span: int = 0

    @classmethod
    def parse(cls, spec: str) -> Design:
        label, _, body = spec.partition(":")
        fields: dict[str, Any] = {"label": label}
        for item in filter(None, body.split(",")):
            key, _, value = item.partition("=")
            if key in ("s", "norm", "span"):
                fields[key] = int(value)
            elif key in ("tau", "floor", "reserve"):
                fields[key] = float(value)
            elif key in ("sel", "L", "order"):
                fields[key] = value
            else:
                raise ValueError(f"Unknown design key {key!r} in {spec!r}.")
        return cls(**fields)

    def weights(self, ranks: Sequence[int]) -> list[float] | None:
        if math.isinf(self.tau):
            return None
        return [max(self.floor, math.exp(-(r - 1) / self.tau)) for r in ranks]

    def spec(self) -> str:
        return (
            f"sel={self.sel},s={self.s},L={self.L},tau={self.tau},floor={self.floor},norm={self.norm},"
            f"order={self.order},reserve={self.reserve},span={self.span}"
        )


BASELINES = [
    "truncation",
    "per_head:sel=per_head",
    "global:sel=shared",
]
SWEEP = [f"shared_s{s}_{L}:sel=shared,s={s},L={L}" for s in (1, 9, 21) for L in ("all", "upper")]
PRIORS = [
    f"prior_t{tau:g}_f{floor:g}_s{s}:s={s},tau={tau},floor={floor}"
    for s in (9,)
    for tau in (1, 2, 4)
    for floor in (0.0, 0.2)
] + ["prior_t1_f0_s1:s=1,tau=1", "prior_t1_f0_s21:s=21,tau=1"]
NORM = [
    "norm_s9:s=9,norm=1",
    "norm_t2_s9:s=9,norm=1,tau=2",
    "norm_t4_s9:s=9,norm=1,tau=4",
    "norm_t2_f0.2_s9:s=9,norm=1,tau=2,floor=0.2",
]
REVERSED = [
    "rev_s9:s=9,order=rev",
    "rev_t1_s9:s=9,tau=1,order=rev",
    "rev_t2_s9:s=9,tau=2,order=rev",
    "rev_t4_s9:s=9,tau=4,order=rev",
    "rev_t2_f0.2_s9:s=9,tau=2,floor=0.2,order=rev",
    "rev_norm_t2_s9:s=9,norm=1,tau=2,order=rev",
    "rev_per_head:sel=per_head,order=rev",
]
COMBOS = [
    "upper_t2_s9:s=9,L=upper,tau=2",
    "upper_t2_s21:s=21,L=upper,tau=2",
    "upper_t4_s21:s=21,L=upper,tau=4",
    "rev_s9_upper:s=9,L=upper,order=rev",
    "rev_s21_upper:s=21,L=upper,order=rev",
    "rev_s21:s=21,order=rev",
    "rev_t4_s21_upper:s=21,L=upper,tau=4,order=rev",
    "rev_t8_s21_upper:s=21,L=upper,tau=8,order=rev",
    "rev_norm_s21_upper:s=21,L=upper,norm=1,order=rev",
    "rev_reserve0.25_s21_upper:s=21,L=upper,reserve=0.25,order=rev",
]
RESERVE = [
    "reserve0.25_t2_s9:s=9,tau=2,reserve=0.25",
    "reserve0.5_s9:s=9,reserve=0.5",
    "reserve0.25_rev_t2_s9:s=9,tau=2,reserve=0.25,order=rev",
]
GROUPS = {
    "baselines": BASELINES,
    "prune": BASELINES + SWEEP + PRIORS + NORM + REVERSED + COMBOS + RESERVE,
}


def resolve_methods(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        for spec in GROUPS.get(name, [name]):
            if spec not in out:
                out.append(spec)
    return out


# ------------------------------------------------------------------ scoring
@dataclass
class Packed:
    parts: PromptParts
    sentence_masks: list[torch.Tensor]  # per supporting sentence, bool [n]
    support_mask: torch.Tensor
    passage_ids: torch.Tensor  # [n] passage index (packing order) of each context token
    ranks: list[int]  # rank of each packed passage
    passages: list[Passage]
    sentence_ids: torch.Tensor  # [n] sentence of each context token
    layer_scores: list[torch.Tensor] | None = None


def pack(question: Example, order: str, tokenizer: Any, config: FinchConfig) -> Packed:
    count = len(question.passages)
    perm = list(range(count)) if order == "rank" else list(reversed(range(count)))
    passages = [question.passages[i] for i in perm]
    position = {original: packed for packed, original in enumerate(perm)}
    parts = build_prompt(
        tokenizer, passages, question.question, chat_template=config.chat_template, system_prompt=config.system_prompt
    )
    starts = torch.tensor([o[0] for o in parts.token_offsets])
    ends = torch.tensor([o[1] for o in parts.token_offsets])
    masks = []
    for passage, char_start, char_end in question.evidence:
        base = parts.passage_text_spans[position[passage]][0]
        masks.append((starts < base + char_end) & (ends > base + char_start))
    n = len(parts.context_ids)
    bounds = list(parts.passage_token_starts) + [n]
    passage_ids = torch.zeros(n, dtype=torch.long)
    for index in range(count):
        passage_ids[bounds[index] : bounds[index + 1]] = index
    support = torch.stack(masks).any(0) if masks else torch.zeros(n, dtype=torch.bool)
    return Packed(parts, masks, support, passage_ids, [i + 1 for i in perm], passages, parts.sentence_ids())


def capture_scores(compressor: Any, packed: Packed, config: FinchConfig) -> list[torch.Tensor]:
    """Per layer ``[1, kvh, g, n]``: the question's attention to each context token in one pass."""
    from transformers import DynamicCache

    model = compressor.model
    device = compressor.device
    parts = packed.parts

    def ids(values: list[int]) -> torch.Tensor:
        return torch.tensor([values], dtype=torch.long, device=device)

    decoder = decoder_of(model)
    with compressor._lock, torch.inference_mode():
        cache = DynamicCache()
        if parts.prefix_ids:
            decoder(input_ids=ids(parts.prefix_ids), past_key_values=cache, use_cache=True)
        capture = QuestionAttentionCapture(
            question_length=len(parts.question_ids),
            first_candidate=len(parts.prefix_ids),
            normalize_scores=config.normalize_scores,
        )
        with capturing_attention(model):
            decoder(
                input_ids=ids(parts.context_ids + parts.question_ids),
                past_key_values=cache,
                use_cache=True,
                **{CAPTURE_KWARG: capture},
            )
    return [capture.scores[layer].float().cpu() for layer in range(len(capture.scores))]


def _per_passage_normalise(scores: torch.Tensor, passage_ids: torch.Tensor, count: int) -> torch.Tensor:
    sums = torch.zeros(*scores.shape[:-1], count).index_add_(-1, passage_ids, scores)
    sizes = torch.bincount(passage_ids, minlength=count).clamp(min=1).to(scores.dtype)
    means = (sums / sizes).clamp(min=1e-12)
    return scores / means[..., passage_ids]


def kept_mask(design: Design, packed: Packed, budget: int) -> torch.Tensor:
    """``[n]`` fraction of (layer, KV head) pairs that keep each context token, single-pass selection."""
    assert packed.layer_scores is not None
    n = packed.passage_ids.shape[0]
    if budget >= n:
        return torch.ones(n)
    num_layers = len(packed.layer_scores)
    count = len(packed.ranks)
    weights = design.weights(packed.ranks)
    token_weights = None if weights is None else torch.tensor(weights)[packed.passage_ids]
    reserved = None
    if design.reserve > 0:
        # the rank-order head: tokens of passages by rank, first `reserve * B` of them
        by_rank = sorted(range(count), key=lambda i: packed.ranks[i])
        order = torch.cat([torch.nonzero(packed.passage_ids == i).flatten() for i in by_rank])
        reserved = order[: int(design.reserve * budget)]

    def finish(scores: torch.Tensor) -> torch.Tensor:  # [..., n] -> kept bool [..., n]
        if design.span:
            spans = packed.sentence_ids
            if design.span == 2:  # ablation: each title line a sentence of its own
                last_chars = torch.tensor([max(end - 1, 0) for _, end in packed.parts.token_offsets])
                text_starts = torch.tensor([start for start, _ in packed.parts.passage_text_spans])
                header = last_chars < text_starts[packed.passage_ids]
                spans = torch.where(header, -1 - spans, spans)
            scores = pool_spans(scores, spans)
        if design.norm:
            scores = _per_passage_normalise(scores, packed.passage_ids, count)
        if token_weights is not None:
            scores = scores * token_weights
        if reserved is not None:
            scores = scores.clone()
            scores[..., reserved] = math.inf
        chosen = scores.topk(budget, dim=-1).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, chosen, True)

    if design.sel == "shared":
        layers = resolve_layers(None if design.L == "all" else tuple(range(num_layers // 2, num_layers)), num_layers)
        scores = smooth_scores(shared_scores(packed.layer_scores, layers), design.s)[0]
        return finish(scores).float()
    if design.sel == "per_head":
        total = torch.zeros(n)
        heads = 0
        for layer_scores in packed.layer_scores:
            kept = finish(smooth_scores(per_head_scores(layer_scores), design.s)[0])  # [kvh, n]
            total += kept.float().sum(0)
            heads += kept.shape[0]
        return total / heads
    raise ValueError(f"Unknown selection {design.sel!r}.")


def truncation_mask(packed_rank: Packed, budget: int) -> torch.Tensor:
    n = packed_rank.passage_ids.shape[0]
    mask = torch.zeros(n)
    mask[: min(budget, n)] = 1.0
    return mask


def metrics(mask: torch.Tensor, packed: Packed) -> dict[str, float]:
    per_sentence = [float(mask[m].mean()) for m in packed.sentence_masks if m.any()]
    count = len(packed.ranks)
    kept = torch.zeros(count).index_add_(0, packed.passage_ids, mask) / torch.bincount(
        packed.passage_ids, minlength=count
    ).clamp(min=1)
    top = packed.ranks.index(1)
    return {
        "retention": float(mask[packed.support_mask].mean()) if packed.support_mask.any() else float("nan"),
        "all_hops": float(all(f >= 0.5 for f in per_sentence)),
        "min_sentence": min(per_sentence),
        "top_passage": float(kept[top]),
        "last_passage": float(kept[-1]),
    }


# --------------------------------------------------------------------- main
def run(args: argparse.Namespace, on_progress: Any = None) -> dict[str, Any]:
    from ..compressor import FinchCompressor

    torch.set_num_threads(args.threads)
    designs = [Design.parse(spec) for spec in resolve_methods(args.methods) if spec != "truncation"]
    with_truncation = "truncation" in resolve_methods(args.methods)
    base = FinchConfig(progress=False, chunk_size=args.chunk_size)
    compressor = FinchCompressor(config=base)
    questions = load_hotpotqa(data_dir(args.data), args.limit, args.seed)
    orders = sorted({d.order for d in designs} | {"rank"})
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    model_seconds = 0.0

    def result() -> dict[str, Any]:
        return {
            "settings": vars(args) | {"methods": resolve_methods(args.methods)},
            "designs": {d.label: d.spec() for d in designs},
            "machine": machine_description(),
            "seconds": time.perf_counter() - started,
            "model_seconds": model_seconds,
            "records": rows,
        }

    for q_index, question in enumerate(questions):
        if not question.evidence:
            continue
        packed = {order: pack(question, order, compressor.tokenizer, base) for order in orders}
        n = len(packed["rank"].parts.context_ids)
        t0 = time.perf_counter()
        if args.mode == "sim":
            for order in orders:
                packed[order].layer_scores = capture_scores(compressor, packed[order], base)
        model_seconds += time.perf_counter() - t0
        common = {
            "index": q_index,
            "qid": question.qid,
            "n": n,
            "gold_ranks": question.info["gold_ranks"],
            "type": question.info["type"],
        }
        for label in args.budgets:
            budget = budget_of(label, n)
            if with_truncation:
                rows.append(
                    common
                    | {"method": "truncation", "budget": label, "B": budget}
                    | metrics(truncation_mask(packed["rank"], budget), packed["rank"])
                )
            for design in designs:
                p = packed[design.order]
                if args.mode == "sim":
                    mask = kept_mask(design, p, budget)
                else:
                    if design.norm or design.reserve or design.span == 2:
                        continue
                    t1 = time.perf_counter()
                    config = base.replace(
                        target_tokens=budget,
                        selection=design.sel,
                        smoothing=design.s,
                        granularity="sentence" if design.span else "token",
                        score_layers=None
                        if design.L == "all"
                        else tuple(range(-(compressor.model.config.num_hidden_layers // 2), 0)),
                    )
                    cc = compressor.compress(
                        p.passages, question.question, config=config, passage_weights=design.weights(p.ranks)
                    )
                    mask = cc.kept_mask()
                    model_seconds += time.perf_counter() - t1
                rows.append(common | {"method": design.label, "budget": label, "B": budget} | metrics(mask, p))
        if (q_index + 1) % 5 == 0:
            print(f"{q_index + 1}/{len(questions)} questions, {time.perf_counter() - started:.0f} s", file=sys.stderr)
            if on_progress is not None:
                on_progress(result(), partial=True)

    return result()


METRICS = ("retention", "all_hops", "min_sentence", "top_passage", "last_passage")


def summarise(result: dict[str, Any]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in result["records"]:
        groups.setdefault((row["budget"], row["method"]), []).append(row)
    table = []
    for (budget, method), members in groups.items():
        entry: dict[str, Any] = {"budget": budget, "method": method, "n": len(members)}
        for metric in METRICS:
            entry[metric] = mean(m[metric] for m in members)
        table.append(entry)
    return table


def markdown(result: dict[str, Any], table: list[dict[str, Any]]) -> str:
    settings = result["settings"]
    lines = [
        "# HotpotQA evidence retention at equal budget",
        "",
        f"Questions: {len({r['qid'] for r in result['records']})} (seed {settings['seed']}), mode `{settings['mode']}`"
        f" (chunk_size {settings['chunk_size']}), machine: {result['machine']}; "
        f"{result['seconds']:.0f} s in all, {result['model_seconds']:.0f} s in the model.",
        "",
        "retention = supporting-sentence tokens kept; all_hops = share of questions where every supporting "
        "sentence keeps >= 0.5 of its tokens; top/last_passage = kept fraction of the rank-1 / last-packed passage.",
        "",
    ]
    for budget in settings["budgets"]:
        rows = sorted((r for r in table if r["budget"] == budget), key=lambda r: -r["all_hops"])
        lines += [f"## B = {budget}", "", markdown_table(rows, ["method", "n", *METRICS]), ""]
    lines += ["## Designs", ""] + [f"- `{k}`: {v}" for k, v in result["designs"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="benchmark data folder (default: ../shared/data)")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", nargs="+", default=list(DEFAULT_BUDGETS))
    parser.add_argument("--methods", nargs="+", default=["prune"], help="specs, or groups: baselines, prune")
    parser.add_argument("--mode", choices=("sim", "compress"), default="sim")
    parser.add_argument("--chunk-size", type=int, default=None, help="chunk size in compress mode (sim is single pass)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="docs/results/hotpotqa", help="path prefix for .json and .md")
    args = parser.parse_args(argv)
    if args.mode == "sim":
        args.chunk_size = None
    out = Path(args.out)

    def save(result: dict[str, Any], partial: bool = False) -> str:
        table = summarise(result)
        result["summary"] = table
        result["partial"] = partial
        write_json(out.with_suffix(".json"), result)
        text = markdown(result, table)
        out.with_suffix(".md").write_text(text)
        return text

    print(save(run(args, on_progress=save)))


if __name__ == "__main__":
    main()
