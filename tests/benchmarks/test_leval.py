"""The L-Eval harness's helpers: markup stripping, chunks, gold occurrences, truncation's cut, the split ablation."""

from __future__ import annotations

import torch
from conftest import QUESTION

from benchmarks.datasets import strip_markup, word_chunks
from benchmarks.leval import cut_to_budget, masked_fractions, occurrences, punctuation_sentences, weighting_of
from benchmarks.leval_lead import kept_under, lever_dedup
from finch_rag import RankWeighting
from finch_rag.prompts import Passage, PromptParts, build_prompt


def test_strip_markup_chunks_and_occurrences():
    page = '<H1> Cast </H1> <Table> <Tr> <Th_colspan="2"> Starring </Th> <Td> Dan Stevens </Td> </Tr> </Table>'
    assert strip_markup(page) == "Cast Starring Dan Stevens"
    assert word_chunks("a b c d e", 2) == ["a b", "c d", "e"]
    assert occurrences("Dan Stevens met dan stevens; DAN", "dan stevens") == [(0, 11), (16, 27)]
    assert occurrences("aaa", "aa") == [(0, 2), (1, 3)] and occurrences("abc", " ") == []


def test_truncation_keeps_the_first_or_last_budget_tokens(tiny_tokenizer):
    passages = [Passage("The secret code is 4817.", "A"), Passage("Bananas are yellow.", "B")]
    parts, kept, cut = cut_to_budget(tiny_tokenizer, passages, QUESTION, 10)
    assert int(kept.sum()) == 10 and bool(kept[:10].all())
    assert len(cut) == 1 and cut[0].title == "A" and parts.context_text.startswith(cut[0].title + "\n" + cut[0].text)
    _, last, tail = cut_to_budget(tiny_tokenizer, passages, QUESTION, 10, last=True)
    assert bool(last[-10:].all()) and int(last.sum()) == 10 and tail[-1].text.endswith("yellow.")
    # The code is past the first 10 tokens and inside the whole context.
    assert masked_fractions(parts, kept, "4817") == [0.0]
    everything = torch.ones(len(parts.context_ids), dtype=torch.bool)
    assert masked_fractions(parts, everything, "4817") == [1.0]


def test_punctuation_ablation_is_scoped(tiny_tokenizer):
    text = "<Table> <Tr> <Td> Emma </Td> </Tr> <Tr> <Td> Alan </Td> </Tr> </Table>"
    parts = build_prompt(tiny_tokenizer, [Passage(text)], QUESTION)
    library = PromptParts.sentence_ids
    with punctuation_sentences():
        assert int(parts.sentence_ids().max()) == 0  # no punctuation: one sentence, as before the change
    assert PromptParts.sentence_ids is library
    assert int(parts.sentence_ids().max()) == 2  # two rows and the closing tag


def test_fusion_flags_name_rank_weightings():
    assert weighting_of(["strip"]) is None
    assert weighting_of(["sent0.1"]) == RankWeighting(sentence_fusion_temperature=0.1)
    assert weighting_of(["fuse0.05", "sent0.05"]) == RankWeighting(
        fusion_temperature=0.05, sentence_fusion_temperature=0.05
    )
    assert weighting_of(["nopass"]) == RankWeighting(passage_fusion_temperature=None)
    assert weighting_of(["nosent", "pass0.1"]) == RankWeighting(
        sentence_fusion_temperature=None, passage_fusion_temperature=0.1
    )


def test_lead_levers_replay_selections():
    """Replayed levers: sentences compete whole; dedup silences a repeated sentence; embedder fusion reorders."""
    spans = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    item = {
        "shared": torch.tensor([0.9, 0.9, 0.8, 0.8, 0.1, 0.1, 0.5, 0.5]),
        "spans": spans,
        "passage_of": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]),
        "packed_scores": [0.2, 0.6],
        "packed_ranks": [2, 1],
        "sentence_texts": {0: "Lost in Space joins Netflix", 1: "Lost in Space joins Netflix", 2: "x", 3: "y"},
        "sentence_similarity": torch.tensor([0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 0.2, 0.2]),
    }
    assert kept_under("default", item, 4).tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert kept_under("dedup", item, 4).tolist() == [1, 1, 0, 0, 0, 0, 1, 1]
    assert lever_dedup(item["shared"], item)[2:4].tolist() == [0.0, 0.0]
    assert kept_under("sent0.1", item, 2).tolist() == [0, 0, 0, 0, 1, 1, 0, 0]


def test_last_rows_windows_vote_from_their_rows_only(tiny_models, tiny_tokenizer):
    """One extra pass scores every window; all rows give the recorded scores back, one row other scores."""
    from conftest import PASSAGES

    from benchmarks.leval_lead import last_rows_shared
    from benchmarks.single_pass import record_pass
    from finch_rag import FinchConfig

    model, config = tiny_models("llama"), FinchConfig(progress=False)
    recorded = record_pass(model, tiny_tokenizer, [Passage(text) for text in PASSAGES], QUESTION, config)
    rows = len(recorded.parts.question_ids)
    windows = last_rows_shared(model, recorded, [1, rows], config)
    recorded_shared = recorded.policy.shared(recorded.candidates)[0]
    assert windows[1].shape == windows[rows].shape == (recorded.context_length,)
    torch.testing.assert_close(windows[rows], recorded_shared, rtol=1e-3, atol=1e-6)
    assert not torch.allclose(windows[1], recorded_shared, rtol=1e-3, atol=1e-6)
    assert model.config._attn_implementation == "sdpa"
    item = {"shared": recorded_shared, "shared_last": windows, "spans": recorded.parts.sentence_ids()}
    assert kept_under("last1", item, 8).sum() == 8
