"""The project step's figures (§7.2, Table 3, Fig. 43): what they draw, read back from the matplotlib axes or the
rendered file."""

from __future__ import annotations

import base64
import io
import re

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from phd_lab.plots.projections import (plot_projections, relative_accuracy_figure,  # noqa: E402
                                       save_reconstruction_grid, shown_deltas)


def _table(column: str) -> pd.DataFrame:
    """A projections.csv as the project step writes it, rows in no particular delta order."""
    rows = [{"delta": 1.0, "basis": "none", column: 0.8}]
    for delta in (0.99, 0.5, 0.9):
        rows += [{"delta": delta, "basis": "pca", column: delta * 0.8},
                 {"delta": delta, "basis": "random", column: delta * 0.4}]
    table = pd.DataFrame(rows)
    other = "loss" if column == "accuracy" else "accuracy"
    table[other] = float("nan") if other == "accuracy" else 0.1
    return table


def test_projection_lines_follow_the_sorted_deltas_and_the_unprojected_accuracy_is_the_reference():
    ax = plot_projections(_table("accuracy"), title="run")
    try:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "0.9", "0.99"]
        pca, random, reference = ax.get_lines()
        assert pca.get_label() == "pca basis" and random.get_label() == "random basis"
        assert list(pca.get_xdata()) == [0, 1, 2] and list(pca.get_ydata()) == pytest.approx([0.4, 0.72, 0.792])
        assert list(random.get_ydata()) == pytest.approx([0.2, 0.36, 0.396])
        assert list(reference.get_ydata()) == [0.8, 0.8] and reference.get_label() == "unprojected"
        assert ax.get_ylabel() == "test accuracy" and ax.get_ylim() == (0, 1.02) and ax.get_yscale() == "linear"
    finally:
        plt.close(ax.figure)


def test_projection_bases_differ_by_more_than_hue():
    """In grayscale or to a colour-blind reader the red random and the blue PCA line were one kind of line: the
    bases (and the unprojected reference) differ in line style and marker, in the axes and in the legend."""
    ax = plot_projections(_table("accuracy"))
    try:
        pca, random, reference = ax.get_lines()
        assert (pca.get_linestyle(), pca.get_marker()) == ("-", "o")
        assert (random.get_linestyle(), random.get_marker()) == ("--", "s")
        assert reference.get_marker() == "None"
        assert len({line.get_linestyle() for line in (pca, random, reference)}) == 3
        shown = {text.get_text(): (handle.get_linestyle(), handle.get_marker())
                 for text, handle in zip(ax.get_legend().get_texts(), ax.get_legend().get_lines())}
        assert shown == {"pca basis": ("-", "o"), "random basis": ("--", "s"), "unprojected": (":", "None")}
    finally:
        plt.close(ax.figure)


def test_a_reconstruction_model_is_drawn_by_its_loss_on_a_log_scale():
    ax = plot_projections(_table("loss"))
    try:
        pca, _, reference = ax.get_lines()
        assert list(pca.get_ydata()) == pytest.approx([0.4, 0.72, 0.792]) and list(reference.get_ydata())[0] == 0.8
        assert ax.get_ylabel() == "test reconstruction loss (MSE)" and ax.get_yscale() == "log"
    finally:
        plt.close(ax.figure)


def test_a_run_projected_at_the_thesis_109_deltas_labels_every_nth_one_so_that_the_labels_stay_apart():
    """configs/thesis/07_4 and A_* project at 109 deltas: the 8-inch figure labelled each, one illegible smear."""
    deltas = sorted({round(0.9 + 0.01 * i, 4) for i in range(10)} | {round(0.99 + 0.0001 * i, 4) for i in range(100)})
    rows = [{"delta": 1.0, "basis": "none", "accuracy": 0.8, "loss": 0.1}]
    rows += [{"delta": d, "basis": basis, "accuracy": d * 0.7, "loss": 0.1}
             for d in deltas for basis in ("pca", "random")]
    ax = plot_projections(pd.DataFrame(rows))
    try:
        ax.figure.canvas.draw()
        labelled = [(tick, label.get_text()) for tick, label in zip(ax.get_xticks(), ax.get_xticklabels())]
        assert 100 <= len(deltas) and len(labelled) <= 40
        assert all(text == f"{deltas[int(tick)]:g}" for tick, text in labelled)  # each at its delta's place
        assert list(ax.get_lines()[0].get_xdata()) == list(range(len(deltas)))  # every delta still drawn
        extents = [label.get_window_extent() for label in ax.get_xticklabels()]
        gaps = [b.x1 - a.x1 for a, b in zip(extents, extents[1:])]
        assert min(gaps) >= 0.9 * ax.get_xticklabels()[0].get_fontsize() * ax.figure.dpi / 72
    finally:
        plt.close(ax.figure)


def test_shown_deltas_spread_over_the_list_and_keep_its_ends():
    deltas = [round(0.1 * i, 1) for i in range(1, 11)]
    shown = shown_deltas(list(reversed(deltas)), most=4)
    assert shown == [0.1, 0.4, 0.7, 1.0]
    assert shown_deltas([0.9, 0.5], most=4) == [0.5, 0.9]
    assert shown_deltas(deltas[:4], most=4) == deltas[:4]


def test_the_reconstruction_grid_has_a_row_per_model_and_shows_each_example_upright_and_by_its_own_range(
        tmp_path):
    """Rows: the inputs, the unprojected model, the projected ones; every panel an example of 4×8 pixels (wider
    than high), each example scaled by its own input's range (the second lies far above the first)."""
    rng = np.random.default_rng(0)
    inputs = np.stack([rng.uniform(0, 1, (1, 4, 8)), rng.uniform(10, 20, (1, 4, 8))]).astype(np.float32)
    outputs = {1.0: inputs * 0.9, 0.9: inputs * 0.5, 0.5: inputs * 0.1}
    path = tmp_path / "grid.svg"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text in the file
        save_reconstruction_grid(inputs, outputs, path, title="reconstructions")
    text = path.read_text(encoding="utf-8")
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", text)
    assert labels == ["input", "unprojected", "δ = 0.5", "δ = 0.9", "reconstructions"]
    images = re.findall(r"<image ([^>]*)/>", text)
    assert len(images) == 4 * 2
    for attributes in images:
        width, height = (float(re.search(f' {name}="([0-9.]+)"', attributes).group(1)) for name in ("width", "height"))
        assert width == pytest.approx(2 * height, rel=0.05)  # 8 wide, 4 high
    for attributes in images[:2]:  # the inputs: each spans black to white
        png = base64.b64decode(re.search(r'xlink:href="data:image/png;base64,([^"]*)"', attributes).group(1))
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
        assert pixels.min() <= 5 and pixels.max() >= 250


def _relative(random: bool) -> pd.DataFrame:
    """Relative accuracies of three runs with PCA bases (one of them also at delta 0.7), two with random ones."""
    rows = []
    for run, scale in (("a", 1.0), ("b", 0.9), ("c", 0.8)):
        rows += [{"run": run, "basis": "pca", "delta": d, "relative_accuracy": scale * d} for d in (0.5, 0.9, 0.99)]
        rows += [{"run": run, "basis": "pca", "delta": 0.7, "relative_accuracy": 0.6}] if run == "a" else []
        rows += [{"run": run, "basis": "random", "delta": d, "relative_accuracy": scale * d / 2}
                 for d in (0.5, 0.9, 0.99) if random and run != "c"]
    return pd.DataFrame(rows)


def test_the_relative_accuracy_figure_has_a_panel_per_basis_and_a_box_at_each_deltas_place():
    """Fig. 43: deltas evenly spaced by their rank among all deltas, in every panel; a delta one basis lacks
    leaves its place empty there; the titles count runs, not rows."""
    figure = relative_accuracy_figure(_relative(random=True))
    try:
        pca, random = figure.axes
        assert pca.get_title() == "pca bases (3 runs)" and random.get_title() == "random bases (2 runs)"
        for ax in (pca, random):
            assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "0.7", "0.9", "0.99"]
        dots = [tuple(c.get_offsets()[:, 0]) for c in pca.collections]
        assert dots == [(0.0, 0.0, 0.0), (1.0,), (2.0, 2.0, 2.0), (3.0, 3.0, 3.0)]
        assert list(pca.collections[1].get_offsets()[:, 1]) == [0.6]
        assert [tuple(c.get_offsets()[:, 0]) for c in random.collections] == [(0.0, 0.0), (2.0, 2.0), (3.0, 3.0)]
        assert pca.get_ylabel() == "accuracy relative to the unprojected network"
    finally:
        plt.close(figure)


def test_a_basis_no_run_has_gets_no_panel():
    figure = relative_accuracy_figure(_relative(random=False))
    try:
        [ax] = figure.axes
        assert ax.get_title() == "pca bases (3 runs)"
    finally:
        plt.close(figure)


def test_the_legend_of_a_trained_classifiers_projections_covers_none_of_its_points():
    """At the thesis' deltas a trained classifier's PCA line and its unprojected accuracy lie near 1 at the right,
    where the legend ("best" inside the axes) was drawn over them: no point of any line lies under the legend,
    measured on the rendered figure, and the legend lies beside the axes."""
    from phd_lab.projection_deltas import THESIS_DELTAS

    # the accuracies of the quickstart's VGG11 on Digits after 3 epochs (projections.csv)
    pca = [0.103, 0.103, 0.225, 0.225, 0.306, 0.575, 0.631, 0.711, 0.894, 0.947, 0.95, 0.961, 0.981, 0.981, 0.986,
           0.986, 0.986, 0.986, 0.986, 0.986, 0.983, 0.983, 0.983, 0.983]
    random = [0.103, 0.1, 0.103, 0.1, 0.1, 0.1, 0.103, 0.1, 0.1, 0.164, 0.103, 0.103, 0.1, 0.128, 0.128, 0.1, 0.317,
              0.106, 0.1, 0.158, 0.097, 0.178, 0.175, 0.189]
    rows = [{"delta": 1.0, "basis": "none", "accuracy": 0.983}]
    for delta, on_pca, on_random in zip(THESIS_DELTAS, pca, random, strict=True):
        rows += [{"delta": delta, "basis": "pca", "accuracy": on_pca},
                 {"delta": delta, "basis": "random", "accuracy": on_random}]
    table = pd.DataFrame(rows).assign(loss=0.1)
    ax = plot_projections(table, title="vgg11-Digits-r32-bs64-e3")
    try:
        renderer = ax.figure.canvas.get_renderer()
        ax.figure.draw(renderer)
        legend = ax.get_legend().get_window_extent(renderer)
        for line in ax.get_lines():  # its markers and the segments between them, a point every few pixels
            ends = line.get_transform().transform(line.get_xydata())
            points = [start + (end - start) * part for start, end in zip(ends, ends[1:])
                      for part in np.linspace(0.0, 1.0, 200)]
            reach = max(line.get_markersize(), line.get_linewidth()) / 2 * ax.figure.dpi / 72  # drawn around it
            covered = [tuple(point) for point in points if legend.padded(reach).contains(*point)]
            assert not covered, f"the legend covers {line.get_label()!r} at {len(covered)} points, first {covered[0]}"
        assert not legend.overlaps(ax.get_window_extent(renderer))
    finally:
        plt.close(ax.figure)
