"""The caller's model is left exactly as it was, and architectures the core cannot handle fail clearly."""

from __future__ import annotations

import pytest
import torch
from conftest import PASSAGES, QUESTION, build_tiny_model
from transformers import GPT2Config, GPT2LMHeadModel

from finch_rag import FinchCompressor, FinchConfig


def _snapshot(model) -> dict:
    return {
        "attn": model.config._attn_implementation,
        "state": {name: tensor.clone() for name, tensor in model.state_dict().items()},
        "vocab": model.get_input_embeddings().weight.shape[0],
        "config_vocab": model.config.vocab_size,
        "training": model.training,
        "config": model.config.to_dict(),
    }


def _assert_untouched(model, before: dict) -> None:
    assert model.config._attn_implementation == before["attn"]
    assert model.get_input_embeddings().weight.shape[0] == before["vocab"]
    assert model.config.vocab_size == before["config_vocab"]
    assert model.training == before["training"]
    assert model.config.to_dict() == before["config"]
    state = model.state_dict()
    assert state.keys() == before["state"].keys()
    for name, tensor in before["state"].items():
        assert torch.equal(state[name], tensor), name
    for name, module in model.named_modules():
        assert not module._forward_hooks, f"forward hook left on {name or 'model'}"
        assert not module._forward_pre_hooks, f"forward pre-hook left on {name or 'model'}"
        assert not module._backward_hooks, f"backward hook left on {name or 'model'}"
    assert not torch.nn.modules.module._global_forward_hooks
    assert not torch.nn.modules.module._global_forward_pre_hooks


@pytest.mark.parametrize("selection", ["per_head", "shared"])
def test_model_left_unmodified(arch, tiny_tokenizer, selection):
    model = build_tiny_model(arch)  # a private copy: this test inspects it closely
    before = _snapshot(model)
    compressor = FinchCompressor(
        model, tiny_tokenizer, FinchConfig(target_tokens=16, chunk_size=32, selection=selection, progress=False)
    )
    cc = compressor.compress(PASSAGES, QUESTION)
    compressor.generate(cc, max_new_tokens=4)
    list(compressor.stream(cc, max_new_tokens=4))
    _assert_untouched(model, before)
    assert len(tiny_tokenizer) <= model.config.vocab_size


class _Boom(RuntimeError):
    pass


def test_model_restored_after_error_inside_compression(tiny_tokenizer):
    model = build_tiny_model("llama")
    before = _snapshot(model)
    compressor = FinchCompressor(model, tiny_tokenizer, FinchConfig(target_tokens=16, chunk_size=32, progress=False))
    seen: list[str] = []

    def explode(module, args, kwargs):
        seen.append(model.config._attn_implementation)
        if model.config._attn_implementation != before["attn"]:  # only inside the capturing block
            raise _Boom("injected failure")

    handle = model.model.layers[1].register_forward_pre_hook(explode, with_kwargs=True)
    try:
        with pytest.raises(_Boom):
            compressor.compress(PASSAGES, QUESTION)
    finally:
        handle.remove()
    assert any(impl != before["attn"] for impl in seen), "the failure must happen while the capture is active"
    _assert_untouched(model, before)
    # The per-model lock was released and the compressor still works.
    cc = compressor.compress(PASSAGES, QUESTION)
    assert cc.kept_tokens == 16
    _assert_untouched(model, before)


def test_gpt2_without_rope_is_refused(tiny_tokenizer):
    config = GPT2Config(vocab_size=128, n_positions=128, n_embd=32, n_layer=2, n_head=4)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    with pytest.raises(NotImplementedError, match=r"(?i)rotary") as error:
        FinchCompressor(model, tiny_tokenizer, FinchConfig(target_tokens=8, progress=False))
    assert "GPT2" in str(error.value)
    assert "RoPE" in str(error.value) or "Llama" in str(error.value)


def test_eager_attention_is_refused(tiny_tokenizer):
    model = build_tiny_model("llama", attn_implementation="eager")
    with pytest.raises(NotImplementedError, match="sdpa") as error:
        FinchCompressor(model, tiny_tokenizer, FinchConfig(target_tokens=8, progress=False))
    assert "eager" in str(error.value)
    assert model.config._attn_implementation == "eager"
