"""Figures of a configuration's repetitions: saturation per layer over the runs (the thesis' Fig. 44), and the
projected networks' mean drop per delta with its 95% interval and the directions kept (Tables 4, 5, 14–16)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from phd_lab.plots.grid_figures import (MAX_FIGURE_WIDTH, fraction_in_percent, split_color, thin_tick_labels,
                                        wrapped_lines)

# a basis is told apart by its line and marker too, not by hue alone (grayscale prints, colour-blind readers)
_BASIS_STYLES = {"pca": {"color": "#3b6fb6", "linestyle": "-", "marker": "o"},
                 "random": {"color": "#c0392b", "linestyle": "--", "marker": "s"}}
_OTHER_BASIS = {"color": "#555555", "linestyle": "-.", "marker": "^"}


LAYER_WIDTH = 0.22  # inches per layer of the stability figure: names at 60 degrees, 7 pt, keep apart at that
STABILITY_LABELLED = int((MAX_FIGURE_WIDTH - 2) / LAYER_WIDTH)  # layer names that fit; beyond, every n-th


def stability_figure(table: pd.DataFrame, runs: Mapping[str, Sequence[tuple[str, float]]], title: str,
                     split: str = "train") -> Any:
    """Saturation of ``split`` (the runs' ``analysis_split``) per layer in forward order, in percent: each run a
    thin line, the mean a thick one, min–max shaded, in the split's colour (as in the run figure)."""
    from phd_lab.plots import subplots
    fig, ax = subplots(figsize=(min(MAX_FIGURE_WIDTH, max(5.5, LAYER_WIDTH * len(table) + 2)), 3.6))
    position = {layer: i for i, layer in enumerate(table["layer"])}
    for pairs in runs.values():
        points = sorted((position[layer], saturation) for layer, saturation in pairs if layer in position)
        ax.plot([p for p, _ in points], [s for _, s in points], color="#999999", lw=0.6, alpha=0.6, marker=".",
                ms=2)
    x = list(range(len(table)))
    color = split_color(split)
    ax.fill_between(x, table["min"], table["max"], color=color, alpha=0.18, lw=0, label="min – max")
    ax.vlines(x, table["min"], table["max"], color=color, alpha=0.5, lw=1)  # seen also at a single layer
    ax.plot(x, table["mean"], color=color, lw=2, marker="o", ms=3, label=f"mean of {len(runs)} runs")
    # every layer named as far as the width holds them (a 54-layer ResNet-50 had every second one, as 40 at most)
    thin_tick_labels(ax, [str(layer) for layer in table["layer"]], rotation=60, most=STABILITY_LABELLED)
    ax.set_ylim(0, 1.02)
    fraction_in_percent(ax.yaxis)
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel(f"saturation ({split}, last epoch)")
    ax.set_title(wrapped_lines(title, fig.get_size_inches()[0], 9, lines=TITLE_LINES), fontsize=9)
    ax.legend(fontsize=8)
    return fig


# lines of a repetition figure's title: the group's label names every config value that tells the grid's groups
# apart ('vgg11 / Digits 32 px · model_args.width=0.125 · optimizer_args.lr=0.003 · ...'), on one line it made the
# saved figure twice as wide as its axes (the HTML page then showed the plot at half the size)
TITLE_LINES = 4


ACCURACY_DROP_LIMIT = 1.05  # of the drop figure's accuracy axis, either way: ±100% and a margin for the markers


def eigenspace_figure(table: pd.DataFrame, title: str) -> Any:
    """Mean drop of the projected networks per delta (evenly spaced, largest right) with the 95% interval
    of the mean, PCA bases solid with round markers, random ones dashed with square markers; filled markers
    differ significantly from the unprojected networks; deltas of a single run are left out. The PCA bases' mean
    number of kept directions on the right axis. An accuracy's axis ends at ±100% (and a margin): an interval
    beyond runs off it."""
    from phd_lab.plots import subplots
    table = table[table["n"] > 1]  # a delta of one run is tested against nothing
    deltas = sorted(table["delta"].unique())
    position = {delta: i for i, delta in enumerate(deltas)}
    fig, ax = subplots(figsize=(max(6.0, 0.12 * len(deltas) + 4), 3.8))
    for basis, part in table.groupby("basis", sort=False):
        part = part.sort_values("delta")
        style = _BASIS_STYLES.get(str(basis), _OTHER_BASIS)
        color, marker = style["color"], style["marker"]
        x = [position[d] for d in part["delta"]]
        # the line carries the basis' marker hollow, so that the legend shows it too; the scatters fill it where
        # the drop is significant
        ax.errorbar(x, part["drop_mean"], yerr=part["drop_ci95"].fillna(0.0), color=color, lw=1, capsize=2,
                    linestyle=style["linestyle"], marker=marker, ms=4, mfc="white", mec=color,
                    label=f"{basis} basis")
        significant = part["significant"].to_numpy(dtype=bool)
        ax.scatter([v for v, s in zip(x, significant) if s], part["drop_mean"][significant], color=color, s=16,
                   marker=marker, zorder=3)
        ax.scatter([v for v, s in zip(x, significant) if not s], part["drop_mean"][~significant], s=16, zorder=3,
                   marker=marker, facecolors="white", edgecolors=color)
    ax.axhline(0.0, color="grey", ls="--", lw=1)
    measure = str(table["measure"].iloc[0]) if len(table) else "accuracy"
    if measure == "accuracy":
        ax.set_ylabel("accuracy lost (unprojected − projected)")
        fraction_in_percent(ax.yaxis)  # percentage points, as the accuracies of the other figures
        # no further than an accuracy can drop or rise: the 95% interval of two or three runs (t = 12.7 or 4.3)
        # ran past ±100% wherever they disagreed, and the axis to -200% and 300% squeezed every mean into a strip
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, -ACCURACY_DROP_LIMIT), min(high, ACCURACY_DROP_LIMIT))
    else:
        ax.set_ylabel("loss gained (projected − unprojected)")
    ax.set_xlabel("δ (explained variance); filled: differs significantly")
    thin_tick_labels(ax, [f"{d:g}" for d in deltas], rotation=70)
    handles, labels = ax.get_legend_handles_labels()
    pca = table[table["basis"] == "pca"].sort_values("delta")
    if len(pca):
        right = ax.twinx()
        handles += right.plot([position[d] for d in pca["delta"]], pca["dims_sum_mean"], color="#777777", ls=":",
                              lw=1.2)
        labels.append("PCA directions kept (right axis)")
        right.set_ylabel(r"$\sum \dim E_l^k$ (mean, dotted)", fontsize=8)
    # above the axes, under the title: inside them, "best" placed it by the drops alone and the right axis'
    # rising line of kept directions, drawn over it, crossed its text in the top right corner
    ax.legend(handles, labels, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    ax.set_title(wrapped_lines(title, fig.get_size_inches()[0], 9, lines=TITLE_LINES), fontsize=9, pad=22)
    return fig
