"""The ``finch-rag`` command: ``demo`` (offline, on the embedded models), ``ask`` (compress files, answer), ``serve``.

This module is the only place in the package that prints; the library reports through `logging`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from .allocation import RETRIEVAL_WEIGHTED
from .arguments import add_budget_arguments, add_dtype_argument, budget_options
from .config import FinchConfig
from .pipeline import Answer, FinchRAG
from .prompts import Passage
from .server.command import add_serve_parser

logger = logging.getLogger("finch_rag")

DEMO_CORPUS = "demo_corpus.json"
DEMO_TOP_K = 6
DEMO_RATIO = 0.5  # the 135M default model answers the demo questions reliably at 2x, less so at 4x
DEMO_CHUNK_SIZE = 256


class CLIError(Exception):
    """A user error the CLI reports in one line, without a traceback."""


def load_demo_corpus() -> dict[str, Any]:
    """The demo corpus shipped in ``finch_rag/data``: ``{"passages": [{"title", "text"}], "questions": [...]}``."""
    text = resources.files("finch_rag").joinpath("data").joinpath(DEMO_CORPUS).read_text(encoding="utf-8")
    return json.loads(text)


# ------------------------------------------------------------------ arguments
def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_budget_arguments(
        common,
        defaults={"allocation": RETRIEVAL_WEIGHTED},
        notes={
            "compression_ratio": "(in [0, 1); 0.75 = 4x compression)",
            "chunk_size": "(default auto; the demo reads 256 per step)",
            "allocation": "(retrieval_weighted, the default: the best passage is packed next to the question; "
            "global: plain FINCH)",
        },
    )
    common.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="answer length limit (default 64)")
    common.add_argument(
        "--model",
        metavar="NAME_OR_PATH",
        help="causal LM: hub id, local directory or .gguf (default: SmolLM2, offline)",
    )
    add_dtype_argument(common)
    common.add_argument("--quiet", "-q", action="store_true", help="print only the answers; log warnings only")
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finch-rag",
        description="Prompt-guided KV-cache compression (FINCH, TACL 2024) for retrieval-augmented generation.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options()

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="retrieve, compress and answer demo questions on a built-in corpus (offline)",
        description="Runs the embedded models on a small built-in corpus about a fictional island.",
    )
    demo.add_argument("--top-k", type=int, default=DEMO_TOP_K, help=f"passages retrieved (default {DEMO_TOP_K})")
    demo.add_argument("questions", nargs="*", help="your own questions about the demo corpus (default: built-in ones)")
    demo.set_defaults(handler=_demo)

    ask = commands.add_parser(
        "ask",
        parents=[common],
        help="compress the given files for a question and answer it",
        description="Each file is one passage, titled by its file name, packed in the order given. A file of "
        "more than 240 words is cut into 120-word pieces, and all pieces are ranked by similarity to the question "
        "and packed best last (FinchRAG.answer_from_documents): one long passage would lose its middle to recency.",
    )
    ask.add_argument(
        "--file",
        "-f",
        dest="files",
        action="append",
        required=True,
        type=Path,
        metavar="PATH",
        help="a text file to use as context (repeat for several)",
    )
    ask.add_argument("question", help="the question")
    ask.set_defaults(handler=_ask)

    add_serve_parser(commands)  # finch-rag serve: the OpenAI-compatible server (finch_rag.server)
    return parser


def _config(args: argparse.Namespace, default_ratio: float | None = None) -> FinchConfig:
    options: dict[str, Any] = {"progress": not args.no_progress}
    try:
        budget = budget_options(args)
        if "target_tokens" not in budget and "compression_ratio" not in budget and default_ratio is not None:
            budget["compression_ratio"] = default_ratio
        return FinchConfig(**options, **budget)
    except (TypeError, ValueError) as error:
        raise CLIError(str(error)) from error


def _pipeline(args: argparse.Namespace, config: FinchConfig, top_k: int = 8) -> FinchRAG:
    from .compressor import FinchCompressor
    from .models import load_model

    model, tokenizer = load_model(args.model, dtype=args.dtype)
    compressor = FinchCompressor(model, tokenizer, config)
    return FinchRAG(
        compressor=compressor,
        config=config,
        top_k=top_k,
        allocation=args.allocation,
        max_new_tokens=args.max_new_tokens,
    )


# ------------------------------------------------------------------- commands
def _demo(args: argparse.Namespace) -> None:
    corpus = load_demo_corpus()
    config = _config(args, default_ratio=DEMO_RATIO)
    if not hasattr(args, "chunk_size"):  # not given (a flag left out sets no attribute)
        config = config.replace(chunk_size=DEMO_CHUNK_SIZE)
    if args.top_k < 1:
        raise CLIError(f"--top-k must be >= 1, got {args.top_k}.")
    rag = _pipeline(args, config, top_k=args.top_k)
    rag.add([(passage["text"], {"title": passage["title"]}) for passage in corpus["passages"]])
    questions = args.questions or [item["question"] for item in corpus["questions"]]
    if not args.quiet:
        print(f"Corpus: {len(corpus['passages'])} passages about Tarrowen, a fictional island. {_describe(rag)}\n")
    for question in questions:
        _print_answer(rag.ask(question), args.quiet)


def _ask(args: argparse.Namespace) -> None:
    documents: list[Passage] = []
    for path in args.files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise CLIError(f"cannot read {path}: {error.strerror or error}") from error
        except UnicodeDecodeError as error:
            raise CLIError(f"{path} is not UTF-8 text.") from error
        if not text.strip():
            raise CLIError(f"{path} is empty.")
        documents.append(Passage(text, path.name, {"source": str(path)}))
    rag = _pipeline(args, _config(args))
    if not args.quiet:
        print(f"Context: {len(documents)} file(s). {_describe(rag)}\n")
    _print_answer(rag.answer_from_documents(args.question, documents), args.quiet)


# ------------------------------------------------------------------- printing
def _describe(rag: FinchRAG) -> str:
    config = rag.config
    if config.target_tokens == "auto":
        unit = "sentences" if rag.passage_allocation.configure(config).granularity == "sentence" else "tokens"
        budget = (
            f"keep the {unit} holding {config.attention_mass:.0%} of the question's attention, "
            f"at most {config.max_target_tokens} tokens"
        )
    elif config.target_tokens:
        budget = f"keep {config.target_tokens} tokens"
    else:
        budget = f"remove {config.compression_ratio:.0%}"
        if config.min_target_tokens is not None:
            budget += f" but keep at least {config.min_target_tokens} tokens"
    return (
        f"Model {rag.compressor.model_name}, {budget}, chunks of {config.chunk_size or 'all'} tokens, "
        f"{config.selection} selection, {rag.allocation} allocation."
    )


def _print_answer(answer: Answer, quiet: bool) -> None:
    if quiet:
        print(answer.text)
        return
    stats = answer.stats
    print(f"Q: {answer.question}")
    print(f"A: {answer.text}")
    if not answer.has_context:
        print()
        return
    print("Sources (rank, title, retrieval score, kept fraction):")
    width = max(len(source.title or "") for source in answer.sources)
    for source in answer.sources:
        score = "   -" if source.score is None else f"{source.score:.2f}"
        title = source.title or "(untitled)"
        print(f"  {source.rank:>2}. {title:<{width}}  score {score}  kept {source.kept_fraction:4.0%}")
    print(
        f"Compression: {stats['tokens_before']} -> {stats['tokens_after']} context tokens "
        f"({stats['compression_factor']:.1f}x) in {stats['chunks']} chunk(s)"
    )
    print(
        f"Time: retrieval {stats['retrieval_seconds']:.2f} s, compression {stats['compression_seconds']:.2f} s, "
        f"generation {stats['generation_seconds']:.2f} s\n"
    )


# ----------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``finch-rag`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    previous_level = logger.level
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    from transformers.utils import logging as transformers_logging

    bars_were_enabled = transformers_logging.is_progress_bar_enabled()
    if args.no_progress or args.quiet:
        args.no_progress = True
        transformers_logging.disable_progress_bar()
    try:
        args.handler(args)
    except (CLIError, ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        print(f"finch-rag: error: {error}", file=sys.stderr)
        return 2
    finally:  # main() may run inside a larger process (tests, notebooks): leave its logging as it was
        logger.setLevel(previous_level)
        if bars_were_enabled:
            transformers_logging.enable_progress_bar()
    return 0


if __name__ == "__main__":
    sys.exit(main())
