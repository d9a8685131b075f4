"""Saturation per layer (forward order) for the training and the test set of one epoch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd

from phd_lab import atomic
from phd_lab.plots.grid_figures import SPLIT_COLORS, fraction_in_percent, literal, wrapped_lines

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
    """Grouped bars of train/test saturation per layer (in percent), layers left to right in forward order: train
    plain, test hatched, each in its split's colour (``SPLIT_COLORS``, as in the run figure); the legend beside the
    axes."""
    from phd_lab.plots import subplots

    if ax is None:
        _, ax = subplots(figsize=(max(4.0, 0.45 * len(table) + 2.0), 3.6))
    positions = range(len(table))
    ax.bar([p - WIDTH / 2 for p in positions], table["train"], WIDTH, label="train", color=SPLIT_COLORS["train"])
    # hatched: the test bars differ from the train bars by more than hue (grayscale prints, colour-blind readers)
    ax.bar([p + WIDTH / 2 for p in positions], table["test"], WIDTH, label="test", color=SPLIT_COLORS["test"],
           hatch=TEST_HATCH, edgecolor="white", linewidth=0)  # white hatch lines, no frame
    ax.set_xticks(list(positions))
    ax.set_xticklabels([literal(name) for name in table.index], rotation=60, ha="right", fontsize=8)
    ax.set_xlim(-0.7, len(table) - 0.3)  # every layer's slot, also a last one without bars (autoscaling cut it off)
    ax.set_ylim(0, 1)
    fraction_in_percent(ax.yaxis)  # 0–100%, as the run figure and the thesis show saturation
    ax.set_ylabel("saturation")
    ax.set_xlabel("layer (forward order)")
    if title:
        ax.set_title(wrapped_lines(title, ax.figure.get_size_inches()[0], 9), fontsize=9)
    # beside the axes: inside, "best" found no free corner where most layers saturate (a narrow network's) and
    # covered the highest bars; the saved figure grows to hold it (tight box)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)
    _note_missing_values(ax, table)
    return ax


WIDTH = 0.4  # of a bar; a layer's train and test bars side by side
TEST_HATCH = "///"  # of the test bars; the train bars are plain


def _note_missing_values(ax: "Axes", table: pd.DataFrame) -> None:
    """Say in the chart where saturations are missing: all of them (a diverged epoch), or a bar's."""
    if table.isna().to_numpy().all():  # a diverged epoch (inf/NaN activations) drew an empty chart without a word
        ax.text(0.5, 0.5, "no finite saturation in this epoch\n(non-finite activations: did the run diverge?)",
                ha="center", va="center", transform=ax.transAxes, fontsize=9, color="#c44e52")
    else:  # a bar without a value (a layer no pass called, overflowed activations) looked like a saturation of 0
        for offset, split in ((-WIDTH / 2, "train"), (WIDTH / 2, "test")):
            for position, value in zip(range(len(table)), table[split]):
                if pd.isna(value):
                    ax.text(position + offset, 0.01, NO_VALUE, rotation=90, ha="center", va="bottom", fontsize=7,
                            color="#777777")


def show_epoch(ax: "Axes", table: pd.DataFrame, title: str = "") -> None:
    """Turn a chart ``plot_saturation`` drew for the same layers (and a title or none alike) into the chart of
    ``table``: the bars take its values, the notes of missing values and the title are made anew; the same
    pixels as a chart drawn from scratch, without building its axes, ticks and bars again."""
    for bars, split in zip(ax.containers, ("train", "test")):
        for bar, value in zip(bars, table[split]):
            bar.set_height(value)
    if title:
        ax.set_title(wrapped_lines(title, ax.figure.get_size_inches()[0], 9), fontsize=9)
    for text in list(ax.texts):
        text.remove()
    _note_missing_values(ax, table)


NO_VALUE = "no value"  # written into the slot of a bar whose saturation is NaN


DPI = 110  # of the saved PNG


def save_saturation_plot(row: Mapping[str, Any], path: Path | str, title: str = "") -> None:
    """Draw the saturation of one epoch row and save it atomically."""
    plotter = SaturationPlotter()
    try:
        plotter.save(row, path, title)
    finally:
        plotter.close()


class SaturationPlotter:
    """Saves one epoch's saturation plot after another on one figure: a run's epochs share their layers, and
    building the figure (axes, a tick and two bars per layer) was a fifth to a third of each plot's time. A
    row with other layers, or a title where there was none, gets a figure of its own."""

    def __init__(self) -> None:
        self._ax: "Axes | None" = None
        self._key: tuple[tuple[str, ...], bool] | None = None

    def save(self, row: Mapping[str, Any], path: Path | str, title: str = "") -> None:
        """Draw ``row`` and save it atomically to ``path``."""
        table = saturation_table(row)
        key = (tuple(table.index), bool(title))
        if self._ax is not None and key == self._key:
            show_epoch(self._ax, table, title)
        else:
            self.close()
            self._ax, self._key = plot_saturation(table, title=title), key
        save_tight(self._ax.figure, path)

    def close(self) -> None:
        """Free the figure (the next ``save`` builds one again)."""
        from phd_lab.plots import close

        if self._ax is not None:
            close(self._ax.figure)
        self._ax = self._key = None


def save_tight(fig: "Figure", path: Path | str) -> None:
    """Save ``fig`` atomically, cropped to what it draws as ``bbox_inches="tight"`` does (the same PNG bytes) in
    about a fifth less time: for "tight", savefig first lays the whole figure out without rendering it (for layout
    engines and artists placed only at draw time, which this figure has none of), then measures the box, then
    draws. Measuring the box directly leaves that layout pass out of a plot drawn every epoch. A figure saved
    before is measured with the renderer its last save drew with (text extents depend on the resolution only):
    the crop is then mostly the same size, savefig draws with that renderer again, and the texts measured for the
    box (tick labels, title) are not measured a second time, 15 % less for a figure drawn epoch after epoch."""
    import matplotlib as mpl

    fig.set_dpi(DPI)  # measured at the resolution it is saved with, as savefig does
    renderer = getattr(fig.canvas, "renderer", None)  # Agg's last renderer, kept with the canvas
    if renderer is None or renderer.dpi != DPI:
        renderer = fig.canvas.get_renderer()
    extent = fig.get_tightbbox(renderer).padded(mpl.rcParams["savefig.pad_inches"])
    atomic.save_figure(fig, path, dpi=DPI, bbox_inches=extent)
