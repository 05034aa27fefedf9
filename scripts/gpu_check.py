"""One-command GPU check: FINCH compression at 8k/32k/128k tokens on an 8B Llama shape, and CUDA correctness.

    .venv/bin/python scripts/gpu_check.py --out docs/results       # on a GPU machine (about 5 minutes on one H200)
    .venv/bin/python scripts/gpu_check.py --smoke                  # on CPU, a tiny model, in seconds

Needs no network and no model files: the model has random weights in Llama-3-8B's shape (bfloat16), and a word-level
tokenizer is built in memory (token ``i`` is the word ``w<i>``), so contexts are random words of known length. It
measures, through finch-rag's public API (FINCH: Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167):

- at each context length, with ``B=1024`` kept entries and chunks of ``S=2048``: compression time and peak GPU memory
  against one full SDPA prefill of the same prompt; decoding ms per token from the compressed cache (the library's
  loop) against the full one, and against transformers' ``generate`` on a StaticCache holding a copy of the
  compressed cache, which on CUDA compiles the decode step with ``mode="reduce-overhead"`` (CUDA graphs; the first
  call's compile seconds are reported apart), with the tokens of both compared;
- padded batches of 1, 4 and 16 requests (`compress_batch`, `generate_batch`) against the same requests one by one;

and checks, on a tiny random model in float32:

- CUDA against CPU: the same kept positions and the same greedy tokens;
- a padded batch against each request alone, on CUDA, with every attention implementation available (SDPA, and
  ``flash_attention_2`` when flash-attn is installed: its 2-D padding masks are the case to watch).

It prints a Markdown table and, with ``--out DIR``, writes ``DIR/gpu.md`` and ``DIR/gpu.json``. Exit status 1 when a
check fails. Random weights make answers meaningless; only times, memory and equalities are measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch

from finch_rag import CompressedContext, FinchCompressor, FinchConfig


@dataclass(frozen=True)
class Shape:
    """A Llama architecture's sizes."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    max_positions: int
    rope_theta: float = 500_000.0


LLAMA_8B = Shape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128_256, max_positions=140_000)
TINY = Shape(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=512, max_positions=8192)
QUESTION_TOKENS = 32
SPECIAL = ("<pad>", "<bos>", "<eos>")


@dataclass(frozen=True)
class Plan:
    """What to measure."""

    shape: Shape
    device: str
    dtype: torch.dtype
    contexts: tuple[int, ...]
    budget: int
    chunk: int
    batches: tuple[int, ...]
    batch_context: int
    decode_tokens: int


def build_model(shape: Shape, dtype: torch.dtype, device: str, attn: str, seed: int = 0) -> Any:
    """A random-weight Llama of ``shape`` (built directly on ``device``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        initializer_range=0.02 if shape is LLAMA_8B else 0.2,
    )
    config._attn_implementation = attn
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.name_or_path = f"random-llama-{shape.layers}x{shape.hidden}"
    return model


def word_tokenizer(vocab: int) -> Any:
    """A word-level tokenizer over ``w3 .. w<vocab-1>`` plus pad/bos/eos: text of n words is n tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {token: index for index, token in enumerate(SPECIAL)} | {f"w{index}": index for index in range(3, vocab)}
    backend = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def words(count: int, vocab: int, seed: int) -> str:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (count,), generator=generator).tolist()
    return " ".join(f"w{index}" for index in ids)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, function: Callable[[], Any]) -> tuple[float, Any, int]:
    """(seconds, result, peak GPU bytes during the call; 0 on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    synchronize(device)
    started = time.perf_counter()
    result = function()
    synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
    return seconds, result, peak


def full_prompt(compressed: CompressedContext) -> list[int]:
    parts = (compressed.prefix_ids, compressed.context_ids, compressed.question_ids, compressed.suffix_ids)
    return torch.cat(parts).tolist()


def decode_ms_per_token(device: str, generate: Callable[[int], str], tokens: int) -> float:
    """Milliseconds per new token: (time for ``tokens`` + 1 tokens - time for 1) / tokens actually made."""
    one_seconds, one, _ = timed(device, lambda: generate(1))
    many_seconds, many, _ = timed(device, lambda: generate(tokens + 1))
    made = max(len(many.split()) - len(one.split()), 1)
    return 1000 * (many_seconds - one_seconds) / made


def static_cache_generate(compressor: FinchCompressor, compressed: CompressedContext, new_tokens: int) -> list[int]:
    """Greedy tokens of transformers' ``generate`` on a StaticCache filled with a copy of ``compressed``'s cache.

    ``generate`` compiles the decode step of a static cache on CUDA (its default ``CompileConfig``:
    ``mode="reduce-overhead"``, CUDA graphs), not on CPU. The compressed cache itself is left unchanged.
    """
    from transformers import StaticCache

    from finch_rag.compression.cache import all_layer_tensors, cache_kwargs

    model = compressor.model
    device = next(model.parameters()).device
    keys, values = all_layer_tensors(compressed.cache.as_cache())
    cached = int(keys[0].shape[2])
    answer = torch.cat((compressed.question_ids, compressed.suffix_ids)).unsqueeze(0).to(device)
    cache = StaticCache(config=model.config, max_cache_len=cached + answer.shape[1] + new_tokens)
    for layer, (layer_keys, layer_values) in enumerate(zip(keys, values, strict=True)):
        cache.update(layer_keys.clone(), layer_values.clone(), layer)
    # generate skips the ids the cache already holds; any ids stand in for them.
    ids = torch.cat((torch.zeros((1, cached), dtype=torch.long, device=device), answer), dim=1)
    with torch.inference_mode():
        out = cast(Any, model).generate(  # GenerationMixin's generate, which the stubs do not show on the model
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            **cache_kwargs(model, cache),  # the name generate takes it under, as the forward does
        )
    return [int(token) for token in out[0, ids.shape[1] :]]


def measure_static_decode(compressor: FinchCompressor, compressed: CompressedContext, plan: Plan) -> dict[str, Any]:
    """ms/token of `static_cache_generate`, its first call (compile included), and whether its tokens match."""
    tokens = plan.decode_tokens
    first_seconds, _, _ = timed(plan.device, lambda: static_cache_generate(compressor, compressed, tokens + 1))
    one_seconds, _, _ = timed(plan.device, lambda: static_cache_generate(compressor, compressed, 1))
    many_seconds, static_tokens, _ = timed(
        plan.device, lambda: static_cache_generate(compressor, compressed, tokens + 1)
    )
    library = compressor.tokenizer(compressor.generate(compressed, tokens + 1), add_special_tokens=False).input_ids
    return {
        "decode_ms_per_token_static": 1000 * (many_seconds - one_seconds) / tokens,
        "static_first_call_s": first_seconds,
        "static_tokens_match": static_tokens[: len(library)] == library,
    }


def measure_context(compressor: FinchCompressor, plan: Plan, length: int) -> dict[str, Any]:
    """Compression against a full prefill, and decoding from each, at one context length."""
    vocab = plan.shape.vocab
    config = FinchConfig(target_tokens=plan.budget, chunk_size=plan.chunk, chat_template=False, progress=False)
    context, question = words(length, vocab, seed=length), words(QUESTION_TOKENS, vocab, seed=1)
    compress_seconds, compressed, compress_peak = timed(
        plan.device, lambda: compressor.compress(context, question, config=config)
    )
    prompt = torch.tensor([full_prompt(compressed)], device=plan.device)

    def prefill() -> None:
        with torch.inference_mode():
            compressor.model(input_ids=prompt, use_cache=True, logits_to_keep=1)

    prefill_seconds, _, prefill_peak = timed(plan.device, prefill)
    ids = full_prompt(compressed)
    tokens = plan.decode_tokens
    compressed_ms = decode_ms_per_token(plan.device, lambda k: compressor.generate(compressed, k), tokens)
    full_ms = decode_ms_per_token(plan.device, lambda k: compressor.generate_ids(ids, k), tokens)
    return {
        "context_tokens": length,
        "kept_tokens": compressed.kept_tokens,
        "chunks": compressed.cache.num_chunks,
        "compress_s": compress_seconds,
        "full_prefill_s": prefill_seconds,
        "compress_peak_gib": compress_peak / 2**30,
        "full_prefill_peak_gib": prefill_peak / 2**30,
        "decode_ms_per_token_compressed": compressed_ms,
        "decode_ms_per_token_full": full_ms,
        **measure_static_decode(compressor, compressed, plan),
    }


def measure_batch(compressor: FinchCompressor, plan: Plan, size: int) -> dict[str, Any]:
    """``size`` requests as one padded batch against the same requests one by one."""
    vocab = plan.shape.vocab
    config = FinchConfig(target_tokens=plan.budget, chunk_size=plan.chunk, chat_template=False, progress=False)
    # Lengths differ by up to a quarter, so the batch is really padded.
    lengths = [plan.batch_context - (index * plan.batch_context) // (4 * max(size, 1)) for index in range(size)]
    contexts = [words(length, vocab, seed=100 + index) for index, length in enumerate(lengths)]
    questions = [words(QUESTION_TOKENS, vocab, seed=200 + index) for index in range(size)]
    tokens = plan.decode_tokens
    one_by_one_s, alone, _ = timed(
        plan.device,
        lambda: [compressor.compress(c, q, config=config) for c, q in zip(contexts, questions, strict=True)],
    )
    batch_s, batched, peak = timed(
        plan.device, lambda: compressor.compress_batch(contexts, questions, config=config, batch_size=size)
    )
    generate_alone_s, _, _ = timed(plan.device, lambda: [compressor.generate(item, tokens) for item in alone])
    generate_batch_s, _, _ = timed(plan.device, lambda: compressor.generate_batch(batched, tokens))
    return {
        "batch": size,
        "context_tokens": plan.batch_context,
        "compress_sequential_s": one_by_one_s,
        "compress_batch_s": batch_s,
        "compress_speedup": one_by_one_s / batch_s,
        "generate_sequential_s": generate_alone_s,
        "generate_batch_s": generate_batch_s,
        "generate_speedup": generate_alone_s / generate_batch_s,
        "batch_peak_gib": peak / 2**30,
    }


# ------------------------------------------------------------------------------------------ checks
def _tiny(device: str, attn: str) -> FinchCompressor:
    model = build_model(TINY, torch.float32, "cpu", "sdpa" if attn == "flash_attention_2" else attn, seed=7)
    if attn == "flash_attention_2":  # flash needs half precision on CUDA
        model = model.to(torch.bfloat16)
        model.set_attn_implementation(attn)
    return FinchCompressor(model.to(device), word_tokenizer(TINY.vocab), FinchConfig(progress=False))


def _requests(count: int) -> tuple[list[str], list[str], FinchConfig]:
    contexts = [words(300 - 37 * index, TINY.vocab, seed=300 + index) for index in range(count)]
    questions = [words(12 + index, TINY.vocab, seed=400 + index) for index in range(count)]
    return contexts, questions, FinchConfig(target_tokens=48, chunk_size=64, chat_template=False, progress=False)


def _same_positions(a: CompressedContext, b: CompressedContext) -> float:
    """Fraction of kept (layer, head, position) entries the two compressions share."""
    shared = total = 0
    for left, right in zip(a.kept_positions, b.kept_positions, strict=True):
        for row_left, row_right in zip(left.cpu().tolist(), right.cpu().tolist(), strict=True):
            shared += len(set(row_left) & set(row_right))
            total += len(row_left)
    return shared / max(total, 1)


def check_cpu_against_cuda() -> dict[str, Any]:
    """The same tiny model (float32, SDPA) on CPU and on CUDA keeps the same entries and answers the same."""
    contexts, questions, config = _requests(2)
    cpu, cuda = _tiny("cpu", "sdpa"), _tiny("cuda", "sdpa")
    results = []
    for context, question in zip(contexts, questions, strict=True):
        on_cpu = cpu.compress(context, question, config=config)
        on_cuda = cuda.compress(context, question, config=config)
        same = _same_positions(on_cpu, on_cuda)
        tokens_equal = cpu.generate(on_cpu, 8) == cuda.generate(on_cuda, 8)
        results.append({"kept_positions_shared": same, "greedy_tokens_equal": tokens_equal})
    passed = all(item["kept_positions_shared"] == 1.0 and item["greedy_tokens_equal"] for item in results)
    return {"check": "CUDA equals CPU (tiny model, float32, sdpa)", "passed": passed, "requests": results}


def check_batch_against_alone(device: str, attn: str) -> dict[str, Any]:
    """A padded batch keeps, per request, what the request keeps alone, and decodes the same tokens."""
    contexts, questions, config = _requests(4)
    compressor = _tiny(device, attn)
    alone = [compressor.compress(c, q, config=config) for c, q in zip(contexts, questions, strict=True)]
    batched = compressor.compress_batch(contexts, questions, config=config, batch_size=len(contexts))
    shared = [_same_positions(a, b) for a, b in zip(alone, batched, strict=True)]
    answers_alone = [compressor.generate(item, 8) for item in alone]
    answers_batch = compressor.generate_batch(batched, 8)
    # bf16 (flash) rounds differently with padding: require near-identical selections there, identical in fp32.
    threshold = 1.0 if attn != "flash_attention_2" else 0.98
    passed = min(shared) >= threshold and (answers_alone == answers_batch or attn == "flash_attention_2")
    return {
        "check": f"padded batch equals alone ({device}, {attn})",
        "passed": passed,
        "kept_positions_shared": shared,
        "greedy_tokens_equal": answers_alone == answers_batch,
    }


# ------------------------------------------------------------------------------------------ report
def markdown(report: dict[str, Any]) -> str:
    plan = report["plan"]
    lines = [
        "# GPU check",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Model: random-weight Llama ({plan['shape']['layers']} layers, hidden {plan['shape']['hidden']}, "
        f"{plan['shape']['heads']}/{plan['shape']['kv_heads']} heads), {plan['dtype']}, attention `{report['attn']}`; "
        f"B={plan['budget']}, S={plan['chunk']}, {QUESTION_TOKENS}-token question.",
        "",
        "## Compression against a full prefill",
        "",
        "| context | compress s | full prefill s | compress peak GiB | prefill peak GiB | decode ms/token "
        "(compressed) | decode ms/token (full) | decode ms/token (static cache generate) | its first call s "
        "| same tokens |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["contexts"]:
        lines.append(
            f"| {row['context_tokens']:,} | {row['compress_s']:.2f} | {row['full_prefill_s']:.2f} | "
            f"{row['compress_peak_gib']:.1f} | {row['full_prefill_peak_gib']:.1f} | "
            f"{row['decode_ms_per_token_compressed']:.1f} | {row['decode_ms_per_token_full']:.1f} | "
            f"{row['decode_ms_per_token_static']:.1f} | {row['static_first_call_s']:.1f} | "
            f"{'yes' if row['static_tokens_match'] else 'no'} |"
        )
    lines += [
        "",
        f"## Padded batches against one by one ({report['batches'][0]['context_tokens']:,}-token contexts)"
        if report["batches"]
        else "",
        "",
        "| batch | compress one by one s | compress batch s | speed-up | generate one by one s | generate batch s | "
        "speed-up | batch peak GiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["batches"]:
        lines.append(
            f"| {row['batch']} | {row['compress_sequential_s']:.2f} | {row['compress_batch_s']:.2f} | "
            f"{row['compress_speedup']:.2f}x | {row['generate_sequential_s']:.2f} | {row['generate_batch_s']:.2f} | "
            f"{row['generate_speedup']:.2f}x | {row['batch_peak_gib']:.1f} |"
        )
    lines += ["", "## Checks", "", "| check | passed | details |", "|---|---|---|"]
    for check in report["checks"]:
        details = {key: value for key, value in check.items() if key not in {"check", "passed"}}
        lines.append(f"| {check['check']} | {'yes' if check['passed'] else '**no**'} | `{json.dumps(details)}` |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    parts = [platform.platform(), f"Python {platform.python_version()}", f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        parts.insert(
            0, f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
        )
    import transformers

    parts.append(f"transformers {transformers.__version__}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, small sizes: seconds")
    parser.add_argument("--contexts", default=None, help="context lengths (default 8192,32768,131072)")
    parser.add_argument("--budget", type=int, default=None, help="B, kept entries (default 1024)")
    parser.add_argument("--chunk", type=int, default=None, help="S, chunk size (default 2048)")
    parser.add_argument("--batches", default=None, help="batch sizes (default 1,4,16)")
    parser.add_argument("--batch-context", type=int, default=None, help="context per batched request (default 8192)")
    parser.add_argument("--decode-tokens", type=int, default=None, help="tokens per decode timing (default 32)")
    parser.add_argument(
        "--attn",
        default="auto",
        choices=["auto", "sdpa", "flash_attention_2"],
        help="attention of the 8B model (auto: flash_attention_2 when flash-attn is installed)",
    )
    parser.add_argument("--out", type=Path, help="write gpu.md and gpu.json into this directory")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not args.smoke and not cuda:
        parser.error("no CUDA device: run on a GPU machine, or use --smoke for the CPU smoke run")
    has_flash = cuda and importlib.util.find_spec("flash_attn") is not None
    attn = args.attn if args.attn != "auto" else ("flash_attention_2" if has_flash else "sdpa")
    if args.smoke:
        attn = "sdpa"
        defaults = {
            "contexts": "256,1024",
            "budget": 32,
            "chunk": 64,
            "batches": "1,4",
            "batch_context": 256,
            "decode_tokens": 4,
        }
        shape, device, dtype = TINY, "cpu", torch.float32
    else:
        defaults = {
            "contexts": "8192,32768,131072",
            "budget": 1024,
            "chunk": 2048,
            "batches": "1,4,16",
            "batch_context": 8192,
            "decode_tokens": 32,
        }
        shape, device, dtype = LLAMA_8B, "cuda", torch.bfloat16
    option = {
        name: getattr(args, name) if getattr(args, name) is not None else value for name, value in defaults.items()
    }
    plan = Plan(
        shape=shape,
        device=device,
        dtype=dtype,
        contexts=tuple(int(value) for value in str(option["contexts"]).split(",")),
        budget=int(option["budget"]),
        chunk=int(option["chunk"]),
        batches=tuple(int(value) for value in str(option["batches"]).split(",")),
        batch_context=int(option["batch_context"]),
        decode_tokens=int(option["decode_tokens"]),
    )
    shape = (
        plan.shape
        if max(plan.contexts) + 4096 <= plan.shape.max_positions
        else Shape(**{**asdict(plan.shape), "max_positions": max(plan.contexts) + 4096})
    )
    started = time.perf_counter()
    print(f"Building a random {shape.layers}-layer Llama ({plan.dtype}, {attn}) on {device} ...", file=sys.stderr)
    compressor = FinchCompressor(build_model(shape, plan.dtype, device, attn), word_tokenizer(shape.vocab))
    warm = FinchConfig(target_tokens=16, chunk_size=32, chat_template=False, progress=False)
    compressor.generate(compressor.compress(words(64, shape.vocab, 0), words(8, shape.vocab, 1), config=warm), 2)

    contexts = []
    for length in plan.contexts:
        print(f"  context {length:,} tokens ...", file=sys.stderr)
        contexts.append(measure_context(compressor, plan, length))
    batches = []
    for size in plan.batches:
        print(f"  batch of {size} ...", file=sys.stderr)
        batches.append(measure_batch(compressor, plan, size))
    del compressor
    if cuda:
        torch.cuda.empty_cache()

    checks = [check_batch_against_alone("cpu", "sdpa")]
    if cuda:
        checks += [check_cpu_against_cuda(), check_batch_against_alone("cuda", "sdpa")]
        if has_flash:
            checks.append(check_batch_against_alone("cuda", "flash_attention_2"))
    else:
        checks.append({"check": "CUDA equals CPU", "passed": True, "skipped": "no CUDA device"})

    report = {
        "command": "python scripts/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "attn": attn,
        "plan": {**asdict(plan), "shape": asdict(shape), "dtype": str(plan.dtype).replace("torch.", "")},
        "contexts": contexts,
        "batches": batches,
        "checks": checks,
        "seconds": time.perf_counter() - started,
    }
    text = markdown(report)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu.md").write_text(text, encoding="utf-8")
        (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if all(check["passed"] for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
