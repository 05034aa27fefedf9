"""Per-request deadlines: compression stops at the next chunk, decoding at the next token, a batch loses one row.

The deterministic tests run the real loops with a `Deadline` on a clock that advances one "second" per forward
pass of the model (a forward pre-hook on the decoder), so "the deadline passes after the third pass" is exact.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import time
from collections.abc import Iterator

import pytest
import torch
from conftest import PASSAGES, QUESTION

from finch_rag import Deadline, DeadlineExceeded, FinchCompressor, FinchConfig, FinchRAG
from finch_rag.compression.cache import decoder_of

LONG = [" ".join(PASSAGES)] * 2  # several chunks at chunk_size=8
CONTEXTS = [PASSAGES, LONG, PASSAGES[1:], [PASSAGES[2], PASSAGES[0]]]
QUESTIONS = [QUESTION, "Where does the fox jump?", "What colour are bananas?", "Where is the code?"]


class PassClock:
    """A clock that reads the number of forward passes the decoder has run since it was made."""

    def __init__(self) -> None:
        self.passes = 0

    def __call__(self) -> float:
        return float(self.passes)

    @contextlib.contextmanager
    def counting(self, model: torch.nn.Module) -> Iterator[PassClock]:
        handle = decoder_of(model).register_forward_pre_hook(self._tick)
        try:
            yield self
        finally:
            handle.remove()

    def _tick(self, *args: object) -> None:
        self.passes += 1


@pytest.fixture
def compressor(tiny_models, tiny_tokenizer) -> FinchCompressor:
    config = FinchConfig(target_tokens=12, chunk_size=8, progress=False)
    return FinchCompressor(tiny_models("llama"), tiny_tokenizer, config)


def test_deadline_object() -> None:
    now = [10.0]
    deadline = Deadline(2.0, clock=lambda: now[0])
    assert (deadline.remaining(), deadline.expired, deadline.elapsed()) == (2.0, False, 0.0)
    deadline.check("anything")
    now[0] = 12.5
    assert (deadline.remaining(), deadline.expired, deadline.elapsed()) == (0.0, True, 2.5)
    with pytest.raises(DeadlineExceeded, match=r"ran 2.5 s, past its deadline of 2 s; it stopped in the test"):
        deadline.check("the test")
    error = deadline.error("the test")
    assert isinstance(error, TimeoutError) and (error.timeout, error.elapsed, error.stage) == (2.0, 2.5, "the test")
    assert "Raise the timeout" in str(error)
    copy = pickle.loads(pickle.dumps(error))  # errors cross processes under Ray Serve
    assert (type(copy), str(copy), copy.stage) == (DeadlineExceeded, str(error), "the test")
    assert Deadline.of(None) is None and Deadline.of(deadline) is deadline and Deadline.of(3).seconds == 3.0


@pytest.mark.parametrize("bad", [0, -1.5, math.nan, math.inf, "5", True, [1.0]])
def test_bad_deadlines_are_value_errors(compressor, bad) -> None:
    with pytest.raises(ValueError, match="number of seconds > 0"):
        Deadline(bad)
    with pytest.raises(ValueError, match="seconds > 0"):
        compressor.compress(PASSAGES, QUESTION, deadline=bad)
    compressed = compressor.compress(PASSAGES, QUESTION)
    with pytest.raises(ValueError, match="seconds > 0"):
        compressor.generate(compressed, deadline=bad)


def test_batch_deadlines_must_match_the_requests(compressor) -> None:
    with pytest.raises(ValueError, match="2 deadlines for 4 requests"):
        compressor.compress_batch(CONTEXTS, QUESTIONS, deadline=[1.0, 2.0])


def test_compression_stops_at_the_next_chunk(compressor) -> None:
    clock = PassClock()
    with clock.counting(compressor.model):
        # Pass 1 reads the prefix and chunk 1, passes 2 and 3 chunks 2 and 3: the check before chunk 4 stops it.
        with pytest.raises(DeadlineExceeded, match=r"ran 3 s, past its deadline of 2.5 s.*before chunk 4 of \d+"):
            compressor.compress(LONG, QUESTION, deadline=Deadline(2.5, clock=clock))
    assert clock.passes == 3
    assert len(compressor.store) == 0  # nothing kept for the failed request


def test_an_expired_deadline_stops_before_any_work(compressor) -> None:
    clock = PassClock()
    deadline = Deadline(1e-9)
    time.sleep(0.001)
    with clock.counting(compressor.model), pytest.raises(DeadlineExceeded, match="before the prefix"):
        compressor.compress(PASSAGES, QUESTION, deadline=deadline)
    assert clock.passes == 0


def test_decoding_stops_at_the_next_token(compressor) -> None:
    compressed = compressor.compress(PASSAGES, "Where does the fox jump?")
    free = compressor.generate(compressed, max_new_tokens=12)
    assert len(free) >= 8  # no end token before the deadline
    clock = PassClock()
    with clock.counting(compressor.model):
        pieces = []
        stream = compressor.stream(compressed, max_new_tokens=12, deadline=Deadline(3.5, clock=clock))
        with pytest.raises(DeadlineExceeded, match=r"before token 5 of at most 12"):
            for piece in stream:
                pieces.append(piece)
    assert clock.passes == 4  # the question (with token 1), then tokens 2, 3 and 4
    assert free.startswith("".join(pieces))
    with pytest.raises(DeadlineExceeded, match="before token 1 of at most 12"):
        compressor.generate(compressed, max_new_tokens=12, deadline=Deadline(1e-9))
    with pytest.raises(DeadlineExceeded, match="before token 1"):
        compressor.generate_ids([5, 6, 7], max_new_tokens=4, deadline=Deadline(1e-9))
    assert compressor.generate(compressed, max_new_tokens=12, deadline=60) == free


def test_an_expired_request_leaves_its_batch_and_the_others_are_unchanged(compressor) -> None:
    alone = [compressor.compress(context, question) for context, question in zip(CONTEXTS, QUESTIONS, strict=True)]
    clock = PassClock()
    with clock.counting(compressor.model):
        # One prefill of the prefix the four share, then batched steps: request 1 (the longest) stops before its
        # third chunk (3 passes done by then).
        deadlines = [None, Deadline(2.5, clock=clock), None, 60.0]
        results = compressor.compress_batch(CONTEXTS, QUESTIONS, deadline=deadlines, return_exceptions=True)
    failed = results[1]
    assert isinstance(failed, DeadlineExceeded) and "before chunk 3 of" in failed.stage
    for index in (0, 2, 3):
        together = results[index]
        assert isinstance(together, type(alone[index]))
        for got, expected in zip(together.kept_positions, alone[index].kept_positions, strict=True):
            assert torch.equal(got, expected)
        for got, expected in zip(together.cache.keys, alone[index].cache.keys, strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(DeadlineExceeded):
        compressor.compress_batch(CONTEXTS, QUESTIONS, deadline=[None, Deadline(1e-9), None, None])


def test_an_expired_answer_leaves_its_batch_and_the_others_are_unchanged(compressor) -> None:
    compressed = compressor.compress_batch(CONTEXTS, QUESTIONS)
    alone = [compressor.generate(item, max_new_tokens=10) for item in compressed]
    clock = PassClock()
    with clock.counting(compressor.model):
        # One batched question feed (token 1 of all four), then batched steps for tokens 2 to 7: request 2 stops
        # before token 8.
        deadlines = [None, None, Deadline(6.5, clock=clock), None]
        texts = compressor.generate_batch(compressed, max_new_tokens=10, deadline=deadlines, return_exceptions=True)
    assert isinstance(texts[2], DeadlineExceeded) and texts[2].stage == "decoding, before token 8 of at most 10"
    assert [text for index, text in enumerate(texts) if index != 2] == alone[:2] + alone[3:]
    with pytest.raises(DeadlineExceeded, match="before token 1"):
        compressor.generate_batch(compressed, max_new_tokens=10, deadline=1e-9)


def test_finch_rag_honours_the_deadline(tiny_models, tiny_tokenizer) -> None:
    compressor = FinchCompressor(tiny_models("llama"), tiny_tokenizer, FinchConfig(chunk_size=8, progress=False))
    rag = FinchRAG(compressor=compressor, config=FinchConfig(target_tokens=12, chunk_size=8, progress=False))
    clock = PassClock()
    with clock.counting(compressor.model), pytest.raises(DeadlineExceeded, match="compression, before chunk 4"):
        rag.answer_from(QUESTION, LONG, deadline=Deadline(2.5, clock=clock))
    with pytest.raises(ValueError, match="seconds > 0"):
        rag.answer_from(QUESTION, LONG, deadline=-1)
    answer = rag.answer_from(QUESTION, PASSAGES, deadline=60)
    assert answer.text == rag.answer_from(QUESTION, PASSAGES).text
