"""The front-end layer: what the integrations, the server and the CLI call, one job a module.

LangChain's `FinchLLM`, `ChatFinch`, `FinchDocumentCompressor` and `FinchRetriever`, LlamaIndex's `FinchLLM` and
`FinchNodePostprocessor`, the OpenAI-compatible server and ``finch-rag``'s flags are thin: they translate their
framework's objects (documents, nodes, messages, request bodies, arguments) and call what is here.

- `handle`: `CompressorHandle`, a front end's compressor (given, or loaded once per model name and process) and
  the steps every front end takes, and `Prepared`, what a prompt turns into;
- `options`: `BudgetOptions` (the budget options, declared once), `FinchOptions` (every integration class's
  options) and `SamplingOptions` (decoding);
- `streams`: `close`, `accumulate` and `in_thread`, for streamed answers;
- `sources`: where the context and the question come from in a framework's input (`chat_context` and its
  `ChatPlan`, `split_prompt`, `split_templated`, the cache-key helpers, `plain_prompt_ids`, `plain_chat_ids`).

Core names (`FinchCompressor`, `FinchConfig`, `Passage`, `CompressedContext`, ...) come from `finch_rag` and
its modules, not from here. Based on FINCH (Corallo & Papotti, TACL 2024, https://arxiv.org/abs/2408.00167).
"""

from .handle import CompressorHandle, Prepared
from .options import CONFIG_FIELDS, BudgetOptions, FinchOptions, SamplingOptions, TimeoutSeconds
from .sources import (
    QUESTION_DELIMITER,
    chat_context,
    chat_question,
    plain_chat_ids,
    plain_prompt_ids,
    split_prompt,
    split_templated,
    template_pieces,
    with_system_prompt,
    without_keys,
)
from .streams import accumulate, close, in_thread

__all__ = [
    "CONFIG_FIELDS",
    "QUESTION_DELIMITER",
    "BudgetOptions",
    "CompressorHandle",
    "FinchOptions",
    "Prepared",
    "SamplingOptions",
    "TimeoutSeconds",
    "accumulate",
    "chat_context",
    "chat_question",
    "close",
    "in_thread",
    "plain_chat_ids",
    "plain_prompt_ids",
    "split_prompt",
    "split_templated",
    "template_pieces",
    "with_system_prompt",
    "without_keys",
]
