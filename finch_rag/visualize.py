"""Seeing what FINCH kept: HTML highlighting for notebooks and a per-layer heatmap.

Kept-ness of a context token is the fraction of (layer, KV head) pairs whose cache still holds its
entry (`CompressedContext.kept_mask`); the HTML shades each token by it.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import CompressedContext

MAX_HTML_TOKENS = 4000


def kept_tokens_html(compressed: CompressedContext, max_tokens: int = MAX_HTML_TOKENS) -> str:
    """The context with each token shaded by how many (layer, KV head) pairs kept it.

    Tokens past ``max_tokens`` are summarised, so a notebook stays responsive on long contexts.
    """
    mask = compressed.kept_mask().tolist()
    shown = min(len(mask), max_tokens)
    spans = []
    for token in range(shown):
        text = compressed.text_of(token, token + 1)
        alpha = round(0.15 + 0.85 * mask[token], 3) if mask[token] > 0 else 0
        style = f"background: rgba(255, 170, 0, {alpha});" if alpha else "color: #888;"
        spans.append(f'<span title="kept by {mask[token]:.0%}" style="{style}">{html.escape(text)}</span>')
    more = ""
    if shown < len(mask):
        more = f'<span style="color:#888"> … {len(mask) - shown} more tokens</span>'
    legend = (
        f"<div style='font-size:90%;margin:4px 0'>Shading: fraction of (layer, KV head) pairs that kept the token. "
        f"{compressed.kept_tokens} of {compressed.original_tokens} entries kept per head "
        f"({compressed.compression_factor:.1f}x).</div>"
    )
    body = "".join(spans) + more
    return f"{legend}<div style='white-space:pre-wrap;font-family:monospace;line-height:1.5'>{body}</div>"


def plot_kept_heatmap(compressed: CompressedContext, ax: Any = None) -> Any:
    """Per-layer heatmap (layers x context tokens) of the fraction of KV heads that kept each token.

    Needs matplotlib (``pip install matplotlib``). Returns the matplotlib ``Axes``.
    """
    try:
        import matplotlib.pyplot as plt
    except ModuleNotFoundError as error:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("plot_kept_heatmap needs matplotlib: pip install matplotlib") from error
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 3.5))
    image = ax.imshow(compressed.kept_per_layer().numpy(), aspect="auto", interpolation="nearest", cmap="magma")
    ax.set_xlabel("context token")
    ax.set_ylabel("layer")
    ax.set_title(f"Kept entries per layer ({compressed.compression_factor:.1f}x)")
    ax.figure.colorbar(image, ax=ax, label="fraction of KV heads")
    return ax
