"""`finch_rag.frontends`: the layer every integration and the server call, on a tiny random model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import PASSAGES, QUESTION
from pydantic import BaseModel, ValidationError

from finch_rag import FinchCompressor, FinchConfig, PassageAllocation, RankWeighting, SamplingParams
from finch_rag.config import merged_config
from finch_rag.frontends import (
    CompressorHandle,
    FinchOptions,
    Prepared,
    SamplingOptions,
    plain_prompt_ids,
    split_prompt,
    split_templated,
    template_pieces,
)
from finch_rag.frontends.sources import keys_in, strip_keys
from finch_rag.prompts import chat_prompt_ids
from finch_rag.retrieval import as_passage
from finch_rag.store import CACHE_KEY

CONFIG = FinchConfig(target_tokens=16, chunk_size=32, progress=False)


@pytest.fixture(scope="module")
def compressor(tiny_models: Any, tiny_tokenizer: Any) -> FinchCompressor:
    return FinchCompressor(tiny_models("llama"), tiny_tokenizer, CONFIG)


@pytest.fixture
def handle(compressor: FinchCompressor) -> CompressorHandle:
    compressor.store.clear()
    return CompressorHandle(compressor)


class Options(FinchOptions, SamplingOptions, BaseModel):
    """What an integration class looks like: its framework's base class last."""


# ------------------------------------------------------------------------------------------ options
def test_explicit_chunk_size_none_is_a_single_pass() -> None:
    """An explicit ``chunk_size=None`` used to be dropped, so every integration read in chunks of 512."""
    assert merged_config(CONFIG, {"chunk_size": None}).chunk_size is None
    assert merged_config(CONFIG, {"target_tokens": None}) == CONFIG  # an explicit None budget means "not set"
    assert Options(chunk_size=None).config.chunk_size is None
    assert Options().config.chunk_size == FinchConfig().chunk_size and Options(chunk_size=64).config.chunk_size == 64
    with pytest.raises(ValueError, match="not both"):
        merged_config(CONFIG, {"target_tokens": 3, "compression_ratio": 0.5})


def test_chunk_size_auto_is_accepted_by_the_front_ends() -> None:
    from finch_rag.cli import _config, build_parser
    from finch_rag.server.schemas import CompressionOptions

    assert Options().chunk_size == "auto" and FinchConfig().chunk_size == "auto"
    assert Options(chunk_size="auto").config.chunk_size == "auto"
    assert merged_config(CONFIG, {"chunk_size": "auto"}).chunk_size == "auto"
    assert CompressionOptions(chunk_size="auto").explicit() == {"chunk_size": "auto"}
    assert _config(build_parser().parse_args(["ask", "-f", "x", "--chunk-size", "auto", "q"])).chunk_size == "auto"
    assert _config(build_parser().parse_args(["ask", "-f", "x", "--chunk-size", "none", "q"])).chunk_size is None
    for bad in ("lots", 0):
        with pytest.raises(ValueError, match="auto"):
            Options(chunk_size=bad)


def test_answer_cache_is_a_front_end_option_and_reaches_the_compression(tiny_models: Any, tiny_tokenizer: Any) -> None:
    """``answer_cache`` is declared with the budget: the integrations, the CLI, the server's flags and requests."""
    from finch_rag.cli import _config, build_parser
    from finch_rag.server import ServerSettings
    from finch_rag.server.command import settings_from_args
    from finch_rag.server.schemas import CompressionOptions

    assert Options().config.answer_cache == FinchConfig().answer_cache == "auto"
    assert Options(answer_cache="compressed").config.answer_cache == "compressed"
    assert CompressionOptions(answer_cache="reread").explicit() == {"answer_cache": "reread"}
    cli = build_parser().parse_args(["ask", "-f", "x", "--answer-cache", "compressed", "q"])
    assert _config(cli).answer_cache == "compressed"
    served = settings_from_args(build_parser().parse_args(["serve", "--answer-cache", "reread"]))
    assert served.config.answer_cache == "reread"
    assert ServerSettings.from_options({"answer_cache": "compressed"}).config.answer_cache == "compressed"
    with pytest.raises(ValidationError):
        Options(answer_cache="text")

    # A compressor's own choice stands unless the option is given; the option decides what the answer reads.
    config = FinchConfig(target_tokens=20, chunk_size=16, answer_cache="compressed", progress=False)
    gemma = FinchCompressor(tiny_models("gemma3"), tiny_tokenizer, config)
    passages = [as_passage(text) for text in PASSAGES]
    for given, expected in ((None, "compressed"), ("reread", "reread"), ("auto", "reread")):
        options = Options(compressor=gemma) if given is None else Options(compressor=gemma, answer_cache=given)
        handle = CompressorHandle(gemma)
        compressed = handle.compress_passages(passages, QUESTION, options.config, PassageAllocation("global"))
        assert compressed.stats["answer_cache"] == expected, given
    with pytest.raises(ValueError, match='Use selection="shared"'):
        Options(
            compressor=FinchCompressor(tiny_models("gemma3"), tiny_tokenizer, config.replace(selection="per_head")),
            answer_cache="reread",
        )


def test_options_are_declared_once_and_validated(compressor: FinchCompressor) -> None:
    options = Options(compressor=compressor, target_tokens=8, allocation="global", weighting=RankWeighting(tau=2.0))
    assert options._compressor is compressor and options.compressor is compressor
    assert options.config == CONFIG.replace(target_tokens=8)
    assert options.passage_allocation == PassageAllocation("global", RankWeighting(tau=2.0))
    assert Options().passage_allocation == PassageAllocation() and Options()._compressor is None  # nothing loaded
    for bad in ({"allocation": "local"}, {"weighting": 2.0}, {"chunk_size": 0}, {"temperature": -1}, {"k": 1}):
        with pytest.raises(ValidationError):
            Options(**bad)
    with pytest.raises(TypeError, match="FinchCompressor"):
        Options(compressor="smollm")
    with pytest.raises(ValueError, match="not both"):
        Options(compressor=compressor, model_name="x")


def test_a_dtype_reaches_the_model_loaded_by_name(compressor: FinchCompressor) -> None:
    assert Options(model_name="not-loaded", dtype="bfloat16")._handle.dtype == "bfloat16"  # nothing loaded yet
    with pytest.raises(ValidationError, match="bfloat16"):
        Options(dtype="float64")
    with pytest.raises(ValueError, match="keeps its model's dtype"):
        Options(compressor=compressor, dtype="bfloat16")


@pytest.mark.slow
def test_the_embedded_model_loads_in_the_dtype_asked() -> None:
    assert Options(dtype="bfloat16").compressor.model.dtype == torch.bfloat16


def test_an_automatic_budget_is_an_option_that_reaches_the_compressor(handle: CompressorHandle) -> None:
    options = Options(compressor=handle.get(), target_tokens="auto", attention_mass=0.5, max_target_tokens=40)
    config = options.config
    assert (config.target_tokens, config.attention_mass, config.max_target_tokens) == ("auto", 0.5, 40)
    assert config.compression_ratio is None and config.chunk_size == CONFIG.chunk_size
    # Against a base that is already automatic, the two options alone are enough; a fixed budget switches back.
    assert merged_config(config, {"attention_mass": 0.8}).attention_mass == 0.8
    assert merged_config(config, {"target_tokens": 8}).target_tokens == 8
    passages = [as_passage(text) for text in PASSAGES]
    auto = handle.compress_passages(passages, QUESTION, config, PassageAllocation("global"))
    fixed = handle.compress_passages(passages, QUESTION, CONFIG.replace(target_tokens=40), PassageAllocation("global"))
    assert auto.config.target_tokens == "auto" and 0 < auto.kept_tokens < fixed.kept_tokens == 40
    less = handle.compress_passages(passages, QUESTION, config.replace(attention_mass=0.2), PassageAllocation("global"))
    assert less.kept_tokens < auto.kept_tokens


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"target_tokens": "lots"}, 'or "auto"'),
        ({"target_tokens": 0}, 'or "auto"'),
        ({"target_tokens": 2.5}, 'or "auto"'),
        ({"target_tokens": "auto", "attention_mass": 1.5}, "attention_mass"),
        ({"target_tokens": "auto", "attention_mass": 0}, "attention_mass"),
        ({"target_tokens": "auto", "max_target_tokens": 0}, "max_target_tokens"),
    ],
)
def test_bad_automatic_budget_options_are_refused(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Options(**bad)


def test_automatic_budget_options_with_a_fixed_budget_are_refused(compressor: FinchCompressor) -> None:
    """They would be silently ignored; the error says to set target_tokens="auto"."""
    with pytest.raises(ValueError, match='attention_mass only applies with target_tokens="auto".*target_tokens=8'):
        Options(target_tokens=8, attention_mass=0.5)
    with pytest.raises(ValueError, match="max_target_tokens only applies.*compression_ratio=0.75"):
        Options(max_target_tokens=64)  # the default budget is a ratio
    with pytest.raises(ValueError, match="attention_mass and max_target_tokens only apply.*target_tokens=16"):
        Options(compressor=compressor, attention_mass=0.5, max_target_tokens=64)  # the compressor's budget is fixed
    with pytest.raises(ValueError, match="attention_mass"):
        merged_config(CONFIG, {"target_tokens": 8, "attention_mass": 0.5})


def test_sampling_options_per_call() -> None:
    options = Options(max_new_tokens=5, seed=3)
    assert options.to_sampling_params({}, ["\n"]) == SamplingParams(
        max_new_tokens=5, temperature=0.0, top_p=1.0, seed=3, stop=("\n",)
    )
    assert options.to_sampling_params({"max_new_tokens": 2, "stop": ["x"]}).stop == ("x",)
    with pytest.raises(TypeError, match=r"Unknown options \['max_tokens'\] for Options"):
        options.to_sampling_params({"max_tokens": 2})


# ------------------------------------------------------------------------------------------ passages and keys
def test_passage_and_key_helpers() -> None:
    passage = as_passage("text", {"source": "a.txt", "n": 1})
    assert (passage.text, passage.title, dict(passage.metadata)) == ("text", "a.txt", {"source": "a.txt", "n": 1})
    key = "finch-" + "ab" * 12
    text = f"First.\n{CACHE_KEY}: {key}\n\nSecond [{key}]"
    assert keys_in(text) == [key, key] and strip_keys(text) == "First.\n\nSecond []"
    with pytest.raises(TypeError, match="text must be a string"):
        as_passage(None)  # type: ignore[arg-type]


def test_prompt_splitting_rules() -> None:
    assert split_prompt("Context:\nA\nQuestion: B?\nAnswer:") == ("A", "B?")
    template = "Facts:\n{context_str}\nQ: {query_str}\nA:"
    assert split_templated("Facts:\nx\nQ: y\nQ: z?\nA:", template, "{context_str}", "{query_str}") == ("x\nQ: y", "z?")
    assert split_templated("Other", template, "{context_str}", "{query_str}") is None
    with pytest.raises(ValueError, match="qa_template must contain"):
        template_pieces("Answer {query_str}", "{context_str}", "{query_str}", "qa_template")


# ------------------------------------------------------------------------------------------ the handle
def test_compress_for_query_uses_the_allocation_and_keeps_the_given_order(handle: CompressorHandle) -> None:
    passages = [as_passage(text) for text in PASSAGES]
    allocation = PassageAllocation(weighting=RankWeighting(tau=1.0, floor=0.0))
    compressed, outputs = handle.compress_for_query(passages, QUESTION, CONFIG, 0.5, allocation)
    plan = allocation.plan(passages, CONFIG, question=QUESTION)
    assert plan.token_prior is not None  # untitled pieces: sentence fusion applies, as in FinchRAG
    (direct,) = handle.get().compress_plans([plan], [QUESTION])
    assert compressed is not None and compressed.cache_key in handle.get().store
    assert [p.tolist() for p in compressed.kept_positions] == [p.tolist() for p in direct.kept_positions]
    assert [stats for _, stats in outputs] == plan.restore(direct.passage_stats())
    assert compressed.passages == list(reversed(passages))  # best last


def test_passages_are_reused_by_key_only_for_the_same_question_config_and_history(handle: CompressorHandle) -> None:
    allocation = PassageAllocation()
    compressed = handle.compress_passages([as_passage(t) for t in PASSAGES], QUESTION, CONFIG, allocation)
    tagged = [as_passage(text, {CACHE_KEY: compressed.cache_key}) for text in PASSAGES]
    reused = handle.passages_context(tagged, QUESTION, CONFIG.replace(progress=True), allocation)
    assert reused.reused and reused.compressed is compressed
    assert reused.info[CACHE_KEY] == compressed.cache_key and reused.info["finch_reused"]
    for other in (
        handle.passages_context(tagged, QUESTION, CONFIG.replace(target_tokens=8), allocation),
        handle.passages_context(tagged[:3], QUESTION, CONFIG, allocation),
        handle.passages_context(tagged, "Where does the fox live?", CONFIG, allocation),
        handle.passages_context(tagged, QUESTION, CONFIG, allocation, [{"role": "user", "content": "Hi"}]),
    ):
        assert not other.reused and other.compressed is not compressed


def test_a_prompt_naming_a_key_is_answered_from_the_store_only_with_the_same_budget(handle: CompressorHandle) -> None:
    """`FinchLLM(target_tokens=8)` used to answer from a 16-entry compression named in its prompt."""
    allocation = PassageAllocation()
    compressed = handle.compress_passages([as_passage(t) for t in PASSAGES], QUESTION, CONFIG, allocation)
    context = "\n\n".join(f"[{compressed.cache_key}] {text}" for text in PASSAGES)
    same = handle.prompt_context(context, QUESTION, CONFIG, allocation, count_keys=True)
    assert same.reused and same.compressed is compressed
    smaller = handle.prompt_context(context, QUESTION, CONFIG.replace(target_tokens=8), allocation, count_keys=False)
    assert not smaller.reused and smaller.compressed is not None and smaller.compressed.kept_tokens == 8
    assert compressed.cache_key not in smaller.compressed.context_text  # keys are removed before compressing
    split = handle.prompt_context(context.split("\n\n", 1)[1], QUESTION, CONFIG, allocation, count_keys=True)
    assert not split.reused  # three of four nodes: a synthesizer split them over several prompts
    with pytest.raises(ValueError, match="context is empty"):
        handle.prompt_context(f" {compressed.cache_key} ", "Other?", CONFIG, allocation, count_keys=False)


def test_handle_loads_lazily_and_checks_its_arguments() -> None:
    handle = CompressorHandle(model_name="not-loaded")
    assert handle.loaded is None and handle.config({"target_tokens": 5}).target_tokens == 5
    with pytest.raises(TypeError, match="FinchCompressor"):
        CompressorHandle(compressor=object())


# ------------------------------------------------------------------------------------------ plain generation
def test_generate_ids_is_plain_greedy_decoding(compressor: FinchCompressor, tiny_tokenizer: Any) -> None:
    ids = chat_prompt_ids(tiny_tokenizer, [{"role": "user", "content": QUESTION}])
    assert tiny_tokenizer.decode(ids) == f"<bos><|user|>\n{QUESTION}<|end|>\n<|assistant|>\n"
    text = compressor.generate_ids(ids, max_new_tokens=6)
    reference = compressor.model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=2,
        pad_token_id=0,
    )
    assert text == tiny_tokenizer.decode(reference[0, len(ids) :], skip_special_tokens=True)
    assert "".join(compressor.stream_ids(ids, max_new_tokens=6)) == text
    # The same answer the old fake compression (B = n - 1, nothing evicted) gave, without compressing.
    fake = compressor.compress_ids(
        ids[:-1], ids[-1:], config=CONFIG.replace(target_tokens=len(ids) - 1, chunk_size=None)
    )
    assert compressor.generate(fake, max_new_tokens=6) == text
    if len(text) > 2:
        assert compressor.generate_ids(ids, max_new_tokens=6, stop=[text[1:3]]) == text[:1]
    sampled = [compressor.generate_ids(ids, 6, temperature=1.0, seed=7) for _ in range(2)]
    assert sampled[0] == sampled[1]
    with pytest.raises(ValueError, match="window of 512"):
        compressor.generate_ids(ids, max_new_tokens=512)
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        compressor.generate_ids([], max_new_tokens=2)


def test_prepared_answers(compressor: FinchCompressor, tiny_tokenizer: Any) -> None:
    ids = plain_prompt_ids(tiny_tokenizer, QUESTION)
    plain = Prepared(prompt_ids=ids)
    sampling = Options(max_new_tokens=4).to_sampling_params({})
    assert plain.text(compressor, sampling) == compressor.generate_ids(ids, 4)
    assert plain.info == {
        CACHE_KEY: None,
        "finch_reused": False,
        "original_tokens": len(ids),
        "kept_tokens": len(ids),
        "compression_factor": 1.0,
        "num_chunks": 0,
    }
    fixed = Prepared(answer="No context. Sorry.")
    assert fixed.text(compressor, sampling.merged(stop=["."])) == "No context"
    assert fixed.info == {CACHE_KEY: None, "finch_reused": False}
    assert plain_prompt_ids(tiny_tokenizer, "<|user|>x", formatted=True)[0] == 5  # the caller's markup is markup
    assert 5 not in plain_prompt_ids(tiny_tokenizer, "<|user|>x")[2:]  # ... and the user's text is text


def test_in_thread_yields_as_produced_and_closes_early() -> None:
    import asyncio
    import threading

    from finch_rag.frontends import in_thread

    threads: list[str] = []
    closed: list[bool] = []

    def produce() -> Any:
        try:
            for item in range(5):
                threads.append(threading.current_thread().name)
                yield item
        finally:
            closed.append(True)

    async def first_two() -> list[int]:
        items = []
        async for item in in_thread(produce()):
            items.append(item)
            if len(items) == 2:
                break
        return items

    assert asyncio.run(first_two()) == [0, 1]
    assert threading.main_thread().name not in threads  # produced in worker threads, not on the event loop
    assert closed == [True]  # stopping early closed the producer (decoding stops)


def test_in_thread_closes_the_producer_when_cancelled_mid_step() -> None:
    """A consumer cancelled while a token is being decoded still stops the decoding, once that step returns."""
    import asyncio
    import threading
    import time

    from finch_rag.frontends import in_thread

    produced: list[int] = []
    closed = threading.Event()
    in_step = threading.Event()

    def produce() -> Any:
        try:
            for item in range(50):
                in_step.set()
                time.sleep(0.05)  # one slow decoding step
                produced.append(item)
                yield item
        finally:
            closed.set()

    async def consume() -> None:
        async for _ in in_thread(produce()):
            pass

    async def cancel_mid_step() -> None:
        task = asyncio.create_task(consume())
        await asyncio.to_thread(in_step.wait, 5)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(cancel_mid_step())
    assert closed.wait(5), "the producer was never closed: decoding would run to the end"
    assert len(produced) < 5
