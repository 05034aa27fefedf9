"""The pydantic options the front ends share, declared once: the budget, the integration classes', decoding.

`BudgetOptions` declares the budget (``target_tokens``, ``compression_ratio``, ``chunk_size``, ``attention_mass``,
``max_target_tokens``, ``min_target_tokens``, ``allocation``) and the cache an answer reads (``answer_cache``) once:
the integration classes inherit it through `FinchOptions`, the server's requests take it as their ``finch`` field
and at top level, and the command line's flags are derived from its fields (`finch_rag.arguments`). Validation of
the combination ("one budget, not both", automatic-budget options only with ``target_tokens="auto"``) is
`FinchConfig`'s, reached through `finch_rag.config.merged_config`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)

from ..allocation import RETRIEVAL_WEIGHTED, Allocation, PassageAllocation, RankWeighting
from ..compressor import FinchCompressor
from ..config import AnswerCache, FinchConfig, budget_params
from ..deadline import Deadline
from ..generation import SamplingParams
from ..models import dtype_named
from .handle import CompressorHandle


def _budget(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError:  # one message for the union, instead of one per member
        raise ValueError(
            f'must be an int >= 1 (the budget B) or "auto" (the automatic budget), got {value!r}'
        ) from None


TargetTokens = Annotated[Annotated[int, Field(ge=1)] | Literal["auto"] | None, WrapValidator(_budget)]
"""The type of a front end's ``target_tokens``: ``B``, ``"auto"`` or ``None`` (not set), with one clear error."""


def _chunk(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(
            f'must be an int >= 1 (tokens per step), "auto" (one pass when it fits, else 512) or None (one pass), '
            f"got {value!r}"
        ) from None


ChunkSize = Annotated[Annotated[int, Field(ge=1)] | Literal["auto"] | None, WrapValidator(_chunk)]
"""The type of a front end's ``chunk_size``: ``S``, ``"auto"`` or ``None`` (one pass), with one clear error."""

TimeoutSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]
"""The type of a per-call deadline in seconds (a number > 0, never NaN or inf; strict, so ``"5"`` is refused), for
`SamplingOptions.timeout` and the server's request field ``timeout``."""


class BudgetOptions(BaseModel):
    """How much of the context is kept, and how passages share it: the budget options, declared once.

    `FinchOptions` (every integration class) inherits them; the server's requests take them as their ``finch``
    field (`finch_rag.server.schemas`) and at top level; ``finch-rag``'s flags derive from them. Only the options
    set explicitly apply (`explicit`): the others come from the config underneath (the compressor's, the server's).

    Parameters
    ----------
    target_tokens : int or "auto", optional
        ``B``, or ``"auto"`` (`FinchConfig.target_tokens`).
    compression_ratio : float, optional
        Fraction of the context removed (`FinchConfig.compression_ratio`).
    chunk_size : int, "auto" or None
        Context tokens read per step (`FinchConfig.chunk_size`); ``None`` set explicitly is a single pass.
    attention_mass, max_target_tokens : float, int, optional
        With ``target_tokens="auto"``: the share of the question's attention kept, and the cap on ``B``.
    min_target_tokens : int, optional
        A floor on a ``compression_ratio`` budget (`FinchConfig.min_target_tokens`); the default budget's is 128.
    allocation : {"retrieval_weighted", "global"}, optional
        How ranked passages share the budget (`finch_rag.PassageAllocation`); ``None`` is the default.
    answer_cache : {"auto", "compressed", "reread"}
        The cache an answer reads (`FinchConfig.answer_cache`); what is kept does not depend on it.
    """

    model_config = ConfigDict(extra="forbid")

    target_tokens: TargetTokens = Field(
        None,
        description='Budget B: context KV entries kept per layer and KV head; "auto" picks B per question '
        "(the fewest entries holding attention_mass of the question's attention, at most max_target_tokens).",
    )
    compression_ratio: float | None = Field(None, ge=0, lt=1, description="Fraction of the context removed.")
    chunk_size: ChunkSize = Field(
        "auto", description='Context tokens read per step; "auto": one pass when it fits, else 512; null: one pass.'
    )
    attention_mass: float | None = Field(
        None,
        gt=0,
        le=1,
        description='With target_tokens "auto": share of the question\'s attention the kept entries hold (0.9).',
    )
    max_target_tokens: int | None = Field(None, ge=1, description='With target_tokens "auto": the cap on B (1024).')
    min_target_tokens: int | None = Field(
        None,
        ge=1,
        description="Floor on a compression_ratio budget: B = max(floor(n(1 - r)), min(n, min_target_tokens)). "
        "With no budget given the default is ratio 0.75 with floor 128; an explicit compression_ratio has no floor "
        "unless this is given too.",
    )
    allocation: Allocation | None = Field(
        RETRIEVAL_WEIGHTED, description="How retrieved passages (best first) share the budget (PassageAllocation)."
    )
    answer_cache: AnswerCache = Field(
        "auto",
        description='The cache an answer reads: "compressed" (the kept entries as the chunked read computed them, '
        'FINCH as published), "reread" (the kept tokens of the chunks after the first read again by the model; one '
        'more prefill of them) or "auto" (re-read on models with sliding-window layers, such as Gemma 3).',
    )

    def explicit(self) -> dict[str, Any]:
        """The budget options set explicitly, an explicit ``chunk_size=None`` (one pass) included."""
        return {name: getattr(self, name) for name in BudgetOptions.model_fields if name in self.model_fields_set}

    def config_options(self) -> dict[str, Any]:
        """`explicit` without ``allocation``: the `FinchConfig` fields to merge (`finch_rag.config.merged_config`)."""
        return {name: value for name, value in self.explicit().items() if name in CONFIG_FIELDS}


CONFIG_FIELDS: tuple[str, ...] = tuple(name for name in BudgetOptions.model_fields if name != "allocation")
"""The budget options that are `FinchConfig` fields (all but ``allocation``, which is how passages share ``B``)."""


class FinchOptions(BudgetOptions):
    """The options every integration class shares, declared once; the integration classes inherit them.

    A subclass also gets ``compressor=`` (keyword only, an already built `FinchCompressor`, not with
    ``model_name``), the lazily loaded `compressor`, the merged `config` and the `passage_allocation`.

    It also takes ``embedding_model=`` (keyword only): what sentence fusion embeds with when the passages are
    pieces of one document (`finch_rag.RankWeighting.sentence_fusion_scope`). A sentence-transformers model, its
    name or path (loaded on first use, shared in the process), or an object with ``embed_query`` and
    ``embed_documents`` such as a LangChain ``Embeddings``; ``None``, the default, is the embedded
    all-MiniLM-L6-v2. Each compression of such passages embeds every sentence and every passage of them: a remote
    embeddings API is called for each compression.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    model_name: str | None = Field(
        None,
        description="Model to load when no compressor= is given: a hub id, a local path or a .gguf file; "
        "None is the embedded SmolLM2-135M-Instruct (offline). Models loaded by name are shared in the process.",
    )
    dtype: str | None = Field(
        None,
        description="Weights' dtype of the model loaded by model_name: float32, bfloat16 or float16. None: float32 on "
        "a CPU, bfloat16 on CUDA. On a CPU with bfloat16 instructions bfloat16 served 1.7x float32's requests per "
        "second on a Zen 4 EPYC (docs/results/serve.md); its answers may differ from float32's. Not with "
        "compressor= (it keeps its model's dtype).",
    )
    progress: bool = Field(False, description="Show a tqdm bar over chunks.")
    weighting: RankWeighting = Field(
        default_factory=RankWeighting, description='Parameters of allocation="retrieval_weighted".'
    )

    _handle: CompressorHandle = PrivateAttr()

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str | None) -> str | None:
        if value is not None:
            dtype_named(value)  # fail when the object is built, not when the model loads
        return value

    def __init__(
        self, *, compressor: FinchCompressor | None = None, embedding_model: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._handle = CompressorHandle(compressor, self.model_name, self.dtype, embedding_model)
        self.config  # noqa: B018 - validate the option combination now, not on first use

    @property
    def _compressor(self) -> FinchCompressor | None:
        """The compressor if given or already loaded (``None`` before the first use of a model given by name)."""
        return self._handle.loaded

    @property
    def embedding_model(self) -> Any:
        """What sentence fusion embeds with (``None``: the embedded all-MiniLM-L6-v2).

        A LlamaIndex class holds a given ``BaseEmbedding`` wrapped, as ``.embed_model``.
        """
        return self._handle.embedding_model

    @property
    def compressor(self) -> FinchCompressor:
        """The `FinchCompressor`, loaded from ``model_name`` on first use unless one was given."""
        return self._handle.get()

    @property
    def config(self) -> FinchConfig:
        """The compressor's config (or `FinchConfig`'s defaults) with this object's options applied."""
        return self._handle.config(self.config_options() | {"progress": self.progress})

    @property
    def passage_allocation(self) -> PassageAllocation:
        """How passages share the budget: ``allocation`` with ``weighting``."""
        return PassageAllocation(self.allocation or RETRIEVAL_WEIGHTED, self.weighting)

    def compression_params(self) -> dict[str, Any]:
        """What decides the compression, for a framework's identifying parameters (LangChain's).

        The budget (`finch_rag.config.budget_params`), ``chunk_size``, ``selection``, ``allocation`` and
        ``answer_cache``.
        """
        config = self.config
        return {
            **budget_params(config),
            "chunk_size": config.chunk_size,
            "selection": config.selection,
            "allocation": self.passage_allocation.kind,
            "answer_cache": config.answer_cache,
        }


class SamplingOptions(BaseModel):
    """The decoding options of the LLM front ends, and their deadline, declared once; each may be given per call."""

    max_new_tokens: int = Field(64, gt=0, description="Most tokens generated per answer.")
    temperature: float = Field(0.0, ge=0, description="0 decodes greedily.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (with temperature > 0).")
    seed: int | None = Field(None, description="Seed for sampling, for reproducible answers.")
    timeout: TimeoutSeconds | None = Field(
        None,
        description="Deadline in seconds for each call, compression and decoding together: past it the call stops "
        "at its next chunk or token with finch_rag.DeadlineExceeded (a TimeoutError). None: no deadline.",
    )

    def deadline(self, overrides: Mapping[str, Any]) -> Deadline | None:
        """The call's `Deadline`, starting now: ``timeout`` given per call (in ``overrides``), else this object's.

        Made once where a call enters, before retrieval and compression, and passed down to both.
        """
        seconds = overrides["timeout"] if "timeout" in overrides else self.timeout
        return None if seconds is None else Deadline(seconds)

    def to_sampling_params(self, overrides: Mapping[str, Any], stop: Sequence[str] | None = None) -> SamplingParams:
        """These options with one call's ``overrides`` (`SAMPLING_FIELDS` and ``stop``) as `SamplingParams`.

        ``stop`` is the front end's own (an override's ``stop`` wins); ``timeout`` is `deadline`'s, not decoding's;
        an unknown override is a ``TypeError``.
        """
        unknown = set(overrides) - {*SAMPLING_FIELDS, "stop", "timeout"}
        if unknown:
            raise TypeError(
                f"Unknown options {sorted(unknown)} for {type(self).__name__}; per call it takes "
                f"{(*SAMPLING_FIELDS, 'stop', 'timeout')}."
            )
        options = {name: overrides.get(name, getattr(self, name)) for name in SAMPLING_FIELDS}
        options["stop"] = overrides.get("stop") or stop
        return SamplingParams(**options)


SAMPLING_FIELDS: tuple[str, ...] = tuple(name for name in SamplingOptions.model_fields if name != "timeout")
"""Decoding options, settable on a front end and per call (``timeout`` is the call's deadline, not decoding's)."""
