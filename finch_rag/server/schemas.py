"""Request bodies: OpenAI's chat-completion schema plus finch-rag's extensions, and ``/v1/compress``.

Unknown OpenAI fields are accepted and ignored where ignoring them cannot change the answer a client expects
(``user``, ``metadata``, ``store``, ...); the ones that would (``tools``, ``n > 1``, ``logprobs``, penalties, a JSON
``response_format``) are refused with a 400 that says so. Responses are plain dicts, built by the endpoint that
answers (``chat.py`` for chat completions, ``compress.py`` for ``/v1/compress``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..frontends import BudgetOptions, TimeoutSeconds
from ..generation import SamplingParams
from ..prompts import Passage
from .errors import APIError

if TYPE_CHECKING:
    from .settings import ServerSettings


class Document(BaseModel):
    """A document of the ``documents`` extension: its text, and optionally a title and metadata."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The document's text.")
    title: str | None = Field(None, description="Written before the text, as retrieved passages' titles are.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Returned as given by /v1/compress.")

    def passage(self) -> Passage:
        return Passage(self.text, self.title, self.metadata)


DocumentLike = str | Document


CompressionOptions = BudgetOptions
"""Compression options of one request (the ``finch`` extension field, or the same names at top level): the
front ends' `BudgetOptions`, declared once. Only the options a client sets apply; the others are the server's."""


class _Request(BudgetOptions):
    """What both endpoints' requests share: ``documents``, and the compression options at top level or in ``finch``.

    The top-level spellings are `BudgetOptions`' own fields, inherited; `options` merges them with ``finch``.
    """

    finch: BudgetOptions | None = Field(None, description="Compression options (finch-rag extension).")
    documents: list[DocumentLike] | None = Field(None, description="Context to compress (finch-rag extension).")
    timeout: TimeoutSeconds | None = Field(
        None,
        description="Deadline in seconds from arrival (finch-rag extension; default: the server's --timeout). Past "
        "it the request stops at its next chunk or token and gets a 504 with code 'timeout'.",
    )

    def options(self) -> BudgetOptions:
        """The ``finch`` field with the top-level options added (a name given in both places is an error)."""
        top = self.explicit()
        nested = self.finch.explicit() if self.finch is not None else {}
        both = sorted(set(top) & set(nested))
        if both:
            raise APIError(
                422, f"{', '.join(both)} given both at top level and in 'finch'; give each option once.", param=both[0]
            )
        return BudgetOptions(**nested, **top)

    def passages(self) -> list[Passage] | None:
        """The request's ``documents`` as passages, best first (a string is a passage without title), or ``None``."""
        if self.documents is None:
            return None
        return [Passage(document) if isinstance(document, str) else document.passage() for document in self.documents]


class TextPart(BaseModel):
    """One part of a message's content; only text parts are supported."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self, index: int) -> str:
        """The content as one string; a non-text part is a 400."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        pieces = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise APIError(
                    400,
                    f"messages[{index}] has a {part.type!r} content part; this server reads text only.",
                    code="unsupported_content",
                    param=f"messages.{index}.content",
                )
            pieces.append(part.text)
        return "".join(pieces)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions``: OpenAI's fields, plus ``documents`` and the compression options."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    # Fields that would change the answer and that this server cannot honour: refused, not ignored.
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def check_supported(self) -> None:
        """Refuse what this server cannot do, naming the field."""
        refusals = {
            "n": (self.n != 1, "n > 1 is not supported; send one request per answer."),
            "tools": (bool(self.tools) or bool(self.functions), "Tool calling is not supported by this server."),
            "tool_choice": (self.tool_choice not in (None, "none"), "Tool calling is not supported by this server."),
            "response_format": (
                self.response_format is not None and self.response_format.get("type") not in (None, "text"),
                "Structured output (response_format) is not supported; only text answers.",
            ),
            "logprobs": (bool(self.logprobs) or bool(self.top_logprobs), "logprobs are not supported."),
            "presence_penalty": (bool(self.presence_penalty), "presence_penalty is not supported; leave it at 0."),
            "frequency_penalty": (bool(self.frequency_penalty), "frequency_penalty is not supported; leave it at 0."),
            "logit_bias": (bool(self.logit_bias), "logit_bias is not supported."),
        }
        for param, (refused, message) in refusals.items():
            if refused:
                raise APIError(400, message, code="unsupported_parameter", param=param)

    def to_sampling_params(self, settings: ServerSettings) -> SamplingParams:
        """How to decode this request's answer, as vLLM's protocol converts a request once where it enters.

        OpenAI's names map onto `SamplingParams`; the server's defaults fill what the request leaves unset.
        """
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not stop for stop in stops):
            raise APIError(422, "stop strings must be non-empty.", code="invalid_value", param="stop")
        return SamplingParams(
            max_new_tokens=self.max_completion_tokens or self.max_tokens or settings.default_max_tokens,
            temperature=settings.default_temperature if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            stop=tuple(stops),
        )


class CompressRequest(_Request):
    """``POST /v1/compress``: compress documents for a question and return what was kept, per document."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    question: str = Field(description="What the kept text must answer.")
    documents: list[DocumentLike] = Field(min_length=1, description="Given best first, as a retriever ranks them.")
    threshold: float | None = Field(
        None, gt=0, le=1, description="Keep a token's text when this fraction of its KV entries survived."
    )
