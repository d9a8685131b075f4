"""The probe job's confusion plots: drawn on kept figures, byte for byte as if each were drawn alone."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from phd_lab.plots.grid_figures import wrapped_title  # noqa: E402
from phd_lab.plots.probes import ConfusionPlots  # noqa: E402
from phd_lab.probes.discovery import jobs_from_latents  # noqa: E402
from phd_lab.probes.job import run_jobs  # noqa: E402
from phd_lab.probes.outputs import confusion_png  # noqa: E402
from phd_lab.report.figure_reuse import drawing_versions  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.probe_latents import blob_layers, make_latents  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _normalised(rng: np.random.Generator, classes: int) -> np.ndarray:
    matrix = rng.random((classes, classes))
    return matrix / matrix.sum(axis=1, keepdims=True)


def test_a_plot_on_a_kept_figure_is_the_plot_drawn_alone():
    rng = np.random.default_rng(0)
    ten, three, last = _normalised(rng, 10), _normalised(rng, 3), _normalised(rng, 10)
    with ConfusionPlots() as kept:
        first = kept.png(ten, range(10), "features.0 (eval acc 0.500)")
        kept.png(three, [2, 5, 7], "a much longer title " * 6)  # another class list: a second figure
        drawn = kept.png(last, range(10), "features.1 (eval acc 0.900)")
    with ConfusionPlots() as alone:
        assert drawn == alone.png(last, range(10), "features.1 (eval acc 0.900)")
    assert drawn[:8] == PNG and drawn != first
    with ConfusionPlots() as kept:  # the same title and classes: only the matrix tells the plots apart
        assert kept.png(ten, range(10), "features.0") != kept.png(last, range(10), "features.0")
    width, height = Image.open(io.BytesIO(drawn)).size  # 4.1 inches at 100 dpi: matplotlib 3.7 truncates to 409
    assert width == 440 and abs(height - 410) <= 1


def test_a_plot_drawn_from_the_kept_pixels_equals_matplotlibs_full_drawing():
    """Only the image, the frame and the title are drawn per plot, over the kept pixels of the rest (3x faster):
    the bytes must equal those of savefig, which draws the whole figure, for any class list and title."""
    rng = np.random.default_rng(1)
    cases = [(range(10), "features.0 (eval\u00a0acc\u00a00.500)"), ([2, 5, 7], "a much longer title " * 6),
             (range(100), "x" * 200 + " (eval\u00a0acc\u00a00.431)"), (range(100, 112), "three-digit classes")]
    with ConfusionPlots() as plots:
        for classes, title in cases * 2:  # the second time on the kept figures
            drawn = plots.png(_normalised(rng, len(classes)), classes, title)
            full = io.BytesIO()
            plots._figure(tuple(classes))[0].figure.savefig(full, format="png", dpi=ConfusionPlots.DPI)
            assert drawn == full.getvalue(), (len(classes), title)


def test_the_plots_open_no_pyplot_figure_and_closing_frees_their_own():
    """The figures are drawn outside pyplot (a notebook's open figures and backend are left alone), and closing
    frees the kept ones."""
    before = set(plt.get_fignums())
    plots = ConfusionPlots()
    plots.png(np.eye(3), [0, 1, 2], "a")
    plots.png(np.eye(4), [0, 1, 2, 3], "b")
    figures = [ax.figure for ax, _, _ in plots._figures.values()]
    assert len(figures) == 2 and set(plt.get_fignums()) == before
    plots.close()
    assert not plots._figures and all(not figure.axes for figure in figures)


def test_long_titles_wrap_into_three_lines_and_keep_their_end():
    assert wrapped_title("features.0 (eval\u00a0acc\u00a00.992)", 46) == "features.0 (eval\u00a0acc\u00a00.992)"
    name = "features.denseblock4.denselayer16.conv2@(12, 5)"
    assert wrapped_title(f"{name} (eval\u00a0acc\u00a00.431)", 46).split("\n") == [
        "features.denseblock4.denselayer16.conv2@(12,", "5) (eval\u00a0acc\u00a00.431)"]
    lines = wrapped_title("x" * 200 + " (eval\u00a0acc\u00a00.431)", 46).split("\n")
    assert len(lines) == 3 and lines[0].startswith("…") and lines[-1].endswith("(eval\u00a0acc\u00a00.431)")
    assert all(len(line) <= 46 for line in lines)
    three = "a" * 40 + " " + "b" * 40 + " " + "c" * 40  # exactly three lines: nothing is cut
    assert wrapped_title(three, 46).split("\n") == ["a" * 40, "b" * 40, "c" * 40]


def test_many_classes_get_about_twenty_labelled_ticks():
    """A 100-class confusion plot labels every fifth class: all 100 labels would overlap, 5 say too little."""
    from phd_lab.plots.probes import _label_confusion_axes
    figure, ax = plt.subplots()
    try:
        _label_confusion_axes(ax, list(range(100)))
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(c) for c in range(0, 100, 5)]
        assert len(ax.get_yticks()) == 20
    finally:
        plt.close(figure)


def test_the_accuracy_plot_draws_the_layers_in_forward_order_whatever_the_tables_row_order():
    """A table read back from a CSV written in another order (or concatenated from sets) must still draw layer 1
    first: the plot is read as a curve over depth."""
    import pandas as pd

    from phd_lab.plots.probes import plot_probe_accuracy
    table = pd.DataFrame({"index": [3, 1, 2], "layer": ["c", "a", "b"], "train_acc": [0.9, 0.5, 0.7],
                          "eval_acc": [0.8, 0.4, 0.6]})
    ax = plot_probe_accuracy(table, model_accuracy=0.85)
    try:
        train, evaluation = ax.lines[0], ax.lines[1]
        assert list(evaluation.get_ydata()) == [0.4, 0.6, 0.8] and list(train.get_ydata()) == [0.5, 0.7, 0.9]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    finally:
        plt.close(ax.figure)


def test_a_job_s_confusion_plots_are_each_layer_s_drawn_alone(tmp_path):
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=3))
    before = set(plt.get_fignums())
    jobs, _ = jobs_from_latents(latents, {"solver": "lbfgs"})
    records = run_jobs(jobs, tmp_path / "cache", workers=0, progress=False)[0]
    assert set(plt.get_fignums()) == before  # the job's kept figures are closed
    assert len(records) == 3
    for record in records:  # the job's records let their matrices go once written: the .npy holds it
        stem = f"{record.index:03d}-{record.layer}"
        matrix = np.load(run_dir / "probe_confusion" / f"{stem}.npy", allow_pickle=False)
        written = (run_dir / "probe_confusion" / f"{stem}.png").read_bytes()
        assert written == confusion_png(replace(record, confusion=matrix))


def test_a_job_s_accuracy_plot_names_the_run_in_its_title(tmp_path):
    """Every other figure of a run folder names its run; probe_performances.png said only 'Logistic-regression
    probes (lbfgs)', so a copy of it, or one beside another run's, could not be told apart."""
    import pandas as pd

    from phd_lab.plots.probes import plot_probe_accuracy, save_probe_accuracy_plot
    run_dir, latents = make_latents(tmp_path, *blob_layers(n_layers=2))
    jobs, _ = jobs_from_latents(latents, {"solver": "lbfgs"})
    run_jobs(jobs, tmp_path / "cache", workers=0, progress=False)
    [job] = jobs
    table = pd.read_csv(job.outputs.probe_csv)
    accuracy = job.manifest.model_test_accuracy
    run = f"{job.outputs.name}\n{run_dir.parent.name}/{run_dir.name}"  # the run's name, then its variant folder
    save_probe_accuracy_plot(table, accuracy, tmp_path / "named.png", run=run)
    save_probe_accuracy_plot(table, accuracy, tmp_path / "unnamed.png")
    written = job.outputs.probe_plot.read_bytes()
    assert written == (tmp_path / "named.png").read_bytes() != (tmp_path / "unnamed.png").read_bytes()
    ax = plot_probe_accuracy(table, accuracy, run=run)
    try:
        assert ax.get_title() == f"{run}\nLogistic-regression probes (lbfgs)"
    finally:
        plt.close(ax.figure)


def test_a_long_run_variant_is_wrapped_to_the_figure_s_width():
    """A variant folder's name (up to 97 characters) ran out of the narrowest probe figure (6 inches): it is wrapped,
    each title line within what 12-point text fits across the figure, nothing dropped but the start beyond two
    lines."""
    import pandas as pd

    from phd_lab.plots.probes import plot_probe_accuracy
    table = pd.DataFrame({"index": [0, 1], "layer": ["a", "b"], "train_acc": [0.5, 0.6], "eval_acc": [0.4, 0.5]})
    variant = "0/bs64-e3-adam-s1960566561-width0.25-lr0.001-momentum0.9-weight_decay0.0005-nesterovtrue-faf9265d"
    ax = plot_probe_accuracy(table, run=f"vgg11-Digits-r32-bs64-e3\n{variant}")
    try:
        name, *wrapped, what = ax.get_title().split("\n")
        assert name == "vgg11-Digits-r32-bs64-e3" and what == "Logistic-regression probes"
        assert "".join(wrapped) == variant and len(wrapped) == 2
        assert all(len(line) <= ax.figure.get_size_inches()[0] * 72 / (0.6 * 12) for line in wrapped)
    finally:
        plt.close(ax.figure)


def test_a_pixelwise_tables_thousands_of_positions_keep_the_accuracy_plot_viewable():
    """A pixelwise job (configs/thesis/09_3: VGG16 at 32 px, about 2,800 positions) drew probe_performances.png
    91,802 pixels wide with a label per position; a layer table of ordinary depth keeps a label per layer."""
    import pandas as pd

    from phd_lab.plots.probes import plot_probe_accuracy, plot_probe_sets
    sides = [32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2]
    positions = pd.DataFrame([{"index": n + 1, "layer": f"features.{n}@{r}_{c}", "train_acc": 0.9, "eval_acc": 0.8}
                              for n, side in enumerate(sides) for r in range(side) for c in range(side)])
    ax = plot_probe_sets([("pixelwise", "nearest", positions)])
    try:
        names, ticks = [t.get_text() for t in ax.get_xticklabels()], ax.get_xticks()
        assert ax.figure.get_figwidth() <= 60 and len(positions) == 2812 and 0 < len(names) <= 2812 // 10
        assert names == [positions["layer"][int(tick)] for tick in ticks] and ticks[0] == 0
    finally:
        plt.close(ax.figure)
    layers = pd.DataFrame({"index": range(121), "layer": [f"l{n}" for n in range(121)], "train_acc": 0.9,
                           "eval_acc": 0.8})  # a DenseNet121's worth of layers: every one named
    ax = plot_probe_accuracy(layers)
    try:
        assert [t.get_text() for t in ax.get_xticklabels()] == layers["layer"].tolist()
    finally:
        plt.close(ax.figure)


def test_no_two_class_labels_of_a_confusion_plot_overlap_whatever_the_number_of_classes():
    """From 21 to 39 classes every class was labelled (the step was ``classes // 20``, 1) and the labels of a
    30-class plot ran into each other on both axes: measured on the kept figure as drawn, no two tick labels of
    an axis overlap, and at most 20 are labelled."""
    for count in (10, 20, 30, 39, 21, 40, 99, 100, 101, 1000):
        with ConfusionPlots() as plots:
            plots.png(np.eye(count), list(range(count)), "features.11 (eval acc 0.992)")
            [(ax, _, _)] = plots._figures.values()
            renderer = ax.figure.canvas.get_renderer()
            for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
                boxes = [label.get_window_extent(renderer) for label in labels if label.get_text()]
                touching = [(a, b) for a, b in zip(labels, labels[1:]) if a.get_window_extent(renderer).overlaps(
                    b.get_window_extent(renderer))]
                assert not touching, (count, [(a.get_text(), b.get_text()) for a, b in touching])
                assert 1 < len(boxes) <= 20, count


def test_the_colour_bar_of_a_confusion_plot_says_what_its_colours_measure():
    """The colour bar ran from 0 to 1 without a word: counts, a fraction of the whole matrix or of a row (it is
    row-normalised) were the reader's guess. It is labelled, and the label lies inside the figure."""
    with ConfusionPlots() as plots:
        plots.png(np.eye(10), list(range(10)), "features.11 (eval acc 0.992)")
        [(ax, _, _)] = plots._figures.values()
        [bar] = [other for other in ax.figure.axes if other is not ax]
        assert bar.get_ylabel() == "fraction of the true class"
        box = bar.yaxis.label.get_window_extent(ax.figure.canvas.get_renderer())
        width, height = ax.figure.canvas.get_width_height()
        assert 0 <= box.x0 and box.x1 <= width and 0 <= box.y0 and box.y1 <= height


def test_long_class_labels_and_titles_stay_inside_the_figure():
    """The fixed layout replaced a tight bounding box: it must leave room for labels of up to 8 characters
    (class ids like -1000000 or ImageNet-21k's 5 digits) and three title lines."""
    for classes in ([3, 7], list(range(10)), list(range(20_000, 20_030)), list(range(-1_000_000, -999_990))):
        with ConfusionPlots() as plots:
            plots.png(np.eye(len(classes)), classes, "features.denseblock4.denselayer16.conv2@(12, 5) " * 2
                      + "(eval\u00a0acc\u00a00.431)")
            [(ax, _, _)] = plots._figures.values()
            figure = ax.figure
            renderer = figure.canvas.get_renderer()
            width, height = figure.canvas.get_width_height()
            texts = [text for ax in figure.axes for text in (ax.title, ax.xaxis.label, ax.yaxis.label,
                                                             *ax.get_xticklabels(), *ax.get_yticklabels())
                     if text.get_text()]
            assert len(texts) >= 6
            for text in texts:
                box = text.get_window_extent(renderer)
                assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, (classes, text)


def test_a_pixelwise_accuracy_plot_draws_each_layer_as_the_mean_of_its_positions_with_their_range():
    """The probe job's probe_performances.png drew a pixelwise table (configs/thesis/09_3: about 2,800 positions)
    as one point per position, every n-th position named, while the analysis, the report and the run figure read
    each layer as the mean over its positions: now it draws that mean per layer in forward order, a label per
    layer, and the band from the layer's lowest to its highest position."""
    import pandas as pd

    from phd_lab.plots.probes import plot_probe_accuracy
    rng = np.random.default_rng(0)
    sides = [32, 16, 8, 4, 2]
    rows = [{"index": n + 1, "layer": f"features.{n}@{r}_{c}", "train_acc": rng.random(), "eval_acc": rng.random(),
             "solver": "saga"} for n, side in enumerate(sides) for r in range(side) for c in range(side)]
    rows.append({"index": 6, "layer": "classifier", "train_acc": 0.95, "eval_acc": 0.9, "solver": "saga"})
    positions = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # row order is not forward order
    ax = plot_probe_accuracy(positions, 0.9, run="run-a")
    try:
        layers = [f"features.{n}" for n in range(len(sides))] + ["classifier"]
        assert [t.get_text() for t in ax.get_xticklabels()] == layers
        of_layer = positions["layer"].str.replace(r"@.*", "", regex=True)
        for column, line in (("train_acc", ax.lines[0]), ("eval_acc", ax.lines[1])):
            expected = [positions[column][of_layer == layer].mean() for layer in layers]
            np.testing.assert_allclose(line.get_ydata(), expected, rtol=0, atol=1e-12)
        [band] = ax.collections
        vertices = band.get_paths()[0].vertices
        for number, layer in enumerate(layers):  # the band spans the layer's lowest to highest position
            at_layer = vertices[np.isclose(vertices[:, 0], number), 1]
            values = positions["eval_acc"][of_layer == layer]
            assert (at_layer.min(), at_layer.max()) == (values.min(), values.max())
        assert ax.get_title() == "run-a\nPixelwise logistic-regression probes (saga)"
        assert ax.figure.get_figwidth() < 10
    finally:
        plt.close(ax.figure)


def test_probe_sets_differ_by_more_than_hue_and_the_model_accuracy_line_is_none_of_them():
    """The sets of a panel differed only by their viridis colour and the model's accuracy was a black solid line
    like the first, darkest set's: in grayscale or to a colour-blind reader they were one kind of line. Each set
    now has a line style and marker of its own, and the model's line is a grey dashed one, named in the legend."""
    import pandas as pd
    from matplotlib.colors import to_rgb

    from phd_lab.plots.probes import plot_probe_sets
    tables = [(f"set {n}", "pca", pd.DataFrame({"index": [1, 2, 3], "layer": ["a", "b", "c"], "train_acc": 0.9,
                                                "eval_acc": [0.3 + 0.1 * n, 0.5, 0.6]})) for n in range(5)]
    ax = plot_probe_sets(tables, model_accuracy=0.8)
    try:
        *sets, model = ax.get_lines()
        assert [line.get_label() for line in sets] == [f"set {n}" for n in range(5)]
        styles = [(line.get_linestyle(), line.get_marker()) for line in sets]
        assert len(set(styles)) == 5 and len({style for style, _ in styles}) == 3
        assert len({marker for _, marker in styles}) == 5 and "None" not in {marker for _, marker in styles}
        assert model.get_label() == "model test accuracy (80.0%)" and list(model.get_ydata()) == [0.8, 0.8]
        assert model.get_linestyle() == "--" and model.get_marker() == "None"
        assert model.get_linestyle() not in {style for style, _ in styles}
        red, green, blue = to_rgb(model.get_color())
        assert red == green == blue and 0.3 < red < 0.7  # grey: neither black nor a viridis colour
        legend = {text.get_text(): (handle.get_linestyle(), handle.get_marker())
                  for text, handle in zip(ax.get_legend().get_texts(), ax.get_legend().get_lines())}
        assert legend == {**{f"set {n}": style for n, style in enumerate(styles)},
                          "model test accuracy (80.0%)": ("--", "None")}
    finally:
        plt.close(ax.figure)


def test_an_unknown_mplbackend_leaves_the_figures_to_agg_with_a_warning(tmp_path):
    """``MPLBACKEND=inline`` (a notebook's, or a typo) made ``import matplotlib`` raise ValueError, so the saturation
    plot at the end of epoch 1 failed the run, a probe job ended with a traceback at its first confusion matrix,
    and the report analysed no run; the figures are drawn on Agg canvases whatever the backend, and a warning names
    the variable."""
    code = ("import numpy as np\nfrom phd_lab.plots import figure\nfrom phd_lab.plots.probes import ConfusionPlots\n"
            "from phd_lab.report.figure_reuse import drawing_versions\n"
            "png = ConfusionPlots().png(np.eye(3), [0, 1, 2], 'layer')\nfigure()\n"
            "print(drawing_versions().decode(), png[:4])")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "inline"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [*drawing_versions().decode().split(), "b'\\x89PNG'"]
    assert "MPLBACKEND='inline' names no matplotlib backend" in done.stderr


def test_a_latents_set_has_one_colour_and_style_in_every_panel():
    """Sizes 1 and 2 extracted with two methods: "2×2" was teal in the adaptive_avg panel and light green in the
    nearest panel, where light green meant 4×4 in the other one (each panel spread viridis over its own sets)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.colors import to_rgb

    from phd_lab.plots.probes import plot_probe_sets
    table = pd.DataFrame({"index": [1, 2], "layer": ["a", "b"], "train_acc": 0.9, "eval_acc": [0.5, 0.6]})
    tables = [("1×1", "adaptive_avg", table), ("2×2", "adaptive_avg", table), ("4×4", "adaptive_avg", table),
              ("2×2", "nearest", table), ("4×4", "nearest", table)]
    ax = plot_probe_sets(tables)
    try:
        left, right = ax.figure.axes[:2]
        drawn = [{line.get_label(): (to_rgb(line.get_color()), line.get_linestyle(), line.get_marker())
                  for line in panel.get_lines()} for panel in (left, right)]
        assert set(drawn[0]) == {"1×1", "2×2", "4×4"} and set(drawn[1]) == {"2×2", "4×4"}
        assert drawn[1]["2×2"] == drawn[0]["2×2"] and drawn[1]["4×4"] == drawn[0]["4×4"]
        assert len({style for style in drawn[0].values()}) == 3
    finally:
        plt.close(ax.figure)


def test_the_run_title_of_the_sets_figure_lies_above_its_panels_titles():
    """The run's name and, below it, its run id and variant folder were drawn at the suptitle's default height,
    over the titles of the panels ('probes on adaptive_avg latents'), in every probe_performances_by_set.png."""
    import pandas as pd

    from phd_lab.plots import close
    from phd_lab.plots.probes import plot_probe_sets
    table = pd.DataFrame({"index": [1, 2], "layer": ["a", "b"], "train_acc": 0.9, "eval_acc": [0.5, 0.6]})
    variant = "0/bs64-e2-adam-s1960566561-width0.125-lr0.001-4ae0d79b"
    for tables in ([("1×1", "adaptive_avg", table), ("4×4", "adaptive_avg", table)],
                   [("1×1", "adaptive_avg", table), ("1×1", "nearest", table)]):
        ax = plot_probe_sets(tables, 0.8, run=f"vgg11-Digits-r16-bs64-e2\n{variant}")
        figure = ax.figure
        try:
            figure.canvas.draw()
            renderer = figure.canvas.get_renderer()
            run_title = figure._suptitle.get_window_extent(renderer)
            for panel in figure.axes:
                title = panel.title.get_window_extent(renderer)
                assert panel.get_title().startswith("probes on ")
                assert run_title.y0 >= title.y1, (run_title, title)
                assert run_title.y1 <= figure.bbox.y1  # inside the figure
        finally:
            close(figure)


def test_a_layer_name_with_dollar_signs_is_drawn_as_it_is_not_as_mathtext(tmp_path, capsys):
    """matplotlib reads a text with two '$' as mathtext: a layer named '$x^{$' (a module name may hold it) ended the
    probe job with a ValueError traceback at its confusion plot, after the fits."""
    layers, y_train, y_eval = blob_layers(n_layers=2)
    names = ["$x^{$", "a$b$c"]
    run_dir, latents = make_latents(tmp_path, dict(zip(names, layers.values())), y_train, y_eval)
    from phd_lab.__main__ import main  # probe_main.py's command, in this process
    capsys.readouterr()
    code = main(["probe", "--latents", str(latents), "-mp", "0", "--solver", "lbfgs", "--cache-dir",
                 str(tmp_path / "cache"), "--no-progress", "-q"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert (run_dir / "probe_performances.png").is_file()
    assert sorted(path.name for path in (run_dir / "probe_confusion").glob("*.png")) == [
        "001-x.png", "002-a_b_c.png"]
    assert wrapped_title("$x^{$", 40) == r"\$x^{\$"
