"""Projected networks against delta, PCA bases versus random orthonormal bases: accuracy (a reconstruction's
loss), and a reconstruction model's example outputs per delta (§7.2, Table 3)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from phd_lab import atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes


# each basis told apart by its line and marker too, not by hue alone (grayscale prints, colour-blind readers)
BASIS_STYLES = {"pca": {"color": "#3b6fb6", "linestyle": "-", "marker": "o"},
                "random": {"color": "#c0392b", "linestyle": "--", "marker": "s"}}


def plot_projections(table: pd.DataFrame, ax: "Axes | None" = None, title: str = "") -> "Axes":
    """One line per basis over the deltas (evenly spaced, labelled): PCA solid with round markers, random dashed
    with square ones; the unprojected model a grey dotted line without markers; the legend beside the axes."""
    from phd_lab.plots import subplots
    from phd_lab.plots.grid_figures import fraction_in_percent, thin_tick_labels, wrapped_lines

    if ax is None:
        _, ax = subplots(figsize=(8.0, 3.8))
    deltas = sorted(table.loc[table["basis"] != "none", "delta"].unique())
    position = {delta: i for i, delta in enumerate(deltas)}
    column = "accuracy" if table["accuracy"].notna().any() else "loss"  # a reconstruction has no accuracy
    for basis, style in BASIS_STYLES.items():
        part = table[table["basis"] == basis].sort_values("delta")
        if len(part):
            ax.plot([position[d] for d in part["delta"]], part[column], ms=3, label=f"{basis} basis", **style)
    reference = table[table["basis"] == "none"]
    if len(reference):
        ax.axhline(float(reference[column].iloc[0]), color="grey", ls=":", lw=1.2, label="unprojected")
    thin_tick_labels(ax, [f"{d:g}" for d in deltas], rotation=70)  # §7.4's 109 deltas ran into one smear
    ax.set_xlabel("δ (explained variance)")
    if column == "accuracy":
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)  # the unprojected line of a model near 100% lay on the frame at 1
        fraction_in_percent(ax.yaxis)
    else:
        ax.set_ylabel("test reconstruction loss (MSE)")
        ax.set_yscale("log")
    if title:  # its lines (the run's name, its run id and variant folder) wrapped to the figure's width
        ax.set_title(wrapped_lines(title, ax.figure.get_size_inches()[0], 9), fontsize=9)
    # beside the axes: inside, "best" put it over the PCA line and the unprojected line, which lie near the top
    # right at the high deltas of every trained classifier; the saved figure grows to hold it (tight box)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    return ax


def save_projection_plot(table: pd.DataFrame, path: Path | str, title: str = "") -> None:
    from phd_lab.plots import close

    ax = plot_projections(table, title=title)
    try:
        atomic.save_figure(ax.figure, path, dpi=110)
    finally:
        close(ax.figure)


def shown_deltas(deltas: Sequence[float], most: int = 6) -> list[float]:
    """At most ``most`` of the deltas, evenly spread over the sorted list, its first and last included."""
    deltas = sorted(deltas)
    if len(deltas) <= most:
        return deltas
    picks = np.linspace(0, len(deltas) - 1, most).round().astype(int)
    return [deltas[i] for i in sorted(set(picks))]


def _displayable(images: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(N, C, H, W) → (N, H, W[, 3]) in [0, 1], each example scaled by its input's range."""
    scaled = np.clip((images - low) / np.maximum(high - low, 1e-12), 0.0, 1.0).transpose(0, 2, 3, 1)
    return scaled[..., 0] if scaled.shape[-1] == 1 else scaled


def save_reconstruction_grid(inputs: np.ndarray, outputs: Mapping[float, np.ndarray], path: Path | str,
                             title: str = "") -> None:
    """Rows: the inputs, then the outputs of the unprojected model (delta 1.0) and of the projected model at a
    few deltas; columns: the examples. Each example is scaled by its input's value range, so that rows compare."""
    from phd_lab.plots import close, subplots
    from phd_lab.plots.grid_figures import wrapped_lines

    low = inputs.min(axis=(1, 2, 3), keepdims=True)
    high = inputs.max(axis=(1, 2, 3), keepdims=True)
    rows = [("input", inputs)]
    if 1.0 in outputs:
        rows.append(("unprojected", outputs[1.0]))
    rows += [(f"δ = {delta:g}", outputs[delta]) for delta in shown_deltas([d for d in outputs if d != 1.0])]
    count = inputs.shape[0]
    figure, axes = subplots(len(rows), count, figsize=(1.3 * count + 1.0, 1.3 * len(rows) + 0.4), squeeze=False)
    for row, (label, images) in zip(axes, rows):
        for ax, image in zip(row, _displayable(images, low, high)):
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(label, fontsize=8)
    if title:
        figure.suptitle(wrapped_lines(title, figure.get_size_inches()[0], 9), fontsize=9)
    try:
        atomic.save_figure(figure, path, dpi=110)
    finally:
        close(figure)


MAX_PANEL_WIDTH = 12.0  # inches per basis of the relative-accuracy figure


def relative_accuracy_figure(relative: pd.DataFrame) -> Any:
    """The thesis' Fig. 43 over a grid: per basis a panel, per delta (evenly spaced) a box of the projected
    networks' accuracy relative to their unprojected accuracy and a dot per run, every run of the grid in it."""
    from phd_lab.analysis.projection_tables import BASES
    from phd_lab.plots import subplots
    from phd_lab.plots.grid_figures import thin_tick_labels

    deltas = sorted(relative["delta"].unique())
    bases = [basis for basis in BASES if (relative["basis"] == basis).any()]
    panel_width = min(MAX_PANEL_WIDTH, max(5.0, 0.28 * len(deltas) + 2))  # §7.4's 110 deltas: labels thinned
    figure, axes = subplots(1, len(bases), figsize=(panel_width * len(bases), 3.8), sharey=True, squeeze=False)
    for ax, basis in zip(axes[0], bases):
        part = relative[relative["basis"] == basis]
        present = [d for d in deltas if (part["delta"] == d).any()]
        values = [part.loc[part["delta"] == d, "relative_accuracy"].to_numpy() for d in present]
        positions = [deltas.index(d) for d in present]
        ax.boxplot(values, positions=positions, widths=0.6, showfliers=False)
        for position, points in zip(positions, values):  # each run a dot: a box of one or two runs shows them
            ax.scatter(np.full(len(points), position), points, s=5, color="#3b6fb6", alpha=0.5, zorder=3)
        ax.axhline(1.0, color="grey", ls="--", lw=1)
        thin_tick_labels(ax, [f"{d:g}" for d in deltas], rotation=70)
        ax.set_xlim(-0.7, len(deltas) - 0.3)
        ax.set_xlabel("δ (explained variance)")
        runs = part["run"].nunique()
        ax.set_title(f"{basis} bases ({runs} run{'s' if runs != 1 else ''})", fontsize=9)
    axes[0][0].set_ylabel("accuracy relative to the unprojected network")
    return figure
