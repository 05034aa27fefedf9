"""Shared fixtures: tiny random models, a tiny offline tokenizer, and the real embedded model.

The real model (session-scoped) is for ``@pytest.mark.slow`` tests only.

The tiny models follow transformers' own model tests: a config with a vocabulary of 128, hidden size 32,
2 layers, 4 query heads over 2 KV heads, float32, SDPA attention, eval mode, fixed seed. Nothing here
touches the network.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import string  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import PreTrainedModel, PreTrainedTokenizerFast  # noqa: E402

# Tiny models run far faster on one thread: with more, OpenMP synchronisation dominates their micro-kernels
# (20 ms vs 0.9 s per compression on a busy 2-core machine).
torch.set_num_threads(1)

VOCAB = 128
SEED = 0
ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma3")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

# A small text whose words make up the test contexts; every character used in tests must occur here.
CORPUS = (
    "The quick brown fox jumps over the lazy dog. The capital of France is Paris. The secret code is 4817. "
    "Bananas are yellow fruits that grow in bunches. Rivers flow to the sea, and the sea is salty. "
    "What is the secret code? Where does the fox live? Who wrote the letter to the king of Spain?"
)

# Passages and questions built from the corpus, used across the test files.
PASSAGES = [
    "The quick brown fox jumps over the lazy dog near the river.",
    "The capital of France is Paris. The secret code is 4817.",
    "Bananas are yellow fruits that grow in bunches by the sea.",
    "Rivers flow to the sea, and the sea is salty and wide.",
]
QUESTION = "What is the secret code?"


def _rope(theta: float = 10000.0, **extra: Any) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": theta, **extra}


def tiny_config(arch: str, **overrides: Any) -> Any:
    """A tiny config for ``arch`` (see `ARCHITECTURES`); ``overrides`` are passed to the config."""
    from transformers import (
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    common: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        # Larger than transformers' 0.02 so that attention is peaked and top-k choices are not near-ties.
        "initializer_range": 0.2,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "tie_word_embeddings": False,
    }
    if arch == "llama":
        config = LlamaConfig(**{**common, "head_dim": 8, "rope_parameters": _rope(), **overrides})
    elif arch == "qwen2":
        config = Qwen2Config(**{**common, "rope_parameters": _rope(), **overrides})
    elif arch == "qwen3":
        config = Qwen3Config(**{**common, "head_dim": 16, "rope_parameters": _rope(), **overrides})
    elif arch == "mistral":
        config = MistralConfig(
            **{**common, "head_dim": 8, "sliding_window": None, "rope_parameters": _rope(), **overrides}
        )
    elif arch == "phi3":
        # Partial rotary: only the first half of each head's dimensions is rotated.
        phi = {**common, "original_max_position_embeddings": common["max_position_embeddings"]}
        if "max_position_embeddings" in overrides:
            phi["original_max_position_embeddings"] = overrides["max_position_embeddings"]
        config = Phi3Config(**{**phi, "rope_parameters": _rope(partial_rotary_factor=0.5), **overrides})
    elif arch == "gemma3":
        # Layer 0 is sliding (window 16, local theta), layer 1 global (theta 1e6): both the window and the
        # per-layer-type RoPE matter.
        config = Gemma3TextConfig(
            **{
                **common,
                "head_dim": 16,
                "query_pre_attn_scalar": 16,
                "sliding_window": 16,
                "layer_types": ["sliding_attention", "full_attention"],
                "rope_parameters": {
                    "sliding_attention": _rope(10000.0),
                    "full_attention": _rope(1000000.0),
                },
                **overrides,
            }
        )
    else:
        raise ValueError(f"unknown architecture {arch!r}")
    return config


def build_tiny_model(
    arch: str, attn_implementation: str = "sdpa", seed: int = SEED, **overrides: Any
) -> PreTrainedModel:
    """A tiny random causal LM for ``arch``: float32, eval mode, deterministic weights for a given seed."""
    from transformers import (
        Gemma3ForCausalLM,
        LlamaForCausalLM,
        MistralForCausalLM,
        Phi3ForCausalLM,
        Qwen2ForCausalLM,
        Qwen3ForCausalLM,
    )

    classes = {
        "llama": LlamaForCausalLM,
        "qwen2": Qwen2ForCausalLM,
        "qwen3": Qwen3ForCausalLM,
        "mistral": MistralForCausalLM,
        "phi3": Phi3ForCausalLM,
        "gemma3": Gemma3ForCausalLM,
    }
    config = tiny_config(arch, **overrides)
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = classes[arch](config).to(torch.float32).eval()
    model.name_or_path = f"tiny-{arch}"
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.bos_token_id = BOS_ID
    return model


def eager_twin(model: PreTrainedModel) -> PreTrainedModel:
    """An eager-attention copy of ``model`` with the same weights (test-only reference for attention maps)."""
    twin = type(model)(_clone_config(model.config, "eager")).to(torch.float32).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def _clone_config(config: Any, attn_implementation: str) -> Any:
    clone = type(config).from_dict(config.to_dict())
    clone._attn_implementation = attn_implementation
    return clone


def build_tiny_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained in memory on `CORPUS` (about 120 tokens), with offsets and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from finch_rag.prompts import INSTRUCTION

    texts = [INSTRUCTION, "Context:\n\nQuestion: Answer:", CORPUS, *PASSAGES, QUESTION]
    texts += [string.ascii_letters, string.digits, string.punctuation, " \n\t"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=SPECIAL_TOKENS, show_progress=False)
    backend.train_from_iterator(texts * 3, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.name_or_path = "tiny-bpe"
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    assert len(tokenizer) <= VOCAB
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    return tokenizer


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_tokenizer_no_template() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer(chat_template=False)


@pytest.fixture(scope="session")
def tiny_models() -> Callable[[str], PreTrainedModel]:
    """``tiny_models(arch)``: one shared tiny model per architecture (tests must not modify it)."""
    cache: dict[str, PreTrainedModel] = {}

    def get(arch: str) -> PreTrainedModel:
        if arch not in cache:
            cache[arch] = build_tiny_model(arch)
        return cache[arch]

    return get


@pytest.fixture(params=ARCHITECTURES)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tiny_model(arch: str, tiny_models: Callable[[str], PreTrainedModel]) -> PreTrainedModel:
    return tiny_models(arch)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny random Llama and its tokenizer saved to disk, so ``--model PATH`` loads it like any local model."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model("llama").save_pretrained(directory)
    build_tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def real_model() -> tuple[PreTrainedModel, Any]:
    """The embedded default model (SmolLM2-135M-Instruct), loaded once. Use from ``@pytest.mark.slow`` tests."""
    from finch_rag import load_model

    return load_model()
