"""`CompressedContext` inspection (kept_text, kept_fraction, per-passage fractions) and progress output."""

from __future__ import annotations

import pytest
import torch
from conftest import PASSAGES, QUESTION

from finch_rag import FinchCompressor, FinchConfig, Passage


@pytest.fixture(scope="module")
def compressor(tiny_models, tiny_tokenizer):
    return FinchCompressor(
        tiny_models("qwen3"), tiny_tokenizer, FinchConfig(target_tokens=30, chunk_size=40, progress=False)
    )


@pytest.fixture(scope="module", params=["per_head", "shared"])
def cc(request, compressor):
    return compressor.compress(PASSAGES, QUESTION, config=compressor.config.replace(selection=request.param))


def test_passage_token_spans(cc, tiny_tokenizer):
    assert len(cc.passage_token_starts) == len(PASSAGES)
    assert cc.passage_token_starts[0] == 0
    assert cc.passage_token_starts == sorted(cc.passage_token_starts)
    for index, passage in enumerate(PASSAGES):
        start, end = cc.passage_text_spans[index]
        assert cc.context_text[start:end] == passage
        token = cc.passage_token_starts[index]
        assert cc.token_offsets[token][0] == start, "a passage starts on a token boundary"
    assert tiny_tokenizer.decode(cc.context_ids) == cc.context_text


def test_kept_fraction_of_whole_passage_matches_passage_fractions(cc):
    """Both count the tokens overlapping the passage's own text: not the separator, not the title."""
    fractions = cc.passage_kept_fractions()
    assert len(fractions) == len(PASSAGES)
    for index, passage in enumerate(PASSAGES):
        assert cc.kept_fraction([(index, 0, len(passage))]) == pytest.approx(fractions[index], abs=1e-6), index


def test_kept_fractions_add_up(cc):
    """Token-weighted, the per-passage fractions give back B / n."""
    mask = cc.kept_mask()
    assert mask.shape == (cc.original_tokens,)
    assert ((mask >= 0) & (mask <= 1)).all()
    assert float(mask.sum()) == pytest.approx(cc.kept_tokens)
    per_layer = cc.kept_per_layer()
    assert per_layer.shape == (len(cc.kept_positions), cc.original_tokens)
    torch.testing.assert_close(per_layer.mean(dim=0), mask)
    whole = cc.kept_fraction([(i, 0, len(p)) for i, p in enumerate(PASSAGES)])
    assert 0 < whole <= 1


def test_kept_fraction_of_span(cc):
    passage = PASSAGES[1]
    start = passage.index("4817")
    fraction = cc.kept_fraction([(1, start, start + 4)])
    tokens = [
        t
        for t, (a, b) in enumerate(cc.token_offsets)
        if a < cc.passage_text_spans[1][0] + start + 4 and b > cc.passage_text_spans[1][0] + start
    ]
    assert fraction == pytest.approx(float(cc.kept_mask()[tokens].mean()))


def test_kept_text(cc):
    everything = cc.kept_text(threshold=1e-6, gap="|")
    mask = cc.kept_mask()
    assert everything
    for piece in everything.split("|"):
        assert piece in cc.context_text
    # Only tokens kept by every (layer, head) pair at threshold 1.
    strict = cc.kept_text(threshold=1.0)
    assert len(strict) <= len(cc.kept_text(threshold=0.5)) <= len(everything)
    if bool((mask > 0).all()):
        assert everything == cc.context_text
    region = cc.context_text[cc.passage_text_spans[0][1] : cc.passage_text_spans[2][0]]
    per_passage = cc.kept_text(threshold=1e-6, passage=1, gap="|")
    assert per_passage and all(piece in region for piece in per_passage.split("|"))


@pytest.mark.parametrize("threshold", [0.0, -0.5, 1.5])
def test_kept_text_bad_threshold(cc, threshold):
    with pytest.raises(ValueError, match=r"threshold.*\(0, 1\]"):
        cc.kept_text(threshold=threshold)


@pytest.mark.parametrize("bad", [-1, 4, 99])
def test_bad_passage_index_raises(cc, bad):
    with pytest.raises(IndexError, match="out of range"):
        cc.kept_fraction([(bad, 0, 3)])
    with pytest.raises(IndexError, match="out of range"):
        cc.kept_text(passage=bad)


def test_span_covering_no_token_raises(cc):
    with pytest.raises(ValueError, match="cover no context token"):
        cc.kept_fraction([(0, 5, 5)])


def test_token_level_context_has_no_passages(compressor):
    cc = compressor.compress_ids(list(range(10, 90)), [20, 21, 22])
    assert cc.passage_kept_fractions() == []
    with pytest.raises(ValueError, match="compress_ids"):
        cc.kept_fraction([(0, 0, 3)])
    with pytest.raises(ValueError, match="no passages"):
        cc.kept_text(passage=0)
    assert cc.kept_text(threshold=1e-6)  # decoded from token ids


def test_titled_passages_fractions(compressor):
    passages = [Passage(PASSAGES[0], title="Fox"), Passage(PASSAGES[1], title="Codes"), PASSAGES[2]]
    cc = compressor.compress(passages, QUESTION)
    fractions = cc.passage_kept_fractions()
    for index, passage in enumerate(passages):
        text = passage.text if isinstance(passage, Passage) else passage
        assert cc.kept_fraction([(index, 0, len(text))]) == pytest.approx(fractions[index], abs=1e-6), index


def test_stats_and_repr(cc):
    stats = cc.stats
    assert set(stats) >= {"compression_seconds", "peak_kv_entries", "num_chunks", "original_tokens", "kept_tokens"}
    assert stats["compression_seconds"] > 0
    assert stats["prefix_tokens"] == cc.prefix_ids.shape[0]
    assert "kept_tokens=30" in repr(cc)
    assert cc.cache_key.startswith("finch-") and cc.cache_key == cc.cache_key


def test_progress_off_prints_nothing(compressor, capsys):
    config = compressor.config.replace(progress=False)
    cc = compressor.compress(PASSAGES, QUESTION, config=config)
    assert cc.stats["num_chunks"] > 1
    compressor.generate(cc, max_new_tokens=3)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_progress_on_is_quiet_off_a_terminal(compressor, capsys):
    """The bar shows on a terminal only (tests/core/test_progress.py); captured stderr is not one."""
    cc = compressor.compress(PASSAGES, QUESTION, config=compressor.config.replace(progress=True))
    assert cc.stats["num_chunks"] > 1
    assert capsys.readouterr().err == ""


def test_cache_key_ignores_display_options(compressor):
    """``progress`` only changes what is printed; one compression used to get two keys."""
    quiet = compressor.compress(PASSAGES, QUESTION, config=compressor.config.replace(progress=False))
    shown = compressor.compress(PASSAGES, QUESTION, config=compressor.config.replace(progress=True))
    assert quiet.cache_key == shown.cache_key
    other = compressor.compress(PASSAGES, QUESTION, config=compressor.config.replace(target_tokens=20))
    assert other.cache_key != quiet.cache_key


def test_store_finds_only_a_compression_with_the_same_settings(compressor):
    """`ContextStore.find` ignored the config: asking for 12 entries silently reused a 30-entry compression."""
    from finch_rag.store import ContextStore

    store = ContextStore()
    config = compressor.config.replace(progress=False)
    cc = compressor.compress(PASSAGES, QUESTION, config=config)
    key = store.put(cc)
    assert store.find(key, f"  {QUESTION} ", len(PASSAGES), config=config.replace(progress=True)) is cc
    assert store.find(key, QUESTION, config=config.replace(target_tokens=12)) is None
    assert store.find(key, QUESTION, config=config.replace(chunk_size=None)) is None
    assert store.find(key, QUESTION, config=config.replace(system_prompt="Be brief.")) is None
    assert store.find(key, "Another question?", config=config) is None
    assert store.find(key, QUESTION, 3) is None
    assert store.find(key, QUESTION, history=[{"role": "user", "content": "Hi"}]) is None
    assert store.find("finch-" + "0" * 24, QUESTION) is None
