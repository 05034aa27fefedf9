"""The chunk loop: read the context chunk by chunk with the question appended, keep what a policy picks.

Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167), Alg. 1. Differences
from the paper's code, on purpose: the question's own KV entries are dropped after every step (they are
fed again when answering), attention weights come from a capturing twin of SDPA instead of eager
attention, the protected prefix is never scored, and what survives is decided by a selection policy
(`selection`, named by `FinchConfig.selection`), which may share one selection across layers. This module
only runs the loop: it gathers each step's candidates, asks the policy, and packs the survivors.

Several requests run in lockstep as one padded batch (`compress_batch`): at each step every active
request contributes its next chunk and its question, laid out per request as
``[cache padding | cache | chunk | question | padding]`` (the cached entries are left-padded to the
longest cache, the step's tokens right-padded to the longest chunk plus question), with explicit
positions, so each request's real tokens are contiguous and it sees exactly what it would see alone.
One request is the same code with no padding. A policy that needs no attention (a benchmark control)
gets no question: its step is ``[cache padding | cache | chunk | padding]``.

A request may carry a `Deadline`: it is checked before the request's prefill and before each of its chunks. A
request whose deadline has passed leaves the batch there, as a request with fewer chunks leaves it when it is
done: its partial cache is dropped, its result is a `DeadlineExceeded`, and the others go on to the end, each
still what it would be alone (the batch only loses a row; every row's layout is its own).

Memory bound: during a step the cache holds ``|P| + B_{t-1} + |c_t| + m <= |P| + B + S + m`` real
entries per request and activations cover ``|c_t| + m`` tokens (``|P| + |c_1| + m`` in the first step of a
request compressed alone, which reads its prefix in the same pass), whatever the context length.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from transformers import DynamicCache, PreTrainedModel

from ..config import SEPARATE_SELECTIONS, FinchConfig
from ..deadline import Deadline, DeadlineExceeded
from ..progress import progress_bar
from .attention import CAPTURE_KWARG, QuestionAttentionCapture, capturing_attention, fill_cache, stopping_layer
from .cache import all_layer_tensors, cache_kwargs, cache_over, decoder_of, layer_tensors, stack_left_padded
from .chunking import chunk_bounds, has_sliding_layers, resolve_chunk_size
from .prefix_cache import UNBOUNDED_BYTES, PrefixCache
from .registry import selection_policy
from .rotation import KeyRotation
from .selection import CandidateScores, SelectionPolicy


@dataclass
class CompressedCache:
    """What the loop leaves behind: the packed cache and where each kept entry came from.

    ``keys[l]`` / ``values[l]`` are ``[1, num_kv_heads, |P| + B, head_dim]``: the prefix, then the kept
    context entries in original order at contiguous positions. ``kept_positions[l]`` is
    ``[num_kv_heads, B]``, 0-based positions in the context; ``kept_scores[l]`` the matching scores of the
    last step (``None`` when nothing was compressed).

    ``seconds`` is this request's share of the batch's wall time: its own prefill (prefix, or a context
    that needed no compression), plus, for each step it took part in, that step's time divided by the
    number of requests in the step, plus an equal share of the time spent outside prefills and steps. Over
    a batch the shares add up to the batch's wall time; alone, it is the request's wall time.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    prefix_length: int
    kept_positions: list[torch.Tensor]
    kept_scores: list[torch.Tensor] | None
    peak_kv_entries: int
    num_chunks: int
    seconds: float
    reread: bool = False  # the kept entries are the model's read of the kept tokens (``answer_cache="reread"``)
    # Context tokens the first pass read over the prefix alone: entries kept from there are the ones a plain read
    # of the context computes, so `read_kept_tokens` leaves them as they are.
    first_chunk_end: int = 0

    def as_cache(self) -> DynamicCache:
        """A fresh `DynamicCache` over the same tensors.

        Appending to it never touches ``self``: `DynamicLayer.update` concatenates into new tensors.
        """
        return cache_over(self.keys, self.values)


@dataclass
class CompressionRequest:
    """One context to compress: ``[1, |P|]``, ``[1, n]`` and ``[1, m]`` token ids on the model's device.

    ``passage_starts`` are token offsets where passages begin (chunks end on them when they can);
    ``token_weights`` is an optional ``[n]`` non-negative prior multiplied onto the scores before
    selection (`FinchRAG` folds the retriever's ranking in with it); ``span_ids`` an optional ``[n]`` long
    label of each token's sentence, which ``granularity="sentence"`` needs; ``deadline`` an optional
    `Deadline` past which the request stops at its next chunk (its result is then a `DeadlineExceeded`).
    """

    prefix_ids: torch.Tensor
    context_ids: torch.Tensor
    question_ids: torch.Tensor
    passage_starts: Sequence[int] = ()
    token_weights: torch.Tensor | None = None
    span_ids: torch.Tensor | None = None
    deadline: Deadline | None = None


@dataclass
class _RequestState:
    """Per-request progress through the loop."""

    request: CompressionRequest
    index: int
    budget: int
    bounds: list[tuple[int, int]]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    next_chunk: int = 0
    kept_count: int = 0
    kept_positions: list[torch.Tensor] = field(default_factory=list)  # per layer [1, kvh, kept]
    kept_scores: list[torch.Tensor] = field(default_factory=list)
    peak: int = 0
    seconds: float = 0.0  # time attributed so far (see CompressedCache.seconds)
    reread: bool = False
    error: DeadlineExceeded | None = None
    # The prefix is read with the first chunk, in the same pass (`_start` says when).
    prefix_pending: bool = False

    @property
    def prefix_length(self) -> int:
        return self.request.prefix_ids.shape[1]

    @property
    def cache_length(self) -> int:
        return self.prefix_length + self.kept_count

    @property
    def done(self) -> bool:
        return self.error is not None or self.next_chunk >= len(self.bounds)

    def past_deadline(self, stage: str) -> bool:
        """Whether the request's deadline has passed; if so it fails here and its partial cache is dropped."""
        deadline = self.request.deadline
        if deadline is None or not deadline.expired:
            return False
        self.error = deadline.error(stage)
        self.keys, self.values, self.kept_positions, self.kept_scores = [], [], [], []
        return True


def compress_batch(
    model: PreTrainedModel,
    requests: Sequence[CompressionRequest],
    config: FinchConfig,
    rotation: KeyRotation | None = None,
    pad_token_id: int = 0,
    policy: SelectionPolicy | None = None,
    prefix_cache: PrefixCache | None = None,
) -> list[CompressedCache | DeadlineExceeded]:
    """Run FINCH over several contexts in padded batches; each result equals compressing it alone.

    A request whose `CompressionRequest.deadline` passes gets its `DeadlineExceeded` as its result instead.

    Parameters
    ----------
    model : PreTrainedModel
        A causal LM with rotary embeddings, attention through transformers' `AttentionInterface`.
    requests : sequence of CompressionRequest
        The contexts, each with its prefix (always kept) and question.
    config : FinchConfig
        Budget, chunk size and selection, shared by all requests.
    rotation : KeyRotation, optional
        The model's RoPE frequencies (read from the model when omitted).
    pad_token_id : int
        Token id fed at padded slots; they are masked, so any valid id works.
    policy : SelectionPolicy, optional
        What to keep at each step; default `selection_policy` of ``config`` (``config.selection``).
    prefix_cache : PrefixCache, optional
        Prefix KV entries kept across calls (a server's); default: shared within this batch only.
    """
    started = time.perf_counter()
    decoder = decoder_of(model)
    text_config = model.config.get_text_config(decoder=True)
    num_layers = text_config.num_hidden_layers
    layer_types = getattr(text_config, "layer_types", None)
    rotation = rotation or KeyRotation.from_model(model)
    if policy is None:
        policy = selection_policy(config, num_layers, layer_types)
    if config.granularity == "sentence" and any(request.span_ids is None for request in requests):
        raise ValueError(
            'granularity="sentence" needs each context token\'s sentence (CompressionRequest.span_ids). '
            'FinchCompressor.compress finds them in the text; with raw token ids use granularity="token".'
        )

    # The whole compression, prefills included, runs under the capturing twin: a flash-attention model
    # then compresses on SDPA throughout (see `attention.capturing_attention`).
    capture = capturing_attention(model) if policy.needs_attention else contextlib.nullcontext()
    # Passes fill the cache only; under the twin they stop after the last layer's cache update.
    last_layer = stopping_layer(decoder, num_layers) if policy.needs_attention else None
    with capture:
        window = int(getattr(text_config, "max_position_embeddings", 0) or 0)
        # Unbounded within one batch: its requests usually share one prefix, prefilled once for all of them.
        prefixes = prefix_cache if prefix_cache is not None else PrefixCache(max_bytes=UNBOUNDED_BYTES)
        states = [
            _start(decoder, request, index, config, window, prefixes, last_layer, layer_types, alone=len(requests) == 1)
            for index, request in enumerate(requests)
        ]
        total_steps = sum(len(state.bounds) - state.next_chunk for state in states)
        progress = progress_bar(
            total=total_steps, desc="finch: compressing", unit="chunk", enabled=config.progress and total_steps > 1
        )
        with progress:
            while active := [state for state in states if not state.done]:
                active = [state for state in active if not state.past_deadline(_chunk_stage(state))]
                if not active:
                    break
                step_started = time.perf_counter()
                _step(decoder, active, config, policy, num_layers, rotation, pad_token_id, last_layer, prefix_cache)
                share = (time.perf_counter() - step_started) / len(active)
                for state in active:
                    state.seconds += share
                progress.update(len(active))
        for state in states:
            if resolve_answer_cache(config, layer_types, len(state.bounds)) == "reread":
                _reread(decoder, state, last_layer)

    overhead = max(time.perf_counter() - started - sum(state.seconds for state in states), 0.0)
    return [state.error or _result(state, state.seconds + overhead / len(states)) for state in states]


def _reread(decoder: torch.nn.Module, state: _RequestState, last_layer: int | None) -> None:
    """`read_kept_tokens` for a request the loop compressed (not one kept whole, failed or past its deadline)."""
    if state.error is not None or not state.kept_positions:
        return
    if state.past_deadline("compression, before re-reading the kept tokens"):
        return
    started = time.perf_counter()
    slice_length = max(end - start for start, end in state.bounds)
    read = read_kept_tokens(decoder, _result(state, 0.0), state.request.context_ids, slice_length, last_layer)
    state.keys, state.values, state.reread = read.keys, read.values, True
    state.seconds += time.perf_counter() - started


def resolve_answer_cache(config: FinchConfig, layer_types: Sequence[str] | None, num_chunks: int) -> str:
    """``"reread"`` or ``"compressed"``: `FinchConfig.answer_cache` for a context read in ``num_chunks`` chunks.

    ``"auto"`` re-reads a context read in more than one chunk on a model with sliding-window layers, when one set of
    positions is kept for every layer and head. On Gemma 3 270M the compressed cache made the answer misread
    needles it had kept whole, and the same kept tokens read again answered them (``docs/results/reread.md``): the
    entries a chunk computes over the earlier survivors drift from the model's own, and the answer copies from the
    sliding layers' (a full read's entries there alone answered right). A one-pass read computed its entries over
    the context itself, and on models without such layers the compressed cache, which also carries what the
    evicted tokens contributed, is kept.

    >>> resolve_answer_cache(FinchConfig(), ["sliding_attention", "full_attention"], 8)
    'reread'
    >>> resolve_answer_cache(FinchConfig(), None, 8), resolve_answer_cache(FinchConfig(answer_cache="reread"), None, 1)
    ('compressed', 'reread')
    """
    if config.answer_cache != "auto":
        return config.answer_cache
    one_set = config.selection not in SEPARATE_SELECTIONS
    return "reread" if one_set and has_sliding_layers(layer_types) and num_chunks > 1 else "compressed"


def read_kept_tokens(
    decoder: torch.nn.Module,
    cache: CompressedCache,
    context_ids: torch.Tensor,
    slice_length: int,
    last_layer: int | None = None,
) -> CompressedCache:
    """``cache`` with the kept entries of later chunks replaced by the model's own read (``answer_cache="reread"``).

    The prefix entries stay, and so do those kept from the first chunk (``cache.first_chunk_end``): that chunk was
    read over the prefix alone, as a plain read of the context reads it. The kept tokens after it
    (``context_ids`` ``[1, n]`` at ``cache.kept_positions``) go in after them in cache order, at the packed positions
    the compressed entries had, ``slice_length`` tokens per pass (a chunk's length keeps memory within the loop's
    bound). A context read in one pass has nothing to read again. ``last_layer`` as in `attention.fill_cache`.
    """
    kept = cache.kept_positions[0][0]
    if any(not torch.equal(positions, kept.expand_as(positions)) for positions in cache.kept_positions):
        raise ValueError(
            'answer_cache="reread" needs the same kept positions in every layer and head; this selection kept '
            'different ones. Use selection="shared", or answer_cache="compressed".'
        )
    unchanged = cache.prefix_length + int((kept < cache.first_chunk_end).sum())
    read = cache_over(
        [keys[:, :, :unchanged] for keys in cache.keys], [values[:, :, :unchanged] for values in cache.values]
    )
    later_ids = context_ids[:, kept[kept >= cache.first_chunk_end]]
    for start in range(0, later_ids.shape[1], slice_length):
        step = later_ids[:, start : start + slice_length]
        fill_cache(decoder, last_layer, input_ids=step, use_cache=True, **cache_kwargs(decoder, read))
    keys, values = all_layer_tensors(read)
    return replace(cache, keys=keys, values=values, reread=True)


def _chunk_stage(state: _RequestState) -> str:
    return f"compression, before chunk {state.next_chunk + 1} of {len(state.bounds)}"


def _start(
    decoder: torch.nn.Module,
    request: CompressionRequest,
    index: int,
    config: FinchConfig,
    window: int,
    prefixes: PrefixCache,
    last_layer: int | None,
    layer_types: Sequence[str] | None = None,
    alone: bool = False,
) -> _RequestState:
    """A request's state after its prefix prefill; a context within budget is prefilled whole and is done.

    A prefix ``prefixes`` holds (the chat template's header and system prompt, usually shared by a batch's
    requests and a server's) is not prefilled again: its KV tensors are shared (`prefix_cache`). A request
    compressed ``alone`` whose prefix is not held reads it with its first chunk instead, in one pass over no
    cache: the same entries, without a pass of its own, and with plain causal attention (a pass after cached
    entries needs an explicit mask, which SDPA computes in full on a CPU).
    """
    started = time.perf_counter()
    context_length = request.context_ids.shape[1]
    budget = config.budget(context_length)
    question_length, prefix_length = request.question_ids.shape[1], request.prefix_ids.shape[1]
    chunk_size = resolve_chunk_size(
        config.chunk_size, context_length, question_length, prefix_length, window, budget, layer_types
    )
    state = _RequestState(
        request=request,
        index=index,
        budget=budget,
        bounds=chunk_bounds(context_length, chunk_size, request.passage_starts),
        keys=[],
        values=[],
    )
    if state.past_deadline("compression, before the prefix"):
        return state
    prefix = PrefixCache.key(request.prefix_ids, next(decoder.parameters()).dtype)
    shared = prefixes.get(prefix)
    if shared is not None:
        state.keys, state.values, state.peak = list(shared[0]), list(shared[1]), state.prefix_length
    elif alone and context_length > state.budget:
        state.prefix_pending = True
    else:
        _prefill(decoder, state, request.prefix_ids, last_layer)
        prefixes.put(prefix, state.keys, state.values)
    if context_length <= state.budget:
        # Nothing to drop: prefill the context as is, chunk by chunk to bound activations.
        for start, end in state.bounds:
            if state.past_deadline(_chunk_stage(state)):
                return state
            _prefill(decoder, state, request.context_ids[:, start:end], last_layer)
            state.next_chunk += 1
        state.kept_count = context_length
    state.seconds = time.perf_counter() - started
    return state


def _prefill(decoder: torch.nn.Module, state: _RequestState, input_ids: torch.Tensor, last_layer: int | None) -> None:
    """Append ``input_ids`` to the request's cache unchanged (prefix, or an uncompressed context)."""
    if input_ids.shape[1] == 0:
        return
    cache = cache_over(state.keys, state.values)
    fill_cache(decoder, last_layer, input_ids=input_ids, use_cache=True, **cache_kwargs(decoder, cache))
    state.keys, state.values = all_layer_tensors(cache)
    state.peak = max(state.peak, cache.get_seq_length())


def _step(
    decoder: torch.nn.Module,
    active: list[_RequestState],
    config: FinchConfig,
    policy: SelectionPolicy,
    num_layers: int,
    rotation: KeyRotation,
    pad_token_id: int,
    last_layer: int | None,
    prefix_cache: PrefixCache | None = None,
) -> None:
    """Read the next chunk of every active request in one forward pass, then keep what the policy picks.

    A request whose prefix is pending (`_start`) is alone in its step: its chunk is read after its prefix, in the
    same pass, and the prefix's entries then count as its cache (and go into the caller's ``prefix_cache``).
    """
    device = active[0].request.context_ids.device
    chunks = [state.request.context_ids[0, slice(*state.bounds[state.next_chunk])] for state in active]
    pending = [state for state in active if state.prefix_pending]
    if pending and len(active) > 1:
        raise RuntimeError("A request whose prefix is pending must be alone in its step.")  # `_start`'s ``alone``
    # A policy that needs no attention (a control) needs no question either.
    questions = [state.request.question_ids[0, : None if policy.needs_attention else 0] for state in active]
    cache_lengths = [state.cache_length for state in active]
    max_cache = max(cache_lengths)
    pending_prefix = pending[0].request.prefix_ids[0] if pending else chunks[0][:0]
    # Layout per request: [cache padding | cache | chunk | question | padding]. Real tokens stay
    # contiguous, so distances, and with them sliding windows, are what the request sees alone.
    step_length = max(chunk.shape[0] + question.shape[0] for chunk, question in zip(chunks, questions, strict=True))
    max_question = max(question.shape[0] for question in questions)
    input_ids = torch.full((len(active), step_length), pad_token_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((len(active), max_cache + step_length), dtype=torch.long, device=device)
    positions = torch.zeros((len(active), step_length), dtype=torch.long, device=device)
    question_rows = torch.zeros((len(active), max_question), dtype=torch.long, device=device)
    question_mask = torch.zeros((len(active), max_question), dtype=torch.bool, device=device)
    for row, (chunk, question, cache_length) in enumerate(zip(chunks, questions, cache_lengths, strict=True)):
        length = chunk.shape[0] + question.shape[0]
        input_ids[row, :length] = torch.cat((chunk, question))
        attention_mask[row, max_cache - cache_length : max_cache + length] = 1
        positions[row] = cache_length + torch.arange(step_length, device=device).clamp(max=length - 1)
        m = question.shape[0]
        question_rows[row, max_question - m :] = torch.arange(length - m, length, device=device)
        question_rows[row, : max_question - m] = length - m  # padded rows point at a real one and do not vote
        question_mask[row, max_question - m :] = True
    padded = attention_mask.eq(0).any().item()
    if pending:
        input_ids = torch.cat((pending_prefix, input_ids[0])).unsqueeze(0)  # [prefix | chunk | question]

    cache = stack_left_padded([(state.keys, state.values) for state in active], max_cache - pending_prefix.shape[0])
    forward_kwargs: dict[str, object] = {}
    capture = None
    if policy.needs_attention:
        capture = QuestionAttentionCapture(
            question_length=max_question,
            first_candidate=0,
            normalize_scores=config.normalize_scores,
            question_mask=question_mask if padded else None,
            row_positions=positions.gather(1, question_rows) if padded else None,
            question_rows=question_rows if padded else None,
            last_column=max_cache + step_length,
        )
        forward_kwargs[CAPTURE_KWARG] = capture
    if padded:
        forward_kwargs |= {"attention_mask": attention_mask, "position_ids": positions}
    forward_kwargs |= cache_kwargs(decoder, cache)
    fill_cache(decoder, last_layer, input_ids=input_ids, use_cache=True, **forward_kwargs)
    if capture is not None and len(capture.scores) != num_layers:
        raise NotImplementedError(
            f"{type(decoder).__name__}: question attention was captured for {len(capture.scores)} of {num_layers} "
            "layers. Its attention layers must call transformers' AttentionInterface and forward keyword arguments."
        )

    if pending:
        pending[0].prefix_pending = False
        if prefix_cache is not None:  # a batch's own cache serves only its other requests, and there are none
            _hold_prefix(prefix_cache, pending[0].request.prefix_ids, cache, next(decoder.parameters()).dtype)
    for row, (state, chunk, question) in enumerate(zip(active, chunks, questions, strict=True)):
        layer_scores = [] if capture is None else [capture.scores[layer][row : row + 1] for layer in range(num_layers)]
        _keep_best(
            state, row, chunk.shape[0], question.shape[0], max_cache, cache, layer_scores, config, policy, rotation
        )


def _hold_prefix(prefix_cache: PrefixCache, prefix_ids: torch.Tensor, cache: DynamicCache, dtype: torch.dtype) -> None:
    """Put the first ``|P|`` entries of a step's ``cache`` (a prefix read with its chunk) into ``prefix_cache``."""
    prefix_length = prefix_ids.shape[1]
    keys, values = all_layer_tensors(cache)
    # Copies: a view would keep the whole step's tensors alive in the prefix cache.
    prefix_keys = [layer_keys[:, :, :prefix_length].clone() for layer_keys in keys]
    prefix_values = [layer_values[:, :, :prefix_length].clone() for layer_values in values]
    prefix_cache.put(PrefixCache.key(prefix_ids, dtype), prefix_keys, prefix_values)


def _keep_best(
    state: _RequestState,
    row: int,
    chunk_length: int,
    question_length: int,
    max_cache: int,
    cache: DynamicCache,
    step_scores: list[torch.Tensor],
    config: FinchConfig,
    policy: SelectionPolicy,
    rotation: KeyRotation,
) -> None:
    """Ask the policy which of one request's earlier survivors and chunk tokens to keep, and pack its cache.

    ``step_scores`` are the request's captured scores per layer, ``[1, kvh, g, batch columns]``.
    """
    prefix_length, previous = state.prefix_length, state.kept_count
    start, end = state.bounds[state.next_chunk]
    device = state.request.context_ids.device
    context_length = state.request.context_ids.shape[1]
    # Batch columns: the request's cache ends at max_cache (left padding before it), its chunk follows.
    cache_start = max_cache - state.cache_length
    candidate_columns = torch.arange(cache_start + prefix_length, max_cache + chunk_length, device=device)
    keep = min(policy.step_keep(state.budget, end, context_length), previous + chunk_length)
    candidate_positions = []
    for layer in range(len(cache.layers)):
        num_kv_heads = layer_tensors(cache, layer)[0].shape[1]
        chunk_positions = torch.arange(start, end, device=device).expand(1, num_kv_heads, -1)
        earlier = state.kept_positions[layer] if state.kept_positions else chunk_positions[..., :0]
        candidate_positions.append(torch.cat((earlier, chunk_positions), dim=-1))
    weights = spans = None
    if state.request.token_weights is not None:
        weights = [state.request.token_weights[positions] for positions in candidate_positions]
    if config.granularity == "sentence" and state.request.span_ids is not None:
        spans = [state.request.span_ids[positions] for positions in candidate_positions]
    candidates = CandidateScores(
        layer_scores=[scores.index_select(-1, candidate_columns) for scores in step_scores],
        positions=candidate_positions,
        weights=weights,
        spans=spans,
        context_length=context_length,
        budget=state.budget,
        request=state.index,
    )
    selected, selected_scores = policy.select(candidates, keep)
    kept_count = selected[0].shape[-1]
    if kept_count > keep or any(indices.shape[-1] != kept_count for indices in selected):
        raise ValueError(
            f"{type(policy).__name__}.select must keep the same number of candidates (at most {keep}) in every "
            f"layer and head; it kept {[indices.shape[-1] for indices in selected]}."
        )

    state.peak = max(state.peak, state.cache_length + chunk_length + question_length)
    state.kept_positions = [candidate_positions[layer].gather(-1, selected[layer]) for layer in range(len(selected))]
    state.kept_scores = selected_scores
    packed_keys, packed_values = [], []
    for layer, indices in enumerate(selected):
        layer_keys, layer_values = layer_tensors(cache, layer)
        keys, values = layer_keys[row : row + 1], layer_values[row : row + 1]
        columns = candidate_columns[indices].unsqueeze(-1)
        kept_keys = keys.gather(2, columns.expand(-1, -1, -1, keys.shape[-1]))
        kept_values = values.gather(2, columns.expand(-1, -1, -1, values.shape[-1]))
        # Candidate i sits at position prefix + i (packing keeps positions contiguous, and the chunk
        # continues right after the survivors); it moves to prefix + its rank among the kept.
        shift = torch.arange(indices.shape[-1], device=device) - indices
        kept_keys = rotation.rerotate(layer, kept_keys, shift)
        prefix = slice(cache_start, cache_start + prefix_length)
        packed_keys.append(torch.cat((keys[:, :, prefix], kept_keys), dim=2))
        packed_values.append(torch.cat((values[:, :, prefix], kept_values), dim=2))
    state.keys, state.values = packed_keys, packed_values
    state.kept_count = kept_count
    state.next_chunk += 1


def _result(state: _RequestState, seconds: float) -> CompressedCache:
    context_length = state.request.context_ids.shape[1]
    if state.kept_positions:
        kept_positions = [positions[0] for positions in state.kept_positions]
        kept_scores: list[torch.Tensor] | None = [scores[0] for scores in state.kept_scores]
    else:  # nothing was compressed
        kept = torch.arange(context_length, device=state.request.context_ids.device)
        kept_positions = [kept.expand(keys.shape[1], -1) for keys in state.keys]
        kept_scores = None
    return CompressedCache(
        keys=state.keys,
        values=state.values,
        prefix_length=state.prefix_length,
        kept_positions=kept_positions,
        kept_scores=kept_scores,
        peak_kv_entries=state.peak,
        num_chunks=len(state.bounds),
        seconds=seconds,
        reread=state.reread,
        first_chunk_end=state.bounds[0][1] if state.bounds else 0,
    )
