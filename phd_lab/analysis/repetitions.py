"""Statistics over repetitions: runs of one configuration that differ only in their run_id (seed).

The thesis repeats trainings to tell real effects from the noise of initialisation, shuffling and
augmentation:

* saturation stability (§8.2, Fig. 44): each layer's last-epoch saturation over the repetitions
  (mean, standard deviation, minimum, maximum), beside the spread of their test accuracy;
* relevant eigenspaces (§7.4, Tables 4, 5 and 14–16): for each delta of the ``project`` step, a
  two-tailed paired t-test of the unprojected against the projected accuracy of the same networks,
  with the mean drop μ_diff, its sample standard deviation and the directions kept (Σ dim E_l^k).

Pure functions of tables that were read already; nothing here reads files or draws.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from phd_lab.analysis.projection_tables import BASES, projected_rows, unprojected_value


STABILITY_COLUMNS = ("layer", "position", "n", "mean", "std", "min", "max")
EIGENSPACE_COLUMNS = ("basis", "delta", "n", "measure", "drop_mean", "drop_std", "drop_ci95", "t", "p",
                      "significant", "dims_sum_mean", "dims_sum_std", "feature_dims_sum", "saturation_mean_mean",
                      "saturation_mean_std")


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (n − 1), minimum and maximum of one quantity over n repetitions."""

    n: int
    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        array = np.asarray(values, dtype=np.float64)
        std = float(array.std(ddof=1)) if len(array) > 1 else math.nan
        return cls(len(array), float(array.mean()), std, float(array.min()), float(array.max()))


# ---------------------------------------------------------------------------------------- §8.2
def saturation_stability(runs: Mapping[str, Sequence[tuple[str, float]]]) -> pd.DataFrame:
    """Per layer, in forward order, the spread of its saturation over the runs.

    ``runs`` maps a run's name to its (layer, saturation) pairs in forward order. Layers keep the order
    of the run with the most layers; a layer some runs lack (never called there) is counted over the
    others, and its ``n`` says so. Columns: ``STABILITY_COLUMNS`` (std is the sample standard deviation).
    """
    order: list[str] = []
    for pairs in sorted(runs.values(), key=len, reverse=True):
        order += [layer for layer, _ in pairs if layer not in order]
    values: dict[str, list[float]] = {layer: [] for layer in order}
    for pairs in runs.values():
        for layer, saturation in pairs:
            values[layer].append(float(saturation))
    records = []
    for position, layer in enumerate(order, 1):
        spread = Spread.of(values[layer])
        records.append({"layer": layer, "position": position, "n": spread.n, "mean": spread.mean,
                        "std": spread.std, "min": spread.min, "max": spread.max})
    return pd.DataFrame(records, columns=list(STABILITY_COLUMNS))


# ---------------------------------------------------------------------------------------- §7.4
def projection_measure(tables: Sequence[pd.DataFrame]) -> str:
    """``accuracy`` when an unprojected model of the runs has one, else ``loss``: a model that reconstructs
    its input has no accuracy, and its projections are judged by how much the loss grows. (A classifier run
    whose accuracy cell is damaged is left out of the accuracy's tests, and does not turn them into loss tests.)"""
    return "accuracy" if any(math.isfinite(unprojected_value(t, "accuracy")) for t in tables) else "loss"


def projection_drops(tables: Mapping[str, pd.DataFrame], measure: str) -> pd.DataFrame:
    """One row per run, basis and delta: how much worse the projected network is than the same network
    unprojected (``drop``: accuracy lost, or loss gained), with its kept and total dimensions and s_μ.

    A run without its unprojected row or one of the columns (a table of another origin), or a row whose value
    is no number, contributes nothing there.
    """
    records = []
    for run, table in tables.items():
        reference = unprojected_value(table, measure)
        for row in projected_rows(table).itertuples(index=False):
            value = float(getattr(row, measure))
            drop = reference - value if measure == "accuracy" else value - reference
            if not math.isfinite(drop):
                continue
            records.append({"run": run, "basis": row.basis, "delta": float(row.delta), "drop": drop,
                            "dims_sum": float(row.dims_sum), "feature_dims_sum": float(row.feature_dims_sum),
                            "saturation_mean": float(row.saturation_mean)})
    return pd.DataFrame(records, columns=["run", "basis", "delta", "drop", "dims_sum", "feature_dims_sum",
                                          "saturation_mean"])


def compared_runs(tables: Mapping[str, pd.DataFrame]) -> int:
    """How many runs the t-tests compare: those with the unprojected value of the measure."""
    measure = projection_measure(list(tables.values()))
    return sum(math.isfinite(unprojected_value(table, measure)) for table in tables.values())


def paired_t_test(drops: Sequence[float]) -> tuple[float, float]:
    """Two-tailed one-sample t-test of the paired differences against 0 (= scipy's ``ttest_rel`` of the
    unprojected against the projected values). NaN for fewer than two runs or differences that are all
    equal to 0 (the thesis' δ = 1.0 row); ±inf and p = 0 for equal differences other than 0."""
    from scipy import stats

    array = np.asarray(drops, dtype=np.float64)
    if len(array) < 2 or not array.any():
        return math.nan, math.nan
    if np.all(array == array[0]):  # no spread: the test's statistic is unbounded, not undefined
        return math.copysign(math.inf, float(array[0])), 0.0
    with warnings.catch_warnings():  # nearly equal differences: scipy warns of its precision, the result stands
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.ttest_1samp(array, 0.0)
    return float(result.statistic), float(result.pvalue)


def confidence_half_width(spread: Spread, level: float = 0.95) -> float:
    """Half the width of the t-distribution's confidence interval of the mean (NaN below two runs)."""
    from scipy import stats

    if spread.n < 2 or not math.isfinite(spread.std):
        return math.nan
    return float(stats.t.ppf(0.5 + level / 2, spread.n - 1) * spread.std / math.sqrt(spread.n))


def relevant_eigenspace_table(tables: Mapping[str, pd.DataFrame], alpha: float = 0.05) -> pd.DataFrame:
    """Per basis and delta (largest first, as the thesis' tables): the paired t-test of the projected
    networks against the unprojected ones over the runs in ``tables`` (run name → its projections.csv).

    ``drop_mean`` is the thesis' μ_diff (positive: the projection costs accuracy), ``drop_std`` its
    σ_sample (n − 1), ``drop_ci95`` the half width of its 95% confidence interval (what a test of few runs
    cannot tell from 0); ``significant`` is p < ``alpha``. Columns: ``EIGENSPACE_COLUMNS``.
    """
    measure = projection_measure(list(tables.values()))
    drops = projection_drops(tables, measure)
    records = []
    for (basis, delta), rows in drops.groupby(["basis", "delta"], sort=False):
        t, p = paired_t_test(rows["drop"].tolist())
        drop, dims, saturation = Spread.of(rows["drop"]), Spread.of(rows["dims_sum"]), \
            Spread.of(rows["saturation_mean"])
        records.append({"basis": basis, "delta": delta, "n": drop.n, "measure": measure,
                        "drop_mean": drop.mean, "drop_std": drop.std, "drop_ci95": confidence_half_width(drop),
                        "t": t, "p": p,
                        "significant": bool(p < alpha), "dims_sum_mean": dims.mean, "dims_sum_std": dims.std,
                        "feature_dims_sum": float(rows["feature_dims_sum"].max()),
                        "saturation_mean_mean": saturation.mean, "saturation_mean_std": saturation.std})
    table = pd.DataFrame(records, columns=list(EIGENSPACE_COLUMNS))
    table["basis_order"] = table["basis"].map({basis: i for i, basis in enumerate(BASES)})
    return table.sort_values(["basis_order", "delta"], ascending=[True, False]) \
        .drop(columns="basis_order").reset_index(drop=True)


def relevant_delta(table: pd.DataFrame) -> float | None:
    """The smallest delta of the PCA bases from which on no tested delta differs significantly from the
    unprojected networks: the relevant eigenspace with the fewest directions that the tests support.

    None when the largest tested delta already differs, or no delta was tested on two runs or more. (The
    thesis names the δ of Table 5 with the largest p, 0.9998; the same table's 0.9991 passes this rule.)
    """
    pca = table[(table["basis"] == "pca") & (table["n"] >= 2)].sort_values("delta", ascending=False)
    found = None
    for row in pca.itertuples(index=False):
        if row.significant:
            break
        found = float(row.delta)
    return found
