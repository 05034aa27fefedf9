"""`FinchCompressor`: compress a context for a question, then answer from the compressed cache."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Literal, TypeVar, cast, overload

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from ._locks import model_lock
from .compression.cache import decoder_of
from .compression.chunking import resolve_chunk_size
from .compression.loop import CompressionRequest, compress_batch, read_kept_tokens
from .compression.prefix_cache import PrefixCache
from .compression.rotation import KeyRotation
from .config import FinchConfig
from .context import CompressedContext
from .deadline import Deadline, DeadlineExceeded, DeadlineLike, deadlines_for
from .generation import (
    SamplingOverrides,
    SamplingParams,
    eos_token_ids,
    generate_batch_texts,
    generate_token_ids,
    stream_text,
)
from .prompts import History, Passage, PassageLike, PromptParts, as_passages, build_prompt
from .store import ContextStore, context_store

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack is Python 3.11+

    from .allocation import AllocationPlan

logger = logging.getLogger(__name__)

_Prompt = tuple[PromptParts, torch.Tensor | None]
"""A prompt to compress and its tokens' score priors (`PromptParts.token_weights`), or ``None``."""


class FinchCompressor:
    """Prompt-guided KV-cache compression (FINCH) on a Hugging Face causal LM.

    Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167). The model and
    tokenizer are used as they are and left unchanged; compress and generate on the same model are
    serialised by a per-model lock, so a compressor may be shared across threads.

    Parameters
    ----------
    model, tokenizer
        A causal LM with rotary position embeddings and its tokenizer. ``None`` loads the embedded
        default (`finch_rag.load_model`).
    config : FinchConfig, optional
        Budget, chunk size and selection. Default: ``FinchConfig()``.
    prefix_cache : PrefixCache, optional
        Keeps the protected prefix's KV entries (chat header, system prompt) across calls, so each call
        prefills only its context and question (`finch_rag.compression.prefix_cache`). It assumes the
        model's weights stay as they are. Default: one when the compressor loads the model itself, none for
        a model you pass (give ``PrefixCache()`` to have one).
    """

    def __init__(
        self,
        model: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        config: FinchConfig | None = None,
        *,
        prefix_cache: PrefixCache | None = None,
    ) -> None:
        if model is None:
            if tokenizer is not None:
                raise ValueError("Pass a tokenizer together with its model, or neither for the default model.")
            from .models import load_model

            model, tokenizer = load_model()
            prefix_cache = prefix_cache if prefix_cache is not None else PrefixCache()
        elif tokenizer is None:
            raise ValueError("FinchCompressor needs the model's tokenizer: FinchCompressor(model, tokenizer, config).")
        if config is not None and not isinstance(config, FinchConfig):
            raise TypeError(f"config must be a FinchConfig, got {type(config).__name__}.")
        if prefix_cache is not None and not isinstance(prefix_cache, PrefixCache):
            raise TypeError(f"prefix_cache must be a PrefixCache or None, got {type(prefix_cache).__name__}.")
        self.prefix_cache = prefix_cache
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or FinchConfig()
        if model.config._attn_implementation == "eager":
            raise NotImplementedError(
                "finch-rag does not run on eager attention (it would materialise every attention row). "
                "Load the model with attn_implementation='sdpa' (or 'flash_attention_2' on a GPU)."
            )
        self._rotation = KeyRotation.from_model(model)  # fails early on models without RoPE
        self._lock = model_lock(model)
        self._eos_ids = eos_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self._eos_ids, default=0)
        self._pad_token_id = int(pad)

    @property
    def model_name(self) -> str:
        return str(getattr(self.model, "name_or_path", "") or type(self.model).__name__)

    @property
    def context_window(self) -> int:
        """The model's maximum position (``max_position_embeddings``)."""
        config = self.model.config.get_text_config(decoder=True)
        return int(getattr(config, "max_position_embeddings", 0) or 0)

    @property
    def _layer_types(self) -> list[str] | None:
        """The text config's ``layer_types`` (sliding-window layers change ``chunk_size="auto"``), if it has them."""
        return getattr(self.model.config.get_text_config(decoder=True), "layer_types", None)

    @property
    def store(self) -> ContextStore:
        """Compressed contexts kept for reuse by ``cache_key``, shared by all compressors on this model."""
        return context_store(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------ compression
    def compress(
        self,
        context: str | Sequence[PassageLike],
        question: str,
        *,
        config: FinchConfig | None = None,
        passage_weights: Sequence[float] | None = None,
        history: History | None = None,
        deadline: DeadlineLike = None,
    ) -> CompressedContext:
        """Compress ``context`` (one string or a list of passages) for ``question``.

        The prompt is built with the chat template when the tokenizer has one (see
        `FinchConfig.chat_template`); each passage's token span is recorded for `kept_fraction`.
        ``passage_weights`` (one non-negative prior per passage) multiplies the attention scores of that
        passage's tokens before selection; `FinchRAG` derives it from retrieval ranks.
        ``history`` (the earlier turns of a conversation) is rendered by the chat template before the final
        user turn and lives in the protected prefix: kept whole, never compressed or dropped (`build_prompt`).
        Passages, question and history are tokenised as plain text: control-token strings stay text.
        ``deadline`` (seconds from now, or a `Deadline`) stops the compression at the next chunk once it has
        passed, with `DeadlineExceeded`.
        """
        limit = Deadline.of(deadline)
        config = config or self.config
        prompt = self._prepare(context, question, config, passage_weights, history)
        return _raised(self._run([prompt], config, [limit]))[0]

    @overload
    def compress_batch(
        self,
        contexts: Sequence[str | Sequence[PassageLike]],
        questions: Sequence[str],
        *,
        config: FinchConfig | None = None,
        passage_weights: Sequence[Sequence[float] | None] | None = None,
        batch_size: int = 8,
        histories: Sequence[History | None] | None = None,
        deadline: DeadlineLike | Sequence[DeadlineLike] = None,
        return_exceptions: Literal[False] = False,
    ) -> list[CompressedContext]: ...

    @overload
    def compress_batch(
        self,
        contexts: Sequence[str | Sequence[PassageLike]],
        questions: Sequence[str],
        *,
        config: FinchConfig | None = None,
        passage_weights: Sequence[Sequence[float] | None] | None = None,
        batch_size: int = 8,
        histories: Sequence[History | None] | None = None,
        deadline: DeadlineLike | Sequence[DeadlineLike] = None,
        return_exceptions: Literal[True],
    ) -> list[CompressedContext | DeadlineExceeded]: ...

    def compress_batch(
        self,
        contexts: Sequence[str | Sequence[PassageLike]],
        questions: Sequence[str],
        *,
        config: FinchConfig | None = None,
        passage_weights: Sequence[Sequence[float] | None] | None = None,
        batch_size: int = 8,
        histories: Sequence[History | None] | None = None,
        deadline: DeadlineLike | Sequence[DeadlineLike] = None,
        return_exceptions: bool = False,
    ) -> list[CompressedContext] | list[CompressedContext | DeadlineExceeded]:
        """`compress` for several (context, question) pairs, run ``batch_size`` at a time as padded batches.

        Each result equals what `compress` gives for that pair alone (up to float rounding in the padded
        matrix products). Batching pays off on a GPU; on a CPU it mostly saves per-call overhead.

        ``deadline`` is one for the whole call (seconds from now, or a `Deadline`) or one per pair. A pair whose
        deadline passes leaves its batch at the next chunk and the others finish as they would alone; its
        `DeadlineExceeded` is raised, or with ``return_exceptions=True`` put in its place in the results.
        """
        if isinstance(contexts, str) or isinstance(questions, str):
            raise TypeError("compress_batch takes a list of contexts and a list of questions; use compress() for one.")
        if len(contexts) != len(questions):
            raise ValueError(
                f"Got {len(contexts)} contexts for {len(questions)} questions; give one context per question."
            )
        if passage_weights is not None and len(passage_weights) != len(contexts):
            raise ValueError(f"passage_weights has {len(passage_weights)} entries for {len(contexts)} contexts.")
        if histories is not None and len(histories) != len(contexts):
            raise ValueError(f"histories has {len(histories)} entries for {len(contexts)} contexts.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        limits = deadlines_for(deadline, len(contexts))
        config = config or self.config
        weights = passage_weights if passage_weights is not None else [None] * len(contexts)
        turns = histories if histories is not None else [None] * len(contexts)
        prompts = [
            self._prepare(context, question, config, weight, history)
            for context, question, weight, history in zip(contexts, questions, weights, turns, strict=True)
        ]
        results: list[CompressedContext | DeadlineExceeded] = []
        for start in range(0, len(prompts), batch_size):
            done = self._run(prompts[start : start + batch_size], config, limits[start : start + batch_size])
            results += done if return_exceptions else _raised(done)
        return results

    def compress_ids(
        self,
        context_ids: torch.Tensor | Sequence[int],
        question_ids: torch.Tensor | Sequence[int],
        prefix_ids: torch.Tensor | Sequence[int] | None = None,
        *,
        suffix_ids: torch.Tensor | Sequence[int] | None = None,
        config: FinchConfig | None = None,
        deadline: DeadlineLike = None,
    ) -> CompressedContext:
        """Token-level entry point: no template is applied, and with no prefix nothing is protected.

        ``suffix_ids`` (optional) is fed after the question when answering. Every id must be in the model's
        vocabulary (``ValueError`` otherwise). ``deadline`` as in `compress`.
        """
        limit = Deadline.of(deadline)
        parts = PromptParts(
            prefix_ids=self._vocabulary_ids(prefix_ids, "prefix_ids", allow_empty=True),
            context_ids=self._vocabulary_ids(context_ids, "context_ids"),
            question_ids=self._vocabulary_ids(question_ids, "question_ids"),
            suffix_ids=self._vocabulary_ids(suffix_ids, "suffix_ids", allow_empty=True),
        )
        config = config or self.config
        if config.granularity == "sentence":
            raise ValueError(
                'granularity="sentence" finds sentences in the text, and compress_ids gets token ids only. '
                'Use compress() with the text, or config.replace(granularity="token").'
            )
        return _raised(self._run([(parts, None)], config, [limit]))[0]

    @overload
    def compress_plans(
        self,
        plans: Sequence[AllocationPlan[Passage]],
        questions: Sequence[str],
        *,
        histories: Sequence[History | None] | None = None,
        deadline: DeadlineLike | Sequence[DeadlineLike] = None,
        return_exceptions: Literal[False] = False,
    ) -> list[CompressedContext]: ...

    @overload
    def compress_plans(
        self,
        plans: Sequence[AllocationPlan[Passage]],
        questions: Sequence[str],
        *,
        histories: Sequence[History | None] | None = None,
        deadline: DeadlineLike | Sequence[DeadlineLike] = None,
        return_exceptions: Literal[True],
    ) -> list[CompressedContext | DeadlineExceeded]: ...

    def compress_plans(
        self,
        plans: Sequence[AllocationPlan[Passage]],
        questions: Sequence[str],
        *,
        histories: Sequence[History | None] | None = None,
        deadline: DeadlineLike | Sequence[DeadlineLike] = None,
        return_exceptions: bool = False,
    ) -> list[CompressedContext] | list[CompressedContext | DeadlineExceeded]:
        """`compress_batch` of passages as `PassageAllocation.plan` laid them out: one plan per question.

        Each plan brings its packed passages and score priors; they share one config (plans of one allocation
        and config do), which runs as one padded batch. The one step `FinchRAG` and every front end take.
        ``deadline`` and ``return_exceptions`` as in `compress_batch`.
        """
        if len(plans) != len(questions):
            raise ValueError(f"Got {len(plans)} plans for {len(questions)} questions; give one plan per question.")
        if not plans:
            return []
        if any(plan.config != plans[0].config for plan in plans):
            raise ValueError("The plans have different configs; compress plans of one config together.")
        if histories is not None and len(histories) != len(plans):
            raise ValueError(f"histories has {len(histories)} entries for {len(plans)} plans.")
        limits = deadlines_for(deadline, len(plans))
        config = plans[0].config
        prompts = []
        for plan, question, history in zip(plans, questions, histories or [None] * len(plans), strict=True):
            parts, _ = self._prepare(plan.packed, question, config, None, history)
            # A context within its budget is kept whole, so its priors cannot change anything: sentence fusion's
            # embedding is skipped rather than paid for.
            keeps_all = config.budget(len(parts.context_ids)) >= len(parts.context_ids)
            prompts.append((parts, None if keeps_all else plan.token_weights(parts)))
        results = self._run(prompts, config, limits)
        return results if return_exceptions else _raised(results)

    def _prepare(
        self,
        context: str | Sequence[PassageLike],
        question: str,
        config: FinchConfig,
        passage_weights: Sequence[float] | None,
        history: History | None = None,
    ) -> _Prompt:
        """The prompt's parts and, with ``passage_weights``, its tokens' score priors (both checked now)."""
        parts = build_prompt(
            self.tokenizer,
            as_passages(context),
            question,
            chat_template=config.chat_template,
            system_prompt=config.system_prompt,
            history=history,
        )
        return parts, None if passage_weights is None else parts.token_weights(passage_weights)

    def _run(
        self, prompts: Sequence[_Prompt], config: FinchConfig, deadlines: Sequence[Deadline | None]
    ) -> list[CompressedContext | DeadlineExceeded]:
        """Compress as one padded batch; a request whose deadline passed gets its `DeadlineExceeded` instead."""
        for parts, _ in prompts:
            if not parts.context_ids:
                raise ValueError("The context is empty: give at least one context token to compress.")
            if not parts.question_ids:
                raise ValueError("The question is empty: FINCH compresses the context for a question, so give one.")
            self._check_fits(
                len(parts.prefix_ids), len(parts.context_ids), len(parts.question_ids), len(parts.suffix_ids), config
            )
        device = self.device

        def tensor(ids: list[int]) -> torch.Tensor:
            return torch.tensor([ids], dtype=torch.long, device=device)

        requests = [
            CompressionRequest(
                prefix_ids=tensor(parts.prefix_ids),
                context_ids=tensor(parts.context_ids),
                question_ids=tensor(parts.question_ids),
                passage_starts=parts.passage_token_starts or (),
                token_weights=None if token_weights is None else token_weights.to(device),
                span_ids=parts.sentence_ids().to(device) if config.granularity == "sentence" else None,
                deadline=deadline,
            )
            for (parts, token_weights), deadline in zip(prompts, deadlines, strict=True)
        ]
        with self._lock, torch.inference_mode():
            caches = compress_batch(
                self.model,
                requests,
                config,
                self._rotation,
                pad_token_id=self._pad_token_id,
                prefix_cache=self.prefix_cache,
            )
        return [
            cache
            if isinstance(cache, DeadlineExceeded)
            else CompressedContext(cache, parts, config, self.tokenizer, self.model_name)
            for (parts, _), cache in zip(prompts, caches, strict=True)
        ]

    def _check_fits(self, prefix: int, context: int, question: int, suffix: int, config: FinchConfig) -> None:
        window = self.context_window
        if not window:
            return
        if prefix + question + suffix >= window:
            raise ValueError(
                f"The question needs {question} tokens (plus {prefix} of prefix and {suffix} of answer cue), which "
                f"does not fit the model's window of {window} tokens. Shorten the question."
            )
        budget = config.budget(context)
        chunk_size = resolve_chunk_size(config.chunk_size, context, question, prefix, window, budget, self._layer_types)
        chunk = min(chunk_size or context, context)
        # A single pass has no earlier survivors next to its chunk; the chunked loop holds up to B of them.
        held = context if context <= budget or chunk == context else budget + chunk
        peak_position = prefix + held + question
        if peak_position > window:
            fix = "Lower chunk_size or target_tokens."
            if chunk == context:
                fix = "Set chunk_size (e.g. 512) to read it in chunks."
            raise ValueError(
                f"Compression would reach position {peak_position} (prefix {prefix} + {held} context entries + "
                f"question {question}), past the model's window of {window}. {fix}"
            )

    def reread(self, compressed: CompressedContext) -> CompressedContext:
        """``compressed`` with the kept entries after its first chunk replaced by the model's own read of those tokens.

        What ``answer_cache="reread"`` does inside `compress` (see `FinchConfig.answer_cache`), for a context
        compressed with ``"compressed"``: the same kept positions, in a fresh cache. ``compressed`` itself is not
        changed. A context kept whole, or one already re-read, is returned as it is.
        """
        if compressed.cache.reread or compressed.cache.kept_scores is None:
            return compressed
        config = compressed.config.replace(answer_cache="reread")  # refuses per-head and per-layer selections
        n, m, prefix = compressed.original_tokens, len(compressed.parts.question_ids), len(compressed.parts.prefix_ids)
        chunk = resolve_chunk_size(
            config.chunk_size, n, m, prefix, self.context_window, config.budget(n), self._layer_types
        )
        context_ids = compressed.context_ids[None].to(self.device)
        with self._lock, torch.inference_mode():
            cache = read_kept_tokens(decoder_of(self.model), compressed.cache, context_ids, chunk or n)
        return CompressedContext(cache, compressed.parts, config, self.tokenizer, self.model_name)

    # ------------------------------------------------------------- generation
    # Each call takes a `SamplingParams` and/or its fields as keywords (``generate(cc, max_new_tokens=32)``), as
    # transformers' ``generate(generation_config, **kwargs)`` does; `SamplingParams.of` converts them, once.
    # ``deadline`` (seconds from now, or a `Deadline`) stops decoding at the next token once it has passed, with
    # `DeadlineExceeded`.
    def generate(
        self,
        compressed: CompressedContext,
        sampling: SamplingParams | int | None = None,
        *,
        deadline: DeadlineLike = None,
        **overrides: Unpack[SamplingOverrides],
    ) -> str:
        """Answer from ``compressed``; it is not modified, so answering twice greedily gives the same text.

        ``sampling`` (default: greedy, 64 new tokens) and keyword ``overrides`` of its fields say how to decode;
        past ``deadline``, `DeadlineExceeded`.
        """
        limit = Deadline.of(deadline)
        return "".join(self.stream(compressed, SamplingParams.of(sampling, **overrides), deadline=limit))

    def stream(
        self,
        compressed: CompressedContext,
        sampling: SamplingParams | int | None = None,
        *,
        deadline: DeadlineLike = None,
        **overrides: Unpack[SamplingOverrides],
    ) -> Iterator[str]:
        """Like `generate`, yielding text pieces as they are decoded (`DeadlineExceeded` past ``deadline``)."""
        limit = Deadline.of(deadline)
        params = SamplingParams.of(sampling, **overrides)
        answer_input = self._answer_input(compressed, params.max_new_tokens)
        cache = compressed.cache.as_cache()
        token_ids = generate_token_ids(self.model, cache, answer_input, params, self._eos_ids, self._lock, limit)
        return stream_text(self.tokenizer, token_ids, params.stop)

    @overload
    def generate_batch(
        self,
        compressed: Sequence[CompressedContext],
        sampling: SamplingParams | int | None = None,
        *,
        deadline: DeadlineLike | Sequence[DeadlineLike] = None,
        return_exceptions: Literal[False] = False,
        **overrides: Unpack[SamplingOverrides],
    ) -> list[str]: ...

    @overload
    def generate_batch(
        self,
        compressed: Sequence[CompressedContext],
        sampling: SamplingParams | int | None = None,
        *,
        deadline: DeadlineLike | Sequence[DeadlineLike] = None,
        return_exceptions: Literal[True],
        **overrides: Unpack[SamplingOverrides],
    ) -> list[str | DeadlineExceeded]: ...

    def generate_batch(
        self,
        compressed: Sequence[CompressedContext],
        sampling: SamplingParams | int | None = None,
        *,
        deadline: DeadlineLike | Sequence[DeadlineLike] = None,
        return_exceptions: bool = False,
        **overrides: Unpack[SamplingOverrides],
    ) -> list[str] | list[str | DeadlineExceeded]:
        """`generate` for several compressed contexts at once, decoding them as one padded batch.

        ``deadline`` is one for the whole call or one per context: an answer whose deadline passes stops at the
        next token and the others decode on unchanged; its `DeadlineExceeded` is raised, or with
        ``return_exceptions=True`` put in its place in the results.
        """
        limits = deadlines_for(deadline, len(compressed))
        if not compressed:
            return []
        params = SamplingParams.of(sampling, **overrides)
        inputs = [self._answer_input(item, params.max_new_tokens) for item in compressed]
        caches = [item.cache.as_cache() for item in compressed]
        texts = generate_batch_texts(
            self.model, self.tokenizer, caches, inputs, params, self._eos_ids, self._lock, self._pad_token_id, limits
        )
        return texts if return_exceptions else _raised(texts)

    def generate_ids(
        self,
        prompt_ids: torch.Tensor | Sequence[int],
        sampling: SamplingParams | int | None = None,
        *,
        deadline: DeadlineLike = None,
        **overrides: Unpack[SamplingOverrides],
    ) -> str:
        """Plain generation, no compression: the model reads the whole ``prompt_ids`` and continues it.

        For prompts with nothing to compress (a chat turn without context). ``prompt_ids`` is a full prompt,
        template included (see `finch_rag.prompts.chat_prompt_ids`); every id must be in the vocabulary.
        ``deadline`` as in `generate`.
        """
        limit = Deadline.of(deadline)
        return "".join(self.stream_ids(prompt_ids, SamplingParams.of(sampling, **overrides), deadline=limit))

    def stream_ids(
        self,
        prompt_ids: torch.Tensor | Sequence[int],
        sampling: SamplingParams | int | None = None,
        *,
        deadline: DeadlineLike = None,
        **overrides: Unpack[SamplingOverrides],
    ) -> Iterator[str]:
        """Like `generate_ids`, yielding text pieces as they are decoded (`DeadlineExceeded` past ``deadline``)."""
        limit = Deadline.of(deadline)
        params = SamplingParams.of(sampling, **overrides)
        ids = self._vocabulary_ids(prompt_ids, "prompt_ids")
        window = self.context_window
        if window and len(ids) + params.max_new_tokens > window:
            raise ValueError(
                f"The prompt has {len(ids)} tokens and {params.max_new_tokens} more would be generated, past the "
                f"model's window of {window} positions. Shorten the prompt or lower max_new_tokens."
            )
        prompt = torch.tensor([ids], dtype=torch.long, device=self.device)
        token_ids = generate_token_ids(self.model, DynamicCache(), prompt, params, self._eos_ids, self._lock, limit)
        return stream_text(self.tokenizer, token_ids, params.stop)

    def _vocabulary_ids(
        self, ids: torch.Tensor | Sequence[int] | None, name: str, allow_empty: bool = False
    ) -> list[int]:
        """``ids`` as a list, checked to be token ids this model has (an embedding row each)."""
        values = _as_ids(ids, name, allow_empty)
        size = cast(torch.nn.Embedding, self.model.get_input_embeddings()).num_embeddings
        outside = [value for value in values if not 0 <= value < size]
        if outside:
            raise ValueError(
                f"{name} holds ids outside the model's vocabulary (0..{size - 1}): {outside[:5]}. "
                "Tokenise with this model's tokenizer."
            )
        return values

    def _answer_input(self, compressed: CompressedContext, max_new_tokens: int) -> torch.Tensor:
        """Question and answer cue, ``[1, k]`` on the model's device, after checking the answer fits."""
        if not isinstance(compressed, CompressedContext):
            raise TypeError(f"Expected a CompressedContext from compress(), got {type(compressed).__name__}.")
        if compressed.model_name != self.model_name:
            raise ValueError(
                f"This context was compressed with {compressed.model_name!r}; answer it with a compressor on the "
                f"same model, not {self.model_name!r}."
            )
        answer_input = torch.cat((compressed.question_ids, compressed.suffix_ids)).unsqueeze(0).to(self.device)
        window = self.context_window
        if window and compressed.cache_length + answer_input.shape[1] + max_new_tokens > window:
            raise ValueError(
                f"Answering would pass the model's window of {window} positions "
                f"({compressed.cache_length} cached + {answer_input.shape[1]} question + {max_new_tokens} new). "
                "Lower max_new_tokens or the budget."
            )
        return answer_input

    def __repr__(self) -> str:
        return f"FinchCompressor(model={self.model_name!r}, config={self.config})"


T = TypeVar("T")


def _raised(results: Sequence[T | DeadlineExceeded]) -> list[T]:
    """``results`` with no failure in them: the first request's `DeadlineExceeded` is raised."""
    for result in results:
        if isinstance(result, DeadlineExceeded):
            raise result
    return cast(list[T], list(results))


def _as_ids(ids: torch.Tensor | Sequence[int] | None, name: str, allow_empty: bool = False) -> list[int]:
    if ids is None:
        values: list[int] = []
    elif isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dim() > 2 or (ids.dim() == 2 and ids.shape[0] != 1):
            raise TypeError(f"{name} must be a 1-D integer tensor (or [1, n]), got {tuple(ids.shape)} {ids.dtype}.")
        values = ids.reshape(-1).tolist()
    elif isinstance(ids, Sequence) and not isinstance(ids, str) and all(isinstance(i, int) for i in ids):
        values = list(ids)
    else:
        raise TypeError(f"{name} must be a list of token ids or a LongTensor, got {type(ids).__name__}.")
    if not values and not allow_empty:
        raise ValueError(f"{name} is empty.")
    return values
