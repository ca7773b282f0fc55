"""Shared matplotlib helpers for the report PNGs (Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
# Label names, member and stacker names are data, not TeX: a name with two '$' would otherwise be
# parsed as mathtext and stop the report (issue 24). Every plot of the project is made here.
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from fashion_stack.core import atomic  # noqa: E402

DPI = 100
ACCENT = "#1f77b4"
SECOND = "#ff7f0e"


def save_png(fig, path: str | Path) -> Path:
    """Save and close `fig`; atomic, like every artifact of a run."""
    path = Path(path)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return path


def fold_points(path, scores_by_member: Mapping[str, Sequence[float]], ylabel: str,
                title: str, best: Optional[str] = None) -> Path:
    """One bar per member at its mean with a std error bar, and each fold's score as a point."""
    names = list(scores_by_member)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names) + 2), 4))
    for x, name in enumerate(names):
        values = np.asarray(scores_by_member[name], dtype=float)
        colour = SECOND if name == best else ACCENT
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        ax.bar(x, values.mean(), yerr=std, color=colour, alpha=0.35, capsize=6)
        ax.scatter(np.full(values.size, x) + np.linspace(-0.15, 0.15, values.size), values,
                   color=colour, zorder=3, s=25)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    _finish(ax, ylabel, title)
    values = np.asarray([v for vals in scores_by_member.values() for v in vals], dtype=float)
    top = float(np.nanmax(values)) if values.size else 1.0
    ax.set_ylim(0, min(1.0, top * 1.15) if top > 0 else 1.0)  # bars from zero: see bars()
    return save_png(fig, path)


def interval_bars(path, names: Sequence[str], values: Sequence[float], low: Sequence[float],
                  high: Sequence[float], xlabel: str, title: str) -> Path:
    """Horizontal bars with an interval [low, high] each, and a line at zero."""
    values, low, high = (np.asarray(v, dtype=float) for v in (values, low, high))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.5))
    y = np.arange(len(names))[::-1]
    colours = [SECOND if v < 0 else ACCENT for v in values]
    ax.barh(y, values, color=colours, alpha=0.6)
    ax.errorbar(values, y, xerr=[values - low, high - values], fmt="none", ecolor="black", capsize=4)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, names)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return save_png(fig, path)


def bars(path, names: Sequence[str], values: Sequence[float], ylabel: str, title: str,
         highlight: Optional[str] = None, horizontal: bool = False, reference: Optional[tuple] = None) -> Path:
    """Bars from zero (a bar's length is its value: a cut axis would make small gaps look large);
    `reference` = (value, text) draws a labelled line, e.g. the frequency floor."""
    names = [str(n) for n in names]
    colours = [SECOND if n == highlight else ACCENT for n in names]
    if horizontal:
        fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.5))
        ax.barh(np.arange(len(names))[::-1], values, color=colours)
        ax.set_yticks(np.arange(len(names))[::-1], names, fontsize=8)
        ax.set_xlabel(ylabel)
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
        return save_png(fig, path)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names) + 2), 4))
    ax.bar(range(len(names)), values, color=colours)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    for x, value in enumerate(values):  # the exact figure, since a 0-based axis hides small gaps
        ax.annotate(f"{value:.3f}", (x, value), ha="center", va="bottom", fontsize=8)
    if reference is not None:
        ax.axhline(reference[0], color="black", linestyle="--", linewidth=1, label=reference[1])
        ax.legend(loc="lower right")
    _finish(ax, ylabel, title)
    top = max([float(np.nanmax(values))] + ([reference[0]] if reference else []), default=1.0)
    ax.set_ylim(0, min(1.0, top * 1.15) if top > 0 else 1.0)
    return save_png(fig, path)


def count_histograms(path, counts: Mapping[str, Sequence[int]], xlabel: str, title: str) -> Path:
    """Side-by-side bars of integer counts (e.g. labels per image), one series per key."""
    series = {name: np.asarray(values, dtype=int) for name, values in counts.items()}
    top = max((v.max() for v in series.values() if v.size), default=0)
    edges = np.arange(0, top + 2)
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (name, values) in enumerate(series.items()):
        heights = np.bincount(values, minlength=top + 1)
        ax.bar(edges[:-1] + (i - (len(series) - 1) / 2) * width, heights, width=width, label=name)
    ax.set_xticks(edges[:-1])
    ax.legend()
    _finish(ax, "images", title)
    ax.set_xlabel(xlabel)
    return save_png(fig, path)


def curve(path, x: Sequence[float], ys: Mapping[str, Sequence[float]], xlabel: str, ylabel: str,
          title: str, mark: Optional[tuple] = None) -> Path:
    """Line plot of one or more series; `mark` = (x, y, text) annotates a point (e.g. the best)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, y in ys.items():
        ax.plot(x, y, label=name)
    if mark is not None:  # labelled in the legend: an annotation would sit on the curve's peak
        ax.scatter([mark[0]], [mark[1]], color="black", zorder=3, label=mark[2])
    if len(ys) > 1 or mark is not None:
        ax.legend()
    ax.set_xlabel(xlabel)
    _finish(ax, ylabel, title)
    return save_png(fig, path)


def _finish(ax, ylabel: str, title: str) -> None:
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
