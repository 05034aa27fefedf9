"""Request bodies: OpenAI's chat-completion schema plus finch-rag's extensions, and ``/v1/compress``.

Unknown OpenAI fields are accepted and ignored where ignoring them cannot change the answer a client expects
(``user``, ``metadata``, ``store``, ...); the ones that would (``tools``, ``n > 1``, ``logprobs``, penalties, a JSON
``response_format``) are refused with a 400 that says so. Responses are plain dicts built in ``app.py``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..frontends import ChunkSize, TargetTokens
from .errors import APIError


class Document(BaseModel):
    """A document of the ``documents`` extension: its text, and optionally a title and metadata."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The document's text.")
    title: str | None = Field(None, description="Written before the text, as retrieved passages' titles are.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Returned as given by /v1/compress.")


DocumentLike = str | Document


class CompressionOptions(BaseModel):
    """Compression options of one request (the ``finch`` extension field, or the same names at top level)."""

    model_config = ConfigDict(extra="forbid")

    target_tokens: TargetTokens = Field(
        None, description='B: context KV entries kept per layer and KV head; "auto" picks B per question.'
    )
    compression_ratio: float | None = Field(None, ge=0, lt=1, description="Fraction of the context removed.")
    chunk_size: ChunkSize = Field(
        None, description='Context tokens read per step; "auto": one pass when it fits, else 512; null: one pass.'
    )
    attention_mass: float | None = Field(
        None, gt=0, le=1, description='With target_tokens "auto": share of the question\'s attention to keep.'
    )
    max_target_tokens: int | None = Field(None, ge=1, description='With target_tokens "auto": the cap on B.')
    allocation: Literal["retrieval_weighted", "global"] | None = Field(
        None, description="How the documents (best first) share the budget."
    )

    @model_validator(mode="after")
    def _one_budget(self) -> CompressionOptions:
        if self.target_tokens is not None and self.compression_ratio is not None:
            raise ValueError("give target_tokens or compression_ratio, not both")
        return self

    def explicit(self) -> dict[str, Any]:
        """The options the client set, an explicit ``chunk_size: null`` (one pass) included."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class _WithOptions(BaseModel):
    """Top-level spellings of the compression options, merged with the ``finch`` field."""

    finch: CompressionOptions | None = Field(None, description="Compression options (finch-rag extension).")
    target_tokens: TargetTokens = None
    compression_ratio: float | None = Field(None, ge=0, lt=1)
    chunk_size: ChunkSize = None
    attention_mass: float | None = Field(None, gt=0, le=1)
    max_target_tokens: int | None = Field(None, ge=1)
    allocation: Literal["retrieval_weighted", "global"] | None = None

    def options(self) -> CompressionOptions:
        """The ``finch`` field with the top-level options added (a name given in both places is an error)."""
        top = {name: getattr(self, name) for name in CompressionOptions.model_fields if name in self.model_fields_set}
        nested = self.finch.explicit() if self.finch is not None else {}
        both = sorted(set(top) & set(nested))
        if both:
            raise APIError(
                422, f"{', '.join(both)} given both at top level and in 'finch'; give each option once.", param=both[0]
            )
        try:
            return CompressionOptions(**nested, **top)
        except ValueError as error:
            raise APIError(422, f"Invalid compression options: {error}", param="finch") from error


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


class ChatCompletionRequest(_WithOptions):
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
    documents: list[DocumentLike] | None = Field(None, description="Context to compress (finch-rag extension).")
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

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not stop for stop in stops):
            raise APIError(422, "stop strings must be non-empty.", code="invalid_value", param="stop")
        return tuple(stops)


class CompressRequest(_WithOptions):
    """``POST /v1/compress``: compress documents for a question and return what was kept, per document."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    question: str = Field(description="What the kept text must answer.")
    documents: list[DocumentLike] = Field(min_length=1, description="Given best first, as a retriever ranks them.")
    threshold: float | None = Field(
        None, gt=0, le=1, description="Keep a token's text when this fraction of its KV entries survived."
    )
