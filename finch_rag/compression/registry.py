"""The selection-policy registry: the policy each ``FinchConfig.selection`` name stands for.

A config names its policy by a string, as transformers' ``AttentionInterface`` names an attention function: the
chunk loop (`loop`) asks `selection_policy` for the config's policy and never branches on its type. A new policy
is one class in `selection` (or a module of its own) and one entry in `POLICIES`. The automatic budget
(``target_tokens="auto"``) wraps whichever policy is named in `auto_budget.AttentionMassSelection`; this module
sits above both, so neither imports the other's user.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .auto_budget import AttentionMassSelection
from .scoring import resolve_layers
from .selection import (
    FirstSelection,
    PerHeadSelection,
    PerLayerSelection,
    RandomSelection,
    RecencySelection,
    SelectionPolicy,
    SharedSelection,
)

if TYPE_CHECKING:
    from ..config import FinchConfig

PolicyFactory = Callable[["FinchConfig", int, "Sequence[str] | None"], SelectionPolicy]
"""Builds a policy from the config, the model's number of layers and its per-layer attention types."""


def _shared(config: FinchConfig, num_layers: int, layer_types: Sequence[str] | None) -> SelectionPolicy:
    voting = resolve_layers(config.score_layers, num_layers, layer_types)
    return SharedSelection(voting_layers=tuple(voting), smoothing=config.smoothing)


POLICIES: dict[str, PolicyFactory] = {
    "per_head": lambda config, _layers, _types: PerHeadSelection(smoothing=config.smoothing),
    "per_layer": lambda config, _layers, _types: PerLayerSelection(smoothing=config.smoothing),
    "shared": _shared,
    "random": lambda _config, _layers, _types: RandomSelection(),
    "recency": lambda _config, _layers, _types: RecencySelection(),
    "first": lambda _config, _layers, _types: FirstSelection(),
}
"""``FinchConfig.selection`` name -> factory of its policy (`config.SELECTIONS` lists the same names)."""


def selection_policy(config: FinchConfig, num_layers: int, layer_types: Sequence[str] | None = None) -> SelectionPolicy:
    """The policy ``config.selection`` names, with its smoothing and voting layers.

    Parameters
    ----------
    config : FinchConfig
        Reads ``selection``, ``smoothing`` and ``score_layers``.
    num_layers : int
        The model's number of decoder layers.
    layer_types : sequence of str, optional
        The model's per-layer attention types (``"sliding_attention"`` layers do not vote by default).

    With ``target_tokens="auto"`` the policy is wrapped in `auto_budget.AttentionMassSelection`, which
    keeps the fewest entries holding ``config.attention_mass`` of the question's attention.
    """
    factory = POLICIES.get(config.selection)
    if factory is None:
        raise ValueError(
            f"Unknown selection {config.selection!r}; the legal names are {tuple(POLICIES)} (FinchConfig.selection)."
        )
    policy = factory(config, num_layers, layer_types)
    if config.target_tokens == "auto":
        return AttentionMassSelection(policy, config.attention_mass)
    return policy
