"""Per-run analysis from saved tables: borders, tail/border agreement, probes, truncation, advice."""

import json
import os

import pandas as pd
import pytest

from tests.analysis_fixtures import (BORDER, LAYERS, computational_table, layout, read_json,
                               receptive_field_table, saturation_profile, write_run)
from phd_lab import atomic
from phd_lab.analysis.recommendations import nice_factor
from phd_lab.analysis.run_summary import AnalysisSettings, border_layers, side_branch_layers, summarize
from phd_lab.analysis.run_tables import load_run
from phd_lab.config import resolve_point
from phd_lab.errors import ConfigError
from phd_lab.steps import all_steps


def rf_table(in_min, in_max):
    rows = [{"index": i + 1, "layer": f"conv{i + 1}", "r_min": a + 2, "r_max": b + 2, "jump": 1,
             "in_r_min": a, "in_r_max": b} for i, (a, b) in enumerate(zip(in_min, in_max))]
    rows.append({"index": None, "layer": "fc", "r_min": 999, "r_max": 999, "jump": 1, "in_r_min": 999,
                 "in_r_max": 999})
    return pd.DataFrame(rows)


def test_border_layers_strict_and_every_later_conv():
    # in_r_min crosses 32 at conv4 (strictly), in_r_max already at conv3; fc rows are not Conv2d
    table = rf_table([5, 20, 32, 33, 40], [5, 30, 34, 50, 60])
    assert border_layers(table, 32) == ("conv4", "conv3")
    # a later conv that falls back below the resolution moves the border behind it (multipath stems)
    table = rf_table([5, 40, 20, 50, 60], [5, 40, 45, 50, 60])
    assert border_layers(table, 32) == ("conv4", "conv2")
    assert border_layers(rf_table([1, 3, 5], [1, 3, 5]), 32) == (None, None)
    # a gate convolution on a globally pooled input (inf) sees no layout: it never starts the border,
    # as in the receptive-field step (an SE block at the end of a ResNet at 32 px)
    assert border_layers(rf_table([1, 3, 5, float("inf")], [1, 3, 40, float("inf")]), 32) == (None, "conv3")
    # a side branch (written by hand as 1, by pandas as True) never starts a border, as it never cuts a tail
    table = rf_table([5, 20, 33, 40], [5, 20, 40, 50]).assign(side_branch=["0", "0", "1", "0", "0"])
    assert border_layers(table, 32) == ("conv4", "conv4")
    assert side_branch_layers(table) == {"conv3"}


def test_fixture_receptive_fields_put_the_vgg11_border_at_conv6():
    table = receptive_field_table(32)
    assert table.loc[table["layer"] == BORDER, "in_r_min"].item() == 46
    assert table.loc[table["layer"] == "features.11", "in_r_min"].item() == 30
    assert border_layers(table, 32) == (BORDER, BORDER)


def synthetic_run(tmp_path, tail_start_layer, *, resolution=32):
    """A run whose saturation tail starts at ``tail_start_layer`` (a VGG11 layer name)."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="unprobed", resolution=resolution)
    metrics = pd.read_csv(rundir.metrics_csv)
    start = LAYERS.index(tail_start_layer)
    for position, layer in enumerate(LAYERS):
        low = start <= position < len(LAYERS) - 1
        metrics[f"{layer}_train_saturation"] = 0.03 if low else 0.35
    atomic.write_csv(rundir.metrics_csv, metrics.drop(columns=["train_saturation_mean"]))
    return load_run(rundir)


def test_tail_that_starts_at_the_border_agrees(tmp_path):
    summary = summarize(synthetic_run(tmp_path, BORDER))
    assert [(t["first_layer"], t["last_layer"]) for t in summary["tails"]] == [(BORDER, "classifier.3")]
    assert summary["borders"]["b_min"] == BORDER and summary["borders"]["b_min_index"] == 6
    assert summary["agreement"]["b_min"] == {"border": BORDER, "tail_start": BORDER, "offset": 0, "agrees": True}
    # without the mean column, s_mu is the mean over the layers: 5 convs + classifier high, 5 low
    assert summary["saturation"]["mean"] == pytest.approx((6 * 0.35 + 5 * 0.03) / 11)


def test_tail_two_layers_late_disagrees_unless_the_tolerance_allows_it(tmp_path):
    tables = synthetic_run(tmp_path, "features.18")
    agreement = summarize(tables)["agreement"]["b_min"]
    assert agreement["offset"] == 2 and agreement["agrees"] is False
    relaxed = summarize(tables, AnalysisSettings(border_tolerance=2))["agreement"]["b_min"]
    assert relaxed["agrees"] is True


def test_border_without_tail_and_no_border_at_high_resolution(tmp_path):
    tables = _with_saturations(synthetic_run(tmp_path, BORDER), [0.3] * len(LAYERS))
    summary = summarize(tables)
    assert summary["tails"] == [] and summary["agreement"]["b_min"]["agrees"] is False
    assert "no tail" in summary["recommendations"][0]["text"]
    # at 256 px no Conv2d input exceeds the resolution: no border; a tail there disagrees
    high = summarize(synthetic_run(tmp_path / "high", BORDER, resolution=256))
    assert high["borders"]["b_min"] is None
    assert high["agreement"]["b_min"]["agrees"] is False


def test_full_run_summary(tmp_path):
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full", test_accuracy=0.94, skip="features.16")
    summary = summarize(load_run(rundir))
    assert summary["missing"] == [] and summary["problems"] == []
    assert summary["run"]["status"]["state"] == "finished"
    assert summary["accuracy"]["test"] == pytest.approx(0.94)
    assert summary["saturation"]["epoch"] == 3
    assert summary["saturation"]["mean"] == pytest.approx(sum(saturation_profile(0.25, 3)) / 11, rel=0.05)
    assert summary["saturation"]["mean"] == pytest.approx(
        sum(entry["saturation"] for entry in summary["saturation"]["layers"]) / 11)
    assert [(t["first_layer"], t["last_layer"]) for t in summary["tails"]] == [(BORDER, "classifier.3")]
    assert summary["agreement"]["b_min"]["agrees"] is True
    probes = summary["probes"]
    assert probes["status"] == "complete" and probes["layers_probed"] == 11
    # the fixture's probes reach 0.94 - 0.002 at features.13 (relative 0.9979 >= 0.99)
    assert probes["first_reaching_layer"] == BORDER
    assert probes["skipped_layers"] == ["features.16"]
    comp = computational_table(0.25, 32)
    assert summary["computational"]["params"] == comp["params"].sum()
    truncation = summary["truncation"]
    removed = comp.iloc[LAYERS.index(BORDER):]
    assert truncation["removed_layers"] == LAYERS[LAYERS.index(BORDER):]
    assert truncation["params_removed"] == removed["params"].sum()
    assert truncation["flops_removed"] == removed["flops"].sum()
    # new head: GAP + Linear(128 → 10) on the output of features.11 (512 · 0.25 channels)
    assert truncation["head_params"] == 128 * 10 + 10
    assert truncation["params_saved"] == removed["params"].sum() - 1290
    kinds = [a["kind"] for a in summary["recommendations"]]
    assert kinds[0] == "depth" and "probes" in kinds
    assert "global average pooling" in summary["recommendations"][0]["text"]


def test_truncation_measured_by_the_flops_step_replaces_the_table_estimate(tmp_path):
    tables = synthetic_run(tmp_path, BORDER)
    estimated = summarize(tables)["truncation"]
    assert estimated["exact"] is False
    measured = {"border": BORDER, "exact": True, "removed_layers": ["features.11", *LAYERS[LAYERS.index(BORDER):]],
                "params_saved": 123456.0, "flops_saved": 7654321.0, "head_params": 1290.0, "head_flops": 2560.0}
    tables.computational = {**tables.computational, "truncation": measured}
    summary = summarize(tables)
    truncation = summary["truncation"]
    assert truncation["exact"] and truncation["params_saved"] == 123456.0 and truncation["flops_saved"] == 7654321.0
    assert truncation["params_removed"] == 123456.0 + 1290.0
    assert truncation["params_saved_share"] == pytest.approx(123456.0 / tables.computational["params"])
    assert "measured on the truncated model" in summary["recommendations"][0]["text"]
    # measured for another border (e.g. an older flops step at another resolution): the estimate is used
    tables.computational = {**tables.computational, "truncation": {**measured, "border": "features.3"}}
    assert summarize(tables)["truncation"] == estimated


def test_width_advice_outside_the_target_interval(tmp_path):
    tables = _with_saturations(synthetic_run(tmp_path, BORDER), [0.1] * len(LAYERS))
    advice = [a["text"] for a in summarize(tables)["recommendations"] if a["kind"] == "width"]
    # the factor multiplies the run's width (0.25): not to be read as model_args.width itself
    assert len(advice) == 1 and "10.0%" in advice[0]
    assert "multiplying the current width (model_args.width = 0.25) by about 0.40, i.e. width ≈ 0.1 (try 0.125)" \
        in advice[0]
    tables.config = {**tables.config, "model_args": {}}  # a model without a width argument
    advice = [a["text"] for a in summarize(tables)["recommendations"] if a["kind"] == "width"]
    assert "multiplying every layer's width by about 0.40 (try 1/2)" in advice[0]
    tables.metrics.loc[:, [f"{layer}_train_saturation" for layer in LAYERS]] = 0.25
    assert not [a for a in summarize(tables)["recommendations"] if a["kind"] == "width"]
    assert nice_factor(0.4) == "1/2" and nice_factor(2.2) == "2" and nice_factor(0.01) == "1/8"


def test_settings_come_from_the_logged_config_and_are_checked():
    config = resolve_point({"model": "m", "dataset": "d", "tail_threshold": 0.3, "analysis_split": "test"}, "x")
    settings = AnalysisSettings.from_config(config.values)
    assert settings.tail_threshold == 0.3 and settings.analysis_split == "test"
    assert AnalysisSettings.from_config({}) == AnalysisSettings()  # older runs: defaults
    with pytest.raises(ConfigError, match="target_saturation"):
        AnalysisSettings(target_saturation=(0.3, 0.2))


def test_each_analysis_key_of_the_logged_config_changes_what_the_analysis_reads(tmp_path):
    tables = load_run(write_run(tmp_path / "logs", width=0.25, stage="full", test_accuracy=0.94, skip="features.16"))
    default = summarize(tables)
    assert [(t["first_layer"], t["last_layer"]) for t in default["tails"]] == [(BORDER, "classifier.3")]
    assert default["probes"]["first_reaching_layer"] == BORDER
    assert default["probes"]["skipped_layers"] == ["features.16"]

    def with_keys(**keys):
        tables.config = {**tables.config, **keys}
        try:
            return summarize(tables)  # the settings are read from the run's config
        finally:
            for key in keys:
                del tables.config[key]

    tail_length = len(LAYERS) - 1 - LAYERS.index(BORDER)
    assert with_keys(tail_min_length=tail_length)["tails"] == default["tails"]
    longer = with_keys(tail_min_length=tail_length + 1)["tails"]
    assert longer != default["tails"] and all(len(tail["layers"]) > tail_length for tail in longer)
    # the tail lies about 88 % below the other layers' mean: found at "50 % lower", not at "95 % lower"
    assert with_keys(tail_threshold=0.95)["tails"] == []
    # probes: the fourth layer reaches 0.79 / 0.94 = 0.84 of the model's accuracy, the 0.12 drop at features.16
    assert with_keys(probe_tolerance=0.2)["probes"]["first_reaching_layer"] == "features.8"
    assert with_keys(probe_drop_tolerance=0.2)["probes"]["skipped_layers"] == []
    on_test = with_keys(analysis_split="test")["saturation"]
    test_columns = [tables.metrics[f"{layer}_test_saturation"].iloc[-1] for layer in LAYERS]
    assert [entry["saturation"] for entry in on_test["layers"]] == pytest.approx(test_columns)
    assert on_test["layers"] != default["saturation"]["layers"]


def test_analysis_step_must_come_last():
    step = all_steps()["analysis"]
    last = resolve_point({"model": "m", "dataset": "d", "post_processing": ["analysis"]}, "x")
    step.check({}, last, "x")
    early = resolve_point({"model": "m", "dataset": "d", "post_processing": ["analysis", "flops"]}, "x")
    with pytest.raises(ConfigError, match="must come last"):
        step.check({}, early, "x")


def test_missing_and_broken_files_are_reported_not_raised(tmp_path):
    rundir = write_run(tmp_path / "logs", width=0.25, stage="trained")
    (rundir.root / "receptive_field.csv").write_text("index,layer\n1,features.0\n")  # lacks columns
    (rundir.root / "computational_info.json").write_text("{not json")
    summary = summarize(load_run(rundir))
    assert "probe_performances.csv" in summary["missing"]
    assert any("receptive_field.csv lacks" in p for p in summary["problems"])
    assert any("computational_info.json cannot be read" in p for p in summary["problems"])
    assert summary["borders"] is None and summary["truncation"] is None
    assert summary["probes"]["status"] == "not probed"
    # a folder with nothing but a config
    empty = write_run(tmp_path / "logs2", width=0.25, stage="trained")
    empty.metrics_csv.unlink()
    bare = summarize(load_run(empty))
    assert bare["saturation"] is None and bare["run"]["status"]["state"] == "not started"
    assert bare["recommendations"][0]["kind"] == "missing"
    assert "appear once an epoch with saturation tracking has finished" in bare["recommendations"][0]["text"]
    untracked = load_run(empty)
    untracked.config = {**untracked.config, "track_saturation": False}  # it never will: say what to do instead
    assert "trained with track_saturation false" in summarize(untracked)["recommendations"][0]["text"]


def test_analysis_json_is_strict_json(tmp_path):
    from phd_lab.report.collect import analyse_run
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full")
    metrics = pd.read_csv(rundir.metrics_csv)
    metrics.loc[metrics.index[-1], "train_accuracy"] = float("nan")
    atomic.write_csv(rundir.metrics_csv, metrics)
    entry = analyse_run(rundir)
    assert entry.written
    text = (rundir.root / "analysis.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert data["accuracy"]["train"] is None and data == read_json(rundir.analysis_json)
    assert (rundir.root / "analysis.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_zero_saturation_and_a_damaged_epoch_column_do_not_break_the_analysis(tmp_path):
    """s_mu = 0 (no layer with any variance) made the width advice take log2(0); a non-numeric epoch
    value made the status int('two'): each cost the run its whole analysis."""
    from phd_lab.analysis.recommendations import recommendations
    from phd_lab.analysis.run_tables import training_status
    summary = {"saturation": {"mean": 0.0, "layers": []}, "tails": [], "borders": None,
               "probes": {"status": "none"}, "truncation": None, "agreement": {}}
    advice = recommendations(summary, AnalysisSettings())
    assert [a["kind"] for a in advice] == ["no-variance"]  # not "s_mu within the target interval"
    assert "no tracked layer showed any variance" in advice[0]["text"]
    tables = synthetic_run(tmp_path, BORDER)
    damaged = pd.DataFrame({"epoch": ["1", "two"], "train_loss": [1.0, 0.5]})
    assert training_status(tables.folder, {"epoch": 3}, damaged).epochs_done == 1


def test_the_run_figure_legend_never_covers_long_layer_names(tmp_path):
    """The legend sat at an offset guessed from the name length and covered long layer names."""
    import matplotlib.pyplot as plt

    from phd_lab.plots.run_figure import draw_run_figure
    tables = synthetic_run(tmp_path, BORDER)
    renamed = {name: f"backbone.stage_{i}.residual_block_with_a_long_name.{name}" for i, name in enumerate(LAYERS)}
    for short in sorted(renamed, key=len, reverse=True):  # 'features.1' is a prefix of 'features.11'
        tables.metrics.columns = [c.replace(f"{short}_", f"{renamed[short]}_", 1) if c.startswith(f"{short}_")
                                  else c for c in tables.metrics.columns]
    tables.receptive_field["layer"] = tables.receptive_field["layer"].map(lambda n: renamed.get(n, n))
    fig = draw_run_figure(tables, summarize(tables))
    try:
        fig.canvas.draw()  # the positions of a drawn (saved) figure
        renderer = fig.canvas.get_renderer()
        ax = next(a for a in fig.axes if a.get_legend() is not None)  # the layer panel (below the epoch map)
        ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        assert len(ticks) == len(LAYERS) and all(t.get_text().startswith("backbone.") for t in ax.get_xticklabels())
        legend = ax.get_legend().get_window_extent(renderer)
        assert legend.y1 < min(t.y0 for t in ticks)  # entirely below the lowest tick label
    finally:
        plt.close(fig)


def test_the_run_figure_names_its_axis_for_accuracy_only_where_one_is_drawn(tmp_path):
    """An autoencoder's analysis.png (no probes, no test accuracy) named its axis 'saturation / accuracy'."""
    import matplotlib.pyplot as plt

    from phd_lab.plots.run_figure import draw_run_figure
    tables = synthetic_run(tmp_path, BORDER)
    summary = summarize(tables)
    labels = []
    for probes, accuracy in ((tables.probes, summary["accuracy"]["test"]), (None, None)):
        tables.probes, summary["accuracy"]["test"] = probes, accuracy
        fig = draw_run_figure(tables, summary)
        try:
            labels.append(next(a for a in fig.axes if a.get_legend() is not None).get_ylabel())
        finally:
            plt.close(fig)
    assert labels == ["saturation / accuracy", "saturation"]


def _x_extent(patch) -> tuple[float, float]:
    """(left, right) of an axvspan in data x: a Rectangle since matplotlib 3.9, a Polygon before (setup.cfg
    allows 3.7), which has no get_x."""
    xs = patch.get_patch_transform().transform(patch.get_path().vertices)[:, 0]
    return float(xs.min()), float(xs.max())


def test_the_run_figure_draws_each_table_at_its_layers_place(tmp_path):
    """Layers once each in forward order; the probe line in forward order however the table is sorted; the split
    analysed as bars, the other as dots; b_min = b_max solid just before the border layer; every tail
    shaded from just before its first to just after its last layer, one legend entry for all; the epoch map with
    the first epoch at the top; the title with test accuracy and s_mu, a finished run without its status."""
    import matplotlib.pyplot as plt

    from phd_lab.plots.run_figure import draw_run_figure
    tables = load_run(write_run(tmp_path / "logs", width=0.25, stage="full"))
    tables.probes = tables.probes.iloc[::-1].reset_index(drop=True)  # a table sorted another way
    low = {*LAYERS[:3], *LAYERS[5:10]}
    for layer in LAYERS:  # two tails: the input's and the border's
        tables.metrics[f"{layer}_train_saturation"] = 0.03 if layer in low else 0.4
    summary = summarize(tables)
    assert [(t["first_layer"], t["last_layer"]) for t in summary["tails"]] == [
        ("features.0", "features.6"), (BORDER, "classifier.3")]
    fig = draw_run_figure(tables, summary)
    try:
        heat, ax, twin = fig.axes[:3]
        assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS
        assert heat.images[0].get_extent() == [-0.5, len(LAYERS) - 0.5, 3.5, 0.5]  # epoch 1 at the top
        variant = tables.folder.root.relative_to(tmp_path / "logs" / "vgg11" / "Digits_32")  # run id / variant
        assert heat.get_title() == f"vgg11-Digits-r32-bs64-e3\n{variant}\ntest acc 93.0%, s_mu 24.3%"
        lines = {line.get_label(): line for line in ax.get_lines()}
        probes = lines["probe accuracy (eval)"]
        assert list(probes.get_xdata()) == list(range(len(LAYERS)))
        assert list(probes.get_ydata()) == pd.read_csv(tables.folder.probe_csv)["eval_acc"].tolist()
        assert list(lines["model test accuracy"].get_ydata()) == [0.93, 0.93]
        assert list(lines["saturation (test)"].get_xdata()) == list(range(len(LAYERS)))
        [bars] = ax.containers
        assert bars.get_label() == "saturation (train)" and [b.get_height() for b in bars] == [
            0.03 if layer in low else 0.4 for layer in LAYERS]
        border = LAYERS.index(BORDER) - 0.5
        # b_min and b_max at one layer: one solid line named for both (b_max's dashed one lay hidden under it)
        assert summary["borders"]["b_min"] == summary["borders"]["b_max"] and "b_max" not in lines
        assert (list(lines["b_min = b_max"].get_xdata()), lines["b_min = b_max"].get_linestyle()) == (
            [border, border], "-")
        spans = [_x_extent(p) for p in ax.patches if p.get_alpha() == 0.13]
        assert spans == [(-0.5, 2.5), (border, LAYERS.index("classifier.3") + 0.5)]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels.count("tail") == 1 and "input resolution 32" in labels
        assert [line.get_label() for line in twin.get_lines()] == [  # a VGG: r_min = r_max at every layer
            "receptive field r_min = r_max", "input resolution 32"]
    finally:
        plt.close(fig)
    two_epochs = load_run(write_run(tmp_path / "logs2", width=0.25, stage="full", epochs=2))
    fig = draw_run_figure(two_epochs, summarize(two_epochs))
    try:
        assert fig.axes[0].images  # two epochs: the map of their saturations
    finally:
        plt.close(fig)


def test_the_run_figure_draws_side_branches_off_its_receptive_field_lines(tmp_path):
    """A ResNet's 1x1 shortcuts sat inside the r_min/r_max lines, which dipped at each of them (a 50-layer ResNet:
    r_max 299 -> 266 -> 299 around layer4.0.downsample.0), as receptive_field.png had drawn them until it drew
    side branches as loose points."""
    import matplotlib.pyplot as plt

    from phd_lab.plots.run_figure import draw_run_figure
    tables = load_run(write_run(tmp_path / "logs", width=0.25, stage="full"))
    rf = tables.receptive_field
    rf["side_branch"] = rf["layer"] == "features.11"
    rf.loc[rf["side_branch"], ["r_min", "r_max"]] = 5
    rf.loc[rf["layer"] == "features.18", "r_min"] -= 10  # two paths: r_min and r_max lines of their own
    fig = draw_run_figure(tables, summarize(tables))
    try:
        _, ax, twin = fig.axes[:3]
        names = [t.get_text() for t in ax.get_xticklabels()]
        side = names.index("features.11")
        lines = {line.get_label(): line for line in twin.get_lines()}
        convs = rf[rf["index"].notna() & ~rf["side_branch"]]
        for column in ("r_max", "r_min"):
            line = lines[f"receptive field {column}"]
            assert list(line.get_xdata()) == [names.index(n) for n in convs["layer"]] and side not in line.get_xdata()
            assert list(line.get_ydata()) == convs[column].tolist()
        points = [line for line in twin.get_lines() if line.get_linestyle() == "None"]
        assert [(list(p.get_xdata()), list(p.get_ydata())) for p in points] == [([side], [5]), ([side], [5])]
        assert "receptive field of a side branch" in [t.get_text() for t in ax.get_legend().get_texts()]
    finally:
        plt.close(fig)


def test_no_two_lines_of_the_run_figure_legend_differ_by_colour_alone(tmp_path):
    """In grayscale or to a colour-blind reader the legend's dashed model accuracy (orange) was b_max's dashed line
    (black), and the solid r_max line (green) b_min's: every line entry of the legend now differs from every other
    in its dash pattern, its marker or whether the marker is filled."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from phd_lab.plots.run_figure import draw_run_figure
    tables = load_run(write_run(tmp_path / "logs", width=0.25, stage="full"))
    rf = tables.receptive_field
    rf["side_branch"] = rf["layer"] == "features.11"  # its hollow points in the legend too
    rf.loc[rf["layer"] == "features.18", "r_min"] -= 10  # two paths: r_min and r_max lines of their own
    summary = summarize(tables)
    summary["borders"]["b_max"] = "features.16"  # two borders: b_min's line and b_max's
    fig = draw_run_figure(tables, summary)
    try:
        [legend] = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        entries = {text.get_text(): handle for text, handle in zip(legend.get_texts(), legend.legend_handles)
                   if isinstance(handle, Line2D)}
        assert {"model test accuracy", "b_min", "b_max", "receptive field r_max", "receptive field r_min",
                "input resolution 32", "probe accuracy (eval)", "saturation (test)",
                "receptive field of a side branch"} <= set(entries)
        looks = {label: (line.get_linestyle(), line._unscaled_dash_pattern, line.get_marker(),
                         str(line.get_markerfacecolor()) == "none" or line.get_fillstyle() == "none")
                 for label, line in entries.items()}
        alike = [(a, b) for a in looks for b in looks if a < b and looks[a] == looks[b]]
        assert alike == []
    finally:
        plt.close(fig)


def test_the_run_figure_puts_layers_only_the_probes_have_between_their_neighbours(tmp_path):
    """extract's 'layers' may name any module (features.*: the ReLUs and pools too): those layers, which neither the
    receptive-field table nor the saturation columns list, came after every other layer, and the probe line ran
    back and forth across the figure."""
    import matplotlib.pyplot as plt

    from phd_lab.plots.run_figure import draw_run_figure
    tables = load_run(write_run(tmp_path / "logs", width=0.25, stage="full"))
    convs = [layer for layer in LAYERS if layer.startswith("features.")]
    forward = [f"features.{n}" for n in range(int(convs[-1].split(".")[1]) + 3)]  # every module, two after the last
    tables.probes = pd.DataFrame({"index": range(1, len(forward) + 1), "layer": forward,
                                  "train_acc": 0.9, "eval_acc": [0.5 + 0.01 * n for n in range(len(forward))]})
    fig = draw_run_figure(tables, summarize(tables))
    try:
        _, ax = fig.axes[:2]
        names = [t.get_text() for t in ax.get_xticklabels()]
        assert names == forward + [layer for layer in LAYERS if layer.startswith("classifier.")]
        probes = next(line for line in ax.get_lines() if line.get_label() == "probe accuracy (eval)")
        assert list(probes.get_xdata()) == list(range(len(forward)))  # from left to right, never back
        assert list(probes.get_ydata()) == tables.probes["eval_acc"].tolist()
    finally:
        plt.close(fig)


def test_the_run_figure_of_a_pixelwise_probe_table_stays_viewable(tmp_path):
    """A probe table with a row per feature-map position (pixelwise, thousands in configs/thesis/09_3) made the run
    figure about 0.38 inch wide per row: 90,000 pixels and more."""
    import matplotlib.pyplot as plt

    from phd_lab.plots.run_figure import draw_run_figure
    tables = load_run(write_run(tmp_path / "logs", width=0.25, stage="full"))
    tables.probes = pd.DataFrame([{"index": 1, "layer": f"features.0@{r}_{c}", "train_acc": 0.9, "eval_acc": 0.5}
                                  for r in range(20) for c in range(20)])
    fig = draw_run_figure(tables, summarize(tables))
    try:
        _, ax = fig.axes[:2]
        names = [t.get_text() for t in ax.get_xticklabels()]
        assert fig.get_figwidth() <= 60 and 0 < len(names) <= 200 and names[0] == "features.0"
    finally:
        plt.close(fig)


def test_the_run_figure_draws_a_pixelwise_probe_table_per_layer_as_the_mean_of_its_positions(tmp_path):
    """Each feature-map position (<layer>@<row>_<col>) had a place of its own after every layer of the other
    tables: the bars sat at one end of a figure thousands of places wide, the probes at the other."""
    import matplotlib.pyplot as plt

    from phd_lab.plots.run_figure import draw_run_figure
    tables = load_run(write_run(tmp_path / "logs", width=0.25, stage="full"))
    rows = [(1, "features.0@0_0", 0.4), (1, "features.0@0_1", 0.6), (1, "features.0@1_0", 0.5),
            (2, "features.3@0_0", 0.8), (9, "classifier.0", 0.9)]
    tables.probes = pd.DataFrame([{"index": i, "layer": name, "train_acc": 1.0, "eval_acc": acc}
                                  for i, name, acc in rows])
    fig = draw_run_figure(tables, summarize(tables))
    try:
        _, ax = fig.axes[:2]
        assert [t.get_text() for t in ax.get_xticklabels()] == LAYERS
        [probes] = [line for line in ax.get_lines() if line.get_label().startswith("probe accuracy")]
        assert probes.get_label() == "probe accuracy (eval, mean over positions)"
        assert list(probes.get_xdata()) == [0, 1, LAYERS.index("classifier.0")]
        assert list(probes.get_ydata()) == pytest.approx([0.5, 0.8, 0.9])
    finally:
        plt.close(fig)


def test_merged_layer_order_keeps_every_tables_order_and_breaks_disagreements_by_the_first_table():
    from phd_lab.plots.run_figure import merged_order
    assert merged_order([["a.0", "a.4", "b.2"], ["a.0", "a.4", "b.2"], ["a.0", "a.1", "a.4", "a.5"]]) == [
        "a.0", "a.1", "a.4", "a.5", "b.2"]
    assert merged_order([["x", "y", "z"], ["z", "y", "w"]]) == ["x", "y", "z", "w"]  # a cycle: first seen first
    assert merged_order([]) == [] and merged_order([["a", "a", "b"], []]) == ["a", "b"]


def test_probes_older_than_the_latents_are_reported_stale(tmp_path):
    """A re-extraction after probing left the old probe table reported as complete."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full", skip="features.16")
    fresh = summarize(load_run(rundir))["probes"]
    assert fresh["status"] == "complete" and fresh["skipped_layers"] and fresh["best_layer"] is not None
    manifest = rundir.latents() / "manifest.json"
    later = rundir.probe_csv.stat().st_mtime + 5
    os.utime(manifest, (later, later))
    summary = summarize(load_run(rundir))
    assert summary["probes"]["status"].startswith("stale (the latents were extracted again")
    # advice read from out-of-date probes is held back; the reader is told to rerun the probe job instead
    probe_advice = [a["text"] for a in summary["recommendations"] if a["kind"] == "probes"]
    assert len(probe_advice) == 1 and "rerun probe_main.py" in probe_advice[0]
    # and no verdict: the facts table and the figure's curve spoke of the old latents as of this model's layers
    stale = summary["probes"]
    assert stale["first_reaching_layer"] is None and stale["skipped_layers"] == [] and stale["best_layer"] is None
    from phd_lab.report.html import _facts
    facts = _facts(summary)
    assert "stale (the latents were extracted again" in facts and "skipped layers" not in facts
    assert "first layer reaching the model" not in facts
    import matplotlib.pyplot as plt

    from phd_lab.plots.run_figure import draw_run_figure
    figure = draw_run_figure(load_run(rundir), summary)
    labels = {text for ax in figure.axes for text in ax.get_legend_handles_labels()[1]}
    plt.close(figure)
    assert "probe accuracy (eval), stale: latents extracted again since" in labels
    assert "probe accuracy (eval)" not in labels


def test_probes_are_stale_when_they_name_other_latents_not_when_a_copy_has_new_file_times(tmp_path):
    """Staleness was read off file times alone: a run copied without them (``cp -r``, scp) whose manifest came out
    newer than its probe table was reported stale ('rerun probe_main.py') with nothing changed. The probe job now
    records which latents it probed (probe_settings.json); re-extracted latents are stale whatever the times say."""
    import shutil

    import torch

    from phd_lab.analysis.run_tables import run_folder
    from phd_lab.extraction import extract_latents
    from phd_lab.probes.cli import probe_cli
    from tests._extraction_models import build_model, loaders
    original = tmp_path / "logs" / "Small" / "Digits_4" / "r" / "v"
    model, data = build_model(), loaders(resolution=4)
    extract_latents(model, data, original / "latents", run_dir=original, layers=["body.0", "head"], test_accuracy=0.5,
                    progress=False)
    assert probe_cli(["--latents", str(original / "latents"), "-mp", "0", "--solver", "lbfgs", "--no-progress",
                      "-q"]) == 0
    copy = run_folder(tmp_path / "copy" / "Small" / "Digits_4" / "r" / "v")
    shutil.copytree(original, copy.root, copy_function=shutil.copy)  # contents only, new file times
    later = copy.probe_csv.stat().st_mtime + 5
    manifest = copy.latents() / "manifest.json"
    os.utime(manifest, (later, later))
    assert load_run(copy).probes_predate_latents is False
    assert summarize(load_run(copy))["probes"]["status"] == "complete"

    with torch.no_grad():  # other weights extracted again after the probes: their table describes other latents
        model.head.bias.add_(1.0)
    extract_latents(model, data, copy.latents(), run_dir=copy.root, layers=["body.0", "head"], test_accuracy=0.5,
                    progress=False)
    os.utime(copy.probe_csv, (later + 10, later + 10))  # even though the table is the newer file
    assert load_run(copy).probes_predate_latents is True
    assert summarize(load_run(copy))["probes"]["status"].startswith("stale (the latents were extracted again")


@pytest.mark.parametrize("damage", ["cut short", "malformed"])
def test_probes_are_not_called_stale_because_the_latents_manifest_is_damaged(tmp_path, damage):
    """A run folder whose latents manifest was damaged after probing (a broken copy: cut short, or 'layers' lost)
    had its probes reported 'stale (the latents were extracted again after the probes; rerun probe_main.py)': by the
    digest of the malformed manifest, or by file time where it could not be read. Nothing was extracted again, and
    the probe job refuses such a manifest (exit 2). The damage is named among the problems; the probes stand."""
    from phd_lab.analysis.run_tables import run_folder
    from phd_lab.extraction import extract_latents
    from phd_lab.probes.cli import probe_cli
    from tests._extraction_models import build_model, loaders
    run = run_folder(tmp_path / "logs" / "Small" / "Digits_4" / "r" / "v")
    extract_latents(build_model(), loaders(resolution=4), run.root / "latents", run_dir=run.root,
                    layers=["body.0", "head"], test_accuracy=0.5, progress=False)
    assert probe_cli(["--latents", str(run.root / "latents"), "-mp", "0", "--solver", "lbfgs", "--no-progress",
                      "-q"]) == 0
    manifest = run.latents() / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[:len(text) // 2] if damage == "cut short" else json.dumps({"format": 1}))
    later = run.probe_csv.stat().st_mtime + 5
    os.utime(manifest, (later, later))
    tables = load_run(run)
    assert tables.probes_predate_latents is False
    assert any("manifest.json" in problem for problem in tables.problems), tables.problems
    assert summarize(tables)["probes"]["status"] == "complete"


def test_probe_drops_do_not_claim_shortcuts_the_network_may_not_have(tmp_path):
    """VGG has no shortcut connections; the advice for a drop in probe accuracy said it skips layers through them."""
    summary = summarize(load_run(write_run(tmp_path / "logs", width=0.25, stage="full", skip="features.16")))
    [drop] = [a["text"] for a in summary["recommendations"] if a["text"].startswith("Probe accuracy drops")]
    assert "features.16" in drop and "In a network with shortcut connections this marks" in drop


def test_outputs_of_configured_steps_that_never_ran_are_missing(tmp_path):
    """A run killed during its post-processing looked complete: only the probe table was listed as missing."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="trained")
    config = json.loads(rundir.config.read_text())
    config["post_processing"] = ["receptive_field", {"name": "project", "deltas": [0.9]}, "extract"]
    rundir.config.write_text(json.dumps(config))
    missing = summarize(load_run(rundir))["missing"]
    assert "projections.csv" in missing and "latents/manifest.json" in missing
    assert "receptive_field.csv" in missing and "computational_info.json" not in missing  # flops was not asked for
    assert "probe_performances.csv" in missing
    config["post_processing"] = ["receptive_field"]  # no latents: the probe job has nothing to fit
    rundir.config.write_text(json.dumps(config))
    assert "probe_performances.csv" not in summarize(load_run(rundir))["missing"]


def test_tails_and_their_offset_from_the_border_are_read_on_the_main_path(tmp_path):
    """Thesis §10.1 reads saturation on the main path: resnet18_sa's one-channel attention gates (always
    saturated) and its 1×1 downsampling shortcuts cut one tail into two and moved the tail's start away
    from the border by the shortcut rows between them."""
    from phd_lab.analysis.receptive_field import receptive_fields
    from registries.models import resnet18_sa
    rundir = write_run(tmp_path / "logs", width=0.25, stage="unprobed", resolution=32)
    table = receptive_fields(resnet18_sa(num_classes=10, width=0.125), 32)
    atomic.write_csv(rundir.receptive_field_csv, table)
    metrics = pd.read_csv(rundir.metrics_csv)
    metrics = metrics.drop(columns=[c for c in metrics.columns if c.endswith("_saturation_mean")
                                    or c.endswith("_train_saturation") or c.endswith("_test_saturation")])
    layers = table["layer"].tolist()
    low_from = layers.index("layer3.0.conv2")
    for position, (layer, side) in enumerate(zip(layers, table["side_branch"])):
        metrics[f"{layer}_train_saturation"] = 1.0 if side else 0.08 if low_from <= position < len(layers) - 1 else 0.45
    atomic.write_csv(rundir.metrics_csv, metrics)
    summary = summarize(load_run(rundir))
    assert [(t["first_layer"], t["last_layer"]) for t in summary["tails"]] == [("layer3.0.conv2", "layer4.1.conv2")]
    assert summary["borders"]["b_min"] == "layer3.1.conv1"
    assert summary["agreement"]["b_min"]["offset"] == -1 and summary["agreement"]["b_min"]["agrees"] is True
    assert len(summary["saturation"]["layers"]) == len(layers)  # every tracked layer is still listed
    # a tail's positions index the main path it was found on, which is listed; the tail names its layers
    main_path, [tail] = summary["saturation"]["main_path"], summary["tails"]
    assert main_path == [layer for layer, side in zip(layers, table["side_branch"]) if not side]
    assert tail["layers"] == main_path[tail["start"]:tail["stop"] + 1] and tail["layers"][0] == "layer3.0.conv2"
    # s_μ and its width advice too: the always saturated gates raised it (resnet18_se's gates lowered it)
    values = {layer: (1.0 if side else 0.08 if low_from <= position < len(layers) - 1 else 0.45)
              for position, (layer, side) in enumerate(zip(layers, table["side_branch"]))}
    main = [value for layer, value in values.items() if not table.set_index("layer").loc[layer, "side_branch"]]
    assert summary["saturation"]["mean"] == pytest.approx(sum(main) / len(main))
    assert summary["saturation"]["mean_all_layers"] == pytest.approx(sum(values.values()) / len(values))
    assert summary["saturation"]["mean"] < summary["saturation"]["mean_all_layers"] - 0.05
    # outside the tail, the main path is at 0.45 (the always saturated gates beside it are no part of it)
    assert summary["saturation"]["mean_outside_tails"] == pytest.approx(0.45)


def test_probe_verdicts_read_the_main_path_not_the_side_branches(tmp_path):
    """§10.1.1 leaves side branches out of saturation and probes: resnet18_sa's attention gates and 1×1 shortcuts
    probe low (one channel, a projection) and were named as skipped layers "through shortcuts (App. C)", and one
    that probed high was the best layer and the first to reach the model."""
    from phd_lab.analysis.receptive_field import receptive_fields
    from registries.models import resnet18_sa
    rundir = write_run(tmp_path / "logs", width=0.25, stage="unprobed", resolution=32, test_accuracy=0.93)
    table = receptive_fields(resnet18_sa(num_classes=10, width=0.125), 32)
    atomic.write_csv(rundir.receptive_field_csv, table)
    layers, side = table["layer"].tolist(), table["side_branch"].tolist()
    main = [layer for layer, flag in zip(layers, side) if not flag]
    climb = {layer: 0.4 + 0.53 * position / (len(main) - 1) for position, layer in enumerate(main)}  # to 0.93
    side_layers = [layer for layer, flag in zip(layers, side) if flag]
    assert len(side_layers) > 3 and len(main) > 10
    accuracy = {**climb, **{layer: 0.12 for layer in side_layers}, side_layers[-1]: 0.99}
    atomic.write_csv(rundir.probe_csv, pd.DataFrame(
        [{"index": index, "layer": layer, "eval_acc": accuracy[layer], "relative_acc": accuracy[layer] / 0.93}
         for index, layer in enumerate(layers, 1)]))
    summary = summarize(load_run(rundir))
    probes = summary["probes"]
    assert probes["skipped_layers"] == [] and probes["layers_probed"] == len(layers)
    assert probes["best_layer"] == probes["first_reaching_layer"] == main[-1]
    assert probes["best_accuracy"] == pytest.approx(0.93) and probes["layers_after_reaching"] == 0
    assert not [a for a in summary["recommendations"] if a["text"].startswith("Probe accuracy drops")]


def _with_saturations(tables, values):
    metrics = tables.metrics.copy()
    for layer, value in zip(LAYERS, values):
        metrics[f"{layer}_train_saturation"] = value
    tables.metrics = metrics
    return tables


def test_an_input_tail_is_named_beside_a_border_layer(tmp_path):
    """With a border layer, the advice only said "no tail starting there": a low-saturated tail at the input,
    a symptom of its own (thesis ch. 8.5), went unmentioned."""
    tables = _with_saturations(synthetic_run(tmp_path, BORDER), [0.03] * 3 + [0.4] * 8)
    summary = summarize(tables)
    assert [(t["first_layer"], t["last_layer"]) for t in summary["tails"]] == [("features.0", "features.6")]
    texts = [a["text"] for a in summary["recommendations"] if a["kind"] == "depth"]
    assert len(texts) == 2 and "shows no tail starting there" in texts[0]
    assert texts[1].startswith("A low-saturated tail at the input (features.0 to features.6)")
    # the tail at the border alone still gets the one confirming paragraph
    single = summarize(synthetic_run(tmp_path / "border", BORDER))
    # the rule reads the previous layer's r_min (on a ResNet the input's r_min stays small through the shortcuts)
    assert [a["text"][:67] for a in single["recommendations"] if a["kind"] == "depth"] == \
        ["features.13 and every layer after it on the way to the output recei"]


def test_a_width_to_try_is_never_the_current_width(tmp_path):
    """s_mu just outside the interval gave "width ≈ 0.31 (try 0.25)": the run's own width."""
    tables = _with_saturations(synthetic_run(tmp_path, BORDER), [0.31] * 11)
    [advice] = [a["text"] for a in summarize(tables)["recommendations"] if a["kind"] == "width"]
    assert "by about 1.24, i.e. width ≈ 0.31, moves s_mu" in advice and "try" not in advice
    tables.config = {**tables.config, "model_args": {}}
    [advice] = [a["text"] for a in summarize(tables)["recommendations"] if a["kind"] == "width"]
    assert "multiplying every layer's width by about 1.24, moves" in advice


def test_unusable_saturations_are_named_and_left_out_instead_of_failing_the_analysis(tmp_path):
    """An infinite or negative saturation (a damaged CSV) failed the whole analysis; text was dropped silently."""
    values = [0.35] * 11
    values[1], values[2], values[4] = float("inf"), -0.5, "n/a"
    tables = _with_saturations(synthetic_run(tmp_path, BORDER), values)
    summary = summarize(tables)
    listed = [entry["layer"] for entry in summary["saturation"]["layers"]]
    assert listed == [layer for layer in LAYERS if layer not in ("features.3", "features.6", "features.11")]
    [note] = [p for p in summary["problems"] if p.startswith("Unusable")]
    assert note == "Unusable train saturations left out: features.3 (inf), features.6 (-0.5), features.11 ('n/a')."


def test_a_failed_probe_is_never_the_best_layer(tmp_path):
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full", test_accuracy=0.94)
    probes = pd.read_csv(rundir.probe_csv)
    probes.loc[0, "eval_acc"] = float("nan")
    atomic.write_csv(rundir.probe_csv, probes)
    info = summarize(load_run(rundir))["probes"]
    assert info["best_layer"] == "features.16" and info["best_accuracy"] == pytest.approx(0.94)


def test_a_failed_probe_is_never_the_first_layer_reaching_the_model(tmp_path):
    """A layer whose fit failed (eval_acc NaN) was the "first layer reaching the model" where its relative_acc cell
    held a value (the table edited or written by another tool); every layer failed, and one was still named."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full", test_accuracy=0.94)
    probes = pd.read_csv(rundir.probe_csv)
    first = summarize(load_run(rundir))["probes"]["first_reaching_layer"]
    assert first is not None
    probes.loc[probes["layer"] == first, "eval_acc"] = float("nan")
    atomic.write_csv(rundir.probe_csv, probes)
    assert summarize(load_run(rundir))["probes"]["first_reaching_layer"] not in (first, None)
    probes["eval_acc"] = float("nan")
    atomic.write_csv(rundir.probe_csv, probes)
    info = summarize(load_run(rundir))["probes"]
    assert info["first_reaching_layer"] is None and info["best_layer"] is None


def test_why_there_is_no_border_layer_is_said_as_it_is(tmp_path):
    """"receptive_field.csv is missing" was said also when it could not be used or the resolution was unknown;
    without the table, side branches cannot be told from the main path, which was not said at all."""
    def depth_text(tables):
        return " ".join(a["text"] for a in summarize(tables)["recommendations"] if a["kind"] == "depth")

    tables = synthetic_run(tmp_path, "features.16")
    tables.folder.receptive_field_csv.unlink()
    missing = load_run(tables.folder)
    assert "(no border layer; receptive_field.csv is missing)" in depth_text(missing)
    assert any("side branches (1×1 shortcut convolutions, attention gates) cannot be told" in p
               for p in summarize(missing)["problems"])
    tables.folder.receptive_field_csv.write_text("index,layer\n1,features.0\n")  # lacks columns
    assert "(no border layer; receptive_field.csv cannot be used)" in depth_text(load_run(tables.folder))
    atomic.write_csv(tables.folder.receptive_field_csv, receptive_field_table(32))
    no_resolution = load_run(tables.folder)
    no_resolution.config = {k: v for k, v in no_resolution.config.items() if k != "resolution"}
    assert "(no border layer; the config gives no input resolution)" in depth_text(no_resolution)


def test_the_advice_of_an_unfinished_run_says_it_is_provisional(tmp_path):
    rundir = write_run(tmp_path / "logs", width=0.5, stage="running")  # 1 of 3 epochs, no process holds it
    advice = summarize(load_run(rundir))["recommendations"]
    assert advice[0]["kind"] == "provisional"
    assert advice[0]["text"].startswith("Training is not finished (stopped 1/3 epochs): everything below describes "
                                        "the network after epoch 1")


def test_the_summary_says_since_which_epoch_the_last_tail_shows(tmp_path):
    """analysis.json's saturation.last_tail_since_epoch, from the metrics CSV's epochs (a tail from epoch 2 on)."""
    tables = synthetic_run(tmp_path, BORDER)
    first = tables.metrics["epoch"] == tables.metrics["epoch"].min()
    for layer in LAYERS:  # epoch 1 without the tail
        tables.metrics.loc[first, f"{layer}_train_saturation"] = 0.35
    summary = summarize(tables)
    assert len(tables.metrics) == 3 and summary["saturation"]["last_tail_since_epoch"] == 2
    tables.metrics.loc[first, f"{LAYERS[0]}_train_saturation"] = float("nan")  # epoch 1 cannot be compared
    assert summarize(tables)["saturation"]["last_tail_since_epoch"] == 2
    for layer in LAYERS:
        tables.metrics[f"{layer}_train_saturation"] = 0.35  # no tail at all
    assert summarize(tables)["saturation"]["last_tail_since_epoch"] is None


def test_since_which_epoch_the_tail_closest_to_the_output_shows_not_the_first_tail(tmp_path):
    """Two tails, at the input (features.0-6, every epoch) and before the classifier (features.16-classifier.0,
    from epoch 2 on; 5 layers at 0.5 in between and after): last_tail_since_epoch is the latter's, 2, not 1."""
    tables = synthetic_run(tmp_path, BORDER)
    for layer in LAYERS:
        tables.metrics[f"{layer}_train_saturation"] = 0.5
    for layer in LAYERS[:3]:
        tables.metrics[f"{layer}_train_saturation"] = 0.05
    later = tables.metrics["epoch"] >= 2
    for layer in LAYERS[6:9]:
        tables.metrics.loc[later, f"{layer}_train_saturation"] = 0.05
    summary = summarize(tables)
    assert [(t["first_layer"], t["last_layer"]) for t in summary["tails"]] == [
        ("features.0", "features.6"), ("features.16", "classifier.0")]
    assert summary["saturation"]["last_tail_since_epoch"] == 2


def test_an_epoch_with_a_main_path_layer_without_value_is_skipped_not_read_as_zero(tmp_path):
    """The last tail shows in epochs 1 and 3; epoch 2 lacks the saturation of a main-path layer, so it is left out
    (positions of a shorter sequence would not compare) and the tail shows since epoch 1. Read as 0, that layer
    pulled the rest's mean (5 x 0.35 + 0) / 6 = 0.29 down so far that epoch 2's tail layers at 0.16 were no longer
    50% below it (0.16 > 0.146): no tail in epoch 2, and the tail would show only since epoch 3."""
    tables = synthetic_run(tmp_path, BORDER)  # tail BORDER..classifier.3 at 0.03, the other 6 layers at 0.35
    second = tables.metrics["epoch"] == 2
    for layer in LAYERS[LAYERS.index(BORDER):-1]:
        tables.metrics.loc[second, f"{layer}_train_saturation"] = 0.16  # 0.16 <= 0.5 * 0.35: still a tail
    tables.metrics.loc[second, f"{LAYERS[0]}_train_saturation"] = float("nan")
    assert len(tables.metrics) == 3
    assert summarize(tables)["saturation"]["last_tail_since_epoch"] == 1


def test_every_layer_of_a_dip_below_the_best_earlier_probe_is_skipped(tmp_path):
    """A layer is skipped when its probe lies probe_drop_tolerance below the best probe of any earlier layer
    (App. C), not just below its predecessor: in a dip over two layers (0.86, then 0.70 and 0.75) the second one,
    which rises over the first, still lies below 0.86, and both are skipped."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full", test_accuracy=0.94)
    probes = pd.read_csv(rundir.probe_csv)
    accuracy = [0.45, 0.58, 0.7, 0.79, 0.86, 0.7, 0.75, 0.9, 0.93, 0.935, 0.94]
    probes["eval_acc"] = accuracy
    probes["relative_acc"] = [value / 0.94 for value in accuracy]
    atomic.write_csv(rundir.probe_csv, probes)
    info = summarize(load_run(rundir))["probes"]
    assert LAYERS[4:7] == ["features.11", "features.13", "features.16"]
    assert info["skipped_layers"] == ["features.13", "features.16"]
    assert info["best_layer"] == "classifier.6"


def test_a_probe_exactly_at_the_tolerance_reaches_the_model(tmp_path):
    """A probe reaches the model at relative accuracy >= 1 - probe_tolerance: a layer at exactly 0.99 (the
    default tolerance 0.01) is the first reaching layer, not the next one above it."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full", test_accuracy=0.94)
    assert summarize(load_run(rundir))["probes"]["first_reaching_layer"] == BORDER
    probes = pd.read_csv(rundir.probe_csv)
    probes.loc[probes["layer"] == "features.11", "relative_acc"] = 0.99
    atomic.write_csv(rundir.probe_csv, probes)
    info = summarize(load_run(rundir))["probes"]
    assert info["first_reaching_layer"] == "features.11"
    assert info["layers_after_reaching"] == len(LAYERS) - 1 - LAYERS.index("features.11")


def test_probes_of_all_but_one_extracted_layer_are_partial(tmp_path):
    """The probe job fits every layer the manifest lists; a table one layer short (the job stopped before the
    last fit) is reported as partial, not as complete."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full")
    probes = pd.read_csv(rundir.probe_csv)
    atomic.write_csv(rundir.probe_csv, probes.iloc[:-1])
    info = summarize(load_run(rundir))["probes"]
    assert info["status"] == f"partial ({len(LAYERS) - 1} of {len(LAYERS)})"
    assert info["layers_probed"] == len(LAYERS) - 1 and info["layers_extracted"] == len(LAYERS)


def test_no_width_advice_with_s_mu_on_the_edge_of_the_target_interval(tmp_path):
    """The interval is closed: s_mu exactly at its low end (20%) or its high end (here a band [12.5%, 25%]) is
    inside, and no width change is advised."""
    tables = _with_saturations(synthetic_run(tmp_path, BORDER), [0.2] * 11)
    summary = summarize(tables)
    assert summary["saturation"]["mean"] == 0.2 and not summary["tails"]
    assert not [a for a in summary["recommendations"] if a["kind"] == "width"]
    tables = _with_saturations(tables, [0.25] * 11)
    tables.config = {**tables.config, "target_saturation": [0.125, 0.25]}
    summary = summarize(tables)
    assert summary["saturation"]["mean"] == 0.25
    assert not [a for a in summary["recommendations"] if a["kind"] == "width"]
    below = AnalysisSettings(target_saturation=(0.125, 0.2))  # the band is what decides: above this one
    assert [a for a in summarize(tables, below)["recommendations"] if a["kind"] == "width"]


def test_no_width_advice_when_rounding_moves_s_mu_just_off_the_edge(tmp_path):
    """Saturations that average exactly 20% (or 40%) can sum to a float just under (over) it: that is still the
    edge of the interval, not a network "wider than needed" (or "too narrow")."""
    def width_advice(tables):
        return [a for a in summarize(tables)["recommendations"] if a["kind"] == "width"]
    low_edge = [0.1, 0.5625, 0.3, 0.125, 0.1875, 0.3, 0.2, 0.0625, 0.1875, 0.0625, 0.1125]  # 2.2 / 11 layers
    tables = _with_saturations(synthetic_run(tmp_path, BORDER), low_edge)
    assert summarize(tables)["saturation"]["mean"] < 0.2  # the float mean, 0.19999999999999998
    assert not width_advice(tables)
    high_edge = [0.6, 0.5, 0.1, 0.375, 0.125, 0.3, 0.6, 0.75, 0.6, 0.25, 0.2]  # 4.4 / 11 layers
    tables = _with_saturations(tables, high_edge)
    tables.config = {**tables.config, "target_saturation": [0.2, 0.4]}
    assert summarize(tables)["saturation"]["mean"] > 0.4  # 0.40000000000000013
    assert not width_advice(tables)
    # a real step off either edge still gets its advice
    assert "too narrow" in width_advice(_with_saturations(tables, [0.401] * 11))[0]["text"]
    assert "wider than needed" in width_advice(_with_saturations(tables, [0.1999] * 11))[0]["text"]


def test_a_real_pixelwise_run_is_analysed_and_reported_per_layer_as_the_mean_of_its_positions(tmp_path):
    """A pixelwise probe table (a row per feature-map position, <layer>@<row>_<col>) was read as if every position
    were a layer: "Probe accuracy drops at body.0@0_2, body.0@1_3, ...", the best layer and the first to reach the
    model a position, "partial (n of m)" counting positions. The analysis, its advice, analysis.json and the report
    now speak of layers, each with the mean over its positions, in forward order, as the run figure draws them."""
    import csv
    import re
    import statistics

    from phd_lab.analysis.run_tables import run_folder
    from phd_lab.extraction import extract_latents
    from phd_lab.probes.cli import probe_cli
    from phd_lab.report.cli import write_report
    from tests._extraction_models import build_model, loaders
    run = run_folder(tmp_path / "logs" / "Small" / "Digits_2" / "r" / "pixelwise")
    extract_latents(build_model(), loaders(resolution=2), run.root / "latents", run_dir=run.root,
                    downsampling="pixelwise", layers=["body.0", "body.4", "head"], test_accuracy=0.5, progress=False)
    assert probe_cli(["--latents", str(run.root / "latents"), "-mp", "0", "--solver", "lbfgs", "--train-samples", "200",
                      "--no-progress", "-q"]) == 0
    with open(run.probe_csv, newline="") as table:
        rows = list(csv.DictReader(table))
    positions: dict[str, list[float]] = {}
    for row in rows:
        positions.setdefault(row["layer"].split("@")[0], []).append(float(row["eval_acc"]))
    assert len(rows) == 4 + 1 + 1 and list(positions) == ["body.0", "body.4", "head"]
    means = {layer: statistics.fmean(values) for layer, values in positions.items()}

    # any layer reaches the model, any drop counts: the old reading named a position in both verdicts
    summary = summarize(load_run(run), AnalysisSettings(probe_tolerance=1.0, probe_drop_tolerance=0.0))
    probes = summary["probes"]
    assert probes["eval_acc_by_layer"] == pytest.approx(means) and list(probes["eval_acc_by_layer"]) == list(means)
    assert probes["pixelwise"] is True and probes["status"] == "complete"
    assert (probes["layers_probed"], probes["layers_extracted"]) == (3, 3)
    assert probes["first_reaching_layer"] == "body.0" and probes["layers_after_reaching"] == 2
    best = max(means, key=means.get)
    assert probes["best_layer"] == best and probes["best_accuracy"] == pytest.approx(means[best])
    expected_drops = [layer for number, layer in enumerate(means) if means[layer] < max(list(means.values())[:number],
                                                                                         default=-1.0)]
    assert probes["skipped_layers"] == expected_drops
    position = re.compile(r"\w@\d+_\d+")
    assert not position.search(json.dumps(summary["probes"])) and not position.search(
        json.dumps(summary["recommendations"]))

    report = write_report(tmp_path / "logs", tmp_path / "report.html", processes=0)
    analysis = read_json(run.root / "analysis.json")
    assert analysis["probes"]["eval_acc_by_layer"] == pytest.approx(means)
    assert not position.search(json.dumps(analysis["probes"])) and not position.search(
        json.dumps(analysis["recommendations"]))
    page = report.read_text(encoding="utf-8")
    assert "the mean over its feature-map positions" in page and not position.search(page)


def test_a_pixelwise_table_probed_in_part_counts_layers_and_says_how_many_probes_it_has(tmp_path):
    tables = load_run(write_run(tmp_path / "logs", width=0.25, stage="full"))
    names = [f"features.0@{r}_{c}" for r in range(2) for c in range(2)] + ["classifier.0"]
    tables.manifest = {"model_test_accuracy": 0.9, "layers": [{"index": 1, "name": name} for name in names]}
    tables.probes = pd.DataFrame({"index": 1, "layer": names[:3], "train_acc": 1.0, "eval_acc": [0.3, 0.6, 0.9]})
    probes = summarize(tables)["probes"]
    assert probes["status"] == "partial (1 of 2 layers; 3 of 5 probes)"
    assert (probes["layers_probed"], probes["layers_extracted"]) == (1, 2)
    assert probes["eval_acc_by_layer"] == pytest.approx({"features.0": 0.6}) and probes["best_layer"] == "features.0"


def test_the_estimated_truncation_head_reads_the_width_of_the_layer_before_the_border(tmp_path):
    """VGG11 at ¼ width and 24 px: the border is features.11 (128 channels); the new GAP + linear head reads the
    output of features.8 before it, 256 · ¼ = 64 channels: Linear(64 → 10), 650 parameters, 2 · 650 FLOPs (the
    flops step's count of that Linear: its bias too, which the estimate left out)."""
    tables = synthetic_run(tmp_path, "features.11", resolution=24)
    for name, _, _, width, _ in layout(0.25):  # k and s = k / d as the tracker writes them, d the layer's width
        k = tables.metrics[f"{name}_train_saturation"].mul(width).round().clip(lower=1)
        tables.metrics[f"{name}_train_intrinsic_dimension"], tables.metrics[f"{name}_train_saturation"] = k, k / width
    summary = summarize(tables)
    assert summary["borders"]["b_min"] == "features.11"
    truncation = summary["truncation"]
    assert truncation["exact"] is False and truncation["removed_layers"] == LAYERS[LAYERS.index("features.11"):]
    assert truncation["head_params"] == 64 * 10 + 10 and truncation["head_flops"] == 2 * (64 * 10 + 10)
    removed = computational_table(0.25, 24).iloc[LAYERS.index("features.11"):]
    assert truncation["params_saved"] == removed["params"].sum() - 650


def test_feature_dimensions_derived_from_k_and_saturation_are_rounded_not_cut():
    """A metrics CSV has k and s = k / d but not d: d = k / s, which floats put just below d for k = 9, d = 14
    (9 / (9 / 14) = 13.999...), so truncating it gave 13."""
    from phd_lab.analysis.run_summary import layer_saturations
    pairs = {"a": (9, 14), "b": (7, 25), "c": (20, 29), "d": (3, 4)}
    row = {"epoch": 1}
    for layer, (k, d) in pairs.items():
        row[f"{layer}_train_saturation"], row[f"{layer}_train_intrinsic_dimension"] = k / d, k
    table = layer_saturations(pd.DataFrame([row]), "train")
    assert table["layer"].tolist() == list(pairs)
    assert table["feature_dimension"].tolist() == [d for _, d in pairs.values()]
    assert table["intrinsic_dimension"].tolist() == [k for k, _ in pairs.values()]



def test_derived_feature_dimensions_sort_the_epoch_rows_once_and_keep_every_value(monkeypatch):
    """Each layer whose d is derived (k / s) sorted and copied the whole metrics table again (``_epoch_rows``): L
    layers cost L copies of an L-column table, a fifth of a report's time over hundreds of runs. The rows are now
    sorted once per table; every d is still that of the last usable epoch (epochs out of order, one written twice, a
    damaged epoch cell, s = 0 in the last epoch, a layer whose d comes from the other split)."""
    from phd_lab.analysis import run_summary
    rows = []
    for epoch, scale in ((2, 2.0), (1, 1.0), (2, 4.0), ("x", 8.0), (3, 3.0)):  # the second epoch 2 counts
        row = {"epoch": epoch}
        for number, layer in enumerate(("a", "b", "c", "d"), 1):
            d = 10 * number + int(scale)
            row[f"{layer}_train_saturation"], row[f"{layer}_train_intrinsic_dimension"] = 3 / d, 3
            row[f"{layer}_test_saturation"], row[f"{layer}_test_intrinsic_dimension"] = 5 / d, 5
        rows.append(row)
    rows[-1]["b_train_saturation"], rows[-1]["b_train_intrinsic_dimension"] = 0.0, 0  # d from epoch 2 (scale 4)
    for row in rows:  # no train value in any epoch: d from the test split's last epoch
        row["d_train_intrinsic_dimension"] = float("nan")
    rows[-1]["d_train_saturation"] = 0.0
    metrics = pd.DataFrame(rows)
    calls = []
    epoch_rows = run_summary._epoch_rows
    monkeypatch.setattr(run_summary, "_epoch_rows", lambda frame: calls.append(1) or epoch_rows(frame))
    table = run_summary.layer_saturations(metrics, "train")
    assert table["layer"].tolist() == ["a", "b", "c", "d"]
    assert table["feature_dimension"].tolist() == [13, 24, 33, 43]
    assert table["intrinsic_dimension"].tolist() == [3, 0, 3, None]
    assert len(calls) == 1, calls  # the last epoch's row and every derived d read the same sorted rows


def test_probes_of_latents_an_older_phd_lab_extracted_are_reported_stale(tmp_path):
    """A trained run whose latents a phd-lab before extraction version 2 extracted (manifest without
    extraction_version: feature maps smaller than downsampling up-sampled) had the probes fitted on them read as
    current by the analysis and the report (verdicts, advice, figure), beside runs of this version's latents."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full", skip="features.16")  # the old manifest's keys
    assert "extraction_version" not in read_json(rundir.latents() / "manifest.json")
    assert summarize(load_run(rundir))["probes"]["status"] == "complete"  # own latents: no checkpoint beside them
    rundir.checkpoint.write_bytes(b"checkpoint")  # a trained run: the extract step made its latents
    summary = summarize(load_run(rundir))
    probes = summary["probes"]
    assert probes["status"].startswith("stale (fitted on latents an older phd-lab extracted")
    assert probes["first_reaching_layer"] is None and probes["skipped_layers"] == [] and probes["best_layer"] is None
    advice = [a["text"] for a in summary["recommendations"] if a["kind"] == "probes"]
    assert len(advice) == 1 and "rerun main.py, which extracts them again" in advice[0]
    import matplotlib.pyplot as plt

    from phd_lab.plots.run_figure import draw_run_figure
    figure = draw_run_figure(load_run(rundir), summary)
    labels = {text for ax in figure.axes for text in ax.get_legend_handles_labels()[1]}
    plt.close(figure)
    assert "probe accuracy (eval), stale: older extraction" in labels
    manifest = rundir.latents() / "manifest.json"
    stamp = manifest.stat()  # the same latents, not extracted again after the probes
    atomic.write_json(manifest, {**read_json(manifest), "extraction_version": 2})  # extracted as this version does
    os.utime(manifest, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert summarize(load_run(rundir))["probes"]["status"] == "complete"


def test_a_layer_without_variance_keeps_its_feature_dimension_and_every_dimension_is_a_whole_number(tmp_path):
    """The CSV holds s and k, and d was read as k / s: a layer at s = 0 (dead units, a collapsed output) lost its d
    (None), which turned every d of analysis.json into a float (16.0). Its d comes from the split or epoch where it
    had variance, and the dimensions stay ints."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="unprobed")
    metrics = pd.read_csv(rundir.metrics_csv)
    last = LAYERS[-1]
    expected = round(metrics[f"{last}_test_intrinsic_dimension"].iloc[-1] / metrics[f"{last}_test_saturation"].iloc[-1])
    metrics[f"{last}_train_saturation"] = 0.0
    metrics[f"{last}_train_intrinsic_dimension"] = 0
    atomic.write_csv(rundir.metrics_csv, metrics)
    layers = summarize(load_run(rundir))["saturation"]["layers"]
    assert layers[-1] == {"layer": last, "saturation": 0.0, "intrinsic_dimension": 0, "feature_dimension": expected}
    assert all(type(entry[key]) is int for entry in layers for key in ("intrinsic_dimension", "feature_dimension"))


@pytest.mark.parametrize("damage", ["cut", "binary"])
def test_a_damaged_probe_table_is_called_damaged_not_pending(tmp_path, damage):
    """A probe_performances.csv cut short in its header (or not text at all) left the report's table saying
    "pending (latents extracted)", as if the probe job had never run; only the run's own section named the file."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full")
    table = rundir.root / "probe_performances.csv"
    table.write_bytes(table.read_bytes()[:30] if damage == "cut" else b"\xff\xfe\x00garbage")
    summary = summarize(load_run(rundir))
    assert summary["probes"]["status"] == ("damaged (probe_performances.csv cannot be used; rerun probe_main.py, "
                                           "which rewrites it from its cache)"), summary["probes"]
    assert any(problem.startswith("probe_performances.csv") for problem in summary["problems"])
    table.unlink()
    assert summarize(load_run(rundir))["probes"]["status"] == "pending (latents extracted)"


def test_the_estimated_truncation_head_counts_its_linear_as_the_flops_step_counts_the_measured_head(tmp_path):
    """The estimate's head FLOPs are those computational_info gives a real Linear(64 → 10) (bias included), and
    differ from the head the flops step measures on the truncated VGG11 (¼ width, 24 px) only by the GAP it leaves
    out, one MAC per element of the 64 × 6 × 6 map at the cut."""
    from torch import nn

    from phd_lab.analysis.flops import computational_info
    from phd_lab.models.truncate import truncation_savings
    from registries.models import vgg11

    tables = synthetic_run(tmp_path, "features.11", resolution=24)
    for name, _, _, width, _ in layout(0.25):
        k = tables.metrics[f"{name}_train_saturation"].mul(width).round().clip(lower=1)
        tables.metrics[f"{name}_train_intrinsic_dimension"], tables.metrics[f"{name}_train_saturation"] = k, k / width
    estimate = summarize(tables)["truncation"]
    assert estimate["exact"] is False
    linear_info, _ = computational_info(nn.Linear(64, 10), (64,))
    assert estimate["head_flops"] == linear_info["flops"] == 2 * 650
    measured = truncation_savings(vgg11(num_classes=10, width=0.25), "features.11", num_classes=10, in_channels=3,
                                  input_resolution=24)
    assert measured["head_params"] == estimate["head_params"]
    assert measured["head_flops"] - estimate["head_flops"] == 2 * 64 * 6 * 6
