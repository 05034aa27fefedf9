"""Notebook views of a compressed context."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from conftest import PASSAGES, QUESTION  # noqa: E402

from finch_rag import FinchCompressor, FinchConfig  # noqa: E402
from finch_rag.visualize import kept_tokens_html, plot_kept_heatmap  # noqa: E402


@pytest.fixture
def compressed(tiny_models, tiny_tokenizer):
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer, FinchConfig(target_tokens=10, progress=False))
    return compressor.compress(PASSAGES + ["<b>markup</b> & ampersands"], QUESTION)


def test_html_shades_kept_tokens_and_escapes(compressed):
    html = compressed._repr_html_()
    assert "CompressedContext(" in html
    assert "<b>" not in html and "&lt;" in html and "&amp;" in html  # context text is escaped, not rendered
    kept = compressed.kept_mask()
    assert html.count("background: rgba(255, 170, 0") == int((kept > 0).sum())
    assert html.count("<span title=") == compressed.original_tokens


def test_html_truncates_long_contexts(compressed):
    short = kept_tokens_html(compressed, max_tokens=5)
    assert short.count("<span title=") == 5
    assert f"{compressed.original_tokens - 5} more tokens" in short


def test_heatmap_has_one_row_per_layer(compressed):
    ax = plot_kept_heatmap(compressed)
    image = ax.get_images()[0].get_array()
    assert image.shape == (len(compressed.kept_positions), compressed.original_tokens)
    assert float(image.max()) <= 1.0
