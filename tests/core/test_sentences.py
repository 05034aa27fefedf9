"""Sentence granularity: sentences found in the packed text compete for the budget as wholes."""

from __future__ import annotations

import pytest
import torch
from conftest import PASSAGES, QUESTION

from finch_rag import FinchCompressor, FinchConfig
from finch_rag.compression.scoring import pool_spans
from finch_rag.prompts import MAX_SENTENCE_TOKENS, Passage, build_prompt, cap_spans


def _sentences(parts) -> list[str]:
    ids = parts.sentence_ids()
    return [
        "".join(parts.context_text[slice(*parts.token_offsets[i])] for i in range(len(ids)) if ids[i] == sentence)
        for sentence in range(int(ids.max()) + 1)
    ]


def test_sentence_ids_follow_sentences_titles_and_passages(tiny_tokenizer):
    passages = [
        Passage("The capital of France is Paris. The secret code is 4817.", title="France"),
        Passage(PASSAGES[2]),
    ]
    parts = build_prompt(tiny_tokenizer, passages, QUESTION)
    ids = parts.sentence_ids()
    assert ids.shape == (len(parts.context_ids),)
    assert ids[0] == 0 and bool((ids.diff() >= 0).all()) and bool((ids.diff() <= 1).all())
    assert [s.strip() for s in _sentences(parts)] == [
        "France\nThe capital of France is Paris.",
        "The secret code is 4817.",
        "Bananas are yellow fruits that grow in bunches by the sea.",
    ]


def test_closing_block_markup_ends_a_sentence(tiny_tokenizer):
    """Tables and lists have no sentence punctuation: their rows, not the whole table, are the sentences."""
    text = "<Table> <Tr> <Th> Starring </Th> <Td> Emma </Td> </Tr> <Tr> <Td> Alan </Td> </tr> </Table> <P> Hi . </P>"
    parts = build_prompt(tiny_tokenizer, [Passage(text)], QUESTION)
    assert [s.strip() for s in _sentences(parts)] == [
        "<Table> <Tr> <Th> Starring </Th> <Td> Emma </Td> </Tr>",
        "<Tr> <Td> Alan </Td> </tr>",
        "</Table>",
        "<P> Hi .",
        "</P>",
    ]


def test_long_sentences_are_split_into_even_pieces(tiny_tokenizer):
    parts = build_prompt(tiny_tokenizer, [Passage(" ".join(["word"] * 120)), Passage("Short one.")], QUESTION)
    sizes = torch.bincount(parts.sentence_ids())
    first = len(parts.context_ids) - int(sizes[-1])  # the tokens of the long passage (the short one is last)
    pieces = -(-first // MAX_SENTENCE_TOKENS)
    assert pieces > 1 and len(sizes) == pieces + 1
    assert int(sizes[:-1].max()) <= MAX_SENTENCE_TOKENS and int(sizes[:-1].max() - sizes[:-1].min()) < pieces


def test_cap_spans_relabels_only_long_spans():
    ids = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2])
    assert cap_spans(ids, 3).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4, 5]
    assert torch.equal(cap_spans(ids, 7), ids)
    assert cap_spans(torch.tensor([4, 4, 9]), 1).tolist() == [0, 1, 2]
    assert cap_spans(torch.zeros(0, dtype=torch.long), 3).numel() == 0


def test_pool_spans_averages_each_span():
    scores = torch.tensor([[1.0, 3.0, 5.0, 0.0, 2.0], [0.0, 0.0, 3.0, 1.0, 1.0]])
    spans = torch.tensor([0, 0, 1, 2, 2])
    expected = torch.tensor([[2.0, 2.0, 5.0, 1.0, 1.0], [0.0, 0.0, 3.0, 1.0, 1.0]])
    torch.testing.assert_close(pool_spans(scores, spans), expected)
    # Span labels need not be contiguous or sorted (earlier survivors come before a new chunk).
    torch.testing.assert_close(pool_spans(scores[:1], torch.tensor([7, 7, 3, 9, 9])), expected[:1])
    per_head = torch.tensor([[[4.0, 0.0, 1.0]], [[0.0, 2.0, 2.0]]])
    torch.testing.assert_close(
        pool_spans(per_head, torch.tensor([[[0, 0, 1]], [[5, 6, 6]]])),
        torch.tensor([[[2.0, 2.0, 1.0]], [[0.0, 2.0, 2.0]]]),
    )


@pytest.mark.parametrize("selection", ["shared", "per_head"])
def test_single_pass_keeps_whole_sentences_but_the_last(tiny_model, tiny_tokenizer, selection):
    config = FinchConfig(target_tokens=20, chunk_size=None, selection=selection, granularity="sentence", progress=False)
    compressor = FinchCompressor(tiny_model, tiny_tokenizer, config)
    cc = compressor.compress(PASSAGES, QUESTION)
    sentence_of = build_prompt(tiny_tokenizer, [Passage(p) for p in PASSAGES], QUESTION).sentence_ids()
    sizes = torch.bincount(sentence_of)
    for positions in cc.kept_positions:
        for head in positions:
            kept = torch.bincount(sentence_of[head], minlength=len(sizes))
            partial = ((kept > 0) & (kept < sizes)).sum()
            assert cc.kept_tokens == 20 and partial <= 1


def test_sentence_granularity_changes_what_token_scores_keep(tiny_model, tiny_tokenizer):
    config = FinchConfig(target_tokens=20, chunk_size=16, smoothing=1, progress=False)
    compressor = FinchCompressor(tiny_model, tiny_tokenizer, config)
    by_token = compressor.compress(PASSAGES, QUESTION)
    by_sentence = compressor.compress(PASSAGES, QUESTION, config=config.replace(granularity="sentence"))
    assert by_sentence.kept_tokens == by_token.kept_tokens == 20
    assert not torch.equal(by_sentence.kept_positions[0], by_token.kept_positions[0])


def test_compress_ids_refuses_sentence_granularity(tiny_model, tiny_tokenizer):
    compressor = FinchCompressor(tiny_model, tiny_tokenizer, FinchConfig(target_tokens=4, granularity="sentence"))
    with pytest.raises(ValueError, match="compress\\(\\) with the text"):
        compressor.compress_ids([5, 6, 7, 8, 9, 10], [11, 12])
