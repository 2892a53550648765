"""Figures for tracking and reports, drawn with Matplotlib's object API (Agg, no pyplot).

Every function writes one PNG and returns its path; none touches global
Matplotlib state, so they are safe to call from any thread or process.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.markers import MarkerStyle

#: One colour per method, the same in every panel (matplotlib's tab10).
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")
#: Hatches that tell apart methods that share a colour (the 11th method on, e.g. all 14).
_HATCHES = ("", "///", "xxx", "...")


def method_style(k: int) -> tuple[str, str]:
    """Colour and hatch of the ``k``-th method: ten colours, then the same ten hatched,
    so that every method of a table of up to 40 looks different."""
    return _COLOURS[k % len(_COLOURS)], _HATCHES[(k // len(_COLOURS)) % len(_HATCHES)]


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path


def heatmap(R: Sequence[Sequence[float]], path: str | Path, title: str = "",
            metric: str = "accuracy") -> Path:
    """``R[i][j]`` as a heatmap: rows = after training task i, columns = task j."""
    R = np.asarray(R, dtype=float)
    T = R.shape[0]
    fig = Figure(figsize=(1.6 + 0.62 * T, 1.2 + 0.55 * T), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(R, vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(T):
        for j in range(T):
            ax.text(j, i, f"{R[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if R[i, j] < 0.6 else "black")
    ax.set_xticks(range(T))
    ax.set_yticks(range(T))
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(title or f"R_test ({metric})", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def ap_curve(curve: Sequence[float], path: str | Path, title: str = "",
             val_curve: Sequence[float] | None = None) -> Path:
    """AP so far (mean score over tasks 0..i after task i) against the task index."""
    fig = Figure(figsize=(4.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(curve))
    ax.plot(x, curve, marker="o", label="test")
    if val_curve is not None:
        ax.plot(x, val_curve, marker="s", linestyle="--", label="val")
        ax.legend(fontsize=8)
    ax.set_xticks(x)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("after training task")
    ax.set_ylabel("AP so far")
    ax.set_title(title or "AP over tasks", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def seed_spread(per_seed: Mapping[str, Mapping[int, float]], path: str | Path,
                title: str = "") -> Path:
    """One panel per metric: each seed's value as a dot, the mean and ± std as a bar."""
    names = [m for m, values in per_seed.items() if values]
    fig = Figure(figsize=(2.2 * max(len(names), 1) + 0.6, 3.4), layout="constrained")
    if not names:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no finished seeds", ha="center", va="center")
        ax.set_axis_off()
        return _save(fig, path)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        seeds = sorted(per_seed[name])
        vals = np.array([per_seed[name][s] for s in seeds], dtype=float)
        jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else np.zeros(1)
        ax.scatter(jitter, vals, s=18, alpha=0.8, zorder=3)
        for x, v, s in zip(jitter, vals, seeds, strict=True):
            ax.annotate(str(s), (x, v), textcoords="offset points", xytext=(4, 0),
                        fontsize=6, alpha=0.7)
        ax.errorbar([0.35], [vals.mean()], yerr=[vals.std()], fmt="D", color="black",
                    capsize=4, zorder=4)
        ax.set_xlim(-0.4, 0.6)
        ax.set_xticks([])
        ax.set_title(f"{name}\n{vals.mean():.3f} ± {vals.std():.3f} (n={len(vals)})",
                     fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def grouped_bars(
    datasets: Sequence[str],
    methods: Sequence[str],
    values: Mapping[str, Mapping[tuple[str, str], tuple[float, float, int]]],
    path: str | Path,
    title: str = "",
    refs: Mapping[tuple[str, str], Mapping[str, float]] | None = None,
    scale: float = 100.0,
    unit: str = "%",
) -> Path:
    """Grouped bar chart: one panel per metric, datasets on x, one bar per method.

    ``values[metric][(method, dataset)] = (mean, std, n)`` on a 0-1 scale, drawn times
    ``scale`` (in %); missing cells are left out. A method keeps its colour in every
    panel; a mean that rounds to zero is marked by a diamond on the axis (a bar of
    height 0 would be invisible); the legend sits outside the panels.
    ``refs[(method, dataset)][metric]`` (e.g. published numbers) are drawn as black
    markers on the bars.
    """
    fig = grouped_bars_figure(datasets, methods, values, title, refs, scale, unit)
    return _save(fig, path)


def grouped_bars_figure(
    datasets: Sequence[str],
    methods: Sequence[str],
    values: Mapping[str, Mapping[tuple[str, str], tuple[float, float, int]]],
    title: str = "",
    refs: Mapping[tuple[str, str], Mapping[str, float]] | None = None,
    scale: float = 100.0,
    unit: str = "%",
) -> Figure:
    """The figure :func:`grouped_bars` saves."""
    refs = refs or {}
    metrics = list(values)
    styles = {m: method_style(k) for k, m in enumerate(methods)}
    panel = max(3.6, 1.0 + 0.5 * len(datasets) * max(len(methods), 1) * 0.45)
    fig = Figure(figsize=(panel * len(metrics) + 1.8, 3.8), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(datasets))
    handles: dict[str, Any] = {}
    for ax, metric in zip(axes, metrics, strict=True):
        for k, method in enumerate(methods):
            means, stds, xs, rx, ry = [], [], [], [], []
            for d, dataset in enumerate(datasets):
                pos = x[d] - 0.4 + width * (k + 0.5)
                ref = refs.get((method, dataset), {}).get(metric)
                if ref is not None:
                    rx.append(pos)
                    ry.append(ref * scale)
                cell = values[metric].get((method, dataset))
                if cell is None or not np.isfinite(cell[0]):
                    continue
                xs.append(pos)
                means.append(cell[0] * scale)
                stds.append(cell[1] * scale if np.isfinite(cell[1]) else 0.0)
            if xs:
                colour, hatch = styles[method]
                handles[method] = ax.bar(xs, means, width=width * 0.95, yerr=stds, capsize=3,
                                         color=colour, hatch=hatch, label=method,
                                         edgecolor="white" if hatch else colour,
                                         linewidth=0)
                zero = [p for p, m in zip(xs, means, strict=True) if abs(m) < 0.05]
                if zero:
                    ax.scatter(zero, [0.0] * len(zero), marker="D", s=28, zorder=6,
                               color=styles[method][0], edgecolors="black", linewidths=0.6)
            if rx:
                handles["reference"] = ax.scatter(rx, ry, marker="_", s=220, color="black",
                                                  linewidths=2, zorder=5, label="reference")
        ax.set_xticks(x)
        ax.set_xticklabels(datasets, rotation=20 if len(datasets) > 3 else 0)
        ax.set_xlabel("dataset")
        ax.set_ylabel(f"{metric} ({unit})")
        ax.set_title(f"{metric}: mean ± std over seeds", fontsize=9)
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    if handles:
        if any(abs(c[0]) * scale < 0.05 for v in values.values() for c in v.values()):
            handles["mean 0 (no bar)"] = axes[0].scatter(
                [], [], marker="D", s=28, color="white", edgecolors="black", linewidths=0.6)
        order = [m for m in methods if m in handles] + [
            k for k in ("reference", "mean 0 (no bar)") if k in handles]
        fig.legend([handles[k] for k in order], order, loc="outside right upper",
                   fontsize=8, title="method", title_fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def cd_diagram(ranks: Mapping[str, float], pvalues: Mapping[str, Mapping[str, float]],
               path: str | Path, title: str = "", alpha: float = 0.05,
               order: Sequence[str] | None = None) -> Path:
    """A critical-difference diagram (scikit-posthocs): each method at its average rank
    (1 = best, on the left), methods that the post-hoc test does not separate at ``alpha``
    joined by a bar. ``pvalues[a][b]`` are the pairwise post-hoc p-values. ``order``: the
    methods in the order that gives their styles (:func:`method_style`), e.g. the bar
    chart's, so that a method looks the same in both figures; default, ``ranks``' order."""
    return _save(cd_diagram_figure(ranks, pvalues, title, alpha, order), path)


#: Characters per line of a critical-difference diagram's title (9 pt on 7 inches).
CD_TITLE_CHARS = 90


def cd_diagram_figure(ranks: Mapping[str, float],
                      pvalues: Mapping[str, Mapping[str, float]], title: str = "",
                      alpha: float = 0.05, order: Sequence[str] | None = None) -> Figure:
    """The figure :func:`cd_diagram` saves. A method whose colour repeats an earlier
    one's (the 11th on, hatched in the bar chart) gets a dashed line and a hollow square
    marker, so that no two methods look alike."""
    import pandas as pd
    import scikit_posthocs as sp

    names = list(ranks)
    index = {m: k for k, m in enumerate(order or ())}
    for m in names:
        index.setdefault(m, len(index))
    styles = {m: method_style(index[m]) for m in names}
    matrix = pd.DataFrame([[pvalues[a][b] for b in names] for a in names], index=names,
                          columns=names)
    fig = Figure(figsize=(7.0, 1.6 + 0.32 * len(names)), layout="constrained")
    ax = fig.add_subplot()
    drawn = sp.critical_difference_diagram(
        dict(ranks), matrix, ax=ax, alpha=alpha,
        label_fmt_left="{label} ({rank:.2f})", label_fmt_right="({rank:.2f}) {label}",
        label_props={"fontsize": 9}, crossbar_props={"color": "black", "linewidth": 2.5},
        color_palette={m: styles[m][0] for m in names})
    # scikit-posthocs draws each crossbar through its methods in the order of a Python
    # set, which depends on the process's string-hash seed: the line's ends (cap or join)
    # and so the PNG's pixels changed from one run to the next. In rank order the same
    # table always gives the same picture.
    for bar in drawn["crossbars"]:
        for line in bar:
            line.set_xdata(sorted(line.get_xdata()))
    texts = {text: m for m in names
             for text in (f"{m} ({ranks[m]:.2f})", f"({ranks[m]:.2f}) {m}")}
    for elbow, marker, label in zip(drawn["elbows"], drawn["markers"], drawn["labels"],
                                    strict=True):
        method = texts.get(label.get_text())
        if method is not None and styles[method][1]:
            elbow.set_linestyle((0, (4, 2)))
            square = MarkerStyle("s")
            marker.set_paths([square.get_path().transformed(square.get_transform())])
            marker.set_facecolor("white")
            marker.set_edgecolor(styles[method][0])
            marker.set_linewidth(1.5)
    k = max(len(names), 2)
    ax.set_xlim(0.9, k + 0.1)  # the whole range of ranks, best on the left; whole dots
    ax.set_xticks(range(1, k + 1))
    ax.set_xlabel("average rank (1 = best)", fontsize=8)
    ax.xaxis.set_label_position("top")
    caption = (f"methods joined by a bar are not significantly different "
               f"(Nemenyi, alpha = {alpha:g})")
    # a long title (an experiment's name, --seeds) wrapped to the figure's 7 inches
    title = textwrap.fill(title, CD_TITLE_CHARS)
    fig.suptitle(f"{title}\n{caption}" if title else caption, fontsize=9)
    return fig
