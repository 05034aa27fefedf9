"""Cost suite: time and memory of FINCH against full-context prefill, as the context grows.

Each (method, length) runs in a fresh subprocess so that its peak RSS is its own. Within one run both
methods see the same input, so the ratios are the figures to quote; absolute seconds depend on the
machine (named in the output).

    python -m benchmarks cost --lengths 2048 8192 32768 --target-tokens 256 --chunk-size 512

``--alternate`` measures in one process instead, alternating the methods within each repeat, with answers of
equal length (no early stop), and adds decoding from the compressed cache against transformers' own
``generate`` on a static cache and against the machine's weight-read floor (`_alternate`, ``cost_alternate.md``):

    python -m benchmarks cost --alternate --lengths 1024 2048 --chunk-size auto 512 --threads 1

``--documents`` (with ``--alternate``) adds the front end's path on the same context as one document's text,
`FinchRAG.answer_from_documents` (what ``finch-rag ask --file`` runs: pieces ranked, sentence fusion), and times
its ranking and fusion apart (``cost_alternate_documents.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

from finch_rag.arguments import chunk_size

from .common import RESULTS_DIR, cpu_name, data_dir

_QUESTION = "What does the author say about how startups should choose what to work on?"


def _haystack_ids(tokenizer: Any, data_dir: Path, length: int) -> list[int]:
    essays = sorted((data_dir / "paul_graham_essays").glob("*.txt"))
    if not essays:
        raise FileNotFoundError(f"No essays under {data_dir / 'paul_graham_essays'}; pass --data.")
    ids: list[int] = []
    while len(ids) < length:
        for essay in essays:
            ids += tokenizer(essay.read_text() + "\n\n", add_special_tokens=False).input_ids
            if len(ids) >= length:
                break
    return ids[:length]


def _decode_seconds(model: Any, cache: Any, logits: Any, steps: int) -> float:
    """Seconds for ``steps`` greedy single-token steps on ``cache`` (no early stop, so both methods do equal work)."""
    import torch

    with torch.inference_mode():
        started = time.perf_counter()
        for _ in range(steps):
            token = logits[:, -1].argmax(-1, keepdim=True)
            logits = model(input_ids=token, past_key_values=cache, use_cache=True).logits
        return time.perf_counter() - started


def _worker(method: str, length: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import DynamicCache

    from finch_rag import FinchCompressor, FinchConfig, Passage, load_model
    from finch_rag.prompts import build_prompt

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, dtype=args.dtype)
    config = FinchConfig(target_tokens=args.target_tokens, chunk_size=args.chunk_size, progress=False)
    compressor = FinchCompressor(model, tokenizer, config)
    context = _haystack_ids(tokenizer, data_dir(args.data), length)
    # The same prompt parts as compress() builds, around a long context of raw token ids.
    parts = build_prompt(tokenizer, [Passage("placeholder")], _QUESTION)
    prefix_ids, question_ids, suffix_ids = parts.prefix_ids, parts.question_ids, parts.suffix_ids
    compressor.compress_ids(context[:64], question_ids, prefix_ids)  # warm-up
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record: dict[str, Any] = {"method": method, "context_tokens": length, "rss_after_load_mb": rss_loaded}
    window = compressor.context_window
    prefill_s, decode_s, per_token_s, peak_entries = [], [], [], 0
    for _ in range(args.repeats):
        if method == "finch":
            started = time.perf_counter()
            compressed = compressor.compress_ids(context, question_ids, prefix_ids, suffix_ids=suffix_ids)
            prefill_s.append(time.perf_counter() - started)
            peak_entries = compressed.stats["peak_kv_entries"]
            started = time.perf_counter()
            compressor.generate(compressed, max_new_tokens=args.new_tokens)
            decode_s.append(time.perf_counter() - started)
            cache = compressed.cache.as_cache()
            answer_input = torch.cat((compressed.question_ids, compressed.suffix_ids)).unsqueeze(0)
            with torch.inference_mode():
                logits = model(input_ids=answer_input, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
            per_token_s.append(_decode_seconds(model, cache, logits, args.new_tokens) / args.new_tokens)
        else:
            full = prefix_ids + context + question_ids + suffix_ids
            if len(full) + args.new_tokens > window:
                record["skipped"] = f"{len(full)} prompt tokens exceed the model's {window}-position window"
                return record
            with torch.inference_mode():
                started = time.perf_counter()
                cache = DynamicCache()
                ids = torch.tensor([full])
                logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
                prefill_s.append(time.perf_counter() - started)
                peak_entries = cache.get_seq_length()
                decode_s.append(_decode_seconds(model, cache, logits, args.new_tokens))
                per_token_s.append(decode_s[-1] / args.new_tokens)
    record |= {
        "prefill_or_compress_s": statistics.median(prefill_s),
        "answer_s": statistics.median(decode_s),
        "decode_ms_per_token": 1000 * statistics.median(per_token_s),
        "peak_kv_entries": peak_entries,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "repeats": args.repeats,
    }
    return record


def _timed_tokens(token_ids: Any) -> tuple[float, float, int]:
    """Drain a token iterator: (seconds to the first token, seconds for the rest, tokens)."""
    started = time.perf_counter()
    first = last = started
    count = 0
    for _ in token_ids:
        last = time.perf_counter()
        if count == 0:
            first = last
        count += 1
    return first - started, last - first, count


def _weight_floor_ms(model: Any) -> tuple[float, float]:
    """(ms to read every weight once at this core's streaming bandwidth, that bandwidth in GB/s).

    Greedy decoding of one sequence multiplies each weight matrix by one vector, so each token reads all the
    weights from memory: no decoding loop of the same weights and dtype gets below this time per token.
    """
    import torch

    block = torch.ones(64 * 2**20)  # 256 MiB, far past the caches
    seconds = []
    for _ in range(5):
        started = time.perf_counter()
        block.sum()
        seconds.append(time.perf_counter() - started)
    bandwidth = block.numel() * block.element_size() / statistics.median(seconds)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return 1000 * weight_bytes / bandwidth, bandwidth / 1e9


def _alternate(args: argparse.Namespace, argv: list[str]) -> int:
    """Finch (one row per --chunk-size) vs full prefill, compress+answer and decoding, in one process.

    Each repeat runs every method once, in turn, on the same input; the table gives medians over repeats and
    ratios of those medians. Answers are ``--new-tokens`` long for every method: decoding does not stop at
    end-of-sequence, so all methods decode the same number of tokens through the library's own loop
    (`finch_rag.generation.generate_token_ids`).
    """
    import threading

    import torch
    from transformers import DynamicCache, StaticCache

    from finch_rag import FinchCompressor, FinchConfig, FinchRAG, Passage, PrefixCache, load_model
    from finch_rag.compression.cache import all_layer_tensors, cache_kwargs
    from finch_rag.generation import SamplingParams, generate_token_ids
    from finch_rag.prompts import build_prompt

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, dtype=args.dtype)
    lock = threading.RLock()
    params = SamplingParams(max_new_tokens=args.new_tokens)
    compressors = {
        label: FinchCompressor(
            model,
            tokenizer,
            FinchConfig(target_tokens=args.target_tokens, **options),
            prefix_cache=PrefixCache() if held_prefix else None,
        )
        for label, (options, held_prefix) in _finch_rows(args).items()
    }
    parts = build_prompt(tokenizer, [Passage("placeholder")], _QUESTION)
    prefix_ids, question_ids, suffix_ids = parts.prefix_ids, parts.question_ids, parts.suffix_ids
    warm_up = _haystack_ids(tokenizer, data_dir(args.data), 64)
    next(iter(compressors.values())).compress_ids(warm_up, question_ids, prefix_ids)
    window = next(iter(compressors.values())).context_window

    def answered(compressed: Any, compress_s: float) -> dict[str, Any]:
        """Answer from ``compressed`` (the question again, then the tokens), with the compression's time."""
        answer_input = torch.cat((compressed.question_ids, compressed.suffix_ids)).unsqueeze(0)
        tokens = generate_token_ids(model, compressed.cache.as_cache(), answer_input, params, set(), lock)
        first_s, rest_s, count = _timed_tokens(tokens)
        return {
            "compress_s": compress_s,
            "answer_s": first_s + rest_s,
            "total_s": compress_s + first_s + rest_s,
            "decode_ms": 1000 * rest_s / (count - 1),
            "chunks": compressed.stats["num_chunks"],
            "cache": compressed.cache_length,
            "answer_input": answer_input,
            "compressed": compressed,
        }

    def finch(compressor: FinchCompressor, context: list[int]) -> dict[str, Any]:
        started = time.perf_counter()
        compressed = compressor.compress_ids(context, question_ids, prefix_ids, suffix_ids=suffix_ids)
        return answered(compressed, time.perf_counter() - started)

    rag = FinchRAG(compressor=next(iter(compressors.values())), max_new_tokens=1)

    def documents(context: list[int]) -> dict[str, Any]:
        """The context as one document's text through `FinchRAG.answer_from_documents`, answered like `finch`.

        Its pieces are cut and ranked, and sentence fusion and its passage factor apply (the first --chunk-size).
        """
        answer = rag.answer_from_documents(_QUESTION, [str(tokenizer.decode(context))])
        stats, compressed = answer.stats, answer.compressed
        assert compressed is not None
        # Ranking, sentence fusion and compression; the one answer token it decoded is not counted.
        return answered(compressed, stats["retrieval_seconds"] + stats["compression_seconds"]) | {
            "context_tokens": stats["tokens_before"],
            "passages": stats["passages"],
            "ranking_s": stats["retrieval_seconds"],
            "fusion_s": fusion_seconds(answer.sources),
        }

    def fusion_seconds(sources: list[Any]) -> float:
        """Sentence fusion's share, timed apart: the plan the front end made for these ranked pieces, its prior."""
        ranked = [Passage(source.text, source.title, source.metadata) for source in sources]
        embedder = cast(Any, rag.retriever).model  # answer_from_documents ranked and fused with it
        plan = rag.passage_allocation.plan(
            ranked,
            rag.config,
            [source.rank for source in sources],
            [source.score for source in sources],
            question=_QUESTION,
            embedder=embedder,
            scored_by=embedder,
        )
        if plan.token_prior is None:  # a short document is not cut, and one passage is not fused
            return 0.0
        parts = build_prompt(tokenizer, plan.packed, _QUESTION)
        started = time.perf_counter()
        plan.token_prior(parts)
        return time.perf_counter() - started

    def full(context: list[int]) -> dict[str, float]:
        prompt = torch.tensor([prefix_ids + context + question_ids + suffix_ids])
        started = time.perf_counter()
        tokens = generate_token_ids(model, DynamicCache(), prompt, params, set(), lock)
        first_s, rest_s, count = _timed_tokens(tokens)
        return {
            "prefill_s": first_s,
            "total_s": time.perf_counter() - started,
            "decode_ms": 1000 * rest_s / (count - 1),
        }

    def static_generate(compressed: Any, answer_input: Any, new_tokens: int) -> float:
        """Seconds of transformers' ``generate`` on a StaticCache holding a copy of the compressed cache."""
        keys, values = all_layer_tensors(compressed.cache.as_cache())
        cached = keys[0].shape[2]
        cache = StaticCache(config=model.config, max_cache_len=cached + answer_input.shape[1] + new_tokens)
        for layer, (layer_keys, layer_values) in enumerate(zip(keys, values, strict=True)):
            cache.update(layer_keys.clone(), layer_values.clone(), layer)
        # generate skips the ids the cache already holds; any ids stand in for them.
        ids = torch.cat((torch.zeros((1, cached), dtype=torch.long), answer_input), dim=1)
        started = time.perf_counter()
        with torch.inference_mode():
            cast(Any, model).generate(  # GenerationMixin's generate, which the stubs do not show on the model
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
                **cache_kwargs(model, cache),  # the name generate takes it under, as the forward does
            )
        return time.perf_counter() - started

    if args.documents:  # loads the embedding model, and warms its first batches
        documents(_haystack_ids(tokenizer, data_dir(args.data), 512))
    floor_ms, bandwidth = _weight_floor_ms(model)
    records: list[dict[str, Any]] = []
    for length in args.lengths:
        context = _haystack_ids(tokenizer, data_dir(args.data), length)
        fits = len(prefix_ids + context + question_ids + suffix_ids) + args.new_tokens <= window
        samples: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.repeats):
            for label, compressor in compressors.items():
                samples.setdefault(label, []).append(finch(compressor, context))
            if args.documents:
                samples.setdefault("documents", []).append(documents(context))
            if fits:
                samples.setdefault("full", []).append(full(context))
            last = samples[next(iter(compressors))][-1]
            one = static_generate(last["compressed"], last["answer_input"], 1)
            many = static_generate(last["compressed"], last["answer_input"], args.new_tokens)
            samples.setdefault("static", []).append({"decode_ms": 1000 * (many - one) / (args.new_tokens - 1)})
        record: dict[str, Any] = {"context_tokens": length}
        for method, runs in samples.items():
            record[method] = {
                key: statistics.median(run[key] for run in runs)
                for key in runs[0]
                if key not in ("answer_input", "compressed")
            }
        records.append(record)
        print(json.dumps(record), file=sys.stderr)

    machine = (
        f"{cpu_name()}, {os.cpu_count()} cores, no GPU used, torch {torch.__version__}, threads={args.threads}, "
        f"weights {next(model.parameters()).dtype}"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"machine": machine, "args": vars(args), "records": records}
    summary |= {"weight_floor_ms_per_token": floor_ms, "read_bandwidth_gb_s": bandwidth}
    (out / "cost_alternate.json").write_text(json.dumps(summary, indent=2))
    table = _alternate_markdown(records, machine, args, floor_ms, bandwidth)
    (out / "cost_alternate.md").write_text(
        "# Cost, one process: Finch vs full prefill, methods alternated\n\nCommand: `python -m benchmarks cost "
        + " ".join(argv)
        + "`\n\n"
        + table
    )
    print(table)
    return 0


def _finch_rows(args: argparse.Namespace) -> dict[str, tuple[dict[str, Any], bool]]:
    """The Finch rows of ``--alternate``, one per ``--chunk-size``: label -> (`FinchConfig` options, held prefix).

    The flag says whether the row's compressor holds a `PrefixCache`. ``--compressed-too`` adds each with
    ``answer_cache="compressed"`` beside it: where ``"auto"`` re-reads the kept tokens (a model with sliding-window
    layers), the rows then show what the re-read costs. ``--held-prefix`` adds each with a prefix cache held across
    calls, as ``FinchCompressor()`` on its own model and the server keep one.
    """
    rows: dict[str, tuple[dict[str, Any], bool]] = {}
    for size in args.chunk_size:
        rows[f"finch S={size}"] = ({"chunk_size": size}, False)
        if args.compressed_too:
            rows[f"finch S={size}, compressed cache"] = ({"chunk_size": size, "answer_cache": "compressed"}, False)
        if args.held_prefix:
            rows[f"finch S={size}, held prefix"] = ({"chunk_size": size}, True)
    return rows


def _alternate_markdown(
    records: list[dict[str, Any]], machine: str, args: argparse.Namespace, floor_ms: float, bandwidth: float
) -> str:
    sizes = list(_finch_rows(args))
    lines = [
        f"Machine: {machine}. Model: {args.model or 'SmolLM2-135M-Instruct (embedded default)'}, "
        f"B={args.target_tokens}, {args.new_tokens} answer tokens for every method (no early stop), median of "
        f"{args.repeats} repeats; each repeat runs every method once, in turn, in one process.",
        "",
        "| context tokens | method | chunks | compress or prefill s | compress+answer s | ratio to full |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for record in records:
        full = record.get("full")
        for method in [*sizes, "documents"]:
            row = record.get(method)
            if row is None:
                continue
            ratio = f"{row['total_s'] / full['total_s']:.2f}" if full else "-"
            name = (
                f"FinchRAG.answer_from_documents, {row['context_tokens']:.0f} tokens"
                if method == "documents"
                else method
            )
            lines.append(
                f"| {record['context_tokens']} | {name} | {row['chunks']:.0f} | {row['compress_s']:.2f} | "
                f"{row['total_s']:.2f} | {ratio} |"
            )
        if full:
            lines.append(
                f"| {record['context_tokens']} | full prefill | - | {full['prefill_s']:.2f} | {full['total_s']:.2f} | "
                "1.00 |"
            )
        else:
            lines.append(f"| {record['context_tokens']} | full prefill | - | past the window | - | - |")
    if any("documents" in record for record in records):
        lines += [
            "",
            "Within the `answer_from_documents` row: ranking the pieces (its `retrieval_seconds`), and sentence "
            "fusion's prior for the same plan, timed apart (median seconds):",
            "",
            "| context tokens | pieces | ranking s | fusion s | compress s |",
            "|---:|---:|---:|---:|---:|",
        ]
        for record in records:
            row = record["documents"]
            lines.append(
                f"| {record['context_tokens']} | {row['passages']:.0f} | {row['ranking_s']:.2f} | "
                f"{row['fusion_s']:.2f} | {row['compress_s']:.2f} |"
            )
    lines += [
        "",
        f"Decoding, ms per token after the first (greedy, {args.new_tokens} tokens): the library's loop on the "
        f"compressed cache ({sizes[0]}), transformers' `generate` on a StaticCache holding a copy of the same "
        "compressed cache, and the library's loop on the full context's cache. Floor: the time to read every "
        f"weight once at this core's streaming bandwidth, {bandwidth:.1f} GB/s measured in the same run "
        "(`_weight_floor_ms`).",
        "",
        "| context tokens | Finch loop ms/token | static-cache generate ms/token | full-context ms/token | "
        "weight-read floor ms/token | Finch / floor |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for record in records:
        finch_ms = record[sizes[0]]["decode_ms"]
        full_ms = f"{record['full']['decode_ms']:.1f}" if "full" in record else "past the window"
        lines.append(
            f"| {record['context_tokens']} | {finch_ms:.1f} | {record['static']['decode_ms']:.1f} | {full_ms} | "
            f"{floor_ms:.1f} | {finch_ms / floor_ms:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _markdown(records: list[dict[str, Any]], machine: str, args: argparse.Namespace) -> str:
    by_key = {(r["method"], r["context_tokens"]): r for r in records}
    lines = [
        f"Machine: {machine}. Model: {args.model or 'SmolLM2-135M-Instruct (embedded default)'}, "
        f"B={args.target_tokens}, "
        f"S={args.chunk_size}, {args.new_tokens} answer tokens, median of {args.repeats}.",
        "",
        "| context tokens | Finch compress s | full prefill s | compress / prefill | Finch compress+answer s "
        "| full prefill+answer s | ratio | Finch peak KV | full peak KV | Finch peak RSS MB | full peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for length in args.lengths:
        finch, full = by_key.get(("finch", length), {}), by_key.get(("full", length), {})
        if "skipped" in full or not full:
            full_cols = ["impossible (past window)"] + ["-"] * 4 + ["-", "-"]
            lines.append(
                f"| {length} | {finch['prefill_or_compress_s']:.2f} | {full_cols[0]} | - | "
                f"{finch['prefill_or_compress_s'] + finch['answer_s']:.2f} | - | - | {finch['peak_kv_entries']} | - | "
                f"{finch['peak_rss_mb']:.0f} | - |"
            )
            continue
        finch_total = finch["prefill_or_compress_s"] + finch["answer_s"]
        full_total = full["prefill_or_compress_s"] + full["answer_s"]
        lines.append(
            f"| {length} | {finch['prefill_or_compress_s']:.2f} | {full['prefill_or_compress_s']:.2f} | "
            f"{finch['prefill_or_compress_s'] / full['prefill_or_compress_s']:.2f} | {finch_total:.2f} | "
            f"{full_total:.2f} | {finch_total / full_total:.2f} | {finch['peak_kv_entries']} | "
            f"{full['peak_kv_entries']} | {finch['peak_rss_mb']:.0f} | {full['peak_rss_mb']:.0f} |"
        )
    lines += [
        "",
        f"Decoding speed: ms per generated token over {args.new_tokens} greedy steps on the cache (after the "
        "question), median of the repeats; full context decodes over every context entry, Finch over B.",
        "",
        "| context tokens | Finch ms/token | full ms/token | Finch / full |",
        "|---:|---:|---:|---:|",
    ]
    for length in args.lengths:
        finch, full = by_key.get(("finch", length), {}), by_key.get(("full", length), {})
        finch_ms = finch.get("decode_ms_per_token")
        full_ms = full.get("decode_ms_per_token")
        ratio = f"{finch_ms / full_ms:.2f}" if finch_ms and full_ms else "-"
        lines.append(
            f"| {length} | {finch_ms:.1f} | {f'{full_ms:.1f}' if full_ms else 'impossible'} | {ratio} |"
            if finch_ms
            else f"| {length} | - | - | - |"
        )
    return "\n".join(lines) + "\n"


def _plot(records: list[dict[str, Any]], path: Path) -> Path:
    """PNG: compress/prefill seconds and peak RSS against context length, Finch vs full."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4), layout="constrained")
    panels = (
        ("prefill_or_compress_s", "compress / prefill seconds"),
        ("peak_rss_mb", "peak process RSS (MB)"),
        ("peak_kv_entries", "peak KV entries per layer and head"),
    )
    for axis, (key, label) in zip(axes, panels, strict=True):
        for method, name in (("finch", "Finch (B=256, S=512)"), ("full", "full-context prefill")):
            points = sorted(
                (r["context_tokens"], r[key]) for r in records if r["method"] == method and "skipped" not in r
            )
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("context tokens")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _worker_env() -> dict[str, str]:
    """The environment of a worker process: this one's, with the folder holding ``benchmarks`` importable."""
    package_root = str(Path(__file__).resolve().parent.parent)  # where this package was imported from
    paths = [package_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks cost``."""
    from finch_rag.models import DTYPES

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks cost", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--target-tokens", type=int, default=256)
    parser.add_argument(
        "--chunk-size",
        type=chunk_size,
        nargs="+",
        default=[512],
        help="S: an int, 'auto' or 'none'; with --alternate, several are measured side by side (default 512)",
    )
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="weights' dtype (default: load_model's)")
    parser.add_argument("--data", default=None, help="data folder (default: $FINCH_RAG_DATA, else ../shared/data)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="output folder")
    parser.add_argument(
        "--alternate", action="store_true", help="one process, methods alternated per repeat (cost_alternate.md)"
    )
    parser.add_argument(
        "--documents",
        action="store_true",
        help="with --alternate, also the context as one document's text through FinchRAG.answer_from_documents "
        "(pieces ranked, sentence fusion: what `finch-rag ask --file` runs)",
    )
    parser.add_argument(
        "--compressed-too",
        action="store_true",
        help='with --alternate, each chunk size also with answer_cache="compressed" (what the re-read costs)',
    )
    parser.add_argument(
        "--held-prefix",
        action="store_true",
        help="with --alternate, each chunk size also with a PrefixCache held across calls (FinchCompressor() on "
        "its own model, the server)",
    )
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "LENGTH"), help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.alternate:
        return _alternate(args, argv if argv is not None else sys.argv[1:])
    if len(args.chunk_size) > 1:
        raise SystemExit("Several --chunk-size values need --alternate.")
    args.chunk_size = args.chunk_size[0]
    if args.worker:
        print(json.dumps(_worker(args.worker[0], int(args.worker[1]), args)))
        return 0
    dtype = args.dtype or "default"
    machine = f"{cpu_name()}, {os.cpu_count()} cores, no GPU used, torch threads={args.threads}, dtype {dtype}"
    records = []
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    for length in args.lengths:
        for method in ("finch", "full"):
            output = subprocess.run(
                [sys.executable, "-m", "benchmarks.cost", *passthrough, "--worker", method, str(length)],
                check=True,
                env=_worker_env(),
                capture_output=True,
                text=True,
            ).stdout
            records.append(json.loads(output.strip().splitlines()[-1]))
            print(json.dumps(records[-1]), file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost.json").write_text(json.dumps({"machine": machine, "args": vars(args), "records": records}, indent=2))
    table = _markdown(records, machine, args)
    _plot(records, out / "cost.png")
    (out / "cost.md").write_text(
        "# Cost: Finch vs full-context prefill\n\nCommand: `python -m benchmarks cost "
        + " ".join(passthrough)
        + "`\n\n"
        + table
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
