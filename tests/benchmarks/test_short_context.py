"""``benchmarks.short_context``: its sentence split, and answers shared between budget rules with the same B."""

from __future__ import annotations

import pytest

from benchmarks.short_context import HALVARD, METHODS, run_example, sentences
from finch_rag import FinchCompressor, FinchConfig, FinchRAG, Passage


def test_sentences_are_spans_of_the_text() -> None:
    text = "The bridge opened in 1931. It is 412 m long! Is it? Yes (mostly)."
    assert [text[a:b] for a, b in sentences(text)] == [
        "The bridge opened in 1931.",
        "It is 412 m long!",
        "Is it?",
        "Yes (mostly).",
    ]


@pytest.fixture(scope="module")
def compressor(tiny_models, tiny_tokenizer) -> FinchCompressor:
    return FinchCompressor(tiny_models("llama"), tiny_tokenizer, FinchConfig(progress=False))


def test_shared_answers_equal_each_rule_run_on_its_own(compressor: FinchCompressor) -> None:
    """The harness answers each distinct B once; every rule run alone gives the same answer and B."""
    records = {r["method"]: r for r in run_example(compressor, HALVARD, max_new_tokens=4)}
    passages = [Passage(text, title) for text, title in HALVARD["passages"]]
    for method, options in METHODS.items():
        rag = FinchRAG(compressor=compressor, config=FinchConfig(progress=False, **options), max_new_tokens=4)
        answer = rag.answer_from(HALVARD["question"], passages)
        assert (records[method]["answer"], records[method]["kept"]) == (answer.text, answer.stats["tokens_after"])
        assert records[method]["n"] == answer.stats["tokens_before"]
    n = records["full context"]["n"]
    assert records["ratio 0.75, no floor (old default)"]["kept"] == n // 4
    assert records["ratio 0.75, floor 64"]["kept"] == min(n, 64)
