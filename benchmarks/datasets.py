"""The benchmark data, loaded the same way by every suite: SQuAD, HotpotQA, the essays and needles, L-Eval.

Everything is read from the data folder (``--data``, default ``../shared/data``; see `benchmarks.common.data_dir`),
never from inside the repository. Question samples are drawn with a fixed seed and are prefix-stable: the first
``k`` questions of a sample of ``n > k`` are the sample of ``k``.

- QA: `load_suite` gives `Example` s (a question, its passages best first, its gold evidence) for ``squad`` (the
  paper's setting: one paragraph), ``rag-squad`` (retrieval over every SQuAD paragraph) and ``hotpotqa`` (each
  question's 10 paragraphs ranked by all-MiniLM-L6-v2);
- needles: `NEEDLES` and the `Haystack` of Paul Graham's essays they are hidden in;
- L-Eval ``natural_question``: `load_leval` gives its long Wikipedia pages with their questions.
"""

from __future__ import annotations

import bisect
import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from finch_rag import Passage

from .common import data_dir

QA_SUITES = ("squad", "rag-squad", "hotpotqa")
SQUAD_FILE = "squad-v1.1-dev-part.json"
HOTPOTQA_FILE = "hotpotqa-dev-distractor-part.json"
Span = tuple[int, int, int]
"""``(passage index, char start, char end)`` in that passage's text."""


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


# --------------------------------------------------------------------- QA
def sample(items: Sequence[Any], limit: int | None, seed: int) -> list[Any]:
    """The first ``limit`` items (all for ``None``) of a seeded shuffle: prefix-stable across limits."""
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
    for paragraph, qa in sample(questions, limit, seed):
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
    drawn = sample(questions, limit, seed)
    corpus: Sequence[int] = range(len(paragraphs))
    if corpus_limit is not None:
        corpus = sorted(set(range(min(corpus_limit, len(paragraphs)))) | {paragraph for paragraph, _ in drawn})
    retriever = EmbeddingRetriever(
        [(paragraphs[index][1], {"title": paragraphs[index][0], "paragraph": index}) for index in corpus],
        model=embedder,
        progress=False,
    )
    examples = []
    for paragraph, qa in drawn:
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

    records = sample(json.loads((data / HOTPOTQA_FILE).read_text()), limit, seed)
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
    raise ValueError(f"Unknown suite {suite!r}; use one of {QA_SUITES}.")


# -------------------------------------------------------------- needles
@dataclass(frozen=True)
class Needle:
    """One inserted fact, the question that asks for it and the accepted answers."""

    key: str
    text: str
    question: str
    answers: tuple[str, ...]


NEEDLES: tuple[Needle, ...] = (
    Needle(
        "lasagna",
        "The secret ingredient in Grandma Rosa's lasagna is smoked paprika.",
        "What is the secret ingredient in Grandma Rosa's lasagna?",
        ("smoked paprika",),
    ),
    Needle(
        "vault",
        "The access code for the Halvorsen observatory vault is 7413.",
        "What is the access code for the Halvorsen observatory vault?",
        ("7413",),
    ),
    Needle(
        "bakery",
        "In 1998 Marguerite Okonkwo moved her bakery from Lisbon to the city of Tampere.",
        "To which city did Marguerite Okonkwo move her bakery?",
        ("Tampere",),
    ),
    Needle(
        "mascot",
        "The mascot of the Pellington Rowing Club is a purple walrus named Gus.",
        "What animal is the mascot of the Pellington Rowing Club?",
        ("walrus",),
    ),
    Needle(
        "lighthouse",
        "The lighthouse on Corvel Island was first lit in the winter of 1871.",
        "In which year was the lighthouse on Corvel Island first lit?",
        ("1871",),
    ),
    Needle(
        "helmet",
        "The folding bicycle helmet was invented by an engineer named Ingrid Solberg.",
        "Who invented the folding bicycle helmet?",
        ("Ingrid Solberg", "Solberg"),
    ),
)


def needles_by_key(keys: Iterable[str] | None) -> list[Needle]:
    """The built-in needles named by ``keys`` (all of them for ``None``)."""
    if keys is None:
        return list(NEEDLES)
    known = {needle.key: needle for needle in NEEDLES}
    unknown = [key for key in keys if key not in known]
    if unknown:
        raise ValueError(f"Unknown needle(s) {unknown}; known needles are {sorted(known)}.")
    return [known[key] for key in keys]


# --------------------------------------------------------------- haystack
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s|[A-Z]|$)")


class Haystack:
    """The essays concatenated in file-name order, tokenised once, cut on sentence boundaries."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, data: str | Path | None = None) -> None:
        folder = data_dir(data) / "paul_graham_essays"
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"No essays (*.txt) in {folder}.")
        self.text = "\n\n".join(path.read_text(encoding="utf-8").strip() for path in files)
        self.tokenizer = tokenizer
        offsets = tokenizer(self.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        self._token_ends = [end for _, end in offsets]
        self._boundaries = [0] + [match.end() for match in _SENTENCE_END.finditer(self.text)]

    @property
    def num_tokens(self) -> int:
        return len(self._token_ends)

    def cut(self, tokens: int) -> str:
        """The longest prefix of at most ``tokens`` tokens that ends on a sentence boundary."""
        if tokens > self.num_tokens:
            raise ValueError(f"The essays hold {self.num_tokens} tokens; a haystack of {tokens} was asked for.")
        char_limit = self._token_ends[tokens - 1]
        index = bisect.bisect_right(self._boundaries, char_limit) - 1
        return self.text[: self._boundaries[max(index, 0)]]

    def with_needle(self, tokens: int, needle: Needle, depth: float) -> tuple[str, int, int]:
        """``(context, needle_start, needle_end)``: about ``tokens`` tokens with the needle at ``depth``.

        The needle goes in at the sentence boundary nearest to ``depth`` (a fraction of the characters).
        """
        if not 0 <= depth <= 1:
            raise ValueError(f"depth is a fraction of the haystack and must be in [0, 1], got {depth}.")
        needle_tokens = len(self.tokenizer(" " + needle.text + " ", add_special_tokens=False).input_ids)
        hay = self.cut(tokens - needle_tokens)
        boundaries = [b for b in self._boundaries if b <= len(hay)]
        target = depth * len(hay)
        point = min(boundaries, key=lambda boundary: (abs(boundary - target), boundary))
        before, after = hay[:point], hay[point:]
        lead = " " if before and not before[-1].isspace() else ""
        trail = " " if after and not after[0].isspace() else ""
        start = len(before) + len(lead)
        context = before + lead + needle.text + trail + after
        return context, start, start + len(needle.text)


def split_passages(
    tokenizer: PreTrainedTokenizerBase, context: str, span: tuple[int, int], passage_tokens: int | None
) -> tuple[list[str], tuple[int, int, int]]:
    """Cut ``context`` into passages of about ``passage_tokens`` tokens on sentence boundaries.

    Returns the passages and the needle's ``(passage_index, char_start, char_end)``. The needle is never
    split: cuts fall on sentence boundaries outside it.
    """
    if passage_tokens is None:
        return [context], (0, span[0], span[1])
    offsets = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    ends = [end for _, end in offsets]
    boundaries = [m.end() for m in _SENTENCE_END.finditer(context) if not span[0] < m.end() < span[1]]
    cuts, last = [0], 0
    for boundary in boundaries:
        if bisect.bisect_left(ends, boundary) - bisect.bisect_left(ends, last) >= passage_tokens:
            cuts.append(boundary)
            last = boundary
    cuts.append(len(context))
    passages: list[str] = []
    where = (0, 0, 0)
    for start, end in zip(cuts[:-1], cuts[1:], strict=True):
        piece = context[start:end]
        lead = len(piece) - len(piece.lstrip())
        text = piece.strip()
        if not text:
            continue
        if start <= span[0] < end:
            where = (len(passages), span[0] - start - lead, span[1] - start - lead)
        passages.append(text)
    return passages, where


# --------------------------------------------------------------- L-Eval
LEVAL_FILE = "leval-natural-question-part.jsonl"
MARKUP_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9_]*(?:=\"[^\"]*\")?>")
"""A markup tag of the L-Eval pages: ``<Td>``, ``<Th_colspan="2">``, ``</Tr>``."""


def load_leval(data: str | Path | None = None) -> list[dict[str, Any]]:
    """L-Eval ``natural_question``'s pages: ``input`` (the page), ``instructions`` (questions), ``outputs`` (golds)."""
    with (data_dir(data) / LEVAL_FILE).open() as lines:
        return [json.loads(line) for line in lines]


def strip_markup(text: str) -> str:
    """The page without its markup tags (``<Td>``, ``<Th_colspan="2">``, ``</Tr>``), whitespace collapsed."""
    return re.sub(r"\s+", " ", MARKUP_TAG.sub(" ", text)).strip()


def word_chunks(text: str, words: int) -> list[str]:
    """``text`` cut into pieces of ``words`` whitespace-separated words (the last one shorter)."""
    tokens = text.split()
    return [" ".join(tokens[start : start + words]) for start in range(0, len(tokens), words)]
