"""Answering from a compressed context: parity with `model.generate`, immutability, sampling, stop strings."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import PASSAGES, QUESTION

from finch_rag import FinchCompressor, FinchConfig, SamplingParams

NEW_TOKENS = 12


def full_prompt_ids(cc) -> torch.Tensor:
    return torch.cat((cc.prefix_ids, cc.context_ids, cc.question_ids, cc.suffix_ids))[None]


def reference_generate(model, tokenizer, cc, max_new_tokens: int) -> str:
    ids = full_prompt_ids(cc)
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.parametrize("chunk_size", [None, 16], ids=["single", "chunked"])
def test_no_compression_matches_model_generate(tiny_model, tiny_tokenizer, chunk_size):
    compressor = FinchCompressor(
        tiny_model, tiny_tokenizer, FinchConfig(compression_ratio=0.0, chunk_size=chunk_size, progress=False)
    )
    cc = compressor.compress(PASSAGES[:2], QUESTION)
    assert torch.equal(cc.kept_positions[0][0], torch.arange(cc.original_tokens))
    expected = reference_generate(tiny_model, tiny_tokenizer, cc, NEW_TOKENS)
    assert expected, "the reference must produce some text for the comparison to mean anything"
    assert compressor.generate(cc, max_new_tokens=NEW_TOKENS) == expected


def test_generation_does_not_mutate_context(tiny_model, tiny_tokenizer):
    compressor = FinchCompressor(
        tiny_model, tiny_tokenizer, FinchConfig(target_tokens=20, chunk_size=32, progress=False)
    )
    cc = compressor.compress(PASSAGES, QUESTION)
    keys = [k.clone() for k in cc.cache.keys]
    values = [v.clone() for v in cc.cache.values]
    positions = [p.clone() for p in cc.kept_positions]
    first = compressor.generate(cc, max_new_tokens=NEW_TOKENS)
    streamed = "".join(compressor.stream(cc, max_new_tokens=NEW_TOKENS))
    second = compressor.generate(cc, max_new_tokens=NEW_TOKENS)
    assert first == second == streamed
    for layer in range(len(keys)):
        assert torch.equal(cc.cache.keys[layer], keys[layer])
        assert torch.equal(cc.cache.values[layer], values[layer])
        assert torch.equal(cc.kept_positions[layer], positions[layer])
    assert cc.cache_length == int(cc.prefix_ids.shape[0]) + 20


def test_abandoned_stream_does_not_mutate_context(tiny_models, tiny_tokenizer):
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer, FinchConfig(target_tokens=20, progress=False))
    cc = compressor.compress(PASSAGES, QUESTION)
    expected = compressor.generate(cc, max_new_tokens=NEW_TOKENS)
    stream = compressor.stream(cc, max_new_tokens=NEW_TOKENS)
    next(stream, None)
    stream.close()
    assert compressor.generate(cc, max_new_tokens=NEW_TOKENS) == expected


def test_sampling_with_seed_is_repeatable(tiny_models, tiny_tokenizer):
    compressor = FinchCompressor(tiny_models("qwen2"), tiny_tokenizer, FinchConfig(target_tokens=20, progress=False))
    cc = compressor.compress(PASSAGES, QUESTION)
    runs = [compressor.generate(cc, max_new_tokens=NEW_TOKENS, temperature=1.5, seed=seed) for seed in (1, 1, 2, 3, 4)]
    assert runs[0] == runs[1]
    assert len(set(runs[1:])) > 1, "different seeds should give different samples on a random model"
    nucleus = [compressor.generate(cc, max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=0.5, seed=7) for _ in range(2)]
    assert nucleus[0] == nucleus[1]
    # A tiny nucleus is greedy.
    greedy = compressor.generate(cc, max_new_tokens=NEW_TOKENS)
    assert compressor.generate(cc, max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=1e-6, seed=3) == greedy


def _text_with_repeated_piece(compressor, cc) -> tuple[str, str]:
    text = compressor.generate(cc, max_new_tokens=40)
    assert len(text) >= 6, f"need some generated text, got {text!r}"
    for size in (2, 1):
        for start in range(len(text) // 3, len(text) - size):
            piece = text[start : start + size]
            if piece.strip():
                return text, piece
    pytest.skip(f"no usable stop string in {text!r}")


def test_stop_strings_cut_generate_and_stream(tiny_models, tiny_tokenizer):
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer, FinchConfig(target_tokens=20, progress=False))
    cc = compressor.compress(PASSAGES, QUESTION)
    text, stop = _text_with_repeated_piece(compressor, cc)
    expected = text[: text.find(stop)]
    assert compressor.generate(cc, max_new_tokens=40, stop=[stop]) == expected
    pieces = list(compressor.stream(cc, max_new_tokens=40, stop=[stop]))
    assert "".join(pieces) == expected
    assert all(stop not in piece for piece in pieces)
    # Several stop strings: the earliest one wins; one that never occurs changes nothing.
    assert compressor.generate(cc, max_new_tokens=40, stop=["\x01never", stop]) == expected
    assert compressor.generate(cc, max_new_tokens=40, stop=["\x01never"]) == text
    # Streaming without stop strings also joins to the plain output.
    assert "".join(compressor.stream(cc, max_new_tokens=40)) == text
    # One string is one stop string (as OpenAI's stop and SamplingParams read it), not a list of characters.
    assert compressor.generate(cc, max_new_tokens=40, stop=stop) == expected


@pytest.fixture(scope="module")
def byte_tokenizer():
    """Byte-level BPE with the full byte alphabet (no model needed): multi-byte characters span tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<eos>"],
        show_progress=False,
    )
    backend.train_from_iterator(["plain ascii text"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("naïve café 日本語 ok", [], "naïve café 日本語 ok"),
        # Core bug (generation.py:106-108): while the last character is incomplete ("\ufffd"), the held-back
        # partial stop ("日") is released, so "日" leaks before the stop "日本" is found.
        ("naïve café 日本語 ok", ["日本"], "naïve café "),
        ("abcSTOPdef", ["STOP"], "abc"),
        ("abcSTdef", ["STOP"], "abcSTdef"),  # a partial match is released once it cannot complete
        ("ab<eos>cd", [], "abcd"),
        ("xyz", ["y", "x"], ""),
    ],
)
def test_stream_text_utf8_and_stops(byte_tokenizer, text, stop, expected):
    from finch_rag.generation import stream_text

    ids = byte_tokenizer(text, add_special_tokens=False).input_ids
    pieces = list(stream_text(byte_tokenizer, iter(ids), stop))
    assert "".join(pieces) == expected
    assert all("\ufffd" not in piece for piece in pieces), pieces
    assert all(piece for piece in pieces)


def test_generate_refuses_foreign_context(tiny_models, tiny_tokenizer):
    llama = FinchCompressor(tiny_models("llama"), tiny_tokenizer, FinchConfig(target_tokens=20, progress=False))
    qwen = FinchCompressor(tiny_models("qwen2"), tiny_tokenizer, FinchConfig(target_tokens=20, progress=False))
    cc = llama.compress(PASSAGES, QUESTION)
    with pytest.raises(ValueError, match="same model"):
        qwen.generate(cc)
    with pytest.raises(TypeError, match="CompressedContext"):
        llama.generate("not a context")  # type: ignore[arg-type]
    for bad in ({"max_new_tokens": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"stop": [""]}):
        with pytest.raises(ValueError):
            llama.generate(cc, **bad)


def test_sampling_params_and_keyword_overrides_decode_alike(tiny_models, tiny_tokenizer):
    """A `SamplingParams`, its fields as keywords, or both (the keywords win) decode the same.

    An int is ``max_new_tokens``, the positional argument it used to be.
    """
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer, FinchConfig(target_tokens=20, progress=False))
    cc = compressor.compress(PASSAGES, QUESTION)
    sampled = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0, seed=5)
    expected = compressor.generate(cc, max_new_tokens=NEW_TOKENS, temperature=1.0, seed=5)
    assert compressor.generate(cc, sampled) == expected
    assert (
        compressor.generate(
            cc, SamplingParams(max_new_tokens=3, seed=1), max_new_tokens=NEW_TOKENS, temperature=1.0, seed=5
        )
        == expected
    )
    assert "".join(compressor.stream(cc, sampled)) == expected
    assert compressor.generate_batch([cc, cc], sampled) == [expected, expected]
    greedy = compressor.generate(cc, max_new_tokens=NEW_TOKENS)
    assert compressor.generate(cc, NEW_TOKENS) == compressor.generate(cc, sampled, temperature=0.0) == greedy
    prompt = full_prompt_ids(cc)[0].tolist()
    assert compressor.generate_ids(prompt, sampled) == compressor.generate_ids(
        prompt, NEW_TOKENS, temperature=1.0, seed=5
    )
    with pytest.raises(TypeError, match="max_new_tokens given twice"):
        compressor.generate(cc, 4, max_new_tokens=5)
    with pytest.raises(TypeError, match=r"Unknown sampling options \['max_tokens'\]"):
        compressor.generate(cc, max_tokens=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="sampling must be a finch_rag.SamplingParams"):
        compressor.generate(cc, {"max_new_tokens": 5})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_p must be in"):
        compressor.generate(cc, sampled, top_p=1.5)


def test_concurrent_compress_and_generate_match_sequential(tiny_models, tiny_tokenizer):
    """Concurrent compress + generate give the sequential results.

    Threads share one compressor, or two compressors share one model: the capture switches the shared model's
    attention implementation, so the per-model lock matters.
    """
    model = tiny_models("gemma3")
    config = FinchConfig(target_tokens=16, chunk_size=24, progress=False)
    compressor = FinchCompressor(model, tiny_tokenizer, config)
    other = FinchCompressor(model, tiny_tokenizer, config.replace(selection="per_head"))
    jobs = [
        (compressor, PASSAGES, QUESTION),
        (compressor, PASSAGES[::-1], "Where does the fox live?"),
        (other, PASSAGES, QUESTION),
    ]

    def run(finch, context, question):
        cc = finch.compress(context, question)
        return [p.clone() for p in cc.kept_positions], "".join(finch.stream(cc, max_new_tokens=NEW_TOKENS))

    sequential = [run(*job) for job in jobs]
    for _ in range(3):
        results: list = [None] * len(jobs)
        errors: list[BaseException] = []

        def worker(index: int, results: list = results, errors: list = errors) -> None:
            try:
                results[index] = run(*jobs[index])
            except BaseException as error:  # noqa: BLE001 - re-raised in the main thread
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(jobs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        for (positions, text), (expected_positions, expected_text) in zip(results, sequential, strict=True):
            assert text == expected_text
            for a, b in zip(positions, expected_positions, strict=True):
                assert torch.equal(a, b)


def test_token_loop_places_its_input_at_first_position(tiny_model, tiny_tokenizer):
    """``first_position`` numbers the fed tokens from there on; at the cache's length it changes nothing."""
    from finch_rag.generation import generate_token_ids

    compressor = FinchCompressor(tiny_model, tiny_tokenizer, FinchConfig(target_tokens=20, progress=False))
    cc = compressor.compress(PASSAGES, QUESTION)
    question = torch.cat((cc.question_ids, cc.suffix_ids))[None]
    params, stops = SamplingParams(max_new_tokens=4), set()

    def tokens(first_position):
        loop = generate_token_ids(
            tiny_model, cc.cache.as_cache(), question, params, stops, threading.RLock(), first_position=first_position
        )
        return list(loop)

    seen = []
    hook = tiny_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("position_ids")), with_kwargs=True
    )
    try:
        assert tokens(cc.cache_length) == tokens(None)
        seen.clear()
        tokens(500)
    finally:
        hook.remove()
    m = question.shape[1]
    assert torch.equal(seen[0], torch.arange(500, 500 + m)[None])
    assert [int(positions[0, 0]) for positions in seen[1:]] == list(range(500 + m, 500 + m + len(seen) - 1))
