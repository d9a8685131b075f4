"""Plot of r_min/r_max per layer with the input resolution and both border layers marked."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from phd_lab import atomic
from phd_lab.analysis.borders import side_branch_flags

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plotted_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sequence, side branches): the spatial (finite) Conv2d rows the border rule walks, drawn as lines, and
    the side branches (1×1 shortcuts, attention gates), drawn as loose points. A shortcut's small r_min
    inside the r_min line made the line dip below the resolution after b_min."""
    convs = table[table["index"].notna()]
    spatial = convs[convs["r_max"].map(float).map(math.isfinite).astype(bool)]  # a boolean Series: also no rows
    if "side_branch" not in spatial.columns:  # a table of the step's first version
        return spatial, spatial.iloc[:0]
    side = side_branch_flags(spatial["side_branch"])
    return spatial[~side], spatial[side]


def equal_extremes(rows: pd.DataFrame) -> bool:
    """Whether r_min equals r_max at every row (every layer of a network with a single path, such as a VGG):
    one line then shows both, as two lines on the same points hid one of them."""
    return bool((rows["r_min"].astype(float) == rows["r_max"].astype(float)).all())


# the border layers' lines differ from each other and from the resolution's (dashed) by their style, not only by
# the colour they share with r_max and r_min: in grayscale prints and to colour-blind readers
BORDER_STYLES = (("b_max", "tab:red", ":", r"$b_{max}$"), ("b_min", "tab:blue", "-.", r"$b_{min}$"))


def plot_receptive_field(table: pd.DataFrame, resolution: int, path: Path | str, title: str = "") -> None:
    """Draw a ``receptive_field.csv`` table (``receptive_field_figure``) and save it atomically to ``path``."""
    from phd_lab.plots import close

    fig = receptive_field_figure(table, resolution, title)
    try:
        atomic.save_figure(fig, path, dpi=120)
    finally:
        close(fig)


def receptive_field_figure(table: pd.DataFrame, resolution: int, title: str = "") -> "Figure":
    """The figure of a ``receptive_field.csv`` table: one point per Conv2d in forward order.

    Global layers (``inf``) are left out, side branches are unconnected grey points; the input resolution is a
    dashed horizontal line, the border layers b_max (dotted) and b_min (dash-dotted) vertical lines, each named
    in the legend with its layer. Lines that would lie on each other are one line named for both: r_min and
    r_max of a single-path network, b_min and b_max at the same layer (solid black).
    """
    from phd_lab.plots import subplots
    from phd_lab.plots.grid_figures import literal, wrapped_lines

    convs = table[table["index"].notna()].reset_index(drop=True)
    sequence, side = plotted_rows(convs)
    positions = sequence["index"].astype(int).tolist()
    fig, ax = subplots(figsize=(max(6.0, 0.35 * len(convs) + 2), 4.0))
    if len(sequence) and equal_extremes(sequence):  # a sequential network: r_max drawn under r_min was named in
        # the legend but nowhere to be seen, as if it were missing
        ax.plot(positions, sequence["r_max"].tolist(), "o-", color="tab:purple", label=r"$r_{min} = r_{max}$")
    elif len(sequence):  # none without a Conv2d (an MLP): the legend named r_max and r_min lines drawn nowhere
        ax.plot(positions, sequence["r_max"].tolist(), "o-", color="tab:red", label=r"$r_{max}$")
        ax.plot(positions, sequence["r_min"].tolist(), "s-", color="tab:blue", label=r"$r_{min}$")
    if not side.empty:
        side_positions = side["index"].astype(int).tolist()
        ax.plot(side_positions, side["r_max"].tolist(), "o", color="grey", fillstyle="none")
        ax.plot(side_positions, side["r_min"].tolist(), "s", color="grey", fillstyle="none",
                label="side branch (not in the border rule)")
    ax.axhline(resolution, color="black", linestyle="--", linewidth=1, label=f"input resolution {resolution}")
    both = convs["b_min"].astype(bool) & convs["b_max"].astype(bool)
    for _, row in convs[both].iterrows():  # one line: b_max's drawn under b_min's was named but never seen
        ax.axvline(int(row["index"]), color="black", linestyle="-", linewidth=2,
                   label=rf"$b_{{min}} = b_{{max}}$: {literal(row['layer'])}")
    for flag, color, style, label in BORDER_STYLES:
        marked = convs[convs[flag].astype(bool) & ~both]
        for _, row in marked.iterrows():
            ax.axvline(int(row["index"]), color=color, linestyle=style, linewidth=2,
                       label=f"{label}: {literal(row['layer'])}")
    ax.set_xlabel("Conv2d layer (forward order)")
    ax.set_ylabel("receptive field (pixels)")
    ax.set_ylim(bottom=0)  # a receptive field has no negative size (autoscaling's margin drew one below 0 px)
    ax.set_xticks(convs["index"].astype(int).tolist())
    ax.set_xticklabels([literal(name) for name in convs["layer"]], rotation=90, fontsize=7)
    # title's lines (the run's name, its run id and variant folder) wrapped to the figure's width
    ax.set_title(wrapped_lines(title, fig.get_size_inches()[0], 12) if title else "receptive field per layer")
    if convs.empty:  # an MLP: say so instead of leaving an empty frame; below the resolution line, which the
        # axes autoscaled to it alone put across the middle, through the text
        ax.set_ylim(0, 1.5 * resolution)
        ax.text(0.5, 0.35, "no Conv2d layer: the receptive field is the whole input", ha="center",
                va="center", transform=ax.transAxes)
    ax.legend(fontsize=8)
    return fig
