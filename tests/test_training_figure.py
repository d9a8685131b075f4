"""The report's figure of a run's training (appendix B): saturation per layer and epoch from the metrics CSV,
embedded once per run with two epochs or more, and taken from the previous page while the CSV is unchanged."""

import base64
import re
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


def _training_images(text):
    return re.findall(r'<img data-key="([0-9a-f]{32})" alt="Saturation during training of ([^"]*)" '
                      r'src="data:image/png;base64,([^"]+)"', text)


def test_the_report_shows_the_training_of_each_run_with_two_epochs_or_more(trained, tmp_path):
    logs = tmp_path / "logs"
    shutil.copytree(trained, logs)
    page = write_report(logs)
    first = _training_images(page.read_text(encoding="utf-8"))
    assert [name for _, name, _ in first] == ["vgg11-Digits-r16-bs128-e3"]  # the one-epoch run has none
    assert base64.b64decode(first[0][2])[:8] == b"\x89PNG\r\n\x1a\n"
    # unchanged: taken from the previous page (a marker put there survives); a new epoch row: drawn anew
    marker = base64.b64encode(b"\x89PNG\r\n\x1a\n marker").decode()
    page.write_text(page.read_text(encoding="utf-8").replace(first[0][2], marker), encoding="utf-8")
    assert _training_images(write_report(logs).read_text(encoding="utf-8"))[0][2] == marker
    metrics_csv = _metrics(logs, 3)
    metrics = pd.read_csv(metrics_csv)
    metrics.loc[metrics.index[-1], "test_loss"] = 0.25
    metrics.to_csv(metrics_csv, index=False)
    redrawn = _training_images(write_report(logs).read_text(encoding="utf-8"))
    assert redrawn[0][0] != first[0][0] and redrawn[0][2] != marker
