"""Comparison plots across a grid of runs, drawn from the runs' analysis summaries only.

* test accuracy against s_μ, with the thesis' 20–30% interval shaded (as in its width studies);
  runs that have not finished training are drawn hollow;
* test accuracy against parameters (log scale);
* the position of the tail's start against the border layer b_min (on the diagonal = agreement).
"""

from __future__ import annotations

import io
import math
from collections import Counter
from typing import Any, Callable, Sequence

_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")  # with the colours: 64 groups told apart
# one colour per split in every figure that shows splits (saturation plot, run figure, repetitions): the palette's
# blue for train and its orange for test, a pair colour-blind readers tell apart (by lightness in grayscale too)
SPLIT_COLORS = {"train": _COLORS[0], "test": _COLORS[1]}


def split_color(split: str) -> str:
    """The colour of ``split`` in every figure (``SPLIT_COLORS``); the palette's grey for a split it does not name."""
    return SPLIT_COLORS.get(split, _COLORS[-1])

_BAND_COLORS = ("#55a868", "#8172b3", "#dd8452", "#937860")  # target s_mu bands, lowest first
_BAND_HATCHES = (None, "//", "\\\\", "..")  # with the colours: the bands differ by more than hue


MAX_TICK_LABELS = 40  # more layers or deltas than this: every n-th label, so that they stay readable
MAX_FIGURE_WIDTH = 60.0  # inches of a figure with a place per layer: a pixelwise probe table's thousands of
# positions (§9.3) drew PNGs 90,000 pixels wide


def literal(text: str) -> str:
    """``text`` shown as it is: matplotlib reads a text with two '$' as mathtext, so a layer name such as '$x^{$'
    (a module name may hold it; a manifest or table can name anything) ended the probe job, at its confusion plot,
    and the report with a ValueError traceback, and '$x$' was drawn as math."""
    return str(text).replace("$", r"\$")


def thin_tick_labels(ax: Any, labels: Sequence[str], rotation: int, most: int = MAX_TICK_LABELS,
                     ha: str | None = None) -> None:
    """A tick at every n-th position, labelled with at most ``most`` of ``labels`` (all where they fit); ``ha``:
    the labels' alignment (by default right under a rotated label's tick, else centred)."""
    step = max(1, math.ceil(len(labels) / most))
    ax.set_xticks(range(0, len(labels), step))
    ax.set_xticklabels([literal(label) for label in list(labels)[::step]], rotation=rotation, fontsize=7,
                       ha=ha or ("right" if rotation else "center"))


def fraction_in_percent(axis: Any) -> None:
    """Label ``axis`` (an x or y axis, or a colour bar's) in percent where it shows a fraction of the tables: a
    saturation, shown as 0–100% in every figure as the thesis gives it (s_mu of 20–30%, tails 50% below the rest),
    or an accuracy, in percent on every figure as the run figure (axis and title) shows it."""
    from matplotlib.ticker import PercentFormatter
    axis.set_major_formatter(PercentFormatter(1.0))


def png_bytes(fig: Any, dpi: int = 90) -> bytes:
    """The figure as PNG bytes (tight), closed afterwards: for pages that embed it."""
    from phd_lab.plots import close
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
        return buffer.getvalue()
    finally:
        close(fig)


def _groups(summaries: Sequence[dict[str, Any]]) -> dict[str, int]:
    labels = sorted({f"{s['run'].get('model')} / {s['run'].get('dataset')}" for s in summaries})
    return {label: i for i, label in enumerate(labels)}


def _scatter(summaries: Sequence[dict[str, Any]], x_of: Any, xlabel: str, ylabel: str, title: str,
             **options: Any) -> bytes:
    return png_bytes(scatter_figure(summaries, x_of, xlabel, ylabel, title, **options))


def group_style(group: int) -> tuple[str, str]:
    """Colour and marker of the ``group``-th model / dataset: both change from one group to the next, so that groups
    differ in more than hue (grayscale prints, colour-blind readers), and the first 64 groups are pairs of their
    own (the marker is shifted by one for each round of the eight colours)."""
    round_ = group // len(_COLORS)
    return _COLORS[group % len(_COLORS)], _MARKERS[(group + round_) % len(_MARKERS)]


def band_style(index: int) -> dict[str, Any]:
    """Patch options of the ``index``-th target s_mu band: a pale shade of its colour, hatched in that colour from
    the second band on (a grid over target_saturation shades several: told apart in grayscale and by colour-blind
    readers too, in the legend as on the axes)."""
    from matplotlib.colors import to_rgb

    red, green, blue = to_rgb(_BAND_COLORS[index % len(_BAND_COLORS)])
    return {"facecolor": (red, green, blue, 0.12), "edgecolor": (red, green, blue, 0.5), "linewidth": 0,
            "hatch": _BAND_HATCHES[index % len(_BAND_HATCHES)]}


def scatter_figure(summaries: Sequence[dict[str, Any]], x_of: Any, xlabel: str, ylabel: str, title: str, *,
                   logx: bool = False, bands: Sequence[tuple[float, float]] = (), diagonal: bool = False,
                   y_at_most: float | None = None, x_percent: bool = False, y_percent: bool = False,
                   integer: bool = False, empty: str = "no run has both values yet") -> Any:
    """One comparison plot: a colour and marker per model / dataset, hollow while unfinished; ``y_at_most``: the
    largest value y can take (an accuracy's 1), which the y axis does not run past; ``x_percent``: x is a saturation
    (labelled in percent); ``y_percent``: y is an accuracy (labelled in percent); ``integer``: both are counts
    (layer positions: whole-numbered ticks); ``empty``: what the plot says where no run has both values."""
    from phd_lab.plots import subplots

    fig, ax = subplots(figsize=(5.2, 3.8))
    groups = _groups(summaries)
    plotted = 0
    for label, group in groups.items():
        color, marker = group_style(group)
        for done in (True, False):
            points: Counter[tuple[float, float]] = Counter()
            for s in summaries:
                if f"{s['run'].get('model')} / {s['run'].get('dataset')}" != label or finished(s) != done:
                    continue
                x, y = x_of(s)
                if x is not None and y is not None:
                    points[(x, y)] += 1
            if points:
                # runs on the same spot (integer layer positions, repeated seeds) are one marker, sized and
                # counted, not one marker hiding the others
                xs, ys = zip(*points)
                ax.scatter(xs, ys, s=[28 * math.sqrt(n) for n in points.values()], marker=marker,
                           color=color if done else "none", edgecolors=color,
                           label=literal(label if done else f"{label} (unfinished)"))
                for (x, y), n in points.items():
                    if n > 1:
                        ax.annotate(f"×{n}", (x, y), xytext=(4, 4), textcoords="offset points", fontsize=6,
                                    color=color)
                plotted += sum(points.values())
    for index, (low, high) in enumerate(sorted(set(bands))):  # overlapping bands show as a darker shade
        ax.axvspan(low, high, **band_style(index), label=f"target s_mu {low:.0%}-{high:.0%}")
    if diagonal and plotted:
        low, high = ax.get_xlim()
        ax.plot([low, high], [low, high], color="black", linewidth=0.8, linestyle="--", label="agreement")
    if logx and plotted:
        ax.set_xscale("log")
        count_ticks(ax.xaxis)
    if x_percent:
        fraction_in_percent(ax.xaxis)
    if y_percent:
        fraction_in_percent(ax.yaxis)
    low, high = ax.get_ylim()
    if plotted and y_at_most is not None and high > y_at_most:  # around one run at 98%, autoscaling put ticks at
        # an impossible 1.02 and 1.04 accuracy; a margin keeps a marker at y_at_most whole
        ax.set_ylim(low, y_at_most + 0.02 * (y_at_most - low))
    if integer and plotted:
        from matplotlib.ticker import MaxNLocator
        for axis in (ax.xaxis, ax.yaxis):  # layer 2.5 is no layer
            axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if not plotted:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, wrap=True)
        ax.set_xticks([])  # the 0-1 of empty axes read as values (an accuracy of 0.4, a layer position of 0.6)
        ax.set_yticks([])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if plotted:  # beside the axes (inside, a grid of several models covered its points); the saved figure
        # grows to hold it (bbox_inches="tight") instead of the axes shrinking
        entries = len(ax.get_legend_handles_labels()[1])
        legend = ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                           borderaxespad=0, ncol=1 + entries // 20)
        for handle in legend.legend_handles:  # one size in the legend, whatever the counts on the spots
            if hasattr(handle, "set_sizes"):
                handle.set_sizes([28])
    return fig


def count_text(value: float, step: float | None = None) -> str:
    """A count as a tick label, compact: 38.2k, 102.5k, 11.17M (never 1.025×10⁵); with the ticks' ``step``, as many
    decimals as tell the ticks apart (11.18M, 11.20M, 11.22M for ticks 20k apart, not 11.2M for the second)."""
    size, suffix = next(((size, suffix) for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if abs(value) >= size),
                        (1.0, ""))
    if step is None:
        return f"{value / size:.4g}{suffix}"
    return f"{value / size:.{max(0, -math.floor(math.log10(step / size) + 1e-9))}f}{suffix}"


def count_ticks(axis: Any) -> None:
    """Ticks of a log-scaled ``axis`` of counts (parameters) whose labels never run into each other. Over less than
    a decade matplotlib's log ticks fell back to about eight linear ones labelled '1.025×10⁵', '1.05×10⁵', ...
    written over each other (runs of one model on data sets of 10 and 100 classes), and over one or two decades
    it labelled '3×10⁵' and '4×10⁵' into each other. Now at most five ticks over less than a decade; over more,
    matplotlib's log ticks, labelled at 1, 2 and 5 times a power of ten (at powers of ten alone beyond two and a
    half decades); every label compact (``count_text``)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

    low, high = axis.get_view_interval()
    if high < 10 * low:
        locator = MaxNLocator(nbins=4, steps=[1, 2, 5, 10])  # no step of 2.5: one decimal more for no tick
        axis.set_major_locator(locator)
        axis.set_minor_locator(NullLocator())
        ticks = locator.tick_values(low, high)
        axis.set_major_formatter(FuncFormatter(lambda value, _: count_text(value, float(ticks[1] - ticks[0]))))
        return
    shown = (1,) if high > 10 ** 2.5 * low else (1, 2, 5)

    def label(value: float, _: Any) -> str:
        coefficient = value / 10 ** math.floor(math.log10(value) + 1e-9) if value > 0 else 0.0
        return count_text(value) if any(math.isclose(coefficient, c, rel_tol=1e-6) for c in shown) else ""

    axis.set_major_formatter(FuncFormatter(label))
    axis.set_minor_formatter(FuncFormatter(label))


def finished(s: dict[str, Any]) -> bool:
    """Whether the run of an analysis summary has finished training."""
    return ((s["run"].get("status") or {}).get("state")) == "finished"


def _accuracy(s: dict[str, Any]) -> float | None:
    return (s.get("accuracy") or {}).get("test")


def _s_mu(s: dict[str, Any]) -> float | None:
    return (s.get("saturation") or {}).get("mean")


def _position(s: dict[str, Any], layer: str | None) -> int | None:
    layers = [entry["layer"] for entry in (s.get("saturation") or {}).get("layers", [])]
    return layers.index(layer) + 1 if layer in layers else None


def comparison_plots(summaries: Sequence[dict[str, Any]], bands: Sequence[tuple[float, float]] = ((0.2, 0.3),)
                     ) -> dict[str, tuple[Callable[[dict[str, Any]], tuple[Any, Any]], tuple[str, str, str],
                                          dict[str, Any]]]:
    """Every comparison plot by a short title: how it reads a run's (x, y), its axis labels and plot title, and the
    options of ``scatter_figure``. ``grid_figures`` draws them; the report keys each one by ``plotted_values``
    first, so that an unchanged plot is taken from the page it replaces instead of drawn again.

    ``bands`` are the target s_mu intervals of the runs' analyses (one per distinct interval), shaded on the s_mu
    plot: runs of configs with other ``target_saturation`` values in one logs folder get each of their bands shaded,
    not the first run's for all (one config cannot sweep it: it is no part of a run's folder).
    """
    def tail_vs_border(s: dict[str, Any]) -> tuple[int | None, int | None]:
        tails = s.get("tails") or []
        border = (s.get("borders") or {}).get("b_min")
        if not tails or border is None:
            return None, None
        return _position(s, border), _position(s, tails[-1]["first_layer"])

    return {
        "Test accuracy against average saturation s_mu": (
            lambda s: (_s_mu(s), _accuracy(s)), ("average saturation s_mu", "test accuracy", "test accuracy vs s_mu"),
            {"bands": [tuple(band) for band in bands], "y_at_most": 1.0, "x_percent": True,
             "y_percent": True}),
        "Test accuracy against parameters": (
            lambda s: ((s.get("computational") or {}).get("params"), _accuracy(s)),
            ("parameters", "test accuracy", "test accuracy vs parameters"),
            {"logx": True, "y_at_most": 1.0, "y_percent": True}),
        "Tail start against border layer b_min": (
            tail_vs_border, ("b_min (layer position)", "tail start (layer position)", "tail start vs b_min"),
            {"diagonal": True, "integer": True,
             "empty": "no run has both a tail and a border layer b_min\n(a run without a tail has no tail start)"}),
    }


def plotted_values(summaries: Sequence[dict[str, Any]], x_of: Callable[[dict[str, Any]], tuple[Any, Any]]
                   ) -> list[list[Any]]:
    """All that ``scatter_figure`` reads of each run, in order: its group label, whether it finished, its (x, y)."""
    return [[f"{s['run'].get('model')} / {s['run'].get('dataset')}", finished(s), *x_of(s)] for s in summaries]


def grid_figures(summaries: Sequence[dict[str, Any]],
                 bands: Sequence[tuple[float, float]] = ((0.2, 0.3),)) -> dict[str, bytes]:
    """PNG bytes of every comparison plot (``comparison_plots``), keyed by a short title."""
    return {title: _scatter(summaries, x_of, *labels, **options)
            for title, (x_of, labels, options) in comparison_plots(summaries, bands).items()}


def wrapped_lines(text: str, inches: float, points: float, lines: int = 2) -> str:
    """Each line of ``text`` wrapped (``wrapped_title``, ``lines`` lines at most) to what a title of ``points`` fits
    across ``inches``: a run's variant folder name alone has up to 97 characters, more than the narrowest figure
    holds."""
    characters = max(20, int(inches * 72 / (0.6 * points)))  # a character of DejaVu Sans is ~0.6 em wide
    return "\n".join(wrapped_title(line, characters, lines=lines) for line in text.split("\n"))


def wrapped_title(title: str, width: int, lines: int = 3) -> str:
    """``title`` in lines of at most ``width`` characters, broken at spaces or inside longer words (layer names
    have no spaces); beyond ``lines`` lines the start goes, the end (the position, the accuracy) says most."""
    import textwrap
    wrapped = textwrap.wrap(title, width, break_long_words=True, break_on_hyphens=False) or [""]
    if len(wrapped) > lines:
        wrapped = ["…" + wrapped[-lines][1:], *wrapped[len(wrapped) - lines + 1:]]
    return literal("\n".join(wrapped))
