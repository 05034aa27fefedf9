"""Decoding from a compressed cache: greedy or sampled tokens, stop strings, incremental text."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, TypedDict, cast

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from .compression.cache import all_layer_tensors, cache_kwargs, stack_left_padded
from .deadline import Deadline, DeadlineExceeded

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is Python 3.11+


class SamplingOverrides(TypedDict, total=False):
    """`SamplingParams` fields given as keywords: ``compressor.generate(cc, max_new_tokens=32, stop=["."])``."""

    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: Sequence[str] | None


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature=0`` is greedy; ``seed`` makes sampling repeatable.

    Checked when built: a bad value is a ``ValueError`` that names it. ``stop`` may be given as any sequence of
    strings, one string, or ``None`` (no stop strings); it is kept as a tuple.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        stop: Any = self.stop
        stop = () if stop is None else (stop,) if isinstance(stop, str) else stop
        if any(not isinstance(item, str) or not item for item in stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}.")
        object.__setattr__(self, "stop", tuple(stop))

    @classmethod
    def of(cls, sampling: SamplingParams | int | None = None, **overrides: Unpack[SamplingOverrides]) -> SamplingParams:
        """``sampling`` (default ``SamplingParams()``) with keyword ``overrides`` applied, checked.

        The one conversion of a decoding call's arguments (`FinchCompressor.generate` and the like). An int is
        ``max_new_tokens``, so ``generate(cc, 32)`` reads as it always did; a name that is not a field is a
        ``TypeError`` naming the fields.
        """
        if isinstance(sampling, int):
            if "max_new_tokens" in overrides:
                raise TypeError(
                    f"max_new_tokens given twice: {sampling!r} and max_new_tokens={overrides['max_new_tokens']!r}."
                )
            return cls(max_new_tokens=sampling).merged(**overrides)
        if sampling is None:
            sampling = cls()
        elif not isinstance(sampling, SamplingParams):
            kind = type(sampling).__name__
            raise TypeError(f"sampling must be a finch_rag.SamplingParams (or an int: max_new_tokens), got {kind}.")
        return sampling.merged(**overrides)

    def merged(self, **overrides: Unpack[SamplingOverrides]) -> SamplingParams:
        """These parameters with ``overrides`` applied (checked again); no overrides return ``self``."""
        names = [item.name for item in fields(self)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise TypeError(f"Unknown sampling options {unknown}; the options are {names}.")
        changes: dict[str, Any] = dict(overrides)
        return replace(self, **changes) if changes else self


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, Sequence):
            ids.update(int(item) for item in value)
    return ids


def _pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    if params.temperature == 0:
        return int(logits.argmax())
    probabilities = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = probabilities.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > params.top_p  # keep the smallest nucleus >= top_p
        sorted_probs[outside] = 0
        probabilities = torch.zeros_like(probabilities).scatter(-1, order, sorted_probs)
    return int(torch.multinomial(probabilities, 1, generator=generator))


def generate_token_ids(
    model: PreTrainedModel,
    cache: DynamicCache,
    input_ids: torch.Tensor,
    params: SamplingParams,
    eos_ids: set[int],
    lock: threading.RLock,
    deadline: Deadline | None = None,
    first_position: int | None = None,
) -> Iterator[int]:
    """Yield new token ids after feeding ``input_ids`` ``[1, k]`` on top of ``cache`` (which grows).

    The lock is held for each forward pass only, never across a ``yield``, so a slow consumer does not
    block other requests on the same model. Past ``deadline``, the next step raises `DeadlineExceeded`.
    ``first_position``: the position of ``input_ids``' first token, for a cache whose keys do not sit at
    ``0..len - 1`` (``None``: the cache's length, as transformers counts it).
    """
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(params.seed)
    step_input = input_ids
    position = first_position
    for step in range(params.max_new_tokens):
        if deadline is not None:
            deadline.check(_token_stage(step, params))
        step_kwargs: dict[str, Any] = {**cache_kwargs(model, cache)}
        if position is not None:
            step_kwargs["position_ids"] = torch.arange(
                position, position + step_input.shape[1], device=input_ids.device
            ).unsqueeze(0)
            position += step_input.shape[1]
        with lock, torch.inference_mode():
            logits = model(input_ids=step_input, use_cache=True, logits_to_keep=1, **step_kwargs).logits
        token = _pick(logits[0, -1], params, generator)
        if token in eos_ids:
            return
        yield token
        if step + 1 < params.max_new_tokens:
            step_input = torch.tensor([[token]], device=input_ids.device)


def _token_stage(step: int, params: SamplingParams) -> str:
    return f"decoding, before token {step + 1} of at most {params.max_new_tokens}"


def stream_text(tokenizer: PreTrainedTokenizerBase, token_ids: Iterator[int], stop: Sequence[str]) -> Iterator[str]:
    """Turn token ids into text pieces, cutting at the first stop string.

    Text that could still become a stop string, or an incomplete UTF-8 character, is held back until the
    next token decides it.
    """
    generated: list[int] = []
    emitted = 0
    longest_stop = max((len(s) for s in stop), default=0)
    try:
        for token in token_ids:
            generated.append(token)
            text = _decode(tokenizer, generated)
            cut = _first_stop(text, stop, emitted - longest_stop)
            if cut is not None:
                if cut > emitted:
                    yield text[emitted:cut]
                return
            # An incomplete UTF-8 character decodes as U+FFFD: hold it back, and look for a partial stop
            # string only in the stable text before it.
            stable = text[:-1] if text.endswith("\ufffd") else text
            safe = len(stable) - _partial_stop_length(stable, stop)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        text = _decode(tokenizer, generated)
        if len(text) > emitted:
            yield text[emitted:]
    finally:
        close = getattr(token_ids, "close", None)
        if close is not None:
            close()


def _decode(tokenizer: PreTrainedTokenizerBase, token_ids: list[int]) -> str:
    # One sequence decodes to a str; `decode` is annotated for batches too.
    return cast(str, tokenizer.decode(token_ids, skip_special_tokens=True))


def _first_stop(text: str, stop: Sequence[str], search_from: int) -> int | None:
    hits = [index for s in stop if (index := text.find(s, max(search_from, 0))) >= 0]
    return min(hits) if hits else None


def _partial_stop_length(text: str, stop: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
    longest = 0
    for s in stop:
        for size in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:size]):
                longest = size
                break
    return longest


def generate_batch_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    caches: Sequence[DynamicCache],
    answer_inputs: Sequence[torch.Tensor],
    params: SamplingParams,
    eos_ids: set[int],
    lock: threading.RLock,
    pad_token_id: int = 0,
    deadlines: Sequence[Deadline | None] | None = None,
) -> list[str | DeadlineExceeded]:
    """Decode several answers at once; each equals what `generate_token_ids` + `stream_text` give alone.

    The questions are fed as one padded batch over the stacked caches (`_prefill_answer_inputs`); decoding
    then runs as one left-padded batch, one token per request per step, until every request has stopped. A
    request whose deadline (``deadlines``, one per request) passes stops there as a finished one does, and its
    result is its `DeadlineExceeded`; the others decode on unchanged.
    """
    device = answer_inputs[0].device
    rows = len(caches)
    generators = [
        torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
        for _ in range(rows)
    ]
    generated: list[list[int]] = [[] for _ in range(rows)]
    finished = [False] * rows
    failed: list[DeadlineExceeded | None] = [None] * rows
    limits = list(deadlines) if deadlines is not None else [None] * rows

    def past_deadline(row: int, step: int) -> bool:
        deadline = limits[row]
        if finished[row] or deadline is None or not deadline.expired:
            return False
        failed[row], finished[row] = deadline.error(_token_stage(step, params)), True
        return True

    def accept(row: int, logits: torch.Tensor) -> None:
        token = _pick(logits, params, generators[row])
        if token in eos_ids:
            finished[row] = True
            return
        generated[row].append(token)
        if params.stop:
            text = _decode(tokenizer, generated[row])
            finished[row] = _first_stop(text, params.stop, 0) is not None

    for row in range(rows):
        past_deadline(row, 0)
    if rows == 1:
        if not finished[0]:
            with lock, torch.inference_mode():
                logits = model(
                    input_ids=answer_inputs[0], use_cache=True, logits_to_keep=1, **cache_kwargs(model, caches[0])
                ).logits
            accept(0, logits[0, -1])
        batch, lengths = caches[0], [caches[0].get_seq_length()]
    elif all(finished):
        batch, lengths = caches[0], [cache.get_seq_length() for cache in caches]  # nothing left to decode
    else:
        with lock, torch.inference_mode():
            batch, lengths, last_logits = _prefill_answer_inputs(model, caches, answer_inputs, pad_token_id)
        for row in range(rows):
            if not finished[row]:
                accept(row, last_logits[row])
    longest = max(lengths)
    attention_mask = torch.zeros((rows, longest), dtype=torch.long, device=device)
    for row, length in enumerate(lengths):
        attention_mask[row, longest - length :] = 1
    next_positions = torch.tensor(lengths, device=device)

    for step in range(1, params.max_new_tokens):
        for row in range(rows):
            past_deadline(row, step)
        if all(finished):
            break
        step_tokens = [
            tokens[-1] if tokens and not done else pad_token_id
            for tokens, done in zip(generated, finished, strict=True)
        ]
        attention_mask = torch.cat((attention_mask, torch.ones((rows, 1), dtype=torch.long, device=device)), dim=1)
        with lock, torch.inference_mode():
            logits = model(
                input_ids=torch.tensor(step_tokens, device=device).unsqueeze(1),
                **cache_kwargs(model, batch),
                attention_mask=attention_mask,
                position_ids=next_positions.unsqueeze(1),
                use_cache=True,
                logits_to_keep=1,
            ).logits
        next_positions = next_positions + 1
        for row in range(rows):
            if not finished[row]:
                accept(row, logits[row, -1])

    texts: list[str | DeadlineExceeded] = []
    for tokens, error in zip(generated, failed, strict=True):
        if error is not None:
            texts.append(error)
            continue
        text = _decode(tokenizer, tokens)
        cut = _first_stop(text, params.stop, 0) if params.stop else None
        texts.append(text if cut is None else text[:cut])
    return texts


def _prefill_answer_inputs(
    model: PreTrainedModel,
    caches: Sequence[DynamicCache],
    answer_inputs: Sequence[torch.Tensor],
    pad_token_id: int,
) -> tuple[DynamicCache, list[int], torch.Tensor]:
    """Feed every request's question and answer cue on its cache in one forward pass.

    One pass reads the weights once for all requests, where a pass per request read them once each (a
    question is a few dozen tokens, so those passes were bound by the weight reads, not by arithmetic).
    The layout per request is the chunk loop's, ``[cache padding | cache | answer input | padding]``, with
    explicit positions, so each request's real tokens are contiguous and it sees what it would see alone.

    Returns the left-padded batch cache holding each request's real entries only (the trailing padding is
    dropped, so decoding appends right after them), each request's cache length, and ``[rows, vocab]``
    logits at each request's last real token.
    """
    device = answer_inputs[0].device
    rows = len(caches)
    cache_lengths = [cache.get_seq_length() for cache in caches]
    input_lengths = [answer_input.shape[1] for answer_input in answer_inputs]
    max_cache, step_length = max(cache_lengths), max(input_lengths)
    input_ids = torch.full((rows, step_length), pad_token_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((rows, max_cache + step_length), dtype=torch.long, device=device)
    positions = torch.zeros((rows, step_length), dtype=torch.long, device=device)
    for row, (answer_input, cache_length, length) in enumerate(
        zip(answer_inputs, cache_lengths, input_lengths, strict=True)
    ):
        input_ids[row, :length] = answer_input[0]
        attention_mask[row, max_cache - cache_length : max_cache + length] = 1
        positions[row] = cache_length + torch.arange(step_length, device=device).clamp(max=length - 1)
    batch = stack_left_padded(caches, max_cache)
    last_columns = torch.tensor([length - 1 for length in input_lengths], device=device)
    kept_columns = torch.unique(last_columns)  # sorted; a tensor logits_to_keep keeps these columns in this order
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=kept_columns,
        **cache_kwargs(model, batch),
    ).logits
    last_logits = logits[torch.arange(rows, device=device), torch.searchsorted(kept_columns, last_columns)]
    lengths = [cached + length for cached, length in zip(cache_lengths, input_lengths, strict=True)]
    if len(set(input_lengths)) == 1:
        return batch, lengths, last_logits  # no trailing padding: already left-padded as decoding needs
    keys, values = all_layer_tensors(batch)
    real = [
        (
            [layer[row : row + 1, :, max_cache - cached : max_cache + length] for layer in keys],
            [layer[row : row + 1, :, max_cache - cached : max_cache + length] for layer in values],
        )
        for row, (cached, length) in enumerate(zip(cache_lengths, input_lengths, strict=True))
    ]
    return stack_left_padded(real, max(lengths)), lengths, last_logits
