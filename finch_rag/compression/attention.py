"""Question-row attention, computed beside the model's own fast attention.

The model keeps running its fast attention: we register, under a new key of transformers'
`AttentionInterface` (and its mask function under the same key of `AttentionMaskInterface`), a function
that first computes the softmax of the last ``m`` query rows (the question) over every key, exactly as the
layer's own softmax would (scaling, causal and sliding-window mask, padding, soft-capping), reduces it to
one score per context column, and then calls the original attention function unchanged. Only ``m`` rows
are ever materialised: no ``output_attentions``, no eager attention. Models loaded with flash (or flex)
attention compress on SDPA's twin, because transformers' flash wrapper finds its kernel by the
implementation's name; they decode on their own implementation. The capture reads SDPA's 4-D masks and
flash-style 2-D padding masks alike. A long step runs its attention on blocks of rows and the keys they reach
(causal, and within the window on a sliding layer: `blocked_attention`), not on the whole masked rectangle; on a
CPU, SDPA's masked steps run on the KV heads as they are (`grouped_sdpa_attention`), not on repeated copies.
A compression pass stops once the last layer has written its keys and values (`fill_cache`).

The per-call state travels as a forward keyword argument (``finch_capture``) that transformers passes
through to every attention call, so nothing is stored on the model or in globals and concurrent calls on
different models cannot mix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface

CAPTURE_KWARG = "finch_capture"
LAST_LAYER_KWARG = "finch_last_layer"
_KEY_PREFIX = "finch_"
_SDPA_TAKES_GROUPS = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)  # ``enable_gqa``
CAUSAL_BLOCK_ROWS = 128
"""Query rows per block when a step's attention runs in blocks (`blocked_attention`) on a CPU layer without a window."""


@dataclass
class QuestionAttentionCapture:
    """Collects, for each layer, the question rows' attention over the candidate context columns.

    Parameters
    ----------
    question_length : int
        ``m``, the number of trailing query rows that form the question.
    first_candidate : int
        Index of the first cache column that may be evicted (``|P|``); earlier columns are the protected
        prefix and are not scored.
    normalize_scores : bool
        Multiply each row by its 0-based absolute position (kvpress's convention) before averaging rows.
    question_mask : torch.Tensor, optional
        ``[batch, m]`` bool, which of the trailing rows are real question tokens (padded batches).
    row_positions : torch.Tensor, optional
        ``[batch, m]`` absolute position of each question row, used by ``normalize_scores``. Default: the
        row's key index, right when the cache holds no padding.
    question_rows : torch.Tensor, optional
        ``[batch, m]`` index of each question row among the step's query rows. Default: the last ``m``.
    last_column : int, optional
        Scores cover columns ``first_candidate .. last_column - 1``. Default: up to the question's own
        columns, ``k_len - m``.
    scores : dict[int, torch.Tensor]
        Filled during the forward pass: layer index -> ``[batch, num_kv_heads, group_size, n_candidates]``
        in float32, the mean over question rows of each query head's attention to each candidate column.
    """

    question_length: int
    first_candidate: int
    normalize_scores: bool = True
    question_mask: torch.Tensor | None = None
    row_positions: torch.Tensor | None = None
    question_rows: torch.Tensor | None = None
    last_column: int | None = None
    scores: dict[int, torch.Tensor] = field(default_factory=dict)


def question_row_scores(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    capture: QuestionAttentionCapture,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Mean attention of the question rows to each candidate column, per query head.

    Parameters
    ----------
    query : torch.Tensor
        ``[batch, num_heads, q_len, head_dim]``, after RoPE; the last ``m`` rows are the question.
    key : torch.Tensor
        ``[batch, num_kv_heads, k_len, head_dim]``, the whole cache including this step's tokens.
    attention_mask : torch.Tensor, optional
        The mask the layer received: SDPA's 4-D mask (bool, or additive float); flash attention's 2-D
        ``[batch, >= k_len]`` padding mask (true or 1 for real tokens, its last ``k_len`` columns are this
        layer's keys), to which the causal and sliding-window masks are added here; or ``None`` for plain
        causal (and sliding-window) attention.

    Returns
    -------
    torch.Tensor
        ``[batch, num_kv_heads, group_size, last_column - first_candidate]``, float32.
    """
    m = capture.question_length
    batch, num_heads, q_len, head_dim = query.shape
    num_kv_heads, k_len = key.shape[1], key.shape[2]
    group = num_heads // num_kv_heads
    # Index of each question row among this step's query rows: the last m, unless a padded batch says.
    if capture.question_rows is not None:
        query_rows = capture.question_rows.to(key.device)
    else:
        query_rows = torch.arange(q_len - m, q_len, device=key.device).expand(batch, m)
    rows = query.gather(2, query_rows[:, None, :, None].expand(batch, num_heads, m, head_dim))
    # Grouped layout avoids repeating K for every query head of a group.
    rows = rows.reshape(batch, num_kv_heads, group * m, head_dim)
    logits = torch.matmul(rows.float(), key.float().transpose(-1, -2)) * scaling
    logits = logits.view(batch, num_kv_heads, group, m, k_len)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap

    # Key index of each question row: this step's rows follow the cached columns.
    row_positions = k_len - q_len + query_rows  # [b, m]
    if attention_mask is not None and attention_mask.dim() == 4:
        step_mask = attention_mask[..., -q_len:, -k_len:]
        rows_mask = step_mask.gather(2, query_rows[:, None, :, None].expand(-1, step_mask.shape[1], m, k_len))
        if rows_mask.dtype == torch.bool:
            additive = torch.zeros(rows_mask.shape, dtype=torch.float32, device=key.device)
            additive = additive.masked_fill(~rows_mask, float("-inf"))
        else:
            additive = rows_mask.float().clamp(min=torch.finfo(torch.float32).min)
        logits = logits + additive.unsqueeze(2)  # [b, 1 or kvh, 1, m, k] broadcasts over the group axis
    else:
        columns = torch.arange(k_len, device=key.device)
        visible = columns[None, None, :] <= row_positions[:, :, None]  # [b, m, k]
        if sliding_window is not None:
            visible &= columns[None, None, :] > row_positions[:, :, None] - sliding_window
        if attention_mask is not None:
            # Flash attention's padding mask: padded columns are invisible to every row.
            if attention_mask.dim() != 2 or attention_mask.shape[-1] < k_len:
                raise ValueError(
                    f"Expected a 4-D attention mask or a 2-D padding mask of at least {k_len} columns, got shape "
                    f"{tuple(attention_mask.shape)}."
                )
            visible &= attention_mask[:, None, -k_len:].to(device=key.device, dtype=torch.bool)
        logits = logits.masked_fill(~visible[:, None, None], float("-inf"))

    weights = torch.softmax(logits, dim=-1)
    if capture.normalize_scores:
        positions = capture.row_positions if capture.row_positions is not None else row_positions
        weights = weights * positions.to(weights.dtype)[:, None, None, :, None]
    if capture.question_mask is not None:
        # Padded question rows (batched requests) must not vote.
        row_weight = capture.question_mask.to(weights.dtype)[:, None, None, :, None]
        weights = weights * row_weight
        column_scores = weights.sum(dim=3) / row_weight.sum(dim=3).clamp(min=1)
    else:
        column_scores = weights.mean(dim=3)
    last_column = k_len - m if capture.last_column is None else capture.last_column
    return column_scores[..., capture.first_candidate : last_column]


def _capturing(inner: Callable[..., Any], grouped: bool = False) -> Callable[..., Any]:
    """The capturing twin of attention function ``inner``.

    ``grouped``: ``inner`` is transformers' SDPA, which with a 4-D mask on a CPU then runs as
    `grouped_sdpa_attention` does, without repeating the KV heads.
    """

    def attention_forward(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        capture: QuestionAttentionCapture | None = kwargs.pop(CAPTURE_KWARG, None)
        last_layer: int | None = kwargs.pop(LAST_LAYER_KWARG, None)
        window = kwargs.get("sliding_window")
        layer = cast(int, getattr(module, "layer_idx", None))  # Module attributes are typed Tensor | Module
        if capture is not None:
            layer_scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
            capture.scores[layer] = question_row_scores(
                module,
                query,
                key,
                attention_mask,
                layer_scaling,
                capture,
                sliding_window=window,
                softcap=kwargs.get("softcap"),
            )
        if layer == last_layer:
            raise _CacheFilled  # the layer's keys and values are in the cache: the rest of the pass is dead work
        attend = inner
        if attention_mask is not None and attention_mask.dim() == 4:
            on_cpu = query.device.type == "cpu"
            plain = kwargs.get("position_bias") is None and kwargs.get("softcap") is None  # SDPA's own cases
            if grouped and on_cpu and _SDPA_TAKES_GROUPS and plain:
                attend = grouped_sdpa_attention
            # A step with a cache gets a 4-D mask, and SDPA then computes every query-key product: run the
            # rows in blocks over only the keys they can see (a window's worth on a sliding layer). Causal
            # blocks were measured on a CPU only; on an accelerator the many small calls may cost more than
            # the masked products they skip, so there a layer without a window runs whole.
            block_rows = window or (CAUSAL_BLOCK_ROWS if on_cpu else 0)
            if block_rows and query.shape[2] > 2 * block_rows:
                return blocked_attention(
                    attend,
                    module,
                    query,
                    key,
                    value,
                    attention_mask,
                    block_rows,
                    window=window,
                    scaling=scaling,
                    dropout=dropout,
                    **kwargs,
                )
        return attend(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)

    return attention_forward


class _CacheFilled(Exception):
    """Raised by the capturing attention of a `fill_cache` pass's last layer, after the cache update."""


def stopping_layer(decoder: torch.nn.Module, num_layers: int) -> int | None:
    """The layer after whose cache update a `fill_cache` pass of ``decoder`` may end: the last one.

    ``None`` (run whole passes) for a model with accelerate hooks (``device_map`` offloading): a hook must see its
    module's forward finish. Decided once per compression, not per pass.
    """
    return None if any(hasattr(module, "_hf_hook") for module in decoder.modules()) else num_layers - 1


def fill_cache(decoder: torch.nn.Module, last_layer: int | None, **forward_kwargs: Any) -> None:
    """Run ``decoder`` on ``forward_kwargs`` (with a cache) until layer ``last_layer`` has written it, no further.

    A compression pass is read for its cache and its question rows' attention only. Both are complete when the
    last layer's attention is called (transformers' attention modules update the cache first), so that layer's
    attention output, its MLP and the final norm, a ``1 / num_layers`` share of the pass, would be computed for
    nothing: the capturing twin raises there and the pass ends. ``last_layer=None`` runs the whole pass (outside
    `capturing_attention`, where nothing would raise, or where `stopping_layer` says so).
    """
    if last_layer is None:
        decoder(**forward_kwargs)
        return
    try:
        decoder(**forward_kwargs, **{LAST_LAYER_KWARG: last_layer})
    except _CacheFilled:
        pass


def blocked_attention(
    inner: Callable[..., Any],
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor,
    block_rows: int,
    window: int | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A layer's attention, ``inner`` run on blocks of ``block_rows`` query rows and only the keys they reach.

    SDPA with a mask computes every query-key product and masks the unseen ones away. A causal step of ``q``
    rows after ``c`` cached entries pays ``q (c + q)`` for ``q c + q^2 / 2`` that count (with a cache PyTorch's
    ``is_causal`` cannot be used: it aligns the triangle to the top left); blocks cut the waste to ``q b / 2``.
    A sliding layer of ``window`` ``W`` pays ``n^2`` for ``2 W n`` over a pass of ``n`` tokens, which made a
    one-pass read of 4k tokens cost Gemma 3 what a full prefill does; its blocks also skip keys before the band.
    The boolean 4-D mask is read to make sure no row of a block sees a skipped key (if one does, or the mask is
    additive, the layer runs whole), so the result is the layer's own up to floating-point summation order.
    ``query`` is ``[batch, heads, q_len, head_dim]``; the step's rows are the last ``q_len`` of the ``k_len`` keys.
    """
    q_len, k_len = query.shape[2], key.shape[2]
    mask = attention_mask[..., -q_len:, -k_len:]
    blocks = []
    for start in range(0, q_len, block_rows):
        end = min(start + block_rows, q_len)
        first_key = max(0, k_len - q_len + start - window) if window else 0
        last_key = k_len - q_len + end  # causal: no row of the block sees past its own key
        rows = mask[..., start:end, :]
        if rows.dtype != torch.bool or rows[..., :first_key].any() or rows[..., last_key:].any():
            return inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        blocks.append((start, end, first_key, last_key))
    outputs = [
        inner(
            module,
            query[:, :, start:end],
            key[:, :, first_key:last_key],
            value[:, :, first_key:last_key],
            mask[..., start:end, first_key:last_key],
            scaling=scaling,
            dropout=dropout,
            **kwargs,
        )[0]
        for start, end, first_key, last_key in blocks
    ]
    return torch.cat(outputs, dim=1), None  # outputs are [batch, rows, heads, head_dim]


def grouped_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA attention as transformers calls it with a mask, on the KV heads as they are (``enable_gqa``).

    With a mask, transformers repeats every KV head for each query head of its group before SDPA (grouped SDPA
    with a mask falls back to the math kernel on a GPU); a step run in blocks would repeat, for every block, the
    keys it reaches. On a CPU the flash kernel takes the groups and the mask together: the same output,
    without the copies. ``query`` is ``[batch, heads, rows, head_dim]``; the output is
    ``[batch, rows, heads, head_dim]``, as transformers' attention functions return it.
    """
    output = torch.nn.functional.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout,
        scale=scaling,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return output.transpose(1, 2).contiguous(), None


def _register(base_implementation: str) -> str:
    """Register the capturing twin of ``base_implementation`` (idempotent) and return its key.

    Through transformers' public registries: `AttentionInterface` for the attention function and
    `AttentionMaskInterface` for the mask it expects (the base implementation's own mask format).
    """
    key = _KEY_PREFIX + base_implementation
    attention_functions, mask_functions = AttentionInterface(), AttentionMaskInterface()
    if key in attention_functions and key in mask_functions:
        return key
    if base_implementation not in attention_functions:
        raise NotImplementedError(
            f"finch-rag cannot wrap attention implementation {base_implementation!r}; load the model with "
            "attn_implementation='sdpa' (or 'flash_attention_2' on a GPU)."
        )
    if base_implementation not in mask_functions:
        raise NotImplementedError(
            f"No attention-mask function is registered for {base_implementation!r} in transformers' "
            "AttentionMaskInterface; load the model with attn_implementation='sdpa'."
        )
    grouped = base_implementation == "sdpa"
    AttentionInterface.register(key, _capturing(attention_functions[base_implementation], grouped))
    AttentionMaskInterface.register(key, mask_functions[base_implementation])
    return key


def _compression_base(implementation: str) -> str:
    """The implementation the capture wraps: the model's own, except SDPA for flash and flex attention.

    transformers' flash-attention wrapper chooses its kernel by the config's implementation name, so under
    our renamed key it would look for a kernel of that name (a hub download) and fail; flex attention's
    block masks cannot be read row by row. Those models compress on SDPA (the same attention, exactly)
    and decode on their own implementation.
    """
    return "sdpa" if "flash" in implementation or implementation == "flex_attention" else implementation


@contextlib.contextmanager
def capturing_attention(model: PreTrainedModel) -> Iterator[None]:
    """Within the block, ``model`` fills a `QuestionAttentionCapture` passed as ``finch_capture=``.

    The attention implementation is switched to its capturing twin and switched back on exit, even on
    error, so the caller's model is left as it was. Callers hold the model's lock for the whole block.
    A flash- or flex-attention model runs the block on the twin of SDPA (see `_compression_base`).
    """
    config = model.config
    original = config._attn_implementation
    if original == "eager":
        raise NotImplementedError(
            "finch-rag does not run on eager attention (it would materialise every attention row). "
            "Load the model with attn_implementation='sdpa'."
        )
    base = original[len(_KEY_PREFIX) :] if original.startswith(_KEY_PREFIX) else original
    key = _register(_compression_base(base))
    config._attn_implementation = key
    try:
        yield
    finally:
        config._attn_implementation = original
