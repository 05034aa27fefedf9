"""The models the reliability runs serve: a tiny random Llama (seconds per thousand requests) or a real one."""

from __future__ import annotations

from typing import Any

from finch_rag import FinchCompressor, FinchConfig, load_model


def tiny_model(seed: int = 0) -> tuple[Any, Any]:
    """A random 2-layer Llama (hidden size 64) over the embedded model's tokenizer: real text in, noise out.

    Reliability runs exercise the server, not the answers, so they want a model that is fast on 2 CPU cores and
    tokenizes any text as a real one does.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = load_model()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.name_or_path = "tiny-random-llama"
    return model, tokenizer


def compressor_for(name: str, seed: int = 0) -> FinchCompressor:
    """``tiny`` (`tiny_model`), ``embedded`` (the default SmolLM2-135M) or a path or hub id for `load_model`."""
    if name == "tiny":
        model, tokenizer = tiny_model(seed)
    else:
        model, tokenizer = load_model(None if name == "embedded" else name)
    return FinchCompressor(model, tokenizer, FinchConfig(progress=False))
