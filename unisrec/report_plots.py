"""PNG plots of the report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(path: Path, series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str) -> Path:
    """One line per series of (x, y) points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in series.items():
        x, y = zip(*points, strict=True)
        ax.plot(x, y, marker="o" if len(points) < 30 else None, markersize=3, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def grouped_bars(path: Path, groups: list[str], series: dict[str, list[tuple[float, float]]], xlabel: str,
                 ylabel: str, title: str) -> Path:
    """Bars of (mean, std) per group, one colour per series."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (label, values) in enumerate(series.items()):
        means, stds = zip(*values, strict=True)
        ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=label)
    ax.set_xticks(x, groups)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bars(path: Path, labels: list[str], values: list[float], errors: list[float], ylabel: str, title: str) -> Path:
    """One bar per label with an error bar; a zero line (gains can be negative)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.5))
    x = np.arange(len(labels))
    colours = ["tab:green" if v >= 0 else "tab:red" for v in values]
    ax.bar(x, values, yerr=errors, capsize=3, color=colours)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
