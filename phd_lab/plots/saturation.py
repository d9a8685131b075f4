"""Saturation per layer (forward order) for the training and the test set of one epoch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd

from phd_lab import atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_SUFFIX = "_train_saturation"


def saturation_table(row: Mapping[str, Any]) -> pd.DataFrame:
    """Layers (in column order) × {train, test} saturation from one CSV row."""
    layers = [key[: -len(_SUFFIX)] for key in row if key.endswith(_SUFFIX) and len(key) > len(_SUFFIX)]
    return pd.DataFrame({split: [float(row.get(f"{layer}_{split}_saturation", float("nan"))) for layer in layers]
                         for split in ("train", "test")}, index=pd.Index(layers, name="layer"))


def plot_saturation(table: pd.DataFrame, ax: "Axes | None" = None, title: str = "") -> "Axes":
    """Grouped bars of train/test saturation per layer, layers left to right in forward order."""
    from phd_lab.plots import subplots

    if ax is None:
        _, ax = subplots(figsize=(max(4.0, 0.45 * len(table) + 2.0), 3.6))
    positions = range(len(table))
    width = 0.4
    ax.bar([p - width / 2 for p in positions], table["train"], width, label="train", color="#3b6fb6")
    ax.bar([p + width / 2 for p in positions], table["test"], width, label="test", color="#e0892f")
    ax.set_xticks(list(positions))
    ax.set_xticklabels(list(table.index), rotation=60, ha="right", fontsize=8)
    ax.set_xlim(-0.7, len(table) - 0.3)  # every layer's slot, also a last one without bars (autoscaling cut it off)
    ax.set_ylim(0, 1)
    ax.set_ylabel("saturation")
    ax.set_xlabel("layer (forward order)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    if table.isna().to_numpy().all():  # a diverged epoch (inf/NaN activations) drew an empty chart without a word
        ax.text(0.5, 0.5, "no finite saturation in this epoch\n(non-finite activations: did the run diverge?)",
                ha="center", va="center", transform=ax.transAxes, fontsize=9, color="#c44e52")
    else:  # a bar without a value (a layer no pass called, overflowed activations) looked like a saturation of 0
        for offset, split in ((-width / 2, "train"), (width / 2, "test")):
            for position, value in zip(positions, table[split]):
                if pd.isna(value):
                    ax.text(position + offset, 0.01, NO_VALUE, rotation=90, ha="center", va="bottom", fontsize=7,
                            color="#777777")
    return ax


NO_VALUE = "no value"  # written into the slot of a bar whose saturation is NaN


DPI = 110  # of the saved PNG


def save_saturation_plot(row: Mapping[str, Any], path: Path | str, title: str = "") -> None:
    """Draw the saturation of one epoch row and save it atomically."""
    from phd_lab.plots import close

    ax = plot_saturation(saturation_table(row), title=title)
    try:
        save_tight(ax.figure, path)
    finally:
        close(ax.figure)


def save_tight(fig: "Figure", path: Path | str) -> None:
    """Save ``fig`` atomically, cropped to what it draws as ``bbox_inches="tight"`` does (the same PNG bytes) in
    about a fifth less time: for "tight", savefig first lays the whole figure out without rendering it (for layout
    engines and artists placed only at draw time, which this figure has none of), then measures the box, then
    draws. Measuring the box directly leaves that layout pass out of a plot drawn every epoch."""
    import matplotlib as mpl

    fig.set_dpi(DPI)  # measured at the resolution it is saved with, as savefig does
    extent = fig.get_tightbbox(fig.canvas.get_renderer()).padded(mpl.rcParams["savefig.pad_inches"])
    atomic.save_figure(fig, path, dpi=DPI, bbox_inches=extent)
