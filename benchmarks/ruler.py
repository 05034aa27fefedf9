"""A RULER-style suite at about 4k tokens, generated offline and deterministically from ``../shared/data``.

The tasks follow the definitions of NVIDIA's RULER (Hsieh et al., 2024, https://github.com/NVIDIA/RULER); the
generators are written here from those definitions, not copied:

- ``niah_single_1`` (noise haystack, numeric value), ``niah_single_2`` (essay haystack, numeric value),
  ``niah_single_3`` (essay haystack, uuid value): one "special magic number" needle, one query;
- ``niah_multikey_1``: four needles with different keys in the essays, one queried;
- ``niah_multivalue``: four values for one key, all asked for;
- ``niah_multiquery``: four keys, all queried;
- ``vt``: variable tracking, one chain of five variables (four hops) among noise sentences;
- ``cwe``: common-words extraction, ten words 30 times each among words that occur three times;
- ``qa_squad``, ``qa_hotpotqa``: the question's paragraphs among distractor paragraphs of other questions.

Each example is one context string plus a question, so finch-rag and every kvpress press get the same token ids
(`encode` builds them with finch-rag's own `build_prompt`, chat template included). Scores are RULER's:
``string_match_all`` (the share of references found in the answer, case-insensitive) for the needle, VT and CWE
tasks, ``string_match_part`` (1 if any reference is found) for QA. ``evidence`` holds the character spans whose
KV entries the retention metric counts: the queried needles, the chain's assignments, every occurrence of the
common words, the gold answer spans (SQuAD) or supporting sentences (HotpotQA).

Deliberate differences from RULER: word keys come from the essays' vocabulary (RULER uses the ``wonderwords``
lists, not available offline), the answer prefix is not written into the assistant turn (finch-rag's prompt has
no slot for it), and the instruction that RULER puts after the context for QA is part of the question here.

    python -m benchmarks ruler --per-task 2 --out docs/results     # writes ruler_cases.jsonl and a preview
"""

from __future__ import annotations

import argparse
import json
import random
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .common import RESULTS_DIR, data_dir

TASKS = (
    "niah_single_1",
    "niah_single_2",
    "niah_single_3",
    "niah_multikey_1",
    "niah_multivalue",
    "niah_multiquery",
    "vt",
    "cwe",
    "qa_squad",
    "qa_hotpotqa",
)
DEFAULT_LENGTH = 4096
"""Prompt length in tokens the suite is sized for (context plus template and question), as RULER's 4k."""
TEMPLATE_RESERVE = 96
"""Tokens left for the chat template and the answer (the question is counted too); the context fills the rest."""
DEPTHS = [round(i / 39, 4) for i in range(40)]
"""Needle depths (fractions of the context) drawn from, as RULER draws from 40 evenly spaced depths."""
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
"""RULER's repeated-noise haystack (five short sentences)."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\b[a-z]{4,10}\b")


@dataclass
class RulerExample:
    """One generated input: a context, a question, reference answers and the evidence spans in the context."""

    task: str
    index: int
    context: str
    question: str
    answers: list[str]
    metric: str  # "all" (string_match_all) or "part" (string_match_part)
    evidence: list[tuple[int, int]]  # character spans in `context`
    depths: list[float] = field(default_factory=list)  # requested depth of each evidence span (needle tasks)
    ranking: list[tuple[int, int]] | None = None  # QA: document character spans, best ranked first

    @property
    def key(self) -> str:
        return f"{self.task}/{self.index}"


# ------------------------------------------------------------- scoring
def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """RULER's score for retrieval and aggregation tasks: the share of references found in the prediction."""
    text = prediction.lower()
    return sum(reference.lower() in text for reference in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """RULER's score for QA: 1 when any reference is found in the prediction."""
    text = prediction.lower()
    return float(any(reference.lower() in text for reference in references))


def score(example_metric: str, prediction: str, references: Sequence[str]) -> float:
    if example_metric == "all":
        return string_match_all(prediction, references)
    if example_metric == "part":
        return string_match_part(prediction, references)
    raise ValueError(f"Unknown RULER metric {example_metric!r}; use 'all' or 'part'.")


# ------------------------------------------------------------- sources
class Sources:
    """The essays (sentences and vocabulary), SQuAD and HotpotQA, read once from the data folder."""

    def __init__(self, data: str | Path | None = None) -> None:
        self.folder = data_dir(data)
        files = sorted((self.folder / "paul_graham_essays").glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"No essays (*.txt) in {self.folder / 'paul_graham_essays'}.")
        text = " ".join(" ".join(path.read_text(encoding="utf-8").split()) for path in files)
        self.essay_sentences = [s for s in _SENTENCE_END.split(text) if s]
        words = sorted(set(_WORD.findall(text.lower())))
        self.vocabulary = words
        self._squad: list[tuple[str, list[dict[str, Any]]]] | None = None
        self._hotpot: list[dict[str, Any]] | None = None

    @property
    def squad(self) -> list[tuple[str, list[dict[str, Any]]]]:
        if self._squad is None:
            articles = json.loads((self.folder / "squad-v1.1-dev-part.json").read_text())["data"]
            self._squad = [(p["context"], p["qas"]) for a in articles for p in a["paragraphs"]]
        return self._squad

    @property
    def hotpot(self) -> list[dict[str, Any]]:
        if self._hotpot is None:
            self._hotpot = json.loads((self.folder / "hotpotqa-dev-distractor-part.json").read_text())
        return self._hotpot


class TokenCounter:
    """Counts tokens of text pieces with the model's tokenizer (cached; pieces are reused across examples)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        if text not in self._cache:
            self._cache[text] = len(self.tokenizer(text, add_special_tokens=False).input_ids)
        return self._cache[text]


# ----------------------------------------------------------- assembly
def _fill(pieces: Callable[[int], str], count: TokenCounter, budget: int, joiner: str = " ") -> list[str]:
    """Pieces ``pieces(0), pieces(1), ...`` until their tokens reach ``budget``."""
    out: list[str] = []
    used = 0
    while True:
        piece = pieces(len(out))
        cost = count(piece + joiner)
        if used + cost > budget:
            return out
        out.append(piece)
        used += cost


def _insert(
    haystack: list[str], needles: Sequence[str], depths: Sequence[float], joiner: str = " ", offset: int = 0
) -> tuple[str, list[tuple[int, int]]]:
    """Join ``haystack`` pieces with each needle inserted before the piece nearest its depth.

    The depth is a fraction of the whole context, characters of a head of length ``offset`` (the instruction
    written before the haystack) included. Returns the text and each needle's character span in it (without
    the head), in the order of ``needles``.
    """
    total = sum(len(piece) + len(joiner) for piece in haystack)
    starts, cursor = [], 0
    for piece in haystack:
        starts.append(cursor)
        cursor += len(piece) + len(joiner)
    starts.append(cursor)
    slots: dict[int, list[int]] = {}
    for which, depth in enumerate(depths):
        target = depth * (offset + total) - offset
        slot = min(range(len(starts)), key=lambda i: (abs(starts[i] - target), i))
        slots.setdefault(slot, []).append(which)
    parts: list[str] = []
    spans: list[tuple[int, int]] = [(0, 0)] * len(needles)
    cursor = 0
    for i in range(len(haystack) + 1):
        for which in slots.get(i, []):
            spans[which] = (cursor, cursor + len(needles[which]))
            parts.append(needles[which])
            cursor += len(needles[which]) + len(joiner)
        if i < len(haystack):
            parts.append(haystack[i])
            cursor += len(haystack[i]) + len(joiner)
    return joiner.join(parts), spans


def _key(rng: random.Random, sources: Sources, taken: set[str]) -> str:
    while True:
        key = f"{rng.choice(sources.vocabulary)}-{rng.choice(sources.vocabulary)}"
        if key not in taken:
            taken.add(key)
            return key


def _value(rng: random.Random, kind: str, taken: set[str]) -> str:
    while True:
        value = (
            str(uuid.UUID(int=rng.getrandbits(128), version=4))
            if kind == "uuids"
            else str(rng.randint(1_000_000, 9_999_999))
        )
        if value not in taken:
            taken.add(value)
            return value


_NIAH = {
    # task: (haystack, value kind, keys, values per key, queried keys)
    "niah_single_1": ("noise", "numbers", 1, 1, 1),
    "niah_single_2": ("essay", "numbers", 1, 1, 1),
    "niah_single_3": ("essay", "uuids", 1, 1, 1),
    "niah_multikey_1": ("essay", "numbers", 4, 1, 1),
    "niah_multivalue": ("essay", "numbers", 1, 4, 1),
    "niah_multiquery": ("essay", "numbers", 4, 1, 4),
}


def _niah(
    task: str, index: int, rng: random.Random, sources: Sources, count: TokenCounter, budget: int
) -> RulerExample:
    haystack_kind, kind, n_keys, n_values, n_queries = _NIAH[task]
    singular = kind[:-1]
    taken: set[str] = set()
    keys = [_key(rng, sources, taken) for _ in range(n_keys)]
    pairs = [(key, _value(rng, kind, taken)) for key in keys for _ in range(n_values)]
    needles = [f"One of the special magic {kind} for {key} is: {value}." for key, value in pairs]
    depths = rng.sample(DEPTHS, len(needles))
    head = (
        f"Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
        f"I will quiz you about the {kind} afterwards.\n"
    )
    queried = keys[:n_queries]
    if n_queries > 1:
        names = ", ".join(queried[:-1]) + f", and {queried[-1]}"
        question = f"What are all the special magic {kind} for {names} mentioned in the provided text?"
    elif n_values > 1:
        question = f"What are all the special magic {kind} for {queried[0]} mentioned in the provided text?"
    else:
        question = f"What is the special magic {singular} for {queried[0]} mentioned in the provided text?"
    room = budget - count(question) - count(head) - sum(count(n + " ") for n in needles)
    if haystack_kind == "noise":
        hay = _fill(lambda i: NOISE, count, room)
    else:
        start = rng.randrange(len(sources.essay_sentences))
        sentences = sources.essay_sentences
        hay = _fill(lambda i: sentences[(start + i) % len(sentences)], count, room)
    body, spans = _insert(hay, needles, depths, offset=len(head))
    answers = [value for key, value in pairs if key in queried]
    evidence = [(len(head) + s, len(head) + e) for (key, _), (s, e) in zip(pairs, spans, strict=True) if key in queried]
    chosen = [d for (key, _), d in zip(pairs, depths, strict=True) if key in queried]
    return RulerExample(task, index, head + body, question, answers, "all", evidence, chosen)


def _vt(index: int, rng: random.Random, sources: Sources, count: TokenCounter, budget: int) -> RulerExample:
    taken: set[str] = set()
    names: list[str] = []
    while len(names) < 5:
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if name not in taken:
            taken.add(name)
            names.append(name)
    value = str(rng.randint(10_000, 99_999))
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, 5)]
    depths = sorted(rng.sample(DEPTHS, len(chain)))  # a chain reads forward: each hop after the one it copies
    head = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    question = (
        f"Find all variables that are assigned the value {value} in the text above. List the variable names only."
    )
    room = budget - count(question) - count(head) - sum(count(c + " ") for c in chain)
    hay = _fill(lambda i: NOISE, count, room)
    body, spans = _insert(hay, chain, depths, offset=len(head))
    evidence = [(len(head) + s, len(head) + e) for s, e in spans]
    return RulerExample("vt", index, head + body, question, names, "all", evidence, depths)


def _cwe(index: int, rng: random.Random, sources: Sources, count: TokenCounter, budget: int) -> RulerExample:
    words = rng.sample(sources.vocabulary, 400)
    common, rare = words[:10], words[10:]
    head = (
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often.\n"
    )
    question = "What are the 10 most common words in the above list? Answer with the ten words only."
    budget -= count(question)
    # RULER's frequencies (30 per common word, 3 per rare one); the common words' frequency is lowered only where
    # 300 entries would fill more than 60% of the list (short lengths; never at 4k tokens).
    frequency = 30
    while frequency > 4 and sum(count(f"{i + 1}. {w} ") for i, w in enumerate(common * frequency)) > 0.6 * budget:
        frequency -= 1
    # Each listed word costs about "N. word " tokens; grow the rare set until the list fills the budget.
    listed = [w for w in common for _ in range(frequency)]
    used = count(head) + sum(count(f"{i + 1}. {w} ") for i, w in enumerate(listed))
    for word in rare:
        cost = sum(count(f"{len(listed) + 1 + j}. {word} ") for j in range(3))
        if used + cost > budget:
            break
        listed += [word] * 3
        used += cost
    rng.shuffle(listed)
    pieces, evidence, cursor = [], [], len(head)
    for i, word in enumerate(listed):
        label = f"{i + 1}. "
        if word in common:
            evidence.append((cursor + len(label), cursor + len(label) + len(word)))
        pieces.append(label + word)
        cursor += len(label) + len(word) + 1
    return RulerExample("cwe", index, head + " ".join(pieces), question, common, "all", evidence)


def _qa(task: str, index: int, rng: random.Random, sources: Sources, count: TokenCounter, budget: int) -> RulerExample:
    head = "The following are given documents.\n\n"
    if task == "qa_squad":
        pool = sources.squad
        gold_at = rng.randrange(len(pool))
        paragraph, qas = pool[gold_at]
        qa = rng.choice(qas)
        question_text = qa["question"]
        answers = sorted({a["text"] for a in qa["answers"] if a["text"]})
        gold = [(paragraph, [(a["answer_start"], a["answer_start"] + len(a["text"])) for a in qa["answers"]])]
        distractors = [pool[i][0] for i in rng.sample(range(len(pool)), min(80, len(pool))) if i != gold_at]
    else:
        pool_h = sources.hotpot
        gold_at = rng.randrange(len(pool_h))
        record = pool_h[gold_at]
        question_text, answers = record["question"], [record["answer"]]
        support: dict[str, set[int]] = {}
        for title, sentence in record["supporting_facts"]:
            support.setdefault(title, set()).add(sentence)
        gold, distractors = [], []
        for title, sentences in record["context"]:
            pieces = [s.strip() for s in sentences]
            text = " ".join(pieces)
            spans, cursor = [], 0
            for i, piece in enumerate(pieces):
                if i in support.get(title, set()) and piece:
                    spans.append((cursor, cursor + len(piece)))
                cursor += len(piece) + 1
            (gold if spans else distractors).append((text, spans) if spans else text)
        others = [pool_h[i] for i in rng.sample(range(len(pool_h)), min(12, len(pool_h))) if i != gold_at]
        distractors += [" ".join(s.strip() for s in sents) for other in others for _, sents in other["context"]]
    question = (
        "Answer the question based on the given documents. Only give me the answer and do not output any "
        f"other words.\n\nQuestion: {question_text}"
    )
    documents: list[tuple[str, list[tuple[int, int]]]] = list(gold)
    used = count(question) + count(head) + sum(count(f"Document 00:\n{text}\n\n") for text, _ in documents)
    for text in distractors:
        cost = count(f"Document 00:\n{text}\n\n")
        if used + cost > budget:
            continue
        documents.append((text, []))
        used += cost
    rng.shuffle(documents)
    parts, evidence, doc_spans, cursor = [head], [], [], len(head)
    for number, (text, spans) in enumerate(documents, 1):
        label = f"Document {number}:\n"
        start = cursor + len(label)
        evidence += [(start + s, start + e) for s, e in spans]
        doc_spans.append((start, start + len(text)))
        parts.append(label + text + "\n\n")
        cursor += len(label) + len(text) + 2
    context = "".join(parts).rstrip()
    return RulerExample(task, index, context, question, answers, "part", sorted(set(evidence)), ranking=doc_spans)


def generate(
    task: str,
    index: int,
    tokenizer: Any,
    sources: Sources,
    *,
    seed: int = 0,
    length: int = DEFAULT_LENGTH,
    counter: TokenCounter | None = None,
) -> RulerExample:
    """Example ``index`` of ``task`` for ``seed``: the same inputs give the same example, on any machine."""
    if task not in TASKS:
        raise ValueError(f"Unknown RULER task {task!r}; use one of {', '.join(TASKS)}.")
    rng = random.Random(f"{seed}/{task}/{index}")
    count = counter or TokenCounter(tokenizer)
    budget = length - TEMPLATE_RESERVE
    if task in _NIAH:
        return _niah(task, index, rng, sources, count, budget)
    if task == "vt":
        return _vt(index, rng, sources, count, budget)
    if task == "cwe":
        return _cwe(index, rng, sources, count, budget)
    return _qa(task, index, rng, sources, count, budget)


def generate_suite(
    tokenizer: Any,
    data: str | Path | None = None,
    *,
    tasks: Sequence[str] = TASKS,
    per_task: int = 4,
    seed: int = 0,
    length: int = DEFAULT_LENGTH,
) -> list[RulerExample]:
    """``per_task`` examples of each task, task by task."""
    sources, counter = Sources(data), TokenCounter(tokenizer)
    return [
        generate(task, i, tokenizer, sources, seed=seed, length=length, counter=counter)
        for task in tasks
        for i in range(per_task)
    ]


# ------------------------------------------------------------- encoding
@dataclass
class EncodedExample:
    """The token ids finch-rag builds for an example, and what the metrics need on those ids."""

    example: RulerExample
    prefix_ids: list[int]
    context_ids: list[int]
    question_ids: list[int]
    suffix_ids: list[int]
    evidence_tokens: list[int]  # context token positions overlapping the evidence spans
    ranked_documents: list[tuple[int, int]] | None  # QA: token ranges [start, end) of documents, best first

    def to_json(self) -> dict[str, Any]:
        record = {"key": self.example.key, "task": self.example.task}
        record |= {k: v for k, v in asdict(self).items() if k != "example"}
        record["example"] = asdict(self.example)
        return record


def encode(tokenizer: Any, example: RulerExample, ranking: Sequence[int] | None = None) -> EncodedExample:
    """Build the prompt with finch-rag's `build_prompt` (chat template as `FinchCompressor.compress` applies it).

    ``ranking`` (QA) orders the example's documents best first; their token ranges go into ``ranked_documents``.
    """
    from finch_rag import Passage
    from finch_rag.prompts import build_prompt

    parts = build_prompt(tokenizer, [Passage(example.context)], example.question)
    evidence = parts.span_tokens([(0, s, e) for s, e in example.evidence])
    ranked = None
    if example.ranking is not None and ranking is not None:
        ranked = []
        for which in ranking:
            tokens = parts.span_tokens([(0, *example.ranking[which])]).nonzero().flatten()
            ranked.append((int(tokens[0]), int(tokens[-1]) + 1))
    return EncodedExample(
        example,
        list(parts.prefix_ids),
        list(parts.context_ids),
        list(parts.question_ids),
        list(parts.suffix_ids),
        evidence.nonzero().flatten().tolist(),
        ranked,
    )


def rank_documents(example: RulerExample, embedder: Any = None) -> tuple[list[int], Any]:
    """QA: the example's documents ranked by finch-rag's embedder against the question (best first)."""
    from finch_rag import EmbeddingRetriever

    assert example.ranking is not None
    texts = [(example.context[s:e], {"i": i}) for i, (s, e) in enumerate(example.ranking)]
    retriever = EmbeddingRetriever(texts, model=embedder, progress=False)
    query = example.question.rsplit("Question: ", 1)[-1]
    return [p.metadata["i"] for p in retriever.retrieve(query, len(texts))], retriever.model


def encode_suite(tokenizer: Any, examples: Sequence[RulerExample]) -> list[EncodedExample]:
    """`encode` every example; QA examples get their embedder ranking."""
    embedder = None
    encoded = []
    for example in examples:
        ranking = None
        if example.ranking is not None:
            ranking, embedder = rank_documents(example, embedder)
        encoded.append(encode(tokenizer, example, ranking))
    return encoded


# --------------------------------------------------------------- command
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks ruler",
        description="Generate the RULER-style suite (deterministic for --seed) and write its encoded cases as "
        "JSON lines (the inputs `python -m benchmarks peers` runs every method on).",
    )
    parser.add_argument("--data", default=None, help="benchmark data folder (default ../shared/data)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output folder (default docs/results)")
    parser.add_argument("--model", default=None, help="model (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, metavar="TASK")
    parser.add_argument("--per-task", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--length", type=int, default=DEFAULT_LENGTH)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from finch_rag import load_model

    _, tokenizer = load_model(args.model)
    examples = generate_suite(
        tokenizer, args.data, tasks=args.tasks, per_task=args.per_task, seed=args.seed, length=args.length
    )
    out = Path(args.out) / "ruler_cases.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as handle:
        for case in encode_suite(tokenizer, examples):
            handle.write(json.dumps(case.to_json()) + "\n")
            n = len(case.prefix_ids) + len(case.context_ids) + len(case.question_ids) + len(case.suffix_ids)
            print(f"{case.example.key}: {n} prompt tokens, {len(case.evidence_tokens)} evidence tokens")
    print(f"wrote {out}")
    return 0
