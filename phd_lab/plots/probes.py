"""Plots of the probe job: accuracy per layer in forward order, and confusion matrices.

They only draw already computed results (the probe table, a confusion matrix); matplotlib is
imported inside the functions with the Agg backend, so the probe job never needs a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from phd_lab.atomic import save_figure

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_probe_accuracy(table: "pd.DataFrame", model_accuracy: float | None = None, ax: "Axes | None" = None) -> "Axes":
    """Train and eval accuracy of each layer's probe in forward order; the model's accuracy as a line."""
    plt = _pyplot()
    if ax is None:
        ax = plt.subplots(figsize=(max(6.0, 0.35 * len(table) + 2.0), 4.0))[1]
    table = table.sort_values("index")
    positions = np.arange(len(table))
    ax.plot(positions, table["train_acc"], marker="o", linestyle="--", label="probe train accuracy")
    ax.plot(positions, table["eval_acc"], marker="o", label="probe eval accuracy")
    if model_accuracy is not None:
        ax.axhline(model_accuracy, color="black", linewidth=1.0, label=f"model test accuracy ({model_accuracy:.3f})")
    solver = ", ".join(sorted(set(table["solver"]))) if "solver" in table else ""
    ax.set(xlabel="layer (forward order)", ylabel="accuracy", ylim=(0.0, 1.02),
           title=f"Logistic-regression probes ({solver})" if solver else "Logistic-regression probes")
    ax.set_xticks(positions)
    ax.set_xticklabels(table["layer"], rotation=90, fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)  # "lower right" hid the model's line when it lay low
    return ax


def plot_confusion(matrix: np.ndarray, classes: Sequence[int], title: str = "", ax: "Axes | None" = None) -> "Axes":
    """A row-normalised confusion matrix (rows: true class, columns: predicted class)."""
    plt = _pyplot()
    if ax is None:
        ax = plt.subplots(figsize=(4.5, 4.0))[1]
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.figure.colorbar(image, ax=ax, fraction=0.046)
    ticks = np.arange(len(classes))
    step = max(1, len(classes) // 20)
    ax.set_xticks(ticks[::step])
    ax.set_xticklabels([str(c) for c in classes][::step], fontsize=7)
    ax.set_yticks(ticks[::step])
    ax.set_yticklabels([str(c) for c in classes][::step], fontsize=7)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    return ax


def plot_probe_sets(tables: Sequence[tuple[str, str, "pd.DataFrame"]], model_accuracy: float | None = None
                    ) -> "Axes":
    """Probe eval accuracy per layer for several latents sets of one model (§8.3, figures 45 and 46): one
    panel per reduction method, one line per set (``(label, method, table)``, drawn in the given order,
    darker for later ones), layers in forward order as in the first, longest table."""
    plt = _pyplot()
    methods = list(dict.fromkeys(method for _, method, _ in tables))
    layers = list(max((table.sort_values("index")["layer"] for _, _, table in tables), key=len))
    position = {layer: number for number, layer in enumerate(layers)}
    figure, axes = plt.subplots(1, len(methods), figsize=(max(6.0, 0.35 * len(layers) + 2.0) * len(methods), 4.2),
                                squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        drawn = [(label, table) for label, table_method, table in tables if table_method == method]
        colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(drawn)))
        for (label, table), colour in zip(drawn, colours):
            table = table[table["layer"].isin(position)].sort_values("index")
            ax.plot([position[layer] for layer in table["layer"]], table["eval_acc"], marker="o", ms=3,
                    color=colour, label=label)
        if model_accuracy is not None:
            ax.axhline(model_accuracy, color="black", linewidth=1.0,
                       label=f"model test accuracy ({model_accuracy:.3f})")
        ax.set(xlabel="layer (forward order)", ylim=(0.0, 1.02), title=f"probes on {method} latents")
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels(layers, rotation=90, fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    axes[0][0].set_ylabel("probe eval accuracy")
    return axes[0][0]


def _save(ax: "Axes", path: Path | str, dpi: int) -> None:
    """Write the axes' figure atomically and close it."""
    try:
        save_figure(ax.figure, path, dpi=dpi)
    finally:
        _pyplot().close(ax.figure)


def save_probe_sets_plot(tables: Sequence[tuple[str, str, "pd.DataFrame"]], model_accuracy: float | None,
                         path: Path | str) -> None:
    _save(plot_probe_sets(tables, model_accuracy), path, dpi=120)


def save_probe_accuracy_plot(table: "pd.DataFrame", model_accuracy: float | None, path: Path | str) -> None:
    _save(plot_probe_accuracy(table, model_accuracy), path, dpi=120)


def confusion_plot_png(matrix: np.ndarray, classes: Sequence[int], title: str) -> bytes:
    """A confusion matrix's plot as PNG bytes: the probe job draws each layer's while the next ones are fitted
    and writes them (atomically) with the run's other files."""
    import io
    ax = plot_confusion(matrix, classes, title)
    buffer = io.BytesIO()
    try:
        ax.figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    finally:
        _pyplot().close(ax.figure)
    return buffer.getvalue()
