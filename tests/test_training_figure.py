"""The report's figure of a run's training (appendix B): saturation per layer and epoch from the metrics CSV,
embedded once per run with two epochs or more, and taken from the previous page while the CSV is unchanged."""

import shutil

import numpy as np
import pandas as pd
import pytest

from phd_lab.analysis.run_summary import saturation_history
from phd_lab.report.cli import write_report
from tests.conftest import write_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny VGG trained for three epochs with saturation tracking, and one for a single epoch."""
    from phd_lab.cli import main_cli
    folder = tmp_path_factory.mktemp("training")
    config = write_config(folder, epoch=[1, 3])
    assert main_cli(["--config", str(config)]) == 0
    return folder / "logs"


def _metrics(logs, epochs):
    config = next(p for p in logs.rglob("*_config.json") if f"-e{epochs}" in p.name)
    return config.parent / config.name.replace("_config.json", ".csv")


def test_history_is_the_metrics_csv_per_epoch_and_layer_in_forward_order(trained, tmp_path):
    metrics = pd.read_csv(_metrics(trained, 3))
    history = saturation_history(metrics, "test")
    columns = [c for c in metrics.columns if c.endswith("_test_saturation")]
    assert list(history.columns) == [c[:-len("_test_saturation")] for c in columns]
    assert list(history.index) == [1, 2, 3]
    np.testing.assert_array_equal(history.to_numpy(), metrics[columns].to_numpy())
    # a row written again for an epoch (the last one counts), rows out of order, a damaged and a negative cell
    shuffled = pd.concat([metrics.iloc[[2, 0]], metrics.iloc[[1]].assign(**{columns[0]: 0.5}), metrics.iloc[[1]]])
    shuffled[columns[1]] = shuffled[columns[1]].astype(object)  # as a damaged CSV cell reads
    shuffled.iloc[0, shuffled.columns.get_loc(columns[1])] = "x"
    shuffled.iloc[1, shuffled.columns.get_loc(columns[2])] = -0.5
    again = saturation_history(shuffled, "test")
    assert list(again.index) == [1, 2, 3] and again.loc[2, history.columns[0]] == history.loc[2, history.columns[0]]
    assert np.isnan(again.loc[3, history.columns[1]]) and np.isnan(again.loc[1, history.columns[2]])
    assert saturation_history(metrics.drop(columns=columns + [c.replace("test", "train") for c in columns]),
                              "test") is None


def _analysis(folder):
    from phd_lab.analysis.run_tables import load_run, run_folder
    from phd_lab.analysis.run_summary import summarize
    tables = load_run(run_folder(folder))
    return tables, summarize(tables)


def test_the_run_figure_shows_each_layers_saturation_per_epoch_above_its_bars(trained):
    """Appendix B (Figs. 66-68): the pattern's evolution, column by column above the layers' last-epoch bars."""
    import matplotlib.pyplot as plt

    from phd_lab.plots.run_figure import draw_run_figure, layer_order
    tables, summary = _analysis(_metrics(trained, 3).parent)
    figure = draw_run_figure(tables, summary)
    try:
        heat = figure.axes[0]
        grid = np.asarray(heat.images[0].get_array())
        history = saturation_history(tables.metrics, summary["settings"]["analysis_split"])
        order = layer_order(tables, summary)
        assert grid.shape == (3, len(order))
        for layer in history.columns:
            np.testing.assert_array_equal(grid[:, order.index(layer)], history[layer].to_numpy())
        assert heat.get_xlim() == figure.axes[1].get_xlim()  # one column per layer of the panel below
    finally:
        plt.close(figure)
    tables, summary = _analysis(_metrics(trained, 1).parent)
    figure = draw_run_figure(tables, summary)
    try:
        assert not any(ax.images for ax in figure.axes)  # one epoch: nothing evolved
    finally:
        plt.close(figure)


def test_damaged_cells_leave_the_report_standing(trained, tmp_path):
    """A hand-edited epoch cell (the history leaves that row out) and deltas that are no numbers (Fig. 43 leaves
    them out) must not take the report down: the previous code reported such runs."""
    logs = tmp_path / "logs"
    shutil.copytree(trained, logs)
    metrics_csv = _metrics(logs, 3)
    lines = metrics_csv.read_text().splitlines(keepends=True)
    lines[2] = "x" + lines[2][lines[2].index(","):]
    metrics_csv.write_text("".join(lines))
    projections = metrics_csv.parent / "projections.csv"
    pd.DataFrame([{"delta": 1.0, "basis": "none", "accuracy": 0.9, "loss": 0.3, "dims_sum": 10,
                   "feature_dims_sum": 10, "saturation_mean": 1.0},
                  {"delta": "90%", "basis": "pca", "accuracy": 0.5, "loss": 0.9, "dims_sum": 5,
                   "feature_dims_sum": 10, "saturation_mean": 0.5}]).to_csv(projections, index=False)
    page = write_report(logs)
    assert "analysis figure of vgg11-Digits-r16-bs128-e3" in page.read_text(encoding="utf-8")
