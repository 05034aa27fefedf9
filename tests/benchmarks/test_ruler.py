"""The RULER-style generators (deterministic, needles at their depth, evidence on the answers) and RULER scoring."""

from __future__ import annotations

import collections
import json
import random
import re
import string
from dataclasses import asdict

import pytest

from benchmarks.ruler import (
    TASKS,
    Sources,
    encode,
    generate,
    score,
    string_match_all,
    string_match_part,
)

LENGTH = 1200


def _words(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 9))) for _ in range(count)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    essays = folder / "paul_graham_essays"
    essays.mkdir()
    words = _words(600)
    sentences = [" ".join(words[i : i + 8]).capitalize() + "." for i in range(0, 600, 8)]
    (essays / "a.txt").write_text(" ".join(sentences[:40]))
    (essays / "b.txt").write_text(" ".join(sentences[40:]))
    paragraphs = []
    for p in range(30):
        text = f"Paragraph {p} tells that the answer number {p} is {words[p]} and nothing else matters here."
        answer = words[p]
        paragraphs.append(
            {
                "context": text,
                "qas": [
                    {
                        "id": str(p),
                        "question": f"What is answer number {p}?",
                        "answers": [{"text": answer, "answer_start": text.index(answer)}],
                    }
                ],
            }
        )
    (folder / "squad-v1.1-dev-part.json").write_text(json.dumps({"data": [{"title": "T", "paragraphs": paragraphs}]}))
    hotpot = []
    for q in range(20):
        context = [
            [f"Title {q} {k}", [f"Fact {k} of {q} is {words[q + k]}.", f" More on {words[q * 2 + k]}."]]
            for k in range(4)
        ]
        hotpot.append(
            {
                "_id": str(q),
                "question": f"Which fact joins {q}?",
                "answer": words[q],
                "supporting_facts": [[f"Title {q} 0", 0], [f"Title {q} 1", 1]],
                "context": context,
            }
        )
    (folder / "hotpotqa-dev-distractor-part.json").write_text(json.dumps(hotpot))
    return folder


@pytest.fixture(scope="module")
def sources(data):
    return Sources(data)


@pytest.mark.parametrize("task", TASKS)
def test_generators_are_deterministic_for_a_seed(task, tiny_tokenizer, data, sources):
    first = generate(task, 1, tiny_tokenizer, sources, seed=3, length=LENGTH)
    again = generate(task, 1, tiny_tokenizer, Sources(data), seed=3, length=LENGTH)
    other = generate(task, 1, tiny_tokenizer, sources, seed=4, length=LENGTH)
    assert asdict(first) == asdict(again)
    assert (other.context, other.answers) != (first.context, first.answers)


@pytest.mark.parametrize("task", TASKS)
def test_prompt_fills_the_length_and_evidence_holds_the_answers(task, tiny_tokenizer, sources):
    example = generate(task, 0, tiny_tokenizer, sources, seed=0, length=LENGTH)
    case = encode(tiny_tokenizer, example)
    total = len(case.prefix_ids) + len(case.context_ids) + len(case.question_ids) + len(case.suffix_ids)
    assert 0.7 * LENGTH <= total <= LENGTH
    evidence_text = " ".join(example.context[s:e] for s, e in example.evidence)
    if task == "qa_squad":
        assert any(answer in evidence_text for answer in example.answers)
    elif task == "cwe":
        counts = collections.Counter(evidence_text.split())
        assert set(counts) == set(example.answers) and len(set(counts.values())) == 1
        listed = collections.Counter(re.findall(r"\d+\. ([a-z]+)", example.context))
        assert all(listed[word] == n for word, n in counts.items()), "every occurrence is evidence"
        assert min(counts.values()) > 3 == max(n for word, n in listed.items() if word not in counts)
    elif task != "qa_hotpotqa":
        assert all(answer in evidence_text for answer in example.answers)
    assert case.evidence_tokens, "the evidence maps to context tokens"
    text = tiny_tokenizer.decode([case.context_ids[i] for i in case.evidence_tokens])
    assert example.context[example.evidence[0][0] : example.evidence[0][1]][:4] in text


@pytest.mark.parametrize("index", range(6))
def test_single_needle_sits_at_its_requested_depth(index, tiny_tokenizer, sources):
    """The needle's first token is at the requested fraction of the context, within one haystack sentence."""
    example = generate("niah_single_2", index, tiny_tokenizer, sources, seed=0, length=LENGTH)
    case = encode(tiny_tokenizer, example)
    n = len(case.context_ids)
    where = case.evidence_tokens[0] / n
    sentence = max(len(tiny_tokenizer(s).input_ids) for s in sources.essay_sentences[:20])
    assert abs(where - example.depths[0]) <= (sentence + 2) / n
    needle = example.context[example.evidence[0][0] : example.evidence[0][1]]
    assert needle.startswith("One of the special magic numbers for ") and needle.endswith(example.answers[0] + ".")


def test_multi_needle_depths_and_chain_order(tiny_tokenizer, sources):
    multi = generate("niah_multiquery", 2, tiny_tokenizer, sources, seed=0, length=LENGTH)
    case = encode(tiny_tokenizer, multi)
    starts = [example_start / len(multi.context) for example_start, _ in multi.evidence]
    # Within one haystack sentence, plus the other needles written before it.
    slack = (max(map(len, sources.essay_sentences)) + sum(e - s + 1 for s, e in multi.evidence)) / len(multi.context)
    for start, depth in zip(starts, multi.depths, strict=True):
        assert abs(start - depth) <= slack
    assert len(case.evidence_tokens) > 4 * 8
    vt = generate("vt", 2, tiny_tokenizer, sources, seed=0, length=LENGTH)
    assert [s for s, _ in vt.evidence] == sorted(s for s, _ in vt.evidence), "each hop follows the one it copies"
    assert vt.context[vt.evidence[0][0] :].startswith(f"VAR {vt.answers[0]} = ")


def test_ruler_scoring_on_known_strings():
    assert string_match_all("The numbers are 123 and 456.", ["123", "456", "789"]) == pytest.approx(2 / 3)
    assert string_match_all("APPLE, pear", ["apple", "Pear"]) == 1.0
    assert string_match_part("It was Bob Dylan.", ["bob dylan", "Dylan, Bob"]) == 1.0
    assert string_match_part("It was Bob.", ["bob dylan"]) == 0.0
    assert score("all", "1234567", ["1234567"]) == 1.0
    with pytest.raises(ValueError, match="'all' or 'part'"):
        score("exact", "a", ["a"])
    with pytest.raises(ValueError, match="Unknown RULER task"):
        generate("niah_double", 0, None, None)  # type: ignore[arg-type]
