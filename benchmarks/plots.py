"""The harness's figures, drawn from summary rows or records with matplotlib's file backend.

Each function writes one PNG and returns its path; the suites decide what goes in (their own summaries), so
this module knows no suite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

Curves = Mapping[int, Mapping[str, Sequence[tuple[float, float]]]]
"""``{length: {label: [(x, y), ...]}}``: one panel per length, one line per label."""


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only; no display is ever needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure: Any, path: str | Path, **options: Any) -> Path:
    """Write ``figure`` to ``path`` (folders made as needed) at 110 dpi and close it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=110, **options)
    pyplot().close(figure)
    return target


def quality_curves(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Answer quality and evidence retention against compression factor, one line per method.

    ``rows`` are means per (method, budget) with a ``factor``; ``full`` is drawn as a dashed level.
    """
    plt = pyplot()
    metrics = [m for m in ("contains", "f1", "retention") if any(r.get(m) is not None for r in rows)]
    figure, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False, layout="constrained")
    for axis, metric in zip(axes[0], metrics, strict=True):
        for method in dict.fromkeys(r["method"] for r in rows):
            points = sorted(
                (r["factor"], r[metric]) for r in rows if r["method"] == method and r.get(metric) is not None
            )
            if not points:
                continue
            if method == "full":
                axis.axhline(points[0][1], color="black", linestyle="--", linewidth=1, label="full")
                continue
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("compression factor (context tokens / B)")
        axis.set_ylabel(metric)
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    figure.suptitle(title, fontsize=10)
    return save(figure, path)


def retrieval_curves(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str, methods: Sequence[str]) -> Path:
    """One column per budget; all-hops (top) and retention (bottom) against ``top_k``, one line per method."""
    plt = pyplot()
    budgets = list(dict.fromkeys(str(r["budget"]) for r in rows))
    top_ks = sorted({r["top_k"] for r in rows})
    figure, axes = plt.subplots(
        2, len(budgets), figsize=(3.6 * len(budgets), 5.6), squeeze=False, sharey="row", layout="constrained"
    )
    for column, budget in enumerate(budgets):
        for row, metric in enumerate(("all_hops", "retention")):
            axis = axes[row][column]
            for method in methods:
                points = sorted(
                    (r["top_k"], r[metric]) for r in rows if str(r["budget"]) == budget and r["method"] == method
                )
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
            axis.set_xscale("log", base=2)
            axis.set_xticks(top_ks, labels=[str(k) for k in top_ks])
            axis.set_ylim(-0.02, 1.02)
            axis.grid(alpha=0.3)
            axis.set_title(f"B = {budget}", fontsize=9) if row == 0 else axis.set_xlabel("passages retrieved (k)")
            if column == 0:
                axis.set_ylabel(metric)
    axes[0][-1].legend(fontsize=8, loc="best")
    figure.suptitle(title, fontsize=10)
    return save(figure, path)


def heatmaps(records: Sequence[Mapping[str, Any]], path: str | Path, metric: str = "contains") -> Path:
    """A grid of depth x length heatmaps of ``metric``: one row per ratio, one column per method.

    ``records`` hold ``method``, ``ratio``, ``length`` and ``depth``; ratio 0 (no compression) fills every row.
    """
    plt = pyplot()
    ran = [record for record in records if "skipped" not in record and record.get(metric) is not None]
    methods = list(dict.fromkeys(record["method"] for record in ran))
    ratios = sorted({record["ratio"] for record in ran if record["ratio"] != 0.0}) or [0.0]
    lengths = sorted({record["length"] for record in ran})
    depths = sorted({record["depth"] for record in ran})
    figure, axes = plt.subplots(
        len(ratios),
        len(methods),
        figsize=(1.5 + 2.1 * len(methods), 0.8 + 2.3 * len(ratios)),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for row, ratio in enumerate(ratios):
        for column, method in enumerate(methods):
            axis = axes[row][column]
            grid = torch.full((len(depths), len(lengths)), float("nan"))
            for i, depth in enumerate(depths):
                for j, length in enumerate(lengths):
                    values = [
                        r[metric]
                        for r in ran
                        if r["method"] == method
                        and r["depth"] == depth
                        and r["length"] == length
                        and (r["ratio"] == ratio or r["ratio"] == 0.0)
                    ]
                    if values:
                        grid[i, j] = sum(values) / len(values)
            image = axis.imshow(grid.numpy(), vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            for i in range(len(depths)):
                for j in range(len(lengths)):
                    if not torch.isnan(grid[i, j]):
                        axis.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
            axis.set_xticks(range(len(lengths)), [str(length) for length in lengths], fontsize=7)
            axis.set_yticks(range(len(depths)), [f"{depth:.0%}" for depth in depths] if column == 0 else [], fontsize=7)
            label = "full context" if method == "full" else f"{1 / (1 - ratio):.0f}x"
            axis.set_title(f"{method}\n{label}", fontsize=7)
            if column == 0:
                axis.set_ylabel("needle depth", fontsize=8)
            if row == len(ratios) - 1:
                axis.set_xlabel("context tokens", fontsize=8)
    if image is not None:
        figure.colorbar(image, ax=axes, shrink=0.6, label=metric)
    return save(figure, path, bbox_inches="tight")


def depth_panels(curves: Mapping[str, Curves], path: str | Path) -> Path:
    """One row per titled metric, one column per context length, one line per label, against needle depth.

    ``curves`` maps a row title to that metric's `Curves`.
    """
    plt = pyplot()
    lengths = sorted({length for by_length in curves.values() for length in by_length})
    labels = list(dict.fromkeys(label for by_length in curves.values() for c in by_length.values() for label in c))
    # Curves that coincide (all 1.0, say) stay visible: each has its own colour, marker and marker size.
    styles = {
        label: {"color": f"C{i}", "marker": "osD^v<>"[i % 7], "markersize": max(9 - 2 * i, 3), "alpha": 0.85}
        for i, label in enumerate(labels)
    }
    figure, axes = plt.subplots(
        len(curves), max(len(lengths), 1), figsize=(0.5 + 4 * max(len(lengths), 1), 6), squeeze=False
    )
    for row, (title, by_length) in enumerate(curves.items()):
        for column, length in enumerate(lengths):
            axis = axes[row][column]
            for label, points in by_length.get(length, {}).items():
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, label=label, **styles[label])
            axis.set_ylim(-0.05, 1.05)
            axis.set_xlim(-0.05, 1.05)
            axis.grid(alpha=0.3)
            axis.set_title(f"{length} tokens: {title}", fontsize=9)
            if row == len(curves) - 1:
                axis.set_xlabel("needle depth (0 = start, 1 = end)")
            if column == 0:
                axis.set_ylabel(title)
    handles = {h.get_label(): h for axis in axes.flat for h in axis.get_lines()}
    figure.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    return save(figure, path)
