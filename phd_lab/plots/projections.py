"""Accuracy of projected networks against delta, PCA bases versus random orthonormal bases."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from phd_lab import atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def plot_projections(table: pd.DataFrame, ax: "Axes | None" = None, title: str = "") -> "Axes":
    """One line per basis over the deltas (evenly spaced, labelled); the unprojected model dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8.0, 3.8))
    deltas = sorted(table.loc[table["basis"] != "none", "delta"].unique())
    position = {delta: i for i, delta in enumerate(deltas)}
    for basis, color in (("pca", "#3b6fb6"), ("random", "#c0392b")):
        part = table[table["basis"] == basis].sort_values("delta")
        if len(part):
            ax.plot([position[d] for d in part["delta"]], part["accuracy"], marker="o", ms=3, color=color,
                    label=f"{basis} basis")
    reference = table[table["basis"] == "none"]
    if len(reference):
        ax.axhline(float(reference["accuracy"].iloc[0]), color="grey", ls="--", lw=1, label="unprojected")
    ax.set_xticks(range(len(deltas)))
    ax.set_xticklabels([f"{d:g}" for d in deltas], rotation=70, fontsize=7)
    ax.set_xlabel("δ (explained variance)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return ax


def save_projection_plot(table: pd.DataFrame, path: Path | str, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = plot_projections(table, title=title)
    try:
        atomic.save_figure(ax.figure, path, dpi=110)
    finally:
        plt.close(ax.figure)
