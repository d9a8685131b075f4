"""Reading a run's ``projections.csv`` (written by the ``project`` step): which rows compare with which.

Every table holds one row of the unprojected model (basis ``none``, delta 1.0) and a row per basis (``pca``,
``random``) and delta. What the thesis compares is always a projected row against the unprojected row of the
same network: its difference (§7.4's t-tests) or its ratio (§7.3's relative accuracy, Fig. 43).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd

UNPROJECTED = "none"  # the basis of the unprojected model's row
BASES = ("pca", "random")
COLUMNS = frozenset({"delta", "basis", "accuracy", "loss", "dims_sum", "feature_dims_sum", "saturation_mean"})


def unprojected_value(table: pd.DataFrame, measure: str) -> float:
    """The unprojected network's ``measure`` (accuracy or loss); NaN when the table cannot say (another
    origin's columns, no unprojected row, no number there)."""
    if not COLUMNS <= set(table.columns):
        return math.nan
    unprojected = table[table["basis"] == UNPROJECTED]
    if unprojected.empty:
        return math.nan
    value = float(pd.to_numeric(unprojected[measure], errors="coerce").iloc[0])
    return value if math.isfinite(value) else math.nan


def projected_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of projected networks (every basis but the unprojected one), numbers as floats."""
    if not COLUMNS <= set(table.columns):
        return pd.DataFrame(columns=sorted(COLUMNS))
    rows = table[table["basis"].isin(BASES)].copy()
    for column in COLUMNS - {"basis"}:
        rows[column] = pd.to_numeric(rows[column], errors="coerce")
    return rows


def relative_accuracies(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per run, basis and delta the projected network's accuracy divided by the unprojected one's (§7.3.1:
    "relative accuracy", which makes networks of very different accuracy comparable). Runs without an
    accuracy (a model that reconstructs its input) or with an unprojected accuracy of 0, and rows whose delta
    or accuracy is no number, are left out.
    Columns: run, basis, delta, relative_accuracy."""
    records = []
    for run, table in tables.items():
        reference = unprojected_value(table, "accuracy")
        if not reference > 0:  # NaN too
            continue
        for row in projected_rows(table).itertuples(index=False):
            if np.isfinite(row.accuracy) and np.isfinite(row.delta):
                records.append({"run": run, "basis": row.basis, "delta": float(row.delta),
                                "relative_accuracy": float(row.accuracy) / reference})
    return pd.DataFrame(records, columns=["run", "basis", "delta", "relative_accuracy"])
