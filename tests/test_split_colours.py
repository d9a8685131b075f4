"""One colour per split and one saturation scale in every figure, read back from the drawn matplotlib figures.

The per-epoch saturation plot drew train blue and test orange, while the run figure drew the analysed split
(``analysis_split``) as blue bars and the other as navy dots, and its accuracy lines orange: with
``analysis_split: test`` blue meant test in one figure and train in the other. The saturation plot, the
repetitions' stability figure, the run figure's epoch map and the s_mu comparison plot showed saturation on a
0-1 scale beside the run figure's percent."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402

from phd_lab import atomic  # noqa: E402
from phd_lab.analysis.run_summary import summarize  # noqa: E402
from phd_lab.analysis.run_tables import load_run  # noqa: E402
from tests.analysis_fixtures import write_run  # noqa: E402


def _run(logs, split: str, run_id: str = "0"):
    """A real run folder (two epochs and more, probes, receptive fields) whose config analyses ``split``."""
    rundir = write_run(logs, width=0.25, stage="full", run_id=run_id)
    config = json.loads(rundir.config.read_text())
    atomic.write_json(rundir.config, {**config, "analysis_split": split})
    return rundir


def _colour(artist) -> str:
    """An artist's colour without its alpha (the run figure's bars are slightly transparent)."""
    if isinstance(artist, BarContainer):
        return to_hex(artist.patches[0].get_facecolor(), keep_alpha=False)
    return to_hex(artist.get_color(), keep_alpha=False)


def _in_percent(label: str) -> float | None:
    """The number of a tick label written in percent ('25%', '25.0%'); None for another one ('0.25')."""
    return float(label[:-1]) if label.endswith("%") else None


def _run_figure_colours(tables, summary):
    """The colour of each split's saturations and of the accuracy lines in the run figure as drawn."""
    from phd_lab.plots.run_figure import draw_run_figure

    fig = draw_run_figure(tables, summary)
    try:
        ax = next(a for a in fig.axes if a.get_legend() is not None)  # the layer panel
        splits = {c.get_label(): _colour(c) for c in ax.containers}
        splits.update({line.get_label(): _colour(line) for line in ax.lines if line.get_label().startswith("sat")})
        accuracies = {_colour(line) for line in ax.lines if "accuracy" in line.get_label()}
        [heat] = [a for a in fig.axes if a.images]
        bar = heat.images[0].colorbar
        scale = bar.ax.yaxis.get_major_formatter()(1.0, 0)
    finally:
        plt.close(fig)
    return {split: splits[f"saturation ({split})"] for split in ("train", "test")}, accuracies, scale


def _saturation_plot_colours(tables):
    """The colour of each split's bars and the y axis' label of 1.0 in the per-epoch saturation plot."""
    from phd_lab.plots.saturation import plot_saturation, saturation_table

    ax = plot_saturation(saturation_table(tables.metrics.iloc[-1].to_dict()))
    try:
        return {bars.get_label(): _colour(bars) for bars in ax.containers}, ax.yaxis.get_major_formatter()(1.0, 0)
    finally:
        plt.close(ax.figure)


@pytest.mark.parametrize("split", ["train", "test"])
def test_each_split_has_one_colour_in_the_saturation_plot_and_the_run_figure(tmp_path, split):
    """Whichever split is analysed (bars) and which one is dotted, train and test saturations have the colours of
    the per-epoch saturation plot's train and test bars; the accuracy lines have neither split's colour."""
    tables = load_run(_run(tmp_path / "logs", split))
    summary = summarize(tables)
    assert summary["settings"]["analysis_split"] == split
    in_run_figure, accuracies, _ = _run_figure_colours(tables, summary)
    in_saturation_plot, _ = _saturation_plot_colours(tables)
    assert in_run_figure == in_saturation_plot
    assert in_run_figure["train"] != in_run_figure["test"]
    assert accuracies and not accuracies & set(in_run_figure.values())


def test_saturation_is_shown_in_percent_in_every_figure(tmp_path):
    """As the thesis gives it (s_mu of 20-30%, tails 50% below the rest) and the run figure's axis did: the
    saturation plot, the run figure's epoch map, the repetitions' stability figure and the s_mu comparison plot
    label a saturation of 1.0 as 100%."""
    from phd_lab.plots.grid_figures import comparison_plots, scatter_figure
    from phd_lab.plots.repetitions import stability_figure
    from phd_lab.report.collect import collect
    from phd_lab.report.repetitions import repetition_groups

    tables = load_run(_run(tmp_path / "one", "train"))
    summary = summarize(tables)
    shown = {"run figure's epoch map": _run_figure_colours(tables, summary)[2],
             "saturation plot": _saturation_plot_colours(tables)[1]}
    x_of, labels, options = comparison_plots([summary])["Test accuracy against average saturation s_mu"]
    fig = scatter_figure([summary], x_of, *labels, **options)
    try:
        shown["s_mu comparison"] = fig.axes[0].xaxis.get_major_formatter()(1.0, 0)
    finally:
        plt.close(fig)
    for run_id in ("0", "1"):
        _run(tmp_path / "group", "test", run_id)
    [group] = repetition_groups(collect(tmp_path / "group", refresh=False))
    fig = stability_figure(group.stability, group.saturations, group.label)
    try:
        shown["stability"] = fig.axes[0].yaxis.get_major_formatter()(1.0, 0)
    finally:
        plt.close(fig)
    assert {figure: _in_percent(label) for figure, label in shown.items()} == dict.fromkeys(shown, 100)


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_repetitions_stability_figure_draws_the_analysed_split_in_its_colour(tmp_path, split):
    """The stability figure of a group analysed on ``split`` (its runs' analysis_split) drew its mean, band and
    range in the train colour whatever the split: now in the split's colour of the saturation plot, named on
    the y axis."""
    from phd_lab.plots.repetitions import stability_figure
    from phd_lab.report.collect import collect
    from phd_lab.report.repetitions import repetition_groups

    for run_id in ("0", "1"):
        _run(tmp_path / "logs", split, run_id)
    [group] = repetition_groups(collect(tmp_path / "logs", refresh=False))
    assert group.split == split
    expected = _saturation_plot_colours(group.entries[0].tables)[0][split]
    fig = stability_figure(group.stability, group.saturations, group.label, group.split)
    try:
        [ax] = fig.axes
        [mean] = [line for line in ax.lines if line.get_label().startswith("mean of")]
        assert _colour(mean) == expected
        assert to_hex(ax.collections[0].get_facecolor()[0], keep_alpha=False) == expected  # the min-max band
        assert ax.get_ylabel() == f"saturation ({split}, last epoch)"
    finally:
        plt.close(fig)
