"""The report's figures of repeated runs, read back from the drawn matplotlib figure."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from torch import nn  # noqa: E402

from phd_lab.plots.repetitions import stability_figure  # noqa: E402
from registries.models import resnet50  # noqa: E402


def test_the_stability_figure_of_a_resnet50_names_every_layer_and_no_two_names_touch():
    """A ResNet-50's 54 tracked layers got a name at every second layer only (40 labels at most), so half the
    points of Fig. 44 had no layer: every layer is named, on the x axis as drawn, and neighbouring names (at
    60 degrees) lie further apart, across their slant, than a name is high."""
    model = resnet50(num_classes=100, width=0.125)
    layers = [name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 54
    rng = np.random.default_rng(0)
    runs = {f"seed {seed}": [(layer, float(rng.uniform(0.1, 1.0))) for layer in layers] for seed in range(3)}
    values = np.array([[saturation for _, saturation in pairs] for pairs in runs.values()])
    table = pd.DataFrame({"layer": layers, "min": values.min(0), "max": values.max(0), "mean": values.mean(0)})
    figure = stability_figure(table, runs, "resnet50 / FakeData: saturation per layer")
    try:
        renderer = figure.canvas.get_renderer()
        figure.draw(renderer)
        [ax] = figure.axes
        labels = [label for label in ax.get_xticklabels() if label.get_text()]
        assert [label.get_text() for label in labels] == layers
        assert ax.get_xlabel() == "layer (forward order)"
        rotation = math.radians(labels[0].get_rotation())
        labels[0].set_rotation(0)  # a name's height across its slant: its box's height laid flat
        height = labels[0].get_window_extent(renderer).height
        ticks = ax.transData.transform([(position, 0) for position in ax.get_xticks()])[:, 0]
        assert min(np.diff(ticks)) * math.sin(rotation) > height
    finally:
        plt.close(figure)


def test_the_drop_figure_of_two_runs_that_disagree_keeps_its_accuracy_axis_within_100_percent():
    """Two runs whose projected accuracies disagree (one falls to chance at δ = 0.9, the other keeps most) have a
    95% interval of the mean drop 12.7 standard errors wide each way (t with one degree of freedom): the axis ran
    from -514% 'accuracy lost' to as far above +100%, and the means of every delta lay in a strip of its middle.
    An accuracy neither drops nor rises by more than 100%: the axis ends there, every mean on it, the intervals
    running off."""
    from phd_lab.analysis.repetitions import relevant_eigenspace_table
    from phd_lab.plots.repetitions import eigenspace_figure

    def projections(accuracies):
        return pd.DataFrame([{"delta": 1.0, "basis": "none", "accuracy": 0.95, "loss": 0.2, "dims_sum": 60,
                              "feature_dims_sum": 60, "saturation_mean": 1.0}]
                            + [{"delta": delta, "basis": basis, "accuracy": accuracy, "loss": 0.3, "dims_sum": 30,
                                "feature_dims_sum": 60, "saturation_mean": 0.5}
                               for (delta, basis), accuracy in accuracies.items()])

    table = relevant_eigenspace_table({
        "0": projections({(0.9, "pca"): 0.1, (0.99, "pca"): 0.93, (0.9, "random"): 0.1, (0.99, "random"): 0.12}),
        "1": projections({(0.9, "pca"): 0.9, (0.99, "pca"): 0.94, (0.9, "random"): 0.11, (0.99, "random"): 0.7})})
    assert (table["drop_ci95"] > 1).any()
    figure = eigenspace_figure(table, "vgg11 / Digits 16 px: projected against unprojected")
    try:
        ax = figure.axes[0]
        low, high = ax.get_ylim()
        assert -1.05 <= low and high <= 1.05
        means = np.concatenate([container.lines[0].get_ydata() for container in ax.containers])
        assert len(means) == 4 and ((low < means) & (means < high)).all()
        assert max(ax.get_yticks()[(ax.get_yticks() >= low) & (ax.get_yticks() <= high)]) == 1.0  # '100%' named
    finally:
        plt.close(figure)


def test_the_repetition_figures_wrap_a_long_group_label_inside_the_figure():
    """A group's label names every config value that tells a grid's groups apart: on one line, the title of a grid
    over width, learning rate and weight decay ran past both sides of the figure, and the saved PNG (cropped to
    what it draws) was twice as wide as its axes, the plot at half the size on the report's page. Now the title
    is wrapped at its spaces inside the figure, every word of the label kept."""
    from phd_lab.analysis.repetitions import relevant_eigenspace_table
    from phd_lab.plots.repetitions import eigenspace_figure

    label = ("vgg11 / Digits 16 px · batch_size=64 · model_args.width=0.125 · optimizer=adam · "
             "optimizer_args.lr=0.003 · optimizer_args.weight_decay=0.0005")
    layers = [f"features.{i}" for i in range(8)]
    runs = {seed: [(layer, 0.3 + 0.05 * i + 0.01 * seed) for i, layer in enumerate(layers)] for seed in range(3)}
    values = np.array([[saturation for _, saturation in pairs] for pairs in runs.values()])
    table = pd.DataFrame({"layer": layers, "min": values.min(0), "max": values.max(0), "mean": values.mean(0)})
    rows = [(1.0, "none", 0.95), (0.9, "pca", 0.8), (0.9, "random", 0.2)]
    projections = {seed: pd.DataFrame([{"delta": delta, "basis": basis, "accuracy": accuracy + seed / 50, "loss": 0.3,
                                        "dims_sum": 30, "feature_dims_sum": 60, "saturation_mean": 0.5}
                                       for delta, basis, accuracy in rows]) for seed in range(3)}
    for figure, title in ((stability_figure(table, runs, f"{label}: saturation per layer"),
                           f"{label}: saturation per layer"),
                          (eigenspace_figure(relevant_eigenspace_table(projections), f"{label}: projected"),
                           f"{label}: projected")):
        try:
            renderer = figure.canvas.get_renderer()
            figure.draw(renderer)
            shown = figure.axes[0].title
            extent = shown.get_window_extent(renderer)
            assert figure.bbox.x0 <= extent.x0 and extent.x1 <= figure.bbox.x1, shown.get_text()
            assert shown.get_text().replace("\n", " ") == title
        finally:
            plt.close(figure)
