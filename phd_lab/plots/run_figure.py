"""One figure per run in the thesis' style, drawn only from saved tables and the analysis summary.

Layers run along the x axis in forward order; above them, for a run of two epochs or more, a heat map of
each layer's saturation per epoch (how the pattern formed). The left axis (0–100%) shows saturation per layer
as bars (the analysed split) and dots (the other split), each in its split's colour (``SPLIT_COLORS``: train
blue, test orange, as in the per-epoch saturation plot, whichever split is analysed), the probes' accuracy as a
purple line and the model's test accuracy as a dash-dot-dotted purple line; the right axis shows r_max (solid,
upward triangles) and r_min (dotted, downward triangles) per layer with the input resolution as a dash-dotted
horizontal line (side branches, such as 1×1 shortcuts, as loose hollow points off the lines; no right axis where
no layer has a finite receptive field, as in an MLP). No two lines differ by colour alone.
Vertical lines mark b_min (solid) and b_max (dashed) just before the border layer, and tails are shaded. Lines that
would lie on each other are one line named for both (b_min = b_max; r_min = r_max of a single-path network).
Anything missing is simply not drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from phd_lab.analysis.run_summary import layer_saturations, probe_layer_accuracies, saturation_history
from phd_lab.analysis.run_tables import RunTables
from phd_lab.plots.grid_figures import (MAX_FIGURE_WIDTH, fraction_in_percent, png_bytes, split_color,
                                        thin_tick_labels, wrapped_lines)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def layer_order(tables: RunTables, summary: dict[str, Any]) -> list[str]:
    """Forward order of the layers of receptive_field.csv's rows, the saturation columns and the probe rows, each
    in forward order of its own layers: merged so that every table keeps its order (a layer only the probes have,
    such as a ReLU that extract's ``layers`` named, goes between its neighbours, not after every other table's
    layers); where the tables disagree, the one named first (receptive field, saturation, probes) wins."""
    sources = []
    if tables.receptive_field is not None:
        sources.append(tables.receptive_field["layer"].astype(str).tolist())
    if summary.get("saturation"):
        sources.append([entry["layer"] for entry in summary["saturation"]["layers"]])
    if tables.probes is not None:
        sources.append(probe_layer_accuracies(tables.probes)[0]["layer"].tolist())
    return merged_order(sources)


def merged_order(sources: list[list[str]]) -> list[str]:
    """One order of every name in ``sources`` in which each source's names keep their order (a topological
    order of the successions the sources list). Among the names free to come next, one of the last placed
    name's parent module comes first (features.26, which only the probes list, goes on after features.25,
    before classifier.2), then the first seen (sources in turn); a cycle (sources that disagree) is broken by
    the first seen of the names left."""
    import heapq

    rank: dict[str, int] = {}
    for source in sources:
        for name in source:
            rank.setdefault(name, len(rank))
    after: dict[str, set[str]] = {name: set() for name in rank}
    waiting = dict.fromkeys(rank, 0)  # how many names must come before each
    for source in sources:
        seen = list(dict.fromkeys(source))
        for earlier, later in zip(seen, seen[1:]):
            if later not in after[earlier]:
                after[earlier].add(later)
                waiting[later] += 1

    def parent(name: str) -> str:
        return name.rpartition(".")[0]

    free: list[tuple[int, str]] = []
    free_by_parent: dict[str, list[tuple[int, str]]] = {}

    def release(name: str) -> None:
        heapq.heappush(free, (rank[name], name))
        heapq.heappush(free_by_parent.setdefault(parent(name), []), (rank[name], name))

    def first(heap: list[tuple[int, str]]) -> str | None:
        while heap and heap[0][1] in placed:
            heapq.heappop(heap)
        return heap[0][1] if heap else None

    placed: set[str] = set()
    for name, count in waiting.items():
        if count == 0:
            release(name)
    order: list[str] = []
    by_rank, oldest = list(rank), 0  # for breaking a cycle: the names in the order first seen
    while len(order) < len(rank):
        name = first(free_by_parent.get(parent(order[-1]), [])) if order else None
        name = name or first(free)
        if name is None:  # a cycle: the first seen of the names left comes next
            while by_rank[oldest] in placed:
                oldest += 1
            name = by_rank[oldest]
        placed.add(name)
        order.append(name)
        for later in after[name]:
            waiting[later] -= 1
            if waiting[later] == 0 and later not in placed:
                release(later)
    return order


def draw_run_figure(tables: RunTables, summary: dict[str, Any], dpi: int = 90) -> "Figure":
    """Build the run's figure (matplotlib imported lazily, on an Agg canvas of its own) at the resolution it will be
    saved with: the legend is placed below the layer names as measured at that resolution."""
    from phd_lab.plots import subplots

    order = layer_order(tables, summary)
    x_of = {name: i for i, name in enumerate(order)}
    longest = max((len(name) for name in order), default=0)
    width, height = min(MAX_FIGURE_WIDTH, max(6.5, 0.38 * len(order) + 2.5)), max(4.6, 3.4 + 0.06 * longest)
    split = summary["settings"]["analysis_split"]
    history = saturation_history(tables.metrics, split) if order else None
    if history is not None and len(history) > 1:  # the pattern's evolution above its last epoch (appendix B)
        fig, (heat, ax) = subplots(2, 1, sharex=True, figsize=(width, height + HISTORY_HEIGHT), dpi=dpi,
                                   gridspec_kw={"height_ratios": [HISTORY_HEIGHT, height]})
        _draw_history(heat, history, x_of, split)
        heat.set_title(_title(summary, width), fontsize=10)
    else:
        fig, ax = subplots(figsize=(width, height), dpi=dpi)
        ax.set_title(_title(summary, width), fontsize=10)
    if not order:
        ax.text(0.5, 0.5, "no saved tables with layers yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig

    _draw_saturations(ax, tables, split, x_of)
    _draw_accuracies(ax, tables, summary, x_of)
    borders = summary.get("borders") or {}
    _draw_tails_and_borders(ax, summary.get("tails", []), borders, x_of)
    handles, labels = ax.get_legend_handles_labels()
    _format_layer_axes(ax, order, accuracies=any("accuracy" in label for label in labels))
    if tables.receptive_field is not None:
        more_handles, more_labels = _draw_receptive_field(ax, tables, borders, x_of)
        handles, labels = handles + more_handles, labels + more_labels
    fig.tight_layout()
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, _below_tick_labels(ax)),
                  ncol=4, frameon=False)
    return fig


HISTORY_HEIGHT = 1.8  # inches of the heat map of saturation per epoch above the layer panel
LABELLED = int((MAX_FIGURE_WIDTH - 2.5) / 0.38)  # layer names that fit at 0.38 inch each; beyond, every n-th


def _draw_history(ax: Any, history: pd.DataFrame, x_of: dict[str, int], split: str) -> None:
    """Saturation per epoch (rows, first at the top, the last just above the bars) and layer (the columns of
    the panel below): how the pattern formed during training. Layers without saturations stay blank."""
    from matplotlib.ticker import MaxNLocator

    grid = np.full((len(history), len(x_of)), np.nan)
    for layer in history.columns:
        if layer in x_of:
            grid[:, x_of[layer]] = history[layer].to_numpy(dtype=float)
    epochs = history.index.to_numpy(dtype=float)
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest",
                      extent=(-0.5, len(x_of) - 0.5, epochs[-1] + 0.5, epochs[0] - 0.5))
    ax.set_ylabel("epoch", fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
    ax.tick_params(axis="y", labelsize=7)
    colorbar = ax.figure.colorbar(image, cax=ax.inset_axes([1.01, 0.0, 0.012, 1.0]))
    colorbar.set_label(f"saturation ({split})", fontsize=7)
    fraction_in_percent(colorbar.ax.yaxis)  # as the axis of the bars below
    colorbar.ax.tick_params(labelsize=6)


def _title(summary: dict[str, Any], width: float) -> str:
    """The run's name and the folder that tells it apart from the other runs of a grid (``RunDir.variant``), then its
    test accuracy, mean saturation and status (unless finished) if known; ``width``: the figure's, in inches."""
    title = summary["run"]["name"]
    if summary["run"].get("variant"):  # not in a summary of an older version
        title += "\n" + wrapped_lines(summary["run"]["variant"], width, 10)
    facts = []
    if summary["accuracy"]["test"] is not None:
        facts.append(f"test acc {summary['accuracy']['test']:.1%}")
    if summary.get("saturation") and summary["saturation"]["mean"] is not None:
        facts.append(f"s_mu {summary['saturation']['mean']:.1%}")
    status = (summary["run"].get("status") or {}).get("label")
    if status and status != "finished":
        facts.append(status)
    return title + ("\n" + ", ".join(facts) if facts else "")


def _draw_saturations(ax: Any, tables: RunTables, split: str, x_of: dict[str, int]) -> None:
    """Saturation per layer: bars for the analysed split, dots for the other one, each in its split's colour."""
    other = "test" if split == "train" else "train"
    main = layer_saturations(tables.metrics, split)
    if main is not None:
        xs = [x_of[n] for n in main["layer"] if n in x_of]
        ax.bar(xs, [s for n, s in zip(main["layer"], main["saturation"]) if n in x_of], width=0.7,
               color=split_color(split), alpha=0.85, label=f"saturation ({split})")
    second = layer_saturations(tables.metrics, other)
    if second is not None:
        ax.plot([x_of[n] for n in second["layer"] if n in x_of],
                [s for n, s in zip(second["layer"], second["saturation"]) if n in x_of],
                "o", color=split_color(other), markersize=3.5, label=f"saturation ({other})")
    tracked = tables.metrics is not None and any(str(column).endswith(f"_{split}_saturation")
                                                 for column in tables.metrics.columns)
    if main is None and tracked:  # a diverged last epoch (NaN saturations) left the panel without bars or a word;
        # on the figure, boxed: over the right axis' lines, which crossed it as a text of the panel
        ax.figure.text(0.5, 0.5, NO_FINITE_SATURATION, ha="center", va="center", transform=ax.transAxes, fontsize=9,
                       color="#c44e52", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.9})


NO_FINITE_SATURATION = "no finite saturation in the last epoch\n(non-finite activations: did the run diverge?)"


def _draw_accuracies(ax: Any, tables: RunTables, summary: dict[str, Any], x_of: dict[str, int]) -> None:
    """The probes' accuracy per layer as a line, the model's test accuracy as a dash-dot-dotted line (dashed, it
    was b_max's line in the legend but for its colour)."""
    if tables.probes is not None:
        layers, pixelwise = probe_layer_accuracies(tables.probes)  # a pixelwise table: the mean over positions
        points = [(x_of[layer], accuracy) for layer, accuracy in zip(layers["layer"], layers["eval_acc"])]
        label = "probe accuracy (eval, mean over positions)" if pixelwise else "probe accuracy (eval)"
        if points and (tables.probes_predate_latents or tables.latents_of_older_extraction):  # not these latents'
            why = "latents extracted again since" if tables.probes_predate_latents else "older extraction"
            ax.plot(*zip(*points), ":o", color="#8c8c8c", markersize=3, linewidth=1.2, label=f"{label}, stale: {why}")
        elif points:
            ax.plot(*zip(*points), "-o", color=ACCURACY_COLOR, markersize=3.5, linewidth=1.6, label=label)
    if summary["accuracy"]["test"] is not None:
        ax.axhline(summary["accuracy"]["test"], color=ACCURACY_COLOR, linestyle=MODEL_ACCURACY_STYLE, linewidth=1,
                   label="model test accuracy")


ACCURACY_COLOR = "#8172b3"  # the palette's purple: the orange of the accuracies was the test split's colour
MODEL_ACCURACY_STYLE = (0, (5, 1.5, 1, 1.5, 1, 1.5))  # dash-dot-dot: no other line of the figure has it


def _draw_tails_and_borders(ax: Any, tails: list[dict[str, Any]], borders: dict[str, Any],
                            x_of: dict[str, int]) -> None:
    """Shade the tails; mark b_min (solid) and b_max (dashed) just before their border layer."""
    for tail in tails:
        if tail["first_layer"] in x_of and tail["last_layer"] in x_of:
            ax.axvspan(x_of[tail["first_layer"]] - 0.5, x_of[tail["last_layer"]] + 0.5, color="#c44e52", alpha=0.13,
                       label="tail" if tail is tails[0] else None)
    if borders.get("b_min") in x_of and borders.get("b_min") == borders.get("b_max"):  # one line: b_max's dashed
        # line under b_min's solid one was named in the legend but nowhere to be seen
        ax.axvline(x_of[borders["b_min"]] - 0.5, color="black", linestyle="-", linewidth=1.4, label="b_min = b_max")
        return
    for key, style in (("b_min", "-"), ("b_max", "--")):
        layer = borders.get(key)
        if layer in x_of:
            ax.axvline(x_of[layer] - 0.5, color="black", linestyle=style, linewidth=1.4, label=key)


def _format_layer_axes(ax: Any, order: list[str], accuracies: bool = True) -> None:
    """Percent scale on the left axis, one tick per layer (names rotated; beyond ``LABELLED`` layers every n-th)
    on the x axis. The axis is named for accuracy too only where one is drawn: a reconstruction (an autoencoder)
    has none, and neither has a run without probes before its test accuracy is known."""
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("saturation / accuracy" if accuracies else "saturation")
    fraction_in_percent(ax.yaxis)
    thin_tick_labels(ax, order, rotation=90, most=LABELLED, ha="center")
    ax.set_xlim(-0.6, len(order) - 0.4)


def _draw_receptive_field(ax: Any, tables: RunTables, borders: dict[str, Any],
                          x_of: dict[str, int]) -> tuple[list[Any], list[str]]:
    """r_max and r_min per layer and the input resolution on a right axis; returns its legend entries. Nothing
    where no layer has a finite receptive field (a network without a Conv2d)."""
    from phd_lab.plots.receptive_field import equal_extremes, plotted_rows

    # the lines follow the layers the border rule walks, as receptive_field.png does; side branches (a ResNet's
    # 1x1 shortcuts, attention gates) are loose hollow points: inside the lines each made r_max and r_min dip
    sequence, side = plotted_rows(_numeric_receptive_field(tables.receptive_field))
    if sequence.empty and side.empty:  # no layer of finite receptive field (an MLP's Linear layers see the whole
        # input): the legend named r_max and r_min lines drawn nowhere, on a pixel axis holding the resolution alone
        return [], []
    twin = ax.twinx()
    # markers on the lines: solid without them, r_max was b_min's line in the legend but for its colour
    # one line where r_min equals r_max at every layer (a single-path network): r_min's, drawn on r_max's, hid it
    equal = bool(len(sequence)) and equal_extremes(sequence)
    for column, style, marker, line_marker in (("r_max", "-", "o", "^"), ("r_min", ":", "s", "v")):
        if not (equal and column == "r_min"):
            twin.plot([x_of[str(n)] for n in sequence["layer"]], sequence[column], style, color="#55a868",
                      linewidth=1.3, marker=line_marker, markersize=3,
                      label=f"receptive field {'r_min = r_max' if equal else column}")
        if len(side):
            twin.plot([x_of[str(n)] for n in side["layer"]], side[column], marker, color="#55a868", markersize=3.5,
                      fillstyle="none", label="receptive field of a side branch" if column == "r_max" else None)
    resolution = borders.get("resolution") or tables.config_value("resolution")
    if resolution:
        twin.axhline(resolution, color="#55a868", linestyle="-.", linewidth=1,
                     label=f"input resolution {resolution}")
    twin.set_ylabel("receptive field (pixels)")
    twin.set_ylim(bottom=0)
    return twin.get_legend_handles_labels()


def _numeric_receptive_field(rf: pd.DataFrame) -> pd.DataFrame:
    """The table with numbers in its index and r columns (a damaged cell: NaN, a row not drawn)."""
    rf = rf.copy()
    for column in ("index", "r_min", "r_max"):
        rf[column] = pd.to_numeric(rf[column], errors="coerce")
    return rf


def _below_tick_labels(ax: Any) -> float:
    """The axes-fraction height just below the (rotated) x tick labels, measured where tight_layout put the axes,
    so that the legend never covers layer names, however long. The x axis lays out only its own ticks for
    this; drawing the whole figure first added 15% to the figure's time (savefig draws it twice anyway)."""
    extent = ax.xaxis.get_tightbbox(ax.figure.canvas.get_renderer())
    if extent is None or not any(label.get_text() for label in ax.get_xticklabels()):
        return -0.12
    return float(ax.transAxes.inverted().transform((0.0, extent.y0))[1]) - 0.03


def figure_png(tables: RunTables, summary: dict[str, Any], dpi: int = 90) -> bytes:
    """The figure as PNG bytes (for embedding and for writing)."""
    return png_bytes(draw_run_figure(tables, summary, dpi), dpi)

