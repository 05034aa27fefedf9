"""kvpress's presses on given token ids, scored once per input and pruned per ratio (run in the kvpress venv).

This file is a standalone script: kvpress 0.5.5 pins transformers < 5.3, so it runs in its own environment
(``scripts/setup_kvpress_env.sh``) and imports neither finch-rag nor the ``benchmarks`` package.
``python -m benchmarks peers`` writes the cases (finch-rag's own prompt ids) and calls it.

Record once, replay many ratios. A scorer press's scores do not depend on the compression ratio, so one
forward pass over ``prefix + context + question`` captures, at every layer, each press's ``score()`` output:

- query-aware presses (FinchPress, SnapKV, AdaKV(SnapKV), ChunkKV(SnapKV)) see the whole sequence, the question
  inside their window, as kvpress's evaluation runs them with ``compress_questions=True`` (FinchPress's window is
  exactly the question, as its delimiter sets it);
- query-agnostic presses (ExpectedAttention, KeyDiff, TOVA, StreamingLLM) see ``prefix + context`` only: the
  same layer inputs cut before the question (attention is causal, so they are what a context-only prefill
  computes);
- KVzip scores by its own reconstruction pass (``KVzipPress.__call__``); its ``score_val`` is captured before
  ``compress_post`` prunes.

Each ratio then calls the press's own ``compress()`` (or KVzip's ``compress_post``) with ``score()`` answering
from the capture, so top-k, ties, AdaKV's head-wise budget, ChunkKV's chunks and FinchPress's key re-rotation
are kvpress's code, not a re-implementation. ``--self-check`` compares the kept positions with running each
press for real at each ratio on a tiny random Llama.

The compressed cache is then decoded with kvpress's ``generate_answer`` (greedy), after the chat template's
suffix (and, for query-agnostic presses, the question), as kvpress's pipeline does.

Gemma 3 (text-only ``Gemma3ForCausalLM``). kvpress compresses only the full-attention layers of Gemma 3 and leaves
its sliding-window layers whole (``BasePress.__call__``); this worker does the same on every model whose config
names sliding layers, and counts retention over the compressed layers. Two adapters make kvpress's code run there:
each compressed layer's ``rotary_emb`` is that layer type's view of Gemma 3's per-type rotary embedding
(`LayerTypeRotary`: presses read ``rotary_emb.inv_freq`` and call ``rotary_emb(x, position_ids)``), and the
answer's first tokens are fed one at a time (`decode`): with whole sliding layers beside compressed full layers,
no single cache length gives a one-pass feed its causal mask.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from kvpress import (
    AdaKVPress,
    ChunkKVPress,
    ExpectedAttentionPress,
    FinchPress,
    KeyDiffPress,
    KVzipPress,
    SnapKVPress,
    StreamingLLMPress,
    TOVAPress,
)
from kvpress.pipeline import KVPressTextGenerationPipeline
from kvpress.utils import extract_keys_and_values
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

RATIOS = (0.5, 0.75, 0.875, 0.9375)
QUERY_AWARE = ("finchpress", "snapkv", "adakv_snapkv", "chunkkv_snapkv")
QUERY_AGNOSTIC = ("expected_attention", "keydiff", "tova", "streaming_llm")
PRESSES = QUERY_AWARE + QUERY_AGNOSTIC + ("kvzip",)
SOLVED = 0.3
"""Below this full-context RULER score, press answers are not decoded (retention only), as the report does."""
RATIO_SCORED = ("streaming_llm",)
"""Presses whose ``score()`` reads the compression ratio (StreamingLLM's sink/recent split): replayed by calling
their own ``score()`` at each ratio (it reads only the sequence length, so no forward is needed)."""


def make_press(name: str) -> Any:
    """The press with kvpress's defaults, as its evaluation builds them."""
    factories = {
        "finchpress": FinchPress,
        "snapkv": SnapKVPress,
        "adakv_snapkv": lambda: AdaKVPress(SnapKVPress()),
        "chunkkv_snapkv": lambda: ChunkKVPress(SnapKVPress()),
        "expected_attention": ExpectedAttentionPress,
        "keydiff": KeyDiffPress,
        "tova": TOVAPress,
        "streaming_llm": StreamingLLMPress,
        "kvzip": KVzipPress,
    }
    if name not in factories:
        raise ValueError(f"Unknown press {name!r}; use one of {', '.join(factories)}.")
    return factories[name]()


def _scorer(press: Any) -> Any:
    """The object whose ``score()`` the press calls (the wrapped press for AdaKV and ChunkKV)."""
    return press.press if isinstance(press, (AdaKVPress, ChunkKVPress)) else press


def _layers(model: Any) -> list[Any]:
    return list(model.model.layers)


def compressed_layers(model: Any) -> list[int]:
    """The layers a press compresses: all but sliding-window ones, which kvpress leaves whole on Gemma 3."""
    types = getattr(model.config, "layer_types", None) or ["full_attention"] * len(_layers(model))
    return [index for index, kind in enumerate(types) if kind != "sliding_attention"]


def _has_sliding_layers(model: Any) -> bool:
    return len(compressed_layers(model)) < len(_layers(model))


class LayerTypeRotary(torch.nn.Module):
    """One layer type's view of a rotary embedding that holds one frequency set per layer type (Gemma 3).

    kvpress's presses read ``module.rotary_emb.inv_freq`` (key re-rotation) and call ``module.rotary_emb(x,
    position_ids)`` (ExpectedAttention); Gemma 3's embedding wants the layer type as well.
    """

    def __init__(self, rotary: Any, layer_type: str) -> None:
        super().__init__()
        self.rotary, self.layer_type = rotary, layer_type

    @property
    def inv_freq(self) -> torch.Tensor:
        return getattr(self.rotary, f"{self.layer_type}_inv_freq")

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rotary(x, position_ids, self.layer_type)


def _attach_rotary(model: Any) -> None:
    """Give each compressed layer's attention the rotary embedding kvpress expects (as ``BasePress.__call__``)."""
    rotary = model.model.rotary_emb
    layers = _layers(model)
    for index in compressed_layers(model):
        layer_type = getattr(layers[index], "attention_type", None)
        per_type = hasattr(rotary, f"{layer_type}_inv_freq")
        layers[index].self_attn.rotary_emb = LayerTypeRotary(rotary, layer_type) if per_type else rotary


def ruler_score(metric: str, prediction: str, references: list[str]) -> float:
    """RULER's string_match_all ("all") or string_match_part ("part"), as `benchmarks.ruler.score`.

    Repeated here because this script runs in the kvpress environment, without the ``benchmarks`` package.
    """
    found = [reference.lower() in prediction.lower() for reference in references]
    return sum(found) / len(found) if metric == "all" else float(any(found))


# ----------------------------------------------------------------- capture
class Capture:
    """Scores of every press at every layer from one forward pass (plus KVzip's own pass when asked)."""

    def __init__(self, model: Any, presses: dict[str, Any], agnostic_length: int, window: int) -> None:
        self.model, self.presses = model, presses
        self.agnostic_length, self.window = agnostic_length, window
        # Keyed by layer index: only the compressed layers are captured.
        self.scores: dict[str, dict[int, torch.Tensor]] = {name: {} for name in presses}
        self.kwargs: dict[int, dict[str, Any]] = {}

    def hook(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        hidden = kwargs["hidden_states"]
        keys, values = extract_keys_and_values(kwargs["past_key_values"], module.layer_idx)
        cut = self.agnostic_length
        cos, sin = kwargs["position_embeddings"]
        agnostic_kwargs = dict(kwargs, position_embeddings=(cos[:, :cut], sin[:, :cut]))
        agnostic_kwargs["cache_position"] = kwargs["cache_position"][:cut]
        self.kwargs[module.layer_idx] = {"full": kwargs, "agnostic": agnostic_kwargs}
        for name, press in self.presses.items():
            if name == "kvzip" or name in RATIO_SCORED:
                continue
            if name in QUERY_AWARE:
                args_ = (module, hidden, keys, values, output[1], kwargs)
            else:
                args_ = (module, hidden[:, :cut], keys[:, :, :cut], values[:, :, :cut], None, agnostic_kwargs)
            if name == "finchpress":
                press.window_size = self.window
            self.scores[name][module.layer_idx] = _scorer(press).score(*args_).detach().clone()
        return output

    def run(self, input_ids: torch.Tensor) -> DynamicCache:
        language_model = self.model.model
        _attach_rotary(self.model)
        layers = _layers(self.model)
        hooks = []
        try:
            for index in compressed_layers(self.model):
                hooks.append(layers[index].self_attn.register_forward_hook(self.hook, with_kwargs=True))
            cache = DynamicCache()
            with torch.inference_mode():
                language_model(input_ids=input_ids, past_key_values=cache)
        finally:
            for handle in hooks:
                handle.remove()
        return cache


def capture_kvzip(model: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """KVzip's ratio-independent ``score_val`` ``[layers, 1, kv_heads, n]`` from its own reconstruction pass."""
    press = KVzipPress(compression_ratio=0.5)
    captured: dict[str, torch.Tensor] = {}

    def keep_scores(_model: Any) -> None:
        assert press.score_val is not None
        captured["score_val"] = press.score_val.detach().clone()

    press.compress_post = keep_scores  # type: ignore[method-assign]
    with torch.inference_mode(), press(model):
        model.model(input_ids=input_ids, past_key_values=DynamicCache())
    return captured["score_val"]


# ------------------------------------------------------------------ replay
@contextlib.contextmanager
def replayed_scores(press: Any, scores: torch.Tensor) -> Any:
    """``score()`` of ``press`` returns ``scores`` (a fresh copy: AdaKV writes into them)."""
    scorer = _scorer(press)
    scorer.score = lambda *args, **kwargs: scores.clone()
    try:
        yield press
    finally:
        del scorer.score


def prune(
    name: str, press: Any, model: Any, capture: Capture, cache: DynamicCache, ratio: float, kvzip: Any = None
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[Any]]:
    """The kept positions ``[kv_heads, n]`` bool of each compressed layer; every layer's keys/values and masks.

    Returns ``(kept, caches, masks)``: ``kept`` in `compressed_layers` order, ``caches[l] = (keys, values)`` for
    every layer (sliding layers whole), ``masks[l]`` the ``masked_key_indices`` the press left on the module
    (``None`` for presses that gather).
    """
    aware = name in QUERY_AWARE
    kept, caches, masks = [], [], []
    compressed = set(compressed_layers(model))
    if name == "kvzip":
        press = KVzipPress(compression_ratio=ratio)
        press.score_val = kvzip.clone()
        press.compress_post(model)
    for layer_idx, layer in enumerate(_layers(model)):
        module = layer.self_attn
        keys, values = extract_keys_and_values(cache, layer_idx)
        n = keys.shape[2] if aware else capture.agnostic_length
        keys, values = keys[:, :, :n], values[:, :, :n]
        if layer_idx not in compressed:
            caches.append((keys, values))
            masks.append(None)
            continue
        if name == "kvzip":
            mask = module.masked_key_indices
            module.masked_key_indices = None
            out_keys, out_values = keys, values
        else:
            kwargs = capture.kwargs[layer_idx]["full" if aware else "agnostic"]
            hidden = torch.empty(1, n, 0)
            module.masked_key_indices = None
            press.compression_ratio = ratio
            replay = contextlib.nullcontext(press)
            if name not in RATIO_SCORED:
                replay = replayed_scores(press, capture.scores[name][layer_idx])
            with replay:
                code = torch.arange(n, dtype=values.dtype).view(1, 1, n, 1).expand_as(values).contiguous()
                _, coded = press.compress(module, hidden, keys, code, None, kwargs)
                mask = getattr(module, "masked_key_indices", None)
                module.masked_key_indices = None
                out_keys, out_values = press.compress(module, hidden, keys, values, None, kwargs)
                module.masked_key_indices = None
        heads = keys.shape[1]
        keep = torch.zeros(heads, n, dtype=torch.bool)
        if mask is not None:
            keep[:] = True
            keep[mask[1], mask[2]] = False
        else:
            keep.scatter_(1, coded[0, :, :, 0].long(), True)
        kept.append(keep)
        caches.append((out_keys, out_values))
        masks.append(mask)
    return kept, caches, masks


def decode(
    model: Any,
    tokenizer: Any,
    caches: list[tuple[torch.Tensor, torch.Tensor]],
    masks: list[Any],
    feed_ids: list[int],
    context_length: int,
    max_new_tokens: int,
) -> str:
    """Greedy answer from the compressed cache with kvpress's own ``generate_answer``.

    With whole sliding layers (Gemma 3) the cache's layers differ in length, and a multi-token feed's causal mask
    would be built from one of them: so all but the last feed token go in one at a time, at their true positions
    (each then sees the whole cache, and the sliding layers their window).
    """
    sliding = _has_sliding_layers(model)
    cache = DynamicCache(config=model.config) if sliding else DynamicCache()
    for layer_idx, (keys, values) in enumerate(caches):
        cache.update(keys.clone(), values.clone(), layer_idx)
    modules = [layer.self_attn for layer in _layers(model)]
    try:
        for module, mask in zip(modules, masks, strict=True):
            module.masked_key_indices = mask
        pipeline = SimpleNamespace(model=model, tokenizer=tokenizer)
        with torch.inference_mode():
            if sliding:
                for token in feed_ids[:-1]:
                    position = torch.tensor([[context_length]])
                    model(input_ids=torch.tensor([[token]]), past_key_values=cache, position_ids=position)
                    context_length += 1
                feed_ids = feed_ids[-1:]
            return KVPressTextGenerationPipeline.generate_answer(
                pipeline,  # type: ignore[arg-type]
                torch.tensor([feed_ids]),
                cache,
                context_length,
                max_new_tokens,
            )
    finally:
        for module in modules:
            module.masked_key_indices = None


# --------------------------------------------------------------------- run
def retention(kept: list[torch.Tensor], offset: int, evidence: list[int]) -> float:
    """The share of the evidence's (compressed layer, KV head, token) entries kept; ``evidence`` indexes the context."""
    if not evidence:
        return float("nan")
    index = torch.tensor(evidence) + offset
    return float(torch.stack([k[:, index].float().mean() for k in kept]).mean())


def context_kept(kept: list[torch.Tensor], offset: int, length: int) -> float:
    return float(torch.stack([k[:, offset : offset + length].float().mean() for k in kept]).mean())


def run_case(
    model: Any,
    tokenizer: Any,
    case: dict[str, Any],
    press_names: list[str],
    ratios: list[float],
    max_new_tokens: int,
    done: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    prefix, context, question, suffix = (case[k] for k in ("prefix_ids", "context_ids", "question_ids", "suffix_ids"))
    agnostic_length = len(prefix) + len(context)
    input_ids = torch.tensor([prefix + context + question])
    presses = {name: make_press(name) for name in press_names}
    started = time.perf_counter()
    capture = Capture(model, presses, agnostic_length, len(question))
    cache = capture.run(input_ids)
    forward_s = time.perf_counter() - started
    kvzip = None
    if "kvzip" in presses:
        started = time.perf_counter()
        kvzip = capture_kvzip(model, input_ids[:, :agnostic_length])
        forward_s += time.perf_counter() - started
    records = []
    example = case["example"]
    base = {
        "case": case["key"],
        "task": case["task"],
        "metric": example["metric"],
        "answers": example["answers"],
        "capture_s": round(forward_s, 2),
    }
    full_answer = done.get("full", {}).get("answer")
    if "full" not in done:
        full = [extract_keys_and_values(cache, i) for i in range(len(_layers(model)))]
        started = time.perf_counter()
        full_answer = decode(model, tokenizer, full, [None] * len(full), suffix, input_ids.shape[1], max_new_tokens)
        records.append(
            base
            | {
                "method": "full",
                "ratio": 0.0,
                "retention": 1.0,
                "context_kept": 1.0,
                "answer": full_answer,
                "generate_s": round(time.perf_counter() - started, 2),
            }
        )
    # Answers are decoded only where full context solves the input: elsewhere RULER's score says nothing about
    # the press, and retention (which needs no answer) is what is reported.
    answering = bool(max_new_tokens) and full_answer is not None
    answering = answering and ruler_score(example["metric"], full_answer, example["answers"]) >= SOLVED
    for name in press_names:
        for ratio in ratios:
            if f"{name}/{ratio}" in done:
                continue
            started = time.perf_counter()
            kept, caches, masks = prune(name, presses[name], model, capture, cache, ratio, kvzip)
            prune_s = time.perf_counter() - started
            aware = name in QUERY_AWARE
            feed = suffix if aware else question + suffix
            length = input_ids.shape[1] if aware else agnostic_length
            if name == "finchpress":  # FinchPress re-rotates the kept keys; the pipeline then counts the cache
                length = caches[0][0].shape[2]  # layer 0's, a whole sliding layer on Gemma 3, as kvpress counts
            started = time.perf_counter()
            answer = decode(model, tokenizer, caches, masks, feed, length, max_new_tokens) if answering else None
            records.append(
                base
                | {
                    "method": name,
                    "ratio": ratio,
                    "retention": retention(kept, len(prefix), case["evidence_tokens"]),
                    "context_kept": context_kept(kept, len(prefix), len(context)),
                    "answer": answer,
                    "prune_s": round(prune_s, 3),
                    "generate_s": round(time.perf_counter() - started, 2),
                }
            )
    return records


def load(model_dir: str) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval(), tokenizer


# -------------------------------------------------------------- self-check
@contextlib.contextmanager
def pressed(press: Any, model: Any) -> Any:
    """``press(model)``, or on a model with sliding layers, the press's hooks on its compressed layers only.

    That is what ``BasePress.__call__`` does for multimodal Gemma 3, with `LayerTypeRotary` added.
    """
    if not _has_sliding_layers(model):
        with press(model):
            yield
        return
    press.post_init_from_model(model)
    _attach_rotary(model)
    layers = _layers(model)
    hooks = [
        layers[index].self_attn.register_forward_hook(press.forward_hook, with_kwargs=True)
        for index in compressed_layers(model)
    ]
    if isinstance(press, FinchPress):  # its delimiter detection, as FinchPress.__call__ adds it
        hooks.append(model.model.embed_tokens.register_forward_hook(press.embed_token_forward_hook))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def real_kept(name: str, model: Any, tokenizer: Any, ids: list[int], split: int, ratio: float) -> list[torch.Tensor]:
    """Kept positions of each compressed layer from running the press for real at ``ratio``.

    Gathered rows are matched back to the full cache by value.
    """
    aware = name in QUERY_AWARE
    full_cache = DynamicCache()
    sequence = ids if aware else ids[:split]
    with torch.inference_mode():
        model.model(input_ids=torch.tensor([sequence]), past_key_values=full_cache)
    press = make_press(name)
    press.compression_ratio = ratio
    inputs = sequence
    if name == "finchpress":
        tokenizer = copy.deepcopy(tokenizer)
        press.update_model_and_tokenizer(model, tokenizer)
        inputs = ids[:split] + [press.delimiter_token_id] + ids[split:]
    cache = DynamicCache()
    with torch.inference_mode(), pressed(press, model):
        model.model(input_ids=torch.tensor([inputs]), past_key_values=cache)
    kept = []
    layers = _layers(model)
    for layer_idx in compressed_layers(model):
        layer = layers[layer_idx]
        _, full_values = extract_keys_and_values(full_cache, layer_idx)
        _, values = extract_keys_and_values(cache, layer_idx)
        mask = getattr(layer.self_attn, "masked_key_indices", None)
        heads, n = full_values.shape[1], full_values.shape[2]
        keep = torch.zeros(heads, n, dtype=torch.bool)
        if mask is not None:
            keep[:] = True
            keep[mask[1], mask[2]] = False
            layer.self_attn.masked_key_indices = None
        else:
            for head in range(heads):
                lookup = {tuple(row.tolist()): j for j, row in enumerate(full_values[0, head])}
                for row in values[0, head]:
                    keep[head, lookup[tuple(row.tolist())]] = True
        kept.append(keep)
    return kept


def _tiny(model_class: Any, config_class: Any, **settings: Any) -> Any:
    """A small random model (seeded) with the settings both tiny models share."""
    torch.manual_seed(0)
    shared = {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4}
    config = config_class(**shared, max_position_embeddings=1024, attn_implementation="sdpa", **settings)
    return model_class(config).eval()


def tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return _tiny(LlamaForCausalLM, LlamaConfig, num_hidden_layers=2, num_key_value_heads=2)


def tiny_gemma3() -> Any:
    """Gemma 3's text model in small: sliding and full layers, per-type rotary, q/k norms, one KV head."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    layer_types = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    return _tiny(
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        num_hidden_layers=4,
        num_key_value_heads=1,
        head_dim=32,
        layer_types=layer_types,
        sliding_window=64,
    )


class _TinyTokenizer:
    """Just enough tokenizer for FinchPress's ``update_model_and_tokenizer`` on the tiny model."""

    def __init__(self, size: int) -> None:
        self.size, self.extra = size, {}

    def get_vocab(self) -> dict[str, int]:
        return dict(self.extra)

    def add_special_tokens(self, tokens: dict[str, list[str]]) -> None:
        for token in tokens["additional_special_tokens"]:
            self.extra.setdefault(token, self.size + len(self.extra))

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.extra[token]

    def __len__(self) -> int:
        return self.size + len(self.extra)


def self_check(
    press_names: list[str], ratios: list[float], model: Any = None, n: int = 300, window: int = 12
) -> list[str]:
    """Replayed kept positions against the real press at each ratio, on a tiny random model; returns failures.

    The model defaults to `tiny_llama`.
    """
    model = model if model is not None else tiny_llama()
    tokenizer = _TinyTokenizer(1024)
    # Distinct token ids, so that every value row is unique and the real press's kept rows can be matched back.
    ids = torch.randperm(1024, generator=torch.Generator().manual_seed(1))[: n + window].tolist()
    presses = {name: make_press(name) for name in press_names if name != "kvzip"}
    capture = Capture(model, presses, n, window)
    cache = capture.run(torch.tensor([ids]))
    failures = []
    for name in press_names:
        if name == "kvzip":
            continue  # needs the model's own tokenizer: `kvzip_check` with --model-dir
        for ratio in ratios:
            replayed, _, _ = prune(name, presses[name], model, capture, cache, ratio)
            real = real_kept(name, model, tokenizer, ids, n, ratio)
            same = all(torch.equal(a, b) for a, b in zip(replayed, real, strict=True))
            kept = int(replayed[0].sum())
            verdict = "identical" if same else "DIFFERENT"
            label = f"{type(model).__name__[:9]} {name}"
            print(f"{label:<30} ratio {ratio:<7} first compressed layer keeps {kept:>4} entries  {verdict}")
            if not same:
                failures.append(f"{name}@{ratio}")
    return failures


def _masks(model: Any) -> list[tuple[list[int], list[int]]]:
    """Per layer, the (head, position) pairs KVzip masked, read from the modules (then cleared)."""
    kept = []
    for layer in _layers(model):
        batch, heads, positions = layer.self_attn.masked_key_indices
        layer.self_attn.masked_key_indices = None
        kept.append((heads.tolist(), positions.tolist()))
    return kept


def kvzip_check(model_dir: str, ratios: list[float], n: int = 160) -> list[str]:
    """KVzip replayed from its captured ``score_val`` against KVzip run for real, on the real model (short input).

    KVzip needs the model's own tokenizer and chat template, so the tiny random Llama cannot run it.
    """
    model, tokenizer = load(model_dir)
    text = " ".join(f"Line {i}: the harbour froze in winter {i * 7 % 13} and the ships waited." for i in range(40))
    ids = torch.tensor([tokenizer(text).input_ids[:n]])
    score_val = capture_kvzip(model, ids)
    failures = []
    for ratio in ratios:
        press = KVzipPress(compression_ratio=ratio)
        with torch.inference_mode(), press(model):
            model.model(input_ids=ids, past_key_values=DynamicCache())
        real = _masks(model)
        replay = KVzipPress(compression_ratio=ratio)
        replay.score_val = score_val.clone()
        replay.compress_post(model)
        replayed = _masks(model)
        same = all(
            sorted(zip(*a, strict=True)) == sorted(zip(*b, strict=True)) for a, b in zip(real, replayed, strict=True)
        )
        pruned = sum(len(heads) for heads, _ in real)
        print(
            f"{'kvzip':<20} ratio {ratio:<7} prunes {pruned:>5} entries in all  {'identical' if same else 'DIFFERENT'}"
        )
        if not same:
            failures.append(f"kvzip@{ratio}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", help="JSON lines written by `python -m benchmarks peers`")
    parser.add_argument("--model-dir", help="the converted model folder finch-rag loads")
    parser.add_argument("--journal", help="JSON lines to append records to (resumable)")
    parser.add_argument("--presses", nargs="+", default=list(PRESSES), choices=PRESSES)
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument(
        "--self-check",
        action="store_true",
        help="replayed vs real kept positions at each ratio on tiny random Llama and Gemma 3 (KVzip: --model-dir)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.self_check:
        presses = [name for name in args.presses if name != "kvzip"]
        failures = self_check(args.presses, args.ratios)
        failures += self_check(presses, args.ratios, model=tiny_gemma3())  # kvpress refuses KVzip on Gemma 3
        if "kvzip" in args.presses and args.model_dir:
            failures += kvzip_check(args.model_dir, args.ratios)
        print("SELF-CHECK", "FAILED: " + ", ".join(failures) if failures else "PASSED")
        return 1 if failures else 0
    if not (args.cases and args.model_dir and args.journal):
        parser.error("--cases, --model-dir and --journal are needed (or --self-check).")
    model, tokenizer = load(args.model_dir)
    journal = Path(args.journal)
    done: dict[str, dict[str, dict[str, Any]]] = {}
    if journal.exists():
        for line in journal.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                key = "full" if record["method"] == "full" else f"{record['method']}/{record['ratio']}"
                done.setdefault(record["case"], {})[key] = record
    for line in Path(args.cases).read_text().splitlines():
        case = json.loads(line)
        finished = done.get(case["key"], {})
        wanted = {"full"} | {f"{p}/{r}" for p in args.presses for r in args.ratios}
        if wanted <= finished.keys():
            continue
        presses = [p for p in args.presses if any(f"{p}/{r}" not in finished for r in args.ratios)]
        records = run_case(model, tokenizer, case, presses, args.ratios, args.max_new_tokens, finished)
        with journal.open("a") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        print(f"{case['key']}: {len(records)} records, capture {records[0]['capture_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
