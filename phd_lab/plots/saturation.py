"""Saturation per layer (forward order) for the training and the test set of one epoch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd

from phd_lab import atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_SUFFIX = "_train_saturation"


def saturation_table(row: Mapping[str, Any]) -> pd.DataFrame:
    """Layers (in column order) × {train, test} saturation from one CSV row."""
    layers = [key[: -len(_SUFFIX)] for key in row if key.endswith(_SUFFIX) and len(key) > len(_SUFFIX)]
    return pd.DataFrame({split: [float(row.get(f"{layer}_{split}_saturation", float("nan"))) for layer in layers]
                         for split in ("train", "test")}, index=pd.Index(layers, name="layer"))


def plot_saturation(table: pd.DataFrame, ax: "Axes | None" = None, title: str = "") -> "Axes":
    """Grouped bars of train/test saturation per layer, layers left to right in forward order."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(table) + 2.0), 3.6))
    positions = range(len(table))
    width = 0.4
    ax.bar([p - width / 2 for p in positions], table["train"], width, label="train", color="#3b6fb6")
    ax.bar([p + width / 2 for p in positions], table["test"], width, label="test", color="#e0892f")
    ax.set_xticks(list(positions))
    ax.set_xticklabels(list(table.index), rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("saturation")
    ax.set_xlabel("layer (forward order)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return ax


def save_saturation_plot(row: Mapping[str, Any], path: Path | str, title: str = "") -> None:
    """Draw the saturation of one epoch row and save it atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = plot_saturation(saturation_table(row), title=title)
    try:
        atomic.save_figure(ax.figure, path, dpi=110)
    finally:
        plt.close(ax.figure)


def evolution_figure(history: pd.DataFrame, losses: pd.DataFrame, title: str) -> Any:
    """Saturation per layer (rows, forward order from the top) and epoch (columns) as a heat map, above the
    losses and test accuracy of the same epochs: the thesis' appendix B (Figs. 66-68), for one run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    layers, epochs = list(history.columns), list(history.index)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(5.5, 0.12 * len(epochs) + 4), 2.2 + 0.16 * len(layers)),
                                      sharex=True, gridspec_kw={"height_ratios": [max(2, len(layers) / 6), 1.2]})
    image = top.imshow(history.to_numpy(dtype=float).T, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                       interpolation="nearest", extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(layers) - 0.5, -0.5))
    step = max(1, -(-len(layers) // 30))  # at most about 30 layer names
    top.set_yticks(range(0, len(layers), step))
    top.set_yticklabels(layers[::step], fontsize=7)
    top.set_ylabel("layer (forward order)")
    top.set_title(title, fontsize=9)
    colorbar_axes = top.inset_axes([1.01, 0.0, 0.025, 1.0])  # beside the map only: both panels keep one x axis
    fig.colorbar(image, cax=colorbar_axes, label="saturation")
    handles, labels = [], []
    for column, style in (("train_loss", "-"), ("test_loss", "--")):
        if column in losses.columns and losses[column].notna().any():
            handles += bottom.plot(losses["epoch"], losses[column], color="#444444", ls=style, lw=1.2)
            labels.append(column.replace("_", " "))
    bottom.set_ylabel("loss")
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    if "test_accuracy" in losses.columns and losses["test_accuracy"].notna().any():
        right = bottom.twinx()
        handles += right.plot(losses["epoch"], losses["test_accuracy"], color="#e0892f", lw=1.2)
        labels.append("test accuracy")
        right.set_ylim(0, 1)
        right.set_ylabel("test accuracy", fontsize=8)
    if handles:
        bottom.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3,
                      frameon=False)
    return fig
