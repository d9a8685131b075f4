"""Plots of the probe job: accuracy per layer in forward order, and confusion matrices.

They only draw already computed results (the probe table, a confusion matrix); matplotlib is
imported inside the functions and draws on Agg canvases of its own (``phd_lab.plots``), so the probe job never
needs a display.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from phd_lab.atomic import save_figure
from phd_lab.plots import close, subplots
from phd_lab.plots import figure as new_figure
from phd_lab.plots.grid_figures import (MAX_FIGURE_WIDTH, fraction_in_percent, thin_tick_labels, wrapped_lines,
                                        wrapped_title)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes


def plot_probe_accuracy(table: "pd.DataFrame", model_accuracy: float | None = None, ax: "Axes | None" = None,
                        run: str = "") -> "Axes":
    """Train and eval accuracy of each layer's probe in forward order; the model's accuracy as a line; ``run``
    (the run's name, and in a line below it its variant folder) heads the title, as it does on the run figure. A
    pixelwise table draws each layer's mean over its positions, as the analysis reads it, and the band from its lowest
    to its highest position."""
    solver = ", ".join(sorted(set(table["solver"].astype(str)))) if "solver" in table else ""
    table, spread = _per_layer(table.sort_values("index", kind="stable"))
    if ax is None:
        ax = subplots(figsize=(min(MAX_FIGURE_WIDTH, max(6.0, 0.35 * len(table) + 2.0)), 4.0))[1]
    positions = np.arange(len(table))
    what = "mean over positions of " if spread is not None else ""
    ax.plot(positions, table["train_acc"], marker="o", linestyle="--", label=f"{what}probe train accuracy")
    ax.plot(positions, table["eval_acc"], marker="o", label=f"{what}probe eval accuracy")
    if spread is not None:
        ax.fill_between(positions, spread["min"], spread["max"], alpha=0.2, color=ax.lines[-1].get_color(),
                        label="probe eval accuracy, lowest to highest position")
    if model_accuracy is not None:
        _draw_model_accuracy(ax, model_accuracy)
    title = "Pixelwise logistic-regression probes" if spread is not None else "Logistic-regression probes"
    title = f"{title} ({solver})" if solver else title
    ax.set(xlabel="layer (forward order)", ylabel="accuracy", ylim=(0.0, 1.02),
           title=f"{wrapped_lines(run, ax.figure.get_size_inches()[0], 12)}\n{title}" if run else title)
    fraction_in_percent(ax.yaxis)
    _layer_ticks(ax, table["layer"].tolist())
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)  # "lower right" hid the model's line when it lay low
    return ax


def _per_layer(table: "pd.DataFrame") -> tuple["pd.DataFrame", "pd.DataFrame | None"]:
    """A pixelwise table (a probe per feature-map position, ``<layer>@<row>_<col>``) as one row per layer, the
    mean of its positions' accuracies (thousands of positions are no curve over depth to read), with the eval
    accuracy's lowest and highest position per layer; any other table as it is, and no spread."""
    from phd_lab.analysis.run_summary import layer_of
    layers = table["layer"].astype(str).map(layer_of)
    if (layers == table["layer"].astype(str)).all():
        return table, None
    grouped = table[["train_acc", "eval_acc"]].groupby(layers.to_numpy(), sort=False)
    means = grouped.mean().rename_axis("layer").reset_index()
    extremes = grouped["eval_acc"].agg(["min", "max"]).reset_index(drop=True)
    return means, extremes


LABELLED = int((MAX_FIGURE_WIDTH - 2.0) / 0.35)  # layer names that fit at 0.35 inch each; beyond, every n-th


def _layer_ticks(ax: "Axes", layers: Sequence[str]) -> None:
    """A tick per layer position, every one named up to ``LABELLED`` of them, else every n-th one."""
    thin_tick_labels(ax, layers, rotation=90, most=LABELLED, ha="center")


def _label_confusion_axes(ax: "Axes", classes: Sequence[int]) -> None:
    """Class ticks (at most 20 labelled) and the axis labels of a confusion plot."""
    ticks = np.arange(len(classes))
    step = max(1, math.ceil(len(classes) / 20))  # // 20 labelled all of 21 to 39 classes, into each other
    labels = [str(c) for c in classes][::step]
    ax.set_xticks(ticks[::step])
    ax.set_xticklabels(labels, fontsize=7, rotation=90 if max(map(len, labels), default=0) > 2 else 0)
    ax.set_yticks(ticks[::step])
    ax.set_yticklabels(labels, fontsize=7)
    ax.set(xlabel="predicted class", ylabel="true class")


def plot_probe_sets(tables: Sequence[tuple[str, str, "pd.DataFrame"]], model_accuracy: float | None = None,
                    run: str = "") -> "Axes":
    """Probe eval accuracy per layer for several latents sets of one model (§8.3, figures 45 and 46): one
    panel per reduction method, one line per set (``(label, method, table)``, drawn in the given order,
    lighter for later labels, each label with one colour, line style and marker in every panel), layers in
    forward order as in the first, longest table; ``run`` above the panels."""
    from phd_lab.plots import matplotlib_module
    matplotlib = matplotlib_module()

    methods = list(dict.fromkeys(method for _, method, _ in tables))
    layers = list(max((table.sort_values("index", kind="stable")["layer"] for _, _, table in tables), key=len))
    position = {layer: number for number, layer in enumerate(layers)}
    figure, axes = subplots(1, len(methods), squeeze=False, sharey=True,
                            figsize=(min(MAX_FIGURE_WIDTH, max(6.0, 0.35 * len(layers) + 2.0)) * len(methods), 4.2))
    # one colour and style per set label in every panel: a size drawn in two panels is the same line in both
    labels = list(dict.fromkeys(label for label, _, _ in tables))
    colours = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, len(labels)))
    for ax, method in zip(axes[0], methods):
        drawn = [(label, table) for label, table_method, table in tables if table_method == method]
        for label, table in drawn:
            number = labels.index(label)
            table = table[table["layer"].isin(position)].sort_values("index", kind="stable")
            ax.plot([position[layer] for layer in table["layer"]], table["eval_acc"], ms=3, color=colours[number],
                    label=label, **set_style(number))
        if model_accuracy is not None:
            _draw_model_accuracy(ax, model_accuracy)
        ax.set(xlabel="layer (forward order)", ylim=(0.0, 1.02), title=f"probes on {method} latents")
        fraction_in_percent(ax.yaxis)
        _layer_ticks(ax, layers)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    axes[0][0].set_ylabel("probe eval accuracy")
    if run:
        figure.suptitle(wrapped_lines(run, figure.get_size_inches()[0], 11), fontsize=11)
        # placed above the panels' own titles: at its default height a run title of two lines or more (the run,
        # its id and variant folder) was drawn over them
        figure.set_layout_engine("constrained")
    return axes[0][0]


SET_LINESTYLES = ("-", ":", "-.")  # never dashed: that is the model's accuracy
SET_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def set_style(number: int) -> dict[str, str]:
    """Line style and marker of the ``number``-th latents set of a panel: with 3 styles and 8 markers the first
    24 sets differ in more than their viridis colour, which grayscale prints and colour-blind readers lose."""
    return {"linestyle": SET_LINESTYLES[number % len(SET_LINESTYLES)], "marker": SET_MARKERS[number % len(SET_MARKERS)]}


def _draw_model_accuracy(ax: "Axes", accuracy: float) -> None:
    """The model's test accuracy as a grey dashed line without markers, named in the legend with its value in
    percent (as the axis): black and solid it looked like viridis' first, darkest colour of a probe line."""
    ax.axhline(accuracy, color="0.45", linestyle="--", linewidth=1.2, label=f"model test accuracy ({accuracy:.1%})")


def _save(ax: "Axes", path: Path | str, dpi: int) -> None:
    """Write the axes' figure atomically and close it."""
    try:
        save_figure(ax.figure, path, dpi=dpi)
    finally:
        close(ax.figure)


def save_probe_sets_plot(tables: Sequence[tuple[str, str, "pd.DataFrame"]], model_accuracy: float | None,
                         path: Path | str, run: str = "") -> None:
    _save(plot_probe_sets(tables, model_accuracy, run=run), path, dpi=120)


def save_probe_accuracy_plot(table: "pd.DataFrame", model_accuracy: float | None, path: Path | str,
                             run: str = "") -> None:
    _save(plot_probe_accuracy(table, model_accuracy, run=run), path, dpi=120)


COLOUR_LABEL = "fraction of the true class"  # of a row-normalised confusion matrix's cells: the colour bar's unit


class ConfusionPlots:
    """PNGs of row-normalised confusion matrices, drawn on one kept figure per class list.

    A probe job draws one plot per layer (a pixelwise job one per position, thousands): only the image and the
    title change between them. So each figure is drawn in full once, without them (its frame, ticks, labels and
    colour bar: most of the cost is laying out their text), and kept as pixels; a plot restores those pixels and
    draws only the image, the frame over it and the title, in the order a full drawing does, so its bytes equal
    those of the figure drawn alone (tested) and do not depend on the plots drawn before. A fixed layout replaces
    the tight bounding box (which draws every figure twice). Use as a context manager (or ``close``).
    """

    WIDTH, HEIGHT, DPI = 4.4, 4.1, 100
    TITLE_CHARACTERS = 46  # per title line at the title's font size (11 pt)

    def __init__(self) -> None:
        self._figures: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}  # classes -> axes, image, kept pixels

    def png(self, matrix: np.ndarray, classes: Sequence[int], title: str) -> bytes:
        """The plot of ``matrix`` (rows: true class, columns: predicted class) as PNG bytes."""
        import io

        from phd_lab.plots import matplotlib_module
        matplotlib_module()
        from matplotlib.image import imsave
        ax, image, background = self._figure(tuple(int(c) for c in classes))
        canvas = ax.figure.canvas
        canvas.restore_region(background)
        image.set_data(matrix)
        ax.set_title(wrapped_title(title, self.TITLE_CHARACTERS), fontsize=11)
        for artist in self._changing(ax, image):
            ax.draw_artist(artist)
        buffer = io.BytesIO()  # the encoding savefig uses for the canvas' pixels (which it would draw again)
        imsave(buffer, np.asarray(canvas.buffer_rgba()), format="png", origin="upper", dpi=ax.figure.dpi)
        return buffer.getvalue()

    @staticmethod
    def _changing(ax: Any, image: Any) -> list[Any]:
        """What differs between plots, in drawing order: the image, the frame drawn over its edges, the title."""
        return [image, *ax.spines.values(), ax.title]

    def _figure(self, classes: tuple[int, ...]) -> tuple[Any, Any, Any]:
        if classes not in self._figures:
            figure = new_figure((self.WIDTH, self.HEIGHT), self.DPI)
            extra = max(0, max((len(str(c)) for c in classes), default=1) - 2)  # characters beyond two per label
            left, bottom = 0.12 + 0.011 * extra, 0.1 + 0.016 * extra  # x labels of 3 or more stand upright
            # room for the ticks, the axis labels, three title lines and the colour bar's label
            ax = figure.add_axes((left, bottom, 0.80 - left, 0.84 - bottom))
            bar = figure.add_axes((0.83, bottom, 0.04, 0.84 - bottom))
            image = ax.imshow(np.zeros((len(classes), len(classes))), vmin=0.0, vmax=1.0, cmap="viridis",
                              aspect="auto")
            figure.colorbar(image, cax=bar).set_label(COLOUR_LABEL, fontsize=8)  # rows sum to 1
            _label_confusion_axes(ax, classes)
            changing = self._changing(ax, image)
            for artist in changing:
                artist.set_visible(False)
            figure.canvas.draw()
            background = figure.canvas.copy_from_bbox(figure.bbox)
            for artist in changing:
                artist.set_visible(True)
            self._figures[classes] = ax, image, background
        return self._figures[classes]

    def close(self) -> None:
        if not self._figures:  # nothing drawn: matplotlib need not be imported (nor be whole, after a Ctrl-C)
            return
        for ax, _, _ in self._figures.values():
            close(ax.figure)
        self._figures.clear()

    def __enter__(self) -> "ConfusionPlots":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

