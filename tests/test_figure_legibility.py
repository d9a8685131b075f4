"""How the figures read, checked on the drawn matplotlib figures (artists, labels, text extents), never on pixels.

Each test names what a reader saw before: a legend entry for a line hidden under another, accuracies in 0-1 on
one figure and in percent on the next, ...
"""

from __future__ import annotations

import numpy as np
import torchvision

from phd_lab.analysis.receptive_field import receptive_fields
from phd_lab.analysis.run_summary import summarize
from phd_lab.analysis.run_tables import load_run
from phd_lab.plots import close
from tests.analysis_fixtures import write_run


def _labelled_lines(fig) -> list:
    """Every line of the figure that the legend names (labels starting with '_' are matplotlib's unnamed ones)."""
    return [line for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")]


def _hidden_lines(fig) -> list[tuple[str, str]]:
    """Pairs of named lines drawn on the same points of the same axes: the later one hides the earlier one, which
    the legend names but the reader cannot find."""
    lines = _labelled_lines(fig)
    return [(first.get_label(), second.get_label()) for i, first in enumerate(lines) for second in lines[i + 1:]
            if first.axes is second.axes and np.array_equal(np.asarray(first.get_xydata(), dtype=float),
                                                            np.asarray(second.get_xydata(), dtype=float))]


def test_a_single_path_networks_receptive_field_plot_names_no_line_it_hides():
    """A VGG's r_min equals its r_max at every layer and its b_min is its b_max: the red r_max line lay under
    the blue r_min one and b_max's dotted line under b_min's, both named in the legend but nowhere to be seen.
    Now one line each, named for both."""
    from phd_lab.plots.receptive_field import receptive_field_figure

    table = receptive_fields(torchvision.models.vgg11(), 32)
    figure = receptive_field_figure(table, 32)
    try:
        assert _hidden_lines(figure) == []
        labels = [line.get_label() for line in _labelled_lines(figure)]
        assert r"$r_{min} = r_{max}$" in labels and r"$b_{min} = b_{max}$: features.13" in labels
        assert figure.axes[0].get_ylim()[0] == 0  # no negative receptive field on the axis
    finally:
        close(figure)


def test_a_resnets_receptive_field_plot_keeps_its_two_lines_and_two_borders():
    """Where r_min and r_max differ (a ResNet's paths), each has its line, and each border its own."""
    from phd_lab.plots.receptive_field import receptive_field_figure
    from registries.models import resnet18

    figure = receptive_field_figure(receptive_fields(resnet18(num_classes=10, width=0.125), 32), 32)
    try:
        labels = [line.get_label() for line in _labelled_lines(figure)]
        assert {r"$r_{min}$", r"$r_{max}$"} <= set(labels)
        assert sum(label.startswith(r"$b_{min}$: ") for label in labels) == 1
        assert sum(label.startswith(r"$b_{max}$: ") for label in labels) == 1
    finally:
        close(figure)


def test_the_run_figure_of_a_single_path_network_names_no_line_it_hides(tmp_path):
    """The run figure drew b_max dashed under b_min's solid line and r_min dotted on r_max's points: legend
    entries for lines no one could see. Now 'b_min = b_max' and 'receptive field r_min = r_max'."""
    from phd_lab.plots.run_figure import draw_run_figure

    tables = load_run(write_run(tmp_path / "logs", width=0.25, stage="full"))
    summary = summarize(tables)
    assert summary["borders"]["b_min"] == summary["borders"]["b_max"]
    figure = draw_run_figure(tables, summary)
    try:
        assert _hidden_lines(figure) == []
        legend = next(ax.get_legend() for ax in figure.axes if ax.get_legend() is not None)
        entries = [text.get_text() for text in legend.get_texts()]
        assert "b_min = b_max" in entries and "receptive field r_min = r_max" in entries
        assert not {"b_max", "receptive field r_min"} & set(entries)
    finally:
        close(figure)



def _named_lines_drawn_nowhere(fig) -> list[str]:
    """The legend's lines without a single finite point: named, but nowhere in the figure."""
    return [line.get_label() for line in _labelled_lines(fig)
            if not np.isfinite(np.asarray(line.get_xydata(), dtype=float)).all(axis=1).any()]


def test_the_figures_of_a_network_without_a_convolution_name_no_receptive_field_line(tmp_path):
    """The built-in mlp_long_skip (thesis §4.3) has Linear layers only, each seeing the whole input: its receptive
    field table holds no finite r_min or r_max. receptive_field.png named an r_max and an r_min line in its legend,
    and the run figure 'receptive field r_max' and 'receptive field r_min' on a right axis of pixels that held the
    input resolution alone: lines drawn nowhere. Now neither is named, and the run figure has no pixel axis."""
    from phd_lab import atomic
    from phd_lab.plots.receptive_field import receptive_field_figure
    from phd_lab.plots.run_figure import draw_run_figure
    from registries.models import mlp_long_skip

    table = receptive_fields(mlp_long_skip(num_classes=10, input_side=32, skipped=4, tail=1), 32)
    assert not np.isfinite(table["r_max"].astype(float)).any()
    figure = receptive_field_figure(table, 32)
    try:
        assert _named_lines_drawn_nowhere(figure) == []
        labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
        assert labels == ["input resolution 32"]
    finally:
        close(figure)
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full")
    atomic.write_csv(rundir.root / "receptive_field.csv", table)  # as the step writes an MLP's
    tables = load_run(rundir)
    figure = draw_run_figure(tables, summarize(tables))
    try:
        assert _named_lines_drawn_nowhere(figure) == []
        legend = next(ax.get_legend() for ax in figure.axes if ax.get_legend() is not None)
        assert not [text.get_text() for text in legend.get_texts() if "receptive field" in text.get_text()]
        assert "receptive field (pixels)" not in [ax.get_ylabel() for ax in figure.axes]
    finally:
        close(figure)

def _percent_of_one(axis) -> float | None:
    """The percent ``axis`` writes an accuracy of 1.0 as ('100%', '100.0%'); None where it writes no percent."""
    label = axis.get_major_formatter()(1.0, 0)
    return float(label[:-1]) if label.endswith("%") else None


def test_every_accuracy_axis_is_in_percent_as_the_run_figures(tmp_path):
    """The run figure shows accuracy on its percent axis (shared with saturation) and in its title ('test acc
    93.0%'), while the probe plots, the projection plot, the comparison plots and the repetitions' drop figure
    showed 0-1 (the probe plot's model line '(0.930)'): one run's accuracy read as 93% on one figure and 0.93 on
    the next."""
    from phd_lab.analysis.repetitions import relevant_eigenspace_table
    from phd_lab.plots.grid_figures import comparison_plots, scatter_figure
    from phd_lab.plots.probes import plot_probe_accuracy, plot_probe_sets
    from phd_lab.plots.projections import plot_projections
    from phd_lab.plots.repetitions import eigenspace_figure
    from phd_lab.plots.run_figure import draw_run_figure

    tables = load_run(write_run(tmp_path / "logs", width=0.25, stage="full"))
    summary = summarize(tables)
    shown, legends = {}, {}
    figure = draw_run_figure(tables, summary)
    shown["run figure"] = _percent_of_one(figure.axes[-2].yaxis)  # the layer panel, under the epoch map
    close(figure)
    ax = plot_probe_accuracy(tables.probes, summary["accuracy"]["test"])
    shown["probe accuracy"] = _percent_of_one(ax.yaxis)
    legends["probe accuracy"] = [text.get_text() for text in ax.get_legend().get_texts()]
    close(ax.figure)
    ax = plot_probe_sets([("4x4", "adaptive_avg", tables.probes)], summary["accuracy"]["test"])
    shown["probe sets"] = _percent_of_one(ax.yaxis)
    legends["probe sets"] = [text.get_text() for text in ax.get_legend().get_texts()]
    close(ax.figure)
    ax = plot_projections(tables.projections)
    shown["projections"] = _percent_of_one(ax.yaxis)
    close(ax.figure)
    for title, (x_of, labels, options) in comparison_plots([summary]).items():
        if "accuracy" in labels[1]:
            figure = scatter_figure([summary], x_of, *labels, **options)
            shown[title] = _percent_of_one(figure.axes[0].yaxis)
            close(figure)
    drops = relevant_eigenspace_table({"0": tables.projections, "1": tables.projections.assign(
        accuracy=tables.projections["accuracy"] - 0.01)})
    figure = eigenspace_figure(drops, "repetitions")
    shown["accuracy lost over repetitions"] = _percent_of_one(figure.axes[0].yaxis)
    close(figure)
    assert shown == dict.fromkeys(shown, 100)
    assert all(f"model test accuracy ({summary['accuracy']['test']:.1%})" in entries for entries in legends.values())



def _shown_tick_labels(ax, renderer) -> list:
    """The x tick labels a reader sees (major and minor, with text, inside the axis' limits), left to right."""
    low, high = ax.get_xlim()
    return sorted((label for label in ax.get_xticklabels(which="both")
                   if label.get_text() and label.get_visible() and low <= label.get_position()[0] <= high),
                  key=lambda label: label.get_window_extent(renderer).x0)


def test_the_parameters_plot_labels_its_log_axis_without_writing_labels_over_each_other(tmp_path):
    """Runs of one ResNet-18 on data of 10 and of 100 classes differ by 0.4% in parameters: on the report's 'test
    accuracy vs parameters' the log axis fell back to linear ticks labelled '1.118×10⁷', '1.119×10⁷', ..., written
    into each other as one black smear; a grid of an MLP, a VGG11 and a ResNet-50 (38k, 148k and 376k
    parameters) had '3×10⁵' run into '4×10⁵'. Now no two labels touch, each is a compact count (11.18M, 200k)."""
    from phd_lab.plots.grid_figures import comparison_plots, scatter_figure
    from registries.models import resnet18

    summary = summarize(load_run(write_run(tmp_path / "logs", width=0.25, stage="full")))
    resnets = [sum(p.numel() for p in resnet18(num_classes=classes).parameters()) for classes in (10, 100)]
    for params in (resnets, [38_202, 147_706, 375_938]):
        summaries = [{**summary, "computational": {"params": count}} for count in params]
        x_of, labels, options = comparison_plots(summaries)["Test accuracy against parameters"]
        figure = scatter_figure(summaries, x_of, *labels, **options)
        try:
            renderer = figure.canvas.get_renderer()
            figure.draw(renderer)
            ax = figure.axes[0]
            shown = _shown_tick_labels(ax, renderer)
            boxes = [label.get_window_extent(renderer) for label in shown]
            assert len(shown) >= 2, params
            assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:])), [t.get_text() for t in shown]
            assert not [t.get_text() for t in shown if "10^" in t.get_text() or "times" in t.get_text()]
        finally:
            close(figure)

def test_an_empty_tail_plot_says_why_and_shows_no_made_up_scale(tmp_path):
    """A grid of VGGs without tails (the quickstart's) drew 'no run has both values yet' on axes ticked 0-1, as if
    layer position 0.6 meant something, and said 'yet' of finished runs that will never have a tail start."""
    from phd_lab.plots.grid_figures import comparison_plots, scatter_figure

    summary = summarize(load_run(write_run(tmp_path / "logs", width=0.25, stage="full")))
    summary["tails"] = []  # finished, with a border, without a tail
    x_of, labels, options = comparison_plots([summary])["Tail start against border layer b_min"]
    figure = scatter_figure([summary], x_of, *labels, **options)
    try:
        [ax] = figure.axes
        [note] = [text.get_text() for text in ax.texts]
        assert "tail" in note and "b_min" in note and "yet" not in note
        assert list(ax.get_xticks()) == [] and list(ax.get_yticks()) == []
        figure.canvas.draw()
        inside = figure.bbox
        extent = ax.texts[0].get_window_extent()
        assert inside.x0 <= extent.x0 and extent.x1 <= inside.x1  # the note stays inside the figure
    finally:
        close(figure)


def test_a_tail_plot_ticks_whole_layer_positions(tmp_path):
    """Layer positions are whole numbers: ticks at 2.5 named no layer."""
    from phd_lab.plots.grid_figures import comparison_plots, scatter_figure

    summaries = []
    for width, run_id in ((0.25, "0"), (0.5, "1")):
        summaries.append(summarize(load_run(write_run(tmp_path / run_id, width=width, stage="full", run_id=run_id))))
    summaries[0]["tails"] = [{"first_layer": "features.16", "last_layer": "classifier.3"}]
    summaries[1]["tails"] = [{"first_layer": "features.18", "last_layer": "classifier.3"}]
    x_of, labels, options = comparison_plots(summaries)["Tail start against border layer b_min"]
    figure = scatter_figure(summaries, x_of, *labels, **options)
    try:
        [ax] = figure.axes
        ticks = [tick for axis in (ax.get_xticks(), ax.get_yticks()) for tick in axis]
        assert ticks and all(float(tick).is_integer() for tick in ticks)
    finally:
        close(figure)


def test_the_run_figure_of_a_run_whose_last_epoch_has_no_finite_saturation_says_so(tmp_path):
    """NaN saturations in the last epoch (a diverged run) drew the layer panel without a bar and without a word,
    as if saturation had not been tracked; the per-epoch saturation plot said what happened."""
    import pandas as pd

    from phd_lab import atomic
    from phd_lab.plots.run_figure import NO_FINITE_SATURATION, draw_run_figure

    rundir = write_run(tmp_path / "logs", width=0.25, stage="full")
    metrics = pd.read_csv(rundir.metrics_csv)
    metrics.loc[metrics.index[-1], [c for c in metrics.columns if c.endswith("_saturation")]] = float("nan")
    atomic.write_csv(rundir.metrics_csv, metrics)
    tables = load_run(rundir)
    figure = draw_run_figure(tables, summarize(tables))
    try:
        _, panel, twin = figure.axes[:3]  # the layer panel under the epoch map, and its right axis
        assert not panel.containers  # no bars
        [note] = [text for text in figure.texts if text.get_text() == NO_FINITE_SATURATION]
        figure.canvas.draw()
        assert panel.bbox.contains(*note.get_window_extent().p0) and panel.bbox.contains(*note.get_window_extent().p1)
        assert note.get_zorder() > max(panel.get_zorder(), twin.get_zorder())  # over the right axis' lines
    finally:
        close(figure)


def test_the_run_figures_of_a_grid_s_runs_say_which_run_they_show(tmp_path):
    """Every run of a grid has the same file prefix (``vgg11-Digits-r32-bs64-e3``: no swept argument, optimizer, seed
    or run id), and its figure was titled by it alone: analysis.png files opened on their own could not be told
    apart. The title now names the run id and variant folder, in lines that fit the narrowest figure."""
    from phd_lab.plots.run_figure import draw_run_figure

    titles = []
    for width, run_id in [(0.25, "0"), (0.125, "0"), (0.25, "1")]:
        tables = load_run(write_run(tmp_path / "logs", width=width, stage="full", run_id=run_id))
        figure = draw_run_figure(tables, summarize(tables))
        try:
            title = figure.axes[0].get_title()
            inches = figure.get_size_inches()[0]
        finally:
            close(figure)
        name, *variant, facts = title.split("\n")
        assert name == "vgg11-Digits-r32-bs64-e3" and facts.startswith("test acc")
        assert "".join(variant) == f"{run_id}/{tables.folder.root.name}", title
        assert f"width{width}" in tables.folder.root.name
        assert all(len(line) <= inches * 72 / (0.6 * 10) for line in variant)
        titles.append(title)
    assert len(set(titles)) == 3


def test_a_variant_below_a_folder_the_locale_cannot_decode_is_text_a_figure_can_draw():
    """Under LC_ALL=C a run id '数' is held as lone surrogates, which matplotlib cannot draw (the probe job's plot
    failed with a traceback): the variant reads such bytes as UTF-8, and bytes that are no UTF-8 as U+FFFD."""
    from pathlib import Path

    from phd_lab.rundir import RunDir
    undecoded = "数".encode("utf-8").decode("ascii", "surrogateescape")
    assert RunDir(root=Path("/logs/vgg11/Digits_32") / undecoded / "bs64-e3", name="n").variant == "数/bs64-e3"
    assert RunDir(root=Path("/logs/a/b/\udcff0/v"), name="n").variant == "\ufffd0/v"
