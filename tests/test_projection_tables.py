"""Reading projections.csv tables (phd_lab.analysis.projection_tables): the unprojected row, the projected rows
and relative accuracies, on tables as the project step writes them and as a user or an older version left them."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from phd_lab.analysis.projection_tables import projected_rows, relative_accuracies, unprojected_value

COLUMNS = ["delta", "basis", "accuracy", "loss", "dims_sum", "feature_dims_sum", "saturation_mean"]


def table(*rows: tuple) -> pd.DataFrame:
    """(delta, basis, accuracy, loss) rows with the other columns filled in."""
    return pd.DataFrame([{"delta": delta, "basis": basis, "accuracy": accuracy, "loss": loss, "dims_sum": 10,
                          "feature_dims_sum": 20, "saturation_mean": 0.5} for delta, basis, accuracy, loss in rows],
                        columns=COLUMNS)


def test_the_unprojected_value_is_nan_where_the_table_cannot_say():
    good = table((1.0, "none", 0.8, 0.5), (0.9, "pca", 0.6, 0.9))
    assert unprojected_value(good, "accuracy") == 0.8 and unprojected_value(good, "loss") == 0.5
    assert math.isnan(unprojected_value(table((0.9, "pca", 0.6, 0.9)), "accuracy"))  # no unprojected row
    assert math.isnan(unprojected_value(good.drop(columns="saturation_mean"), "accuracy"))  # another origin's
    assert math.isnan(unprojected_value(table((1.0, "none", float("inf"), 0.5)), "accuracy"))
    assert math.isnan(unprojected_value(table((1.0, "none", "n/a", 0.5)), "accuracy"))


def test_projected_rows_are_the_pca_and_random_rows_as_numbers():
    rows = projected_rows(table((1.0, "none", 0.8, 0.5), (0.9, "pca", "0.6", 0.9), (0.9, "random", 0.2, 1.9),
                                (0.9, "whitened", 0.7, 0.6)))
    assert rows["basis"].tolist() == ["pca", "random"] and rows["accuracy"].tolist() == [0.6, 0.2]
    assert projected_rows(pd.DataFrame({"delta": [0.9], "basis": ["pca"], "acc": [0.6]})).empty


def test_relative_accuracies_leave_out_rows_and_runs_without_a_number():
    tables = {"a": table((1.0, "none", 0.8, 0.5), (0.9, "pca", 0.4, 0.9), (float("nan"), "pca", 0.3, 0.9),
                         (0.95, "random", float("nan"), 0.9)),
              "no accuracy": table((1.0, "none", float("nan"), 0.5), (0.9, "pca", float("nan"), 0.9)),
              "no unprojected row": table((0.9, "pca", 0.4, 0.9)),
              "other columns": pd.DataFrame({"delta": [1.0, 0.9], "basis": ["none", "pca"], "acc": [0.8, 0.4]})}
    relative = relative_accuracies(tables)
    assert relative.values.tolist() == [["a", "pca", 0.9, pytest.approx(0.5)]]
    assert relative_accuracies({}).columns.tolist() == ["run", "basis", "delta", "relative_accuracy"]
