"""finch-rag's own calls into transformers raise no deprecation warnings, on the newest 5.x as on 5.0."""

from __future__ import annotations

import inspect
import re
import warnings

import pytest
import torch
from conftest import PASSAGES, QUESTION

from finch_rag import FinchCompressor, FinchConfig
from finch_rag.compression.cache import cache_kwargs

# Keywords finch-rag passes to a model's forward: a deprecation naming one of them is ours to fix.
OUR_KEYWORDS = re.compile(r"past_key_values|use_cache|logits_to_keep|position_ids|attention_mask|finch_capture")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_compress_and_generate_raise_no_deprecation_warning(tiny_models, tiny_tokenizer, arch):
    compressor = FinchCompressor(tiny_models(arch), tiny_tokenizer, FinchConfig(target_tokens=8, chunk_size=16))
    config = FinchConfig(target_tokens=8, chunk_size=16, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compressed = compressor.compress(PASSAGES, QUESTION, config=config)
        batch = compressor.compress_batch([PASSAGES, PASSAGES[:2]], [QUESTION, "Where is the fox?"], config=config)
        compressor.generate(compressed, max_new_tokens=3)
        list(compressor.stream(compressed, max_new_tokens=3))
        compressor.generate_batch(batch, max_new_tokens=3)
    ours = [
        f"{warning.filename}:{warning.lineno}: {warning.message}"
        for warning in caught
        if issubclass(warning.category, (DeprecationWarning, FutureWarning))
        and ("finch_rag" in warning.filename or OUR_KEYWORDS.search(str(warning.message)))
    ]
    assert not ours, "\n".join(ours)


def test_cache_keyword_follows_the_forward_signature(tiny_models):
    """``cache`` where the forward takes it (newer transformers), else ``past_key_values`` (5.0)."""

    class OldStyle(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=False):
            return input_ids

    class NewStyle(torch.nn.Module):
        def forward(self, input_ids, cache=None, use_cache=False):
            return input_ids

    assert list(cache_kwargs(OldStyle(), None)) == ["past_key_values"]  # type: ignore[arg-type]
    assert list(cache_kwargs(NewStyle(), None)) == ["cache"]  # type: ignore[arg-type]
    model = tiny_models("llama")
    expected = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    assert list(cache_kwargs(model, None)) == [expected]  # type: ignore[arg-type]
