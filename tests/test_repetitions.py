"""Statistics over repeated runs (§7.4's t-tests of projected networks, §8.2's saturation stability): the pure
computation against scipy and numpy, and the report's section and tables on a real grid of repeated trainings."""

import base64
import json
import logging
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from phd_lab.analysis.projection_tables import relative_accuracies
from phd_lab.analysis.repetitions import (paired_t_test, relevant_delta, relevant_eigenspace_table,
                                          saturation_stability)
from phd_lab.report.cli import main_report, write_report
from tests.conftest import write_config


def projections(unprojected, rows, measure="accuracy"):
    """A projections.csv table: the unprojected row and (basis, delta, value, dims) rows."""
    records = [{"delta": 1.0, "basis": "none", "accuracy": math.nan, "loss": math.nan, "dims_sum": 60,
                "feature_dims_sum": 60, "saturation_mean": 1.0}]
    records[0][measure] = unprojected
    for basis, delta, value, dims in rows:
        record = {"delta": delta, "basis": basis, "accuracy": math.nan, "loss": math.nan, "dims_sum": dims,
                  "feature_dims_sum": 60, "saturation_mean": dims / 60}
        record[measure] = value
        records.append(record)
    return pd.DataFrame(records)


def test_t_tests_equal_scipys_paired_test_of_unprojected_against_projected_accuracy():
    rng = np.random.default_rng(3)
    unprojected = rng.uniform(0.85, 0.9, size=6)
    projected = {0.99: unprojected - rng.normal(0.02, 0.01, 6), 0.9: unprojected - rng.normal(0.3, 0.05, 6)}
    dims = {0.99: [40, 41, 39, 42, 40, 38], 0.9: [12, 13, 12, 11, 14, 12]}
    tables = {f"run{i}": projections(unprojected[i], [("pca", d, projected[d][i], dims[d][i]) for d in projected]
                                     + [("random", 0.99, 0.1 + i / 100, dims[0.99][i])])
              for i in range(6)}
    table = relevant_eigenspace_table(tables, alpha=0.05)
    assert table[["basis", "delta"]].values.tolist() == [["pca", 0.99], ["pca", 0.9], ["random", 0.99]]
    for row in table.itertuples():
        values = projected[row.delta] if row.basis == "pca" else np.array([0.1 + i / 100 for i in range(6)])
        expected = stats.ttest_rel(unprojected, values)
        assert row.t == pytest.approx(expected.statistic, rel=1e-12)
        assert row.p == pytest.approx(expected.pvalue, rel=1e-12)
        assert row.drop_mean == pytest.approx((unprojected - values).mean(), rel=1e-12)
        assert row.drop_std == pytest.approx((unprojected - values).std(ddof=1), rel=1e-12)
        interval = stats.t.interval(0.95, 5, loc=row.drop_mean, scale=stats.sem(unprojected - values))
        assert row.drop_ci95 == pytest.approx((interval[1] - interval[0]) / 2, rel=1e-9)
        assert row.n == 6 and row.measure == "accuracy" and row.significant == (expected.pvalue < 0.05)
    pca_99 = table.iloc[0]
    assert pca_99.dims_sum_mean == pytest.approx(np.mean(dims[0.99]))
    assert pca_99.dims_sum_std == pytest.approx(np.std(dims[0.99], ddof=1))
    assert pca_99.feature_dims_sum == 60
    assert pca_99.saturation_mean_mean == pytest.approx(np.mean(dims[0.99]) / 60)


def test_a_reconstruction_model_is_judged_by_the_loss_it_gains():
    tables = {"a": projections(0.010, [("pca", 0.9, 0.050, 5)], measure="loss"),
              "b": projections(0.012, [("pca", 0.9, 0.041, 5)], measure="loss"),
              "c": projections(0.011, [("pca", 0.9, 0.060, 6)], measure="loss")}
    row = relevant_eigenspace_table(tables).iloc[0]
    assert row.measure == "loss"
    assert row.drop_mean == pytest.approx(np.mean([0.040, 0.029, 0.049]))
    assert row.t > 0


def test_degenerate_differences_and_too_few_runs():
    assert all(math.isnan(v) for v in paired_t_test([0.0, 0.0, 0.0]))  # the thesis' δ = 1.0 row: nan, nan
    assert paired_t_test([0.01, 0.01, 0.01]) == (math.inf, 0.0)  # no spread, not zero: unbounded t
    assert paired_t_test([-0.02, -0.02]) == (-math.inf, 0.0)
    assert all(math.isnan(v) for v in paired_t_test([0.3]))
    tables = {"a": projections(0.9, [("pca", 1.0, 0.9, 60)]), "b": projections(0.8, [("pca", 1.0, 0.8, 60)])}
    row = relevant_eigenspace_table(tables).iloc[0]
    assert math.isnan(row.t) and math.isnan(row.p) and not row.significant and row.drop_mean == 0.0


def test_relevant_delta_is_the_smallest_delta_from_which_on_nothing_differs():
    def table(rows):
        return pd.DataFrame([{"basis": b, "delta": d, "n": n, "significant": s} for b, d, n, s in rows])

    rows = [("pca", 0.9999, 5, False), ("pca", 0.9998, 5, False), ("pca", 0.9997, 5, True),
            ("pca", 0.999, 5, False), ("random", 0.999, 5, False)]
    assert relevant_delta(table(rows)) == 0.9998  # 0.999 is indistinguishable too, but 0.9997 between is not
    assert relevant_delta(table([("pca", 0.9999, 5, True), ("pca", 0.99, 5, False)])) is None
    assert relevant_delta(table([("pca", 0.99, 1, False)])) is None  # one run tests nothing
    assert relevant_delta(table([("pca", 0.999, 1, True), ("pca", 0.99, 4, False)])) == 0.99
    assert relevant_delta(table(rows[::-1])) == 0.9998  # read from the largest delta down, in whatever row order


def test_saturation_stability_per_layer_in_forward_order():
    runs = {"a": [("conv1", 0.5), ("conv2", 0.25), ("fc", 0.75)],
            "b": [("conv1", 0.7), ("conv2", 0.35)],  # fc never called here: counted over the others
            "c": [("conv1", 0.6), ("conv2", 0.30), ("fc", 0.65)]}
    table = saturation_stability(runs)
    assert table["layer"].tolist() == ["conv1", "conv2", "fc"] and table["position"].tolist() == [1, 2, 3]
    assert table["n"].tolist() == [3, 3, 2]
    assert table["mean"].tolist() == pytest.approx([0.6, 0.3, 0.7])
    assert table["std"].tolist() == pytest.approx([np.std([0.5, 0.7, 0.6], ddof=1), np.std([0.25, 0.35, 0.3], ddof=1),
                                                   np.std([0.75, 0.65], ddof=1)])
    assert table["min"].tolist() == [0.5, 0.25, 0.65] and table["max"].tolist() == [0.7, 0.35, 0.75]
    # the order of the run with the most layers, whichever run comes first
    table = saturation_stability({"short": [("conv1", 0.5), ("fc", 0.7)], "long": [("conv1", 0.6), ("conv2", 0.3),
                                                                                   ("fc", 0.8)]})
    assert table["layer"].tolist() == ["conv1", "conv2", "fc"] and table["n"].tolist() == [2, 1, 2]


def test_significant_means_p_below_alpha():
    tables = {f"run{i}": projections(0.9, [("pca", 0.99, 0.9 - drop, 40)]) for i, drop in enumerate([0.01, 0.03, 0.02])}
    p = relevant_eigenspace_table(tables).iloc[0].p
    assert 0 < p < 1
    assert not relevant_eigenspace_table(tables, alpha=p).iloc[0].significant
    assert relevant_eigenspace_table(tables, alpha=math.nextafter(p, 1.0)).iloc[0].significant


def test_the_projection_figure_shows_tested_deltas_in_order_and_names_its_measure():
    import matplotlib.pyplot as plt
    from phd_lab.plots.repetitions import eigenspace_figure
    rows = [("pca", 0.99, 3, 0.02, True), ("pca", 0.999, 1, 0.0, False), ("pca", 0.9, 3, 0.2, True),
            ("random", 0.99, 3, 0.3, True), ("random", 0.9, 3, 0.5, True)]
    table = pd.DataFrame([{"basis": b, "delta": d, "n": n, "measure": "loss", "drop_mean": m, "drop_ci95": 0.01,
                           "significant": s, "dims_sum_mean": 10 * d} for b, d, n, m, s in rows])
    fig = eigenspace_figure(table, "title")
    try:
        ax = fig.axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0.9", "0.99"]  # 0.999: a single run, untested
        assert ax.get_ylabel() == "loss gained (projected − unprojected)"
        for container, means in zip(ax.containers, ([0.2, 0.02], [0.5, 0.3])):  # pca, random: δ ascending
            assert container.lines[0].get_xdata().tolist() == [0, 1]
            assert container.lines[0].get_ydata().tolist() == means
    finally:
        plt.close(fig)


def test_the_projection_figures_bases_differ_by_more_than_hue():
    """The PCA and the random bases' drops were solid lines with round dots, told apart by colour only (one kind of
    line in grayscale or to a colour-blind reader): random is dashed with square markers now, in the legend too,
    and its filled (significant) and hollow dots are squares."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from phd_lab.plots.repetitions import eigenspace_figure
    rows = [("pca", 0.9, 0.2, False), ("pca", 0.99, 0.02, True), ("random", 0.9, 0.5, False),
            ("random", 0.99, 0.3, True)]
    table = pd.DataFrame([{"basis": b, "delta": d, "n": 3, "measure": "accuracy", "drop_mean": m, "drop_ci95": 0.01,
                           "significant": s, "dims_sum_mean": 10 * d} for b, d, m, s in rows])
    fig = eigenspace_figure(table, "title")
    try:
        ax = fig.axes[0]
        pca, random = (container.lines[0] for container in ax.containers)
        assert (pca.get_linestyle(), pca.get_marker()) == ("-", "o")
        assert (random.get_linestyle(), random.get_marker()) == ("--", "s")
        corners = [len(dots.get_paths()[0].vertices) for dots in ax.collections if len(dots.get_offsets())
                   and dots.get_paths()[0].vertices.shape[0] > 2]  # the dots, not the error bars
        assert len(corners) == 4 and corners[:2] == [corners[0]] * 2 and corners[2:] == [5, 5]  # squares
        assert corners[0] > 5  # circles
        shown = {}  # the legend's entries by colour: their line styles, their markers (an error bar's caps left out)
        for line in ax.get_legend().findobj(Line2D):
            styles, markers = shown.setdefault(line.get_color(), (set(), set()))
            styles.add(line.get_linestyle())
            markers.add(line.get_marker())
        assert shown[pca.get_color()] == ({"-", "None"}, {"_", "none", "o"})
        assert shown[random.get_color()] == ({"--", "None"}, {"_", "none", "s"})
    finally:
        plt.close(fig)


def test_the_projection_figure_legend_lies_outside_the_axes_where_no_line_crosses_it():
    """The right axis' line of kept directions is drawn after the left axes and their legend, which "best" placed
    by the drops alone: on the drops of a real grid (three VGG11 on Digits) the dotted line ran across its text."""
    import matplotlib.pyplot as plt
    from phd_lab.plots.repetitions import eigenspace_figure
    rows = [("pca", 0.5, 0.53, 35), ("pca", 0.9, 0.48, 200), ("pca", 0.95, 0.39, 265), ("pca", 0.99, 0.16, 350),
            ("random", 0.5, 0.53, 35), ("random", 0.9, 0.53, 200), ("random", 0.95, 0.5, 265),
            ("random", 0.99, 0.53, 350)]
    table = pd.DataFrame([{"basis": b, "delta": d, "n": 3, "measure": "accuracy", "drop_mean": m, "drop_ci95": 0.2,
                           "significant": True, "dims_sum_mean": k} for b, d, m, k in rows])
    fig = eigenspace_figure(table, "vgg11 / Digits 32 px: projected against unprojected")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax, right = fig.axes
        legend = ax.get_legend()
        box, frame, title = (a.get_window_extent(renderer) for a in (legend, ax, ax.title))
        [dims] = right.get_lines()
        corners = dims.get_transform().transform(np.c_[dims.get_xdata(), dims.get_ydata()])
        along = [a + (b - a) * f for a, b in zip(corners, corners[1:]) for f in np.linspace(0, 1, 50)]
        assert not any(box.contains(x, y) for x, y in along)
        assert box.y0 >= frame.y1 - 1 and title.y0 >= box.y1 - 1  # between the axes and the title
        assert [t.get_text() for t in legend.get_texts()] == ["pca basis", "random basis",
                                                               "PCA directions kept (right axis)"]
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------- a real grid
@pytest.fixture(scope="module")
def repeated_grid(tmp_path_factory):
    """Three repetitions of two widths of a tiny VGG on Digits, trained with saturation tracking and
    projected at four deltas (two groups of three runs)."""
    folder = tmp_path_factory.mktemp("repeated")
    config = write_config(folder, seed=None, run_id=["0", "1", "2"], model_args={"width": [0.0625, 0.125]},
                          post_processing=[{"name": "project", "deltas": [0.5, 0.9, 0.99, 0.999]}])
    from phd_lab.cli import main_cli
    assert main_cli(["--config", str(config)]) == 0
    return folder / "logs"


@pytest.fixture(scope="module")
def reported_grid(repeated_grid, tmp_path_factory):
    """The repeated grid with a report written once: its runs' analysis.png and the page's figures are there, so a
    test's report draws only what its edit changed (the first report draws 6 run figures, about 3 s)."""
    logs = tmp_path_factory.mktemp("reported") / "logs"
    shutil.copytree(repeated_grid, logs)
    write_report(logs)
    return logs


def _runs(logs):
    """Each run folder's logged config and its tables."""
    runs = []
    for path in sorted(logs.glob("vgg11/Digits_16/*/*/*_config.json")):
        config = json.loads(path.read_text())
        folder = path.parent
        metrics = pd.read_csv(next(p for p in folder.glob("*.csv") if p.name == path.name.replace("_config.json",
                                                                                                  ".csv")))
        runs.append((config, folder, metrics, pd.read_csv(folder / "projections.csv")))
    return runs


def test_the_report_tests_each_group_of_repeated_runs(reported_grid):
    logs = reported_grid  # read only: the page and tables its fixture's report wrote over the trained grid
    page = logs / "report.html"
    eigenspace = pd.read_csv(logs / "report_relevant_eigenspace.csv")
    stability = pd.read_csv(logs / "report_saturation_stability.csv")
    runs = _runs(logs)
    assert len(runs) == 6
    for width in (0.0625, 0.125):
        members = [r for r in runs if r[0]["model_args"]["width"] == width]
        assert len({r[0]["seed"] for r in members}) == 3  # repetitions: another seed each
        label = f"vgg11 / Digits 16 px · model_args.width={width}"
        rows = eigenspace[eigenspace["group"] == label]
        assert len(rows) == 8 and set(rows["n"]) == {3}  # 4 deltas × (pca, random)
        for row in rows.itertuples():
            unprojected = [float(p.loc[p["basis"] == "none", "accuracy"].iloc[0]) for *_, p in members]
            projected = [float(p.loc[(p["basis"] == row.basis) & (p["delta"] == row.delta), "accuracy"].iloc[0])
                         for *_, p in members]
            expected = stats.ttest_rel(unprojected, projected)
            if np.isnan(expected.pvalue):
                assert np.isnan(row.p)
            else:
                assert row.t == pytest.approx(expected.statistic) and row.p == pytest.approx(expected.pvalue)
            assert row.alpha == 0.05 and row.significant == (row.p < 0.05)
        layers = stability[stability["group"] == label]
        last = [m.sort_values("epoch").iloc[-1] for _, _, m, _ in members]
        assert layers["layer"].tolist()[0] == "features.0" and len(layers) == 10 and set(layers["runs"]) == {3}
        widest = layers.loc[layers["std"].idxmax()]
        accuracies = [float(m["test_accuracy"]) for m in last]
        assert (f"Saturation over 3 finished runs: the largest standard deviation is {widest['std']:.1%} "
                f"({widest['layer']}), the median over layers {layers['std'].median():.1%}; test accuracy "
                f"{np.mean(accuracies):.1%} ± {np.std(accuracies, ddof=1):.1%}.") in page.read_text(encoding="utf-8")
        for row in layers.itertuples():
            values = [float(m[f"{row.layer}_train_saturation"]) for m in last]
            assert row.n == 3 and row.mean == pytest.approx(np.mean(values))
            assert row.std == pytest.approx(np.std(values, ddof=1), abs=1e-12)
            assert row.min == min(values) and row.max == max(values)
    text = page.read_text(encoding="utf-8")
    assert text.count('class="run repeated"') == 2 and '<a href="#repetitions">' in text
    assert "report_relevant_eigenspace.csv" in text and "report_saturation_stability.csv" in text
    assert text.count('alt="Saturation over the repetitions of') == 2
    assert text.count('alt="Projections over the repetitions of') == 2
    assert text.count('alt="Accuracy of the projected networks relative to the unprojected ones"') == 1
    assert text.count("With 3 runs the tests miss all but large differences") == text.count("Relevant eigenspace: from")


def test_alpha_is_the_users_choice_and_bad_values_are_refused(reported_grid, tmp_path, capsys):
    logs = tmp_path / "logs"
    shutil.copytree(reported_grid, logs)
    assert main_report([str(logs), "--alpha", "0.01", "--no-progress"]) == 0
    strict = pd.read_csv(logs / "report_relevant_eigenspace.csv")
    assert set(strict["alpha"]) == {0.01} and (strict["significant"] == (strict["p"] < 0.01)).all()
    before = (logs / "report.html").read_bytes()
    for bad in ("1.5", "0", "-0.1"):
        assert main_report([str(logs), "--alpha", bad, "--no-progress"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"--alpha {float(bad):g} is no significance level" in err and "Traceback" not in err
    assert (logs / "report.html").read_bytes() == before


def test_a_foreign_file_in_the_tables_place_is_never_replaced(repeated_grid, tmp_path, capsys):
    logs = tmp_path / "logs"
    shutil.copytree(repeated_grid, logs)
    foreign = logs / "report_saturation_stability.csv"
    foreign.write_text("epoch,loss\n1,0.5\n")
    assert main_report([str(logs), "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "report_saturation_stability.csv" in err and "is no table of a phd-lab report" in err
    assert foreign.read_text() == "epoch,loss\n1,0.5\n" and not (logs / "report.html").exists()


def test_a_page_whose_name_shares_another_pages_stem_is_refused(reported_grid, tmp_path, capsys):
    """The tables are named after the page's stem: a report written to r.htm beside r.html removed r.html's
    tables (or replaced them with other runs' statistics), and r.html's links broke, with exit status 0."""
    logs = tmp_path / "logs"
    shutil.copytree(reported_grid, logs)
    assert main_report([str(logs), "--out", str(tmp_path / "r.html"), "--no-progress"]) == 0
    tables = {path: path.read_bytes() for path in tmp_path.glob("r_*.csv")}
    assert len(tables) == 2
    assert main_report([str(logs), "--out", str(tmp_path / "r.htm"), "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"the report page {str(tmp_path / 'r.html')!r} beside it has the same name before its suffix" in err
    assert "r_saturation_stability.csv" in err and "Traceback" not in err
    assert {path: path.read_bytes() for path in tmp_path.glob("r_*.csv")} == tables
    assert not (tmp_path / "r.htm").exists()
    assert main_report([str(logs), "--out", str(tmp_path / "r.html"), "--no-progress"]) == 0  # its own page


def test_tables_of_groups_that_are_gone_are_removed(reported_grid, tmp_path):
    logs = tmp_path / "logs"
    shutil.copytree(reported_grid, logs)
    assert (logs / "report_relevant_eigenspace.csv").is_file()  # written by the fixture's report
    for folder in sorted(logs.glob("vgg11/Digits_16/[12]")):  # one run of each width is left: nothing repeats
        shutil.rmtree(folder)
    text = write_report(logs).read_text(encoding="utf-8")
    assert not (logs / "report_relevant_eigenspace.csv").exists()
    assert not (logs / "report_saturation_stability.csv").exists()
    assert 'id="repetitions"' not in text


def test_tables_without_an_unprojected_row_or_columns_are_left_out():
    """Hand-made or damaged projection tables: a run contributes only what it can be compared with."""
    tables = {"a": projections(0.9, [("pca", 0.99, 0.85, 40)]), "b": projections(0.8, [("pca", 0.99, 0.78, 42)]),
              "no reference": projections(0.9, [("pca", 0.99, 0.1, 40)]).iloc[1:],
              "other columns": pd.DataFrame({"delta": [1.0, 0.99], "basis": ["none", "pca"], "acc": [0.9, 0.2]})}
    row = relevant_eigenspace_table(tables).iloc[0]
    assert row.n == 2 and row.measure == "accuracy" and row.drop_mean == pytest.approx(0.035)


def test_relative_accuracy_divides_by_the_same_networks_unprojected_accuracy():
    """§7.3.1's measure for Fig. 43; a reconstruction model (no accuracy) and an unprojected accuracy of 0 have
    no relative accuracy."""
    tables = {"a": projections(0.8, [("pca", 0.99, 0.6, 40), ("random", 0.99, 0.2, 40)]),
              "b": projections(0.5, [("pca", 0.99, 0.5, 41)]),
              "autoencoder": projections(0.01, [("pca", 0.99, 0.02, 4)], measure="loss"),
              "untrained": projections(0.0, [("pca", 0.99, 0.1, 4)])}
    relative = relative_accuracies(tables)
    assert relative[["run", "basis", "delta"]].values.tolist() == [["a", "pca", 0.99], ["a", "random", 0.99],
                                                                  ["b", "pca", 0.99]]
    assert relative["relative_accuracy"].tolist() == pytest.approx([0.6 / 0.8, 0.2 / 0.8, 1.0], rel=1e-15)


def _edit_config(folder, change):
    path = next(folder.glob("*_config.json"))
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def _seed_of(folder):
    return json.loads(next(folder.glob("*_config.json")).read_text())["seed"]


def _first_width_runs(logs):
    return [path.parent for path in sorted(logs.glob("vgg11/Digits_16/*/*/*_config.json"))
            if json.loads(path.read_text())["model_args"]["width"] == 0.0625]


@pytest.mark.parametrize("case", ["seed sweep", "same seed", "other projection", "not projected", "older config",
                                  "damaged accuracy", "download", "workers", "other split", "unfinished",
                                  "same seed after an unfinished run"])
def test_which_runs_count_as_repetitions(reported_grid, tmp_path, case, caplog):
    """Runs are repetitions when only their seed differs; each seed counts once; a run projected otherwise or not
    at all is a repetition, left out of the t-tests; a key an older version did not log is its default, and one
    that is no part of a run's identity (download) does not count, while num_workers other than 0 does (random
    augmentations depend on it); a damaged cell loses only that run."""
    logs = tmp_path / "logs"
    shutil.copytree(reported_grid, logs)
    first, second, third = _first_width_runs(logs)
    expected_n, label = 3, "vgg11 / Digits 16 px · model_args.width=0.0625"
    if case == "seed sweep":  # "seed": [..] with one run_id: the runs share name and run_id, not their folder
        for folder in (first, second, third):
            _edit_config(folder, lambda c: c.update(run_id="0"))
    elif case == "same seed":
        seed = _seed_of(first)
        _edit_config(second, lambda c: c.update(seed=seed))
        expected_n = 2
    elif case == "other projection":
        _edit_config(third, lambda c: c["post_processing"][0].update(centered=True))
    elif case == "not projected":
        _edit_config(third, lambda c: c.update(post_processing=[]))
        (third / "projections.csv").unlink()
    elif case == "download":
        _edit_config(third, lambda c: c["dataset_args"].update(download=True))
    elif case == "workers":
        seed = _seed_of(first)
        _edit_config(second, lambda c: c.update(seed=seed, num_workers=2))  # another sample order: another run
        expected_n = 2
    elif case == "older config":
        _edit_config(third, lambda c: c.pop("tracking_mode"))
    elif case == "other split":  # saturations of another pass: another analysis, no repetition
        _edit_config(third, lambda c: c.update(analysis_split="test"))
        expected_n = 2
    elif case == "unfinished":  # stopped after its first epoch: its saturations are no last epoch's
        metrics_csv = third / next(third.glob("*_config.json")).name.replace("_config.json", ".csv")
        pd.read_csv(metrics_csv).iloc[:1].to_csv(metrics_csv, index=False)
    elif case == "same seed after an unfinished run":  # its rerun under another run_id counts, not it (was neither)
        metrics_csv = first / next(first.glob("*_config.json")).name.replace("_config.json", ".csv")
        pd.read_csv(metrics_csv).iloc[:1].to_csv(metrics_csv, index=False)
        (first / "projections.csv").unlink()
        seed = _seed_of(first)
        _edit_config(second, lambda c: c.update(seed=seed))
        expected_n = 2
    else:
        table = pd.read_csv(third / "projections.csv")
        table.loc[table["basis"] == "none", "accuracy"] = math.nan
        table.to_csv(third / "projections.csv", index=False)
    caplog.set_level(logging.INFO, logger="phd_lab.report.cli")
    text = write_report(logs).read_text(encoding="utf-8")
    eigenspace = pd.read_csv(logs / "report_relevant_eigenspace.csv")
    rows = eigenspace[eigenspace["group"] == label]
    assert set(eigenspace["group"]) == {label, "vgg11 / Digits 16 px · model_args.width=0.125"}
    assert set(rows["measure"]) == {"accuracy"}
    tested = 2 if case in ("damaged accuracy", "other projection", "not projected") else expected_n
    assert set(rows["n"]) == {tested}
    assert f"over {tested} projected runs" in text
    said = [line for line in caplog.text.splitlines() if f"{label}: relevant eigenspace from delta" in line]
    assert all(f"(paired t-tests over {tested} projected runs" in line for line in said)  # was the group's folders
    left_out = 1 if case.startswith("same seed") else 0
    assert f'<span class="swept">3 runs{f", {left_out} left out" if left_out else ""}</span>' in text
    stability = pd.read_csv(logs / "report_saturation_stability.csv")
    assert set(stability.loc[stability["group"] == label, "n"]) == {2 if case == "unfinished" else expected_n}
    assert ("1 run(s) left out: another run of this group has their seed" in text) == case.startswith("same seed")
    if case == "same seed after an unfinished run":
        assert f"({'/'.join(first.parts[-2:])})" in " ".join(text.split())  # the unfinished run is the one left out
    assert ("1 run(s) projected with other parameters" in text) == (case == "other projection")


def test_repetitions_that_all_share_one_seed_are_shown_with_a_warning_not_dropped(tmp_path, caplog):
    """Three run_ids with one fixed seed repeat one training: nothing is compared over them, but the group is
    named on the page and in the log with a warning that its runs share one seed, not dropped without a word."""
    config = write_config(tmp_path, seed=0, run_id=["0", "1", "2"], epoch=1,
                          post_processing=[{"name": "project", "deltas": [0.9]}, "analysis"])
    from phd_lab.cli import main_cli
    assert main_cli(["--config", str(config)]) == 0
    logging.getLogger().addHandler(caplog.handler)  # the CLI's logging set-up replaced the root's handlers
    with caplog.at_level(logging.WARNING):
        text = " ".join(write_report(tmp_path / "logs").read_text(encoding="utf-8").split())
    assert '<h3>vgg11 / Digits 16 px <span class="swept">3 runs, 2 left out</span></h3>' in text
    assert ("All 3 runs of this group share seed 0: they repeat one training (bit for bit on a CPU; on a GPU their "
            "spread measures its nondeterminism only)") in text
    assert "vgg11 / Digits 16 px: all 3 runs of this group share seed 0" in " ".join(caplog.text.split())
    assert not (tmp_path / "logs" / "report_saturation_stability.csv").exists()
    assert not (tmp_path / "logs" / "report_relevant_eigenspace.csv").exists()


def _keyed_images(text):
    return re.findall(r'<img data-key="([0-9a-f]{32})" alt="([^"]*)" src="data:image/png;base64,([^"]+)"', text)


def _group_images(text):
    return [image for image in _keyed_images(text) if " over the repetitions of " in image[1]]


def test_a_rebuilt_report_takes_unchanged_group_figures_from_the_previous_page(reported_grid, tmp_path):
    """Drawing costs ~0.2 s a figure; a grid of many repeated groups would redraw all of them on every report."""
    logs = tmp_path / "logs"
    shutil.copytree(reported_grid, logs)
    page = write_report(logs)
    first = _group_images(page.read_text(encoding="utf-8"))
    assert len(first) == 4
    # a marker in the previous page's place of one figure: taken over as it is, so it was not drawn again
    key, alt, data = first[0]
    marker = base64.b64encode(b"\x89PNG\r\n\x1a\n marker").decode()
    page.write_text(page.read_text(encoding="utf-8").replace(data, marker), encoding="utf-8")
    second = _group_images(write_report(logs).read_text(encoding="utf-8"))
    assert [(k, a) for k, a, _ in second] == [(k, a) for k, a, _ in first]
    assert second[0][2] == marker and [d for *_, d in second[1:]] == [d for *_, d in first[1:]]
    # what a figure shows changed (a run's last epoch): that group's saturation figure is drawn anew
    run = _first_width_runs(logs)[0]
    metrics_csv = run / next(run.glob("*_config.json")).name.replace("_config.json", ".csv")
    metrics = pd.read_csv(metrics_csv)
    metrics.loc[metrics.index[-1], "features.0_train_saturation"] = 0.125
    metrics.to_csv(metrics_csv, index=False)
    third = _group_images(write_report(logs).read_text(encoding="utf-8"))
    changed = [alt for (k, alt, _), (k2, _, _) in zip(second, third) if k != k2]
    assert changed == [f"Saturation over the repetitions of {_label(0.0625)}"]
    assert third[0][2] != marker and base64.b64decode(third[0][2]).startswith(b"\x89PNG")
    # a run's projections changed: that group's projection figure is drawn anew
    run = _first_width_runs(logs)[1]
    table = pd.read_csv(run / "projections.csv")
    table.loc[table["basis"] == "pca", "accuracy"] -= 0.01
    table.to_csv(run / "projections.csv", index=False)
    fourth = _group_images(write_report(logs).read_text(encoding="utf-8"))
    assert [alt for (k, alt, _), (k2, _, _) in zip(third, fourth) if k != k2] == [
        f"Projections over the repetitions of {_label(0.0625)}"]
    # the other group is gone: the one left has another label, and its figures show it in their titles
    for run in {p.parent for p in logs.glob("vgg11/Digits_16/*/*/*_config.json")} - set(_first_width_runs(logs)):
        shutil.rmtree(run)
    fifth = _group_images(write_report(logs).read_text(encoding="utf-8"))
    assert [alt for _, alt, _ in fifth] == [f"{kind} over the repetitions of vgg11 / Digits 16 px"
                                            for kind in ("Saturation", "Projections")]
    assert not {key for key, *_ in fifth} & {key for key, *_ in fourth}



def test_a_rebuilt_report_takes_unchanged_comparison_figures_from_the_previous_page(reported_grid, tmp_path):
    """The grid's comparison plots were drawn on every report, with matplotlib imported for them: most of a rebuilt
    report's time when nothing had changed. Now they are keyed like the group figures and taken over unchanged."""
    logs = tmp_path / "logs"
    shutil.copytree(reported_grid, logs)
    page = write_report(logs)
    first = [image for image in _keyed_images(page.read_text(encoding="utf-8"))
             if " over the repetitions " not in image[1]]
    assert [alt for _, alt, _ in first] == ["Test accuracy against average saturation s_mu",
                                            "Test accuracy against parameters", "Tail start against border layer b_min",
                                            "Accuracy of the projected networks relative to the unprojected ones"]
    text = page.read_text(encoding="utf-8")
    markers = {key: base64.b64encode(b"\x89PNG\r\n\x1a\n marker " + key.encode()).decode() for key, _, _ in first}
    for key, _, data in first:
        text = text.replace(data, markers[key])
    page.write_text(text, encoding="utf-8")
    second = {alt: (key, data) for key, alt, data in _keyed_images(write_report(logs).read_text(encoding="utf-8"))}
    assert all(second[alt] == (key, markers[key]) for key, alt, _ in first)  # none drawn again
    # a moved logs folder (its page moved with it) takes them too: the relative-accuracy figure was keyed by the run
    # folders' paths, which name no part of it, and was drawn again
    moved = tmp_path / "archive" / "logs"
    shutil.move(str(logs), str(moved))
    third = {alt: (key, data) for key, alt, data in _keyed_images(write_report(moved).read_text(encoding="utf-8"))}
    assert all(third[alt] == (key, markers[key]) for key, alt, _ in first)


def _label(width):
    return f"vgg11 / Digits 16 px · model_args.width={width}"


def test_a_delta_only_one_run_has_is_no_tested_delta(reported_grid, tmp_path):
    """A delta of a single run has no test (n = 1): the verdict does not name it as the largest tested one."""
    logs = tmp_path / "logs"
    shutil.copytree(reported_grid, logs)
    run = _first_width_runs(logs)[0]
    table = pd.read_csv(run / "projections.csv")
    extra = table[(table["basis"] == "pca") & (table["delta"] == 0.999)].assign(delta=0.9995, accuracy=0.0)
    pd.concat([table, extra]).to_csv(run / "projections.csv", index=False)
    assert main_report([str(logs), "--alpha", "0.9", "--no-progress", "-q"]) == 0
    rows = pd.read_csv(logs / "report_relevant_eigenspace.csv")
    assert rows.loc[rows["delta"] == 0.9995, "n"].tolist() == [1]
    text = (logs / "report.html").read_text(encoding="utf-8")
    assert "δ = 0.9995" not in text and "the largest, δ = 0.999," in text


def test_a_group_where_one_run_has_its_unprojected_accuracy_has_no_t_tests(reported_grid, tmp_path):
    """Three projected runs, two of them without the unprojected accuracy to compare with: nothing is tested."""
    logs = tmp_path / "logs"
    shutil.copytree(reported_grid, logs)
    for run in _first_width_runs(logs)[:2]:
        table = pd.read_csv(run / "projections.csv")
        table.loc[table["basis"] == "none", "accuracy"] = math.nan
        table.to_csv(run / "projections.csv", index=False)
    text = write_report(logs).read_text(encoding="utf-8")
    assert set(pd.read_csv(logs / "report_relevant_eigenspace.csv")["group"]) == {_label(0.125)}
    assert text.count("Paired two-tailed t-test") == 1 and text.count('alt="Projections over the repetitions') == 1
    assert set(pd.read_csv(logs / "report_saturation_stability.csv")["group"]) == {_label(0.0625), _label(0.125)}


BLOCK_MODELS = '''
import torch.nn as nn


def blocknet(*, num_classes: int, in_channels: int = 3, block: dict | None = None):
    """A one-hidden-layer MLP on 8x8 images whose hidden width is block["width"]."""
    width = (block or {})["width"]
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, width), nn.ReLU(), nn.Linear(width, num_classes))
'''


def test_repetitions_that_log_a_nested_mapping_in_another_key_order_are_one_group(tmp_path):
    """One configuration written in two key orders ({"width": 8, "act": "relu"} and the reverse) is one run
    identity, as its folder's hash says: its repetitions were two groups of one run (no Repetitions section) and
    the run table called the mapping a varying column."""
    (tmp_path / "block_models.py").write_text(BLOCK_MODELS)
    from phd_lab.cli import main_cli
    for run_id, block in (("0", {"width": 8, "act": "relu"}), ("1", {"act": "relu", "width": 8})):
        config = write_config(tmp_path, f"exp{run_id}.json", model="blocknet", model_args={"block": block},
                              registries={"models": str(tmp_path / "block_models.py")}, resolution=8, epoch=1,
                              run_id=run_id, seed=None, post_processing=[])
        assert main_cli(["--config", str(config), "--no-progress"]) == 0
    text = " ".join(write_report(tmp_path / "logs").read_text(encoding="utf-8").split())
    assert '<h3>blocknet / Digits 8 px <span class="swept">2 runs</span></h3>' in text
    assert "model_args.block" not in text
    stability = pd.read_csv(tmp_path / "logs" / "report_saturation_stability.csv")
    assert set(stability["group"]) == {"blocknet / Digits 8 px"} and set(stability["n"]) == {2}
