"""SaturationCallback in real training runs: CSV columns, plots, resume, modes, project step."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch

from phd_lab.callbacks import Callback
from phd_lab.checkpoint import CheckpointStore
from phd_lab.cli import main_cli
from phd_lab.models.attention import CBAM
from phd_lab.seeding import seed_everything
from phd_lab.tracking import SaturationTracker, run_pass
from phd_lab.tracking.callback import SaturationCallback
from registries.datasets import Digits
from registries.metrics import Accuracy
from registries.models import vgg11
from registries.optimizers import adam

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["features.0", "features.3", "features.6", "features.8", "features.11", "features.13", "features.16",
          "features.18", "classifier"]
CONFIG = {"model": "vgg11", "model_args": {"width": 0.25, "batch_norm": False, "head": "linear"},
          "dataset": "Digits", "resolution": 8, "epoch": 2,
          "batch_size": 64, "optimizer": "adam", "optimizer_args": {"lr": 0.003}, "seed": 7, "device": "cpu",
          "cpu_threads": 1}  # the same last bits (and accuracies) on every machine, whatever its core count


def expected_columns() -> list[str]:
    columns = []
    for layer in LAYERS:
        columns += [f"{layer}_train_saturation", f"{layer}_test_saturation",
                    f"{layer}_train_intrinsic_dimension", f"{layer}_test_intrinsic_dimension"]
    return columns + ["train_saturation_mean", "test_saturation_mean"]


def run_main(tmp_path: Path, run_id: str, **overrides: object) -> Path:
    """Train CONFIG with ``overrides`` in this process (nothing here is about the process: a subprocess only added
    its imports, twice per test) and return the run folder."""
    config = dict(CONFIG, logs_dir=str(tmp_path / "logs"), **overrides)
    path = tmp_path / f"config-{run_id}.json"
    path.write_text(json.dumps(config))
    assert main_cli(["--config", str(path), "--run-id", run_id, "--no-progress", "-q"]) == 0
    (folder,) = (tmp_path / "logs" / "vgg11" / "Digits_8" / run_id).iterdir()
    return folder


@pytest.mark.slow
def test_run_gains_saturation_columns_plots_projections_and_resumes_identically(tmp_path: Path) -> None:
    project = {"name": "project", "deltas": [0.9, 0.95, 0.99, 0.999]}
    folder = run_main(tmp_path, "a", post_processing=[project])
    name = "vgg11-Digits-r8-bs64-e2"
    table = pd.read_csv(folder / f"{name}.csv")
    assert list(table.columns) == ["epoch", "train_loss", "test_loss", "train_accuracy", "test_accuracy",
                                   "epoch_seconds"] + expected_columns()
    assert table[[c for c in table.columns if c.endswith("saturation")]].stack().between(0, 1).all()
    for epoch in (1, 2):
        assert (folder / f"{name}_saturation_epoch{epoch}.png").stat().st_size > 1000

    projections = pd.read_csv(folder / "projections.csv")
    assert list(projections.columns) == ["delta", "basis", "accuracy", "loss", "dims_sum", "feature_dims_sum",
                                         "saturation_mean"]
    assert (folder / "projections.png").stat().st_size > 1000
    unprojected = projections[projections["basis"] == "none"].iloc[0]
    assert unprojected["delta"] == 1.0 and unprojected["dims_sum"] == unprojected["feature_dims_sum"]
    pca = projections[projections["basis"] == "pca"].set_index("delta")
    rand = projections[projections["basis"] == "random"].set_index("delta")
    assert list(pca.index) == list(rand.index) == [0.9, 0.95, 0.99, 0.999]
    assert (pca["dims_sum"] == rand["dims_sum"]).all() and pca["dims_sum"].is_monotonic_increasing
    # the thesis' finding (§7.3): random bases of the same k lose far more accuracy than PCA bases
    assert unprojected["accuracy"] > 0.5
    assert (pca["accuracy"] >= rand["accuracy"]).all()
    assert (pca["accuracy"] - rand["accuracy"]).mean() > 0.15

    # resume: roll the run back to its epoch-1 checkpoint and let it redo epoch 2
    (folder / f"{name}.pt").unlink()
    assert run_main(tmp_path, "a") == folder
    resumed = pd.read_csv(folder / f"{name}.csv")
    pd.testing.assert_frame_equal(resumed.drop(columns="epoch_seconds"), table.drop(columns="epoch_seconds"))


class TrainingPassTracker(Callback):
    """A standalone tracker of every training-mode forward pass of a fit: what inline mode's train columns are."""

    def on_fit_start(self, trainer, bundle) -> None:
        self.tracker = SaturationTracker(trainer.model, 0.99, when=lambda module: module.training)

    def on_epoch_end(self, trainer, bundle, epoch, row) -> None:
        self.frame = self.tracker.compute()
        self.tracker.close()


def train(tmp_path: Path, mode: str, epochs: int = 1,
          extra: tuple[Callback, ...] = ()) -> tuple[list[dict], torch.nn.Module, object]:
    from phd_lab.trainer import Trainer
    seed_everything(3)
    bundle = Digits(batch_size=128, resolution=8, data_dir="", seed=3, num_workers=0)
    seed_everything(3)
    model = vgg11(num_classes=10, in_channels=1, width=0.125, batch_norm=False, head="linear")
    optimizer, scheduler = adam(model, epochs=epochs, lr=0.003)
    trainer = Trainer(model, optimizer, scheduler, metrics={"accuracy": Accuracy()}, epochs=epochs,
                      device=torch.device("cpu"), callbacks=[SaturationCallback(None, mode=mode), *extra],
                      progress=False)
    store = CheckpointStore(tmp_path / f"{mode}.pt", tmp_path / f"{mode}.previous.pt")
    return trainer.fit(bundle, store), model, bundle


def test_inline_and_pass_modes_agree_on_the_test_set_and_do_not_perturb_training(tmp_path: Path) -> None:
    training_passes = TrainingPassTracker()  # beside the passes mode's own eval-mode passes, which it skips
    passes, model, bundle = train(tmp_path, "passes", extra=(training_passes,))
    inline, _, _ = train(tmp_path, "inline")
    row_p, row_i = passes[-1], inline[-1]
    assert row_p["train_loss"] == row_i["train_loss"] and row_p["test_loss"] == row_i["test_loss"]
    for layer in LAYERS:
        for metric in ("saturation", "intrinsic_dimension"):
            assert row_p[f"{layer}_test_{metric}"] == row_i[f"{layer}_test_{metric}"]
            assert 0 <= row_i[f"{layer}_train_{metric}"] <= (1 if metric == "saturation" else 512)
    # inline train columns: the training batches of the epoch (the identical training of the passes run), and
    # nothing of the test evaluation that the same hooks see in eval mode
    standalone = training_passes.frame
    assert list(standalone.index) == LAYERS
    for layer in LAYERS:
        assert row_i[f"{layer}_train_saturation"] == standalone.loc[layer, "saturation"]
        assert row_i[f"{layer}_train_intrinsic_dimension"] == standalone.loc[layer, "intrinsic_dimension"]
    assert row_i["train_saturation_mean"] == pytest.approx(standalone["saturation"].mean(), abs=0)
    # the recorded columns are what a standalone tracker measures on the final model
    model.eval()
    for split, loader in (("train", bundle.train_eval), ("test", bundle.test)):
        with SaturationTracker(model, 0.99) as tracker:
            run_pass(tracker, model, loader, torch.device("cpu"))
            frame = tracker.compute()
        assert list(frame.index) == LAYERS
        for layer in LAYERS:
            assert row_p[f"{layer}_{split}_saturation"] == frame.loc[layer, "saturation"]
        assert row_p[f"{split}_saturation_mean"] == pytest.approx(frame["saturation"].mean(), abs=0)
    assert not any(m._forward_hooks for m in model.modules())  # passes leave no hooks behind


@pytest.mark.parametrize("key, value, message", [
    ("tracking_mode", "during", "tracking_mode"),
    ("tracking_every_n", 0, "tracking_every_n"),
    ("tracking_downsampling", "cubic", "tracking_downsampling"),
    ("tracking_include", "features.*", "tracking_include"),
])
def test_bad_tracking_keys_exit_2_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            key: str, value: object, message: str) -> None:
    config = dict(CONFIG, logs_dir=str(tmp_path / "logs"), **{key: value})
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    assert main_cli(["--config", str(path), "--dry-run"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def test_bad_project_deltas_are_rejected_up_front(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = dict(CONFIG, logs_dir=str(tmp_path / "logs"), post_processing=[{"name": "project", "deltas": [1.5]}])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    assert main_cli(["--config", str(path), "--dry-run"]) == 2
    assert "deltas" in capsys.readouterr().err


def test_retired_tracking_fast_still_loads_tracks_exactly_and_keeps_run_folders(caplog: pytest.LogCaptureFixture
                                                                               ) -> None:
    """Configs and logged configs of earlier versions carry tracking_fast: they must load, keep their run
    folders (the key stays in the identity hash with its old default), and true must not silently mean
    anything: it tracks exactly, with a warning."""
    from phd_lab.grid import Grid
    from phd_lab.tracking import TrackerOptions
    from phd_lab.tracking.callback import tracker_options
    plain, retired_off, retired_on = (Grid(dict(CONFIG, **extra), "test.json")[0]
                                      for extra in ({}, {"tracking_fast": False}, {"tracking_fast": True}))
    assert plain.identity_hash() == retired_off.identity_hash() != retired_on.identity_hash()
    assert plain.identity()["tracking_fast"] is False
    with caplog.at_level("WARNING"):
        assert tracker_options(retired_off) == TrackerOptions()
    assert "tracking_fast" not in caplog.text
    with caplog.at_level("WARNING"):
        assert tracker_options(retired_on) == TrackerOptions()
    assert "'tracking_fast' is retired" in caplog.text


def test_every_tracking_key_of_a_config_reaches_the_run_s_callback(tmp_path: Path) -> None:
    """Each key of the schema's saturation block, set off its default, arrives in the callback a run builds
    (the tracker's options themselves are tested in test_tracking)."""
    from phd_lab.grid import Grid
    from phd_lab.rundir import RunDir
    from phd_lab.tracking import TrackerOptions
    from phd_lab.tracking.callback import saturation_callback
    keys = {"delta": 0.95, "tracking_mode": "inline", "tracking_device": "cpu", "tracking_resolution": 4,
            "tracking_downsampling": "nearest", "tracking_max_batches": 3, "tracking_every_n": 2,
            "tracking_include": ["features.*"], "tracking_exclude": ["features.0"]}
    cfg = Grid(dict(CONFIG, logs_dir=str(tmp_path / "logs"), **keys), "test.json")[0]
    callback = saturation_callback(cfg, RunDir.for_run(cfg))
    assert callback is not None and callback.mode == "inline" and callback.delta == 0.95
    assert callback.options == TrackerOptions(device="cpu", resolution=4, downsampling="nearest", max_batches=3,
                                              every_n=2, include=("features.*",), exclude=("features.0",))
    assert saturation_callback(Grid(dict(CONFIG, track_saturation=False), "test.json")[0], RunDir.for_run(cfg)) \
        is None
    # h×w maps: "HxW" (a list of two numbers would be a sweep of two runs)
    wide = Grid(dict(CONFIG, logs_dir=str(tmp_path / "logs"), tracking_resolution="8x4"), "test.json")[0]
    assert saturation_callback(wide, RunDir.for_run(wide)).options.resolution == (8, 4)


def test_the_saturation_plot_shows_each_layers_train_and_test_saturation_in_forward_order() -> None:
    """One epoch's CSV row drawn as grouped bars: layers in column (forward) order, the train bar left of the
    test bar, on a 0-1 scale; a layer whose test saturation is not in the row has no test bar (not a bar at 0)."""
    import math

    import matplotlib.pyplot as plt

    from phd_lab.plots.saturation import plot_saturation, saturation_table
    row = {"epoch": 2, "features.3_train_saturation": 0.6, "features.3_test_saturation": 0.5,
           "features.0_train_saturation": 0.2, "features.0_test_saturation": 0.25, "train_saturation_mean": 0.4,
           "_train_saturation": 0.9, "classifier.0_train_saturation": 0.8}
    table = saturation_table(row)
    assert list(table.index) == ["features.3", "features.0", "classifier.0"]
    assert list(table.columns) == ["train", "test"]
    assert table["train"].tolist() == [0.6, 0.2, 0.8] and table["test"].tolist()[:2] == [0.5, 0.25]
    assert math.isnan(table.loc["classifier.0", "test"])
    ax = plot_saturation(table, title="epoch 2")
    try:
        train, test = ax.containers
        assert [bar.get_height() for bar in train] == [0.6, 0.2, 0.8]
        assert [bar.get_height() for bar in test][:2] == [0.5, 0.25] and math.isnan(test[2].get_height())
        assert all(a.get_x() < b.get_x() for a, b in zip(train, test))
        assert [t.get_text() for t in ax.get_xticklabels()] == ["features.3", "features.0", "classifier.0"]
        assert ax.get_ylim() == (0, 1) and ax.get_title() == "epoch 2"
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "test"]
        # some values are there: no note of a diverged epoch, but the bar without a value says so
        assert [(t.get_text(), t.get_position()) for t in ax.texts] == [("no value", (2.2, 0.01))]
    finally:
        plt.close(ax.figure)
    diverged = plot_saturation(table * math.nan)  # every value NaN: an empty chart said nothing
    try:
        assert [text.get_text() for text in diverged.texts] == [
            "no finite saturation in this epoch\n(non-finite activations: did the run diverge?)"]
    finally:
        plt.close(diverged.figure)


def test_the_train_and_test_bars_differ_by_more_than_hue() -> None:
    """Train and test bars were plain blue and plain orange, told apart by colour only (grayscale prints,
    colour-blind readers): the test bars are hatched now, in the legend too, the train bars plain."""
    import matplotlib.pyplot as plt

    from phd_lab.plots.saturation import plot_saturation, saturation_table
    ax = plot_saturation(saturation_table(_epoch_row(["conv1", "conv2", "fc"], epoch=2)))
    try:
        train, test = ax.containers
        assert {bar.get_hatch() for bar in train} == {None} and len({bar.get_hatch() for bar in test}) == 1
        assert test[0].get_hatch()
        assert [handle.get_hatch() for handle in ax.get_legend().legend_handles] == [None, test[0].get_hatch()]
    finally:
        plt.close(ax.figure)


def test_a_layer_without_saturation_keeps_its_slot_in_the_plot_and_says_it_has_no_value() -> None:
    """An auxiliary head no pass calls is NaN in both splits, its CSV columns last: its slot looked like a saturation
    of 0, and the axes, autoscaled to the bars that exist, cut it off at the right edge."""
    import matplotlib.pyplot as plt

    from phd_lab.plots.saturation import plot_saturation, saturation_table
    row = {"conv_train_saturation": 0.5, "conv_test_saturation": 0.5, "dead_train_saturation": 0.0,
           "dead_test_saturation": 0.0, "aux_train_saturation": float("nan"), "aux_test_saturation": float("nan")}
    ax = plot_saturation(saturation_table(row))
    try:
        assert ax.get_xlim()[1] >= 2.5  # the slot of the third layer, both its bars, is inside the axes
        assert sorted((t.get_text(), t.get_position()) for t in ax.texts) == [("no value", (1.8, 0.01)),
                                                                               ("no value", (2.2, 0.01))]
    finally:
        plt.close(ax.figure)


def _epoch_row(layers: list[str], epoch: int) -> dict[str, float]:
    """A CSV row of saturations that differ per layer and epoch, with the train value of every third layer
    missing in odd epochs."""
    row: dict[str, float] = {}
    for i, layer in enumerate(layers):
        row[f"{layer}_train_saturation"] = float("nan") if epoch % 2 and i % 3 == 1 else (i + epoch) % 7 / 7
        row[f"{layer}_test_saturation"] = (2 * i + epoch) % 5 / 5
    return row


def test_the_saturation_plots_legend_covers_no_bar_where_every_layer_saturates() -> None:
    """A narrow network saturates most layers (thesis ch. 11.3): with every bar between 0.85 and 1, the legend
    that "best" placed inside the axes covered the highest bars. Measured on the drawn figure, it covers none."""
    from phd_lab.plots import close
    from phd_lab.plots.saturation import plot_saturation, saturation_table

    row = {}
    for i, layer in enumerate(LAYERS):
        row[f"{layer}_train_saturation"], row[f"{layer}_test_saturation"] = 0.85 + 0.015 * i, 0.84 + 0.015 * i
    ax = plot_saturation(saturation_table(row), title="vgg11-Digits-r8-bs64-e2 epoch 2, δ=0.99")
    try:
        renderer = ax.figure.canvas.get_renderer()
        ax.figure.draw(renderer)
        legend = ax.get_legend().get_window_extent(renderer)
        bars = [bar for container in ax.containers for bar in container]
        assert len(bars) == 2 * len(LAYERS)
        covered = [bar for bar in bars if bar.get_window_extent(renderer).overlaps(legend)]
        assert not covered, f"the legend covers {len(covered)} bars"
    finally:
        close(ax.figure)


def test_the_saved_saturation_plot_is_the_png_savefig_crops_tightly(tmp_path: Path) -> None:
    """save_saturation_plot measures the tight box itself, without savefig's layout pass: the same bytes as
    ``savefig(bbox_inches="tight")``, with long layer names, a long title and bars without a value."""
    from phd_lab.plots import close
    from phd_lab.plots.saturation import DPI, plot_saturation, save_saturation_plot, saturation_table

    title = "resnet18_cifar-Digits-r32-bs64-e30-a-long-variant epoch 3, δ=0.99"
    row = _epoch_row(["conv1", "layer1.0.a_rather_long_block_name.conv2", "fc"], epoch=3)
    save_saturation_plot(row, tmp_path / "plot.png", title=title)
    ax = plot_saturation(saturation_table(row), title=title)
    ax.figure.savefig(tmp_path / "tight.png", dpi=DPI, bbox_inches="tight")
    close(ax.figure)
    assert (tmp_path / "plot.png").read_bytes() == (tmp_path / "tight.png").read_bytes()


def test_epoch_plots_drawn_on_one_reused_figure_are_those_of_fresh_figures(tmp_path: Path) -> None:
    """The callback's SaturationPlotter keeps one figure for a run's epochs and only puts each epoch's values,
    notes and title into it: every PNG the same bytes as a figure drawn from scratch, also after an epoch
    without any value (diverged), for a row without a title after one with it, and for a row of other layers.
    Closing the plotter frees its figure."""
    from phd_lab.plots.saturation import SaturationPlotter, save_saturation_plot

    plotter = SaturationPlotter()
    layers = [f"features.{i}" for i in range(5)]
    rows = [_epoch_row(layers, epoch) for epoch in (1, 2, 3)]
    rows.insert(2, {key: float("nan") for key in rows[0]})
    rows.append(_epoch_row(["conv", "fc"], epoch=1))
    try:
        for epoch, row in enumerate(rows, start=1):
            title = "" if epoch == 2 else f"run epoch {epoch}"
            plotter.save(row, tmp_path / "reused.png", title=title)
            save_saturation_plot(row, tmp_path / "fresh.png", title=title)
            assert (tmp_path / "reused.png").read_bytes() == (tmp_path / "fresh.png").read_bytes(), epoch
        figure = plotter._ax.figure
    finally:
        plotter.close()
    assert figure.axes == []


def test_a_figure_drawn_at_another_resolution_before_is_cropped_as_savefig_does(tmp_path: Path) -> None:
    """save_tight measures the box with the renderer of the figure's last save only where that save had the
    resolution of this one: text extents depend on it, so a box measured at another one crops the PNG wrongly."""
    from phd_lab.plots import close
    from phd_lab.plots.saturation import DPI, plot_saturation, save_tight, saturation_table

    ax = plot_saturation(saturation_table(_epoch_row(["conv1", "fc"], epoch=2)), title="epoch 2")
    try:
        ax.figure.savefig(tmp_path / "small.png", dpi=DPI // 2)
        save_tight(ax.figure, tmp_path / "plot.png")
        ax.figure.savefig(tmp_path / "tight.png", dpi=DPI, bbox_inches="tight")
    finally:
        close(ax.figure)
    assert (tmp_path / "plot.png").read_bytes() == (tmp_path / "tight.png").read_bytes()


def test_a_finished_fit_holds_no_figure_of_its_epoch_plots(tmp_path: Path) -> None:
    """The callback keeps one figure for a run's epoch plots; the fit's end frees it (clears it and lets it go), or
    a grid of hundreds of runs in one process kept a figure of every run."""
    import gc

    from matplotlib.figure import Figure

    from phd_lab.rundir import RunDir
    from phd_lab.trainer import Trainer
    seed_everything(3)
    bundle = Digits(batch_size=512, resolution=4, data_dir="", seed=3, num_workers=0)
    model = _HeadInTrainingOnly()
    optimizer, scheduler = adam(model, epochs=1)
    callback = SaturationCallback(RunDir(tmp_path, "run"))
    gc.collect()
    before = {id(figure) for figure in gc.get_referrers(Figure) if isinstance(figure, Figure)}  # other tests'
    trainer = Trainer(model, optimizer, scheduler, metrics={"accuracy": Accuracy()}, epochs=1,
                      device=torch.device("cpu"), callbacks=[callback], progress=False)
    trainer.fit(bundle, CheckpointStore(tmp_path / "m.pt", tmp_path / "m.previous.pt"))
    assert RunDir(tmp_path, "run").saturation_plot(1).stat().st_size > 1000
    gc.collect()
    assert not [figure for figure in gc.get_referrers(Figure)
                if isinstance(figure, Figure) and figure.axes and id(figure) not in before]


class _HeadInTrainingOnly(torch.nn.Module):
    """A convolution, its head, and an auxiliary head that only training-mode forward passes call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 10)
        self.aux = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.relu(self.conv(x)).mean((2, 3))
        return self.head(pooled) + (0 * self.aux(pooled) if self.training else 0)


@pytest.mark.parametrize("mode, passes", [("passes", "train and test pass"), ("inline", "test pass")])
def test_a_layer_the_passes_never_call_is_named_once_as_left_out_of_s_mu(tmp_path: Path, mode: str, passes: str,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """The README says such a layer's saturation is NaN, left out of s_mu, and warned about; it was not warned
    about, so a CSV with empty columns gave no reason."""
    from phd_lab.trainer import Trainer
    seed_everything(3)
    bundle = Digits(batch_size=512, resolution=4, data_dir="", seed=3, num_workers=0)
    model = _HeadInTrainingOnly()
    optimizer, scheduler = adam(model, epochs=2)
    trainer = Trainer(model, optimizer, scheduler, metrics={"accuracy": Accuracy()}, epochs=2,
                      device=torch.device("cpu"), callbacks=[SaturationCallback(None, mode=mode)], progress=False)
    with caplog.at_level("WARNING"):
        rows = trainer.fit(bundle, CheckpointStore(tmp_path / "m.pt", tmp_path / "m.previous.pt"))
    assert all(row["aux_test_saturation"] != row["aux_test_saturation"] for row in rows)  # NaN
    assert rows[-1]["test_saturation_mean"] == pytest.approx((rows[-1]["conv_test_saturation"]
                                                              + rows[-1]["head_test_saturation"]) / 2)
    warnings = [r.getMessage() for r in caplog.records if "never called" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once, not every epoch
    assert f"never called aux ({passes})" in warnings[0] and "conv" not in warnings[0].split("never called")[1]


class EvalForwardCounter(Callback):
    """Counts the model's eval-mode forward passes (a real forward pre-hook on the real model) and the
    test batches, so that a fit can be checked for a test set forwarded twice."""

    def on_fit_start(self, trainer, bundle) -> None:
        self.eval_forwards = 0
        self.test_batches = len(bundle.test)
        self.train_eval_batches = len(bundle.train_eval)
        self.handle = trainer.model.register_forward_pre_hook(self.count)

    def count(self, module, args) -> None:
        self.eval_forwards += not module.training

    def on_fit_end(self, trainer, bundle) -> None:
        self.handle.remove()


def test_passes_mode_tracks_the_test_split_during_the_test_evaluation_not_in_a_second_pass(tmp_path: Path) -> None:
    """Passes mode forwarded the test set twice per epoch: once for the test metrics and once more, unchanged,
    for its saturation. It now tracks the trainer's own test evaluation (the recorded columns are still what a
    standalone tracker measures: see the test above)."""
    counter = EvalForwardCounter()
    history, _, _ = train(tmp_path, "passes", epochs=2, extra=(counter,))
    assert counter.eval_forwards == 2 * (counter.train_eval_batches + counter.test_batches)
    assert all(0 <= row["test_saturation_mean"] <= 1 for row in history)


class _OtherConvolutions(torch.nn.Module):
    """A Conv2d, then a ConvTranspose2d, a Conv3d over a unit depth and a Conv1d over rows, and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.up = torch.nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.cube = torch.nn.Conv3d(4, 4, 1)
        self.rows = torch.nn.Conv1d(4, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.cube(self.up(self.conv(x)).unsqueeze(2)).squeeze(2)
        return self.head(self.rows(maps.mean(2)).mean(2))


def _fit_on_digits(tmp_path: Path, model: torch.nn.Module, caplog: pytest.LogCaptureFixture, *, resolution: int,
                   epochs: int = 2, mode: str = "passes") -> tuple[list[dict], list[str]]:
    """Train ``model`` on Digits with the saturation callback; the history and the warnings logged."""
    from phd_lab.trainer import Trainer
    optimizer, scheduler = adam(model, epochs=epochs)
    trainer = Trainer(model, optimizer, scheduler, metrics={"accuracy": Accuracy()}, epochs=epochs,
                      device=torch.device("cpu"), callbacks=[SaturationCallback(None, mode=mode)], progress=False)
    bundle = Digits(batch_size=512, resolution=resolution, data_dir="", seed=3, num_workers=0)
    with caplog.at_level("WARNING"):
        rows = trainer.fit(bundle, CheckpointStore(tmp_path / "m.pt", tmp_path / "m.previous.pt"))
    return rows, [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("mode", ["passes", "inline"])
def test_convolutions_the_tracker_cannot_track_are_named_once_per_run(tmp_path: Path, mode: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Conv1d, Conv3d and ConvTranspose layers got no saturation column and no word of why."""
    seed_everything(3)
    rows, logged = _fit_on_digits(tmp_path, _OtherConvolutions(), caplog, resolution=8, mode=mode)
    assert {column for column in rows[-1] if column.endswith("_train_saturation")} == {
        "conv_train_saturation", "head_train_saturation"}
    warnings = [message for message in logged if "no saturation column" in message]
    assert len(warnings) == 1, warnings  # once, not every epoch
    assert "up (ConvTranspose2d), cube (Conv3d), rows (Conv1d)" in warnings[0]
    assert "Conv2d, Linear and LSTM layers only" in warnings[0] and "conv (" not in warnings[0]


def test_gru_and_rnn_layers_are_named_as_untracked_and_an_lstm_is_not() -> None:
    """A GRU or plain RNN got no saturation column (the tracker reads LSTMs only) and no word of why, in training's
    warning and in the project step's."""
    from phd_lab.tracking.tracker import untracked_layers
    model = torch.nn.ModuleDict({"gru": torch.nn.GRU(4, 3), "rnn": torch.nn.RNN(4, 3), "lstm": torch.nn.LSTM(4, 3)})
    assert untracked_layers(model) == [("gru", "GRU"), ("rnn", "RNN")]


class _SharedBlock(torch.nn.Module):
    """A stem, then one block convolution called twice, and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.block = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.relu(self.block(torch.relu(self.block(torch.relu(self.stem(x))))))
        return self.head(maps.mean((2, 3)))


@pytest.mark.parametrize("mode", ["passes", "inline"])
def test_a_layer_a_forward_pass_calls_twice_is_named_once_as_pooled(tmp_path: Path, mode: str,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A shared module's one saturation column pooled the outputs of both its calls, at two depths, unsaid."""
    seed_everything(3)
    _, logged = _fit_on_digits(tmp_path, _SharedBlock(), caplog, resolution=4, mode=mode)
    warnings = [message for message in logged if "more than once" in message]
    assert len(warnings) == 1, warnings  # once, not every epoch
    assert "calls block (2 calls) more than once (shared modules)" in warnings[0]
    assert "stem" not in warnings[0] and "head" not in warnings[0]


class _MarkedSharedBlock(_SharedBlock):
    """The shared block inside a module marked as pooling its calls on purpose, beside the registry's CBAM."""

    def __init__(self) -> None:
        super().__init__()
        self.block = torch.nn.Sequential(self.block)
        self.block.pools_repeated_calls = True
        self.attention = CBAM(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.relu(self.block(torch.relu(self.block(torch.relu(self.stem(x))))))
        return self.head(self.attention(maps).mean((2, 3)))


def test_layers_that_pool_their_calls_by_design_are_not_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    """CBAM's channel MLP runs on the average- and the max-pooled map, its column pooling both as meant: the
    warning of shared modules came with every run of the registry's CBAM models. A module marked with
    ``pools_repeated_calls`` (or inside a marked one) is left out of it; the calls are still recorded."""
    model = _MarkedSharedBlock()
    tracker = SaturationTracker(model)
    model(torch.randn(3, 1, 6, 6))
    assert tracker.repeated == {}
    assert tracker.layers["block.0"].accumulator.n == 2 * 3 * 36  # both calls, every position
    assert tracker.layers["attention.channel.mlp.0"].accumulator.n == 2 * 3  # both pooled maps
    tracker.close()
    unmarked = _SharedBlock()
    tracker = SaturationTracker(unmarked)
    unmarked(torch.randn(3, 1, 6, 6))
    assert tracker.repeated == {"block": 2}


class _OwnKernel(torch.nn.Module):
    """A convolution by F.conv2d on a kernel of its own, a Conv2d, and a lazy Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = torch.nn.Parameter(torch.randn(4, 1, 3, 3) / 3)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.head = torch.nn.LazyLinear(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.relu(self.conv(torch.relu(torch.nn.functional.conv2d(x, self.kernel, padding=1))))
        return self.head(maps.mean((2, 3)))


def test_a_functional_convolution_on_a_kernel_of_its_own_is_named_as_untracked(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """F.conv2d on a model's own kernel got no saturation column and no word of why (no hook sees it); the
    uninitialised weight of a lazy layer is no kernel of such a call."""
    seed_everything(3)
    model = _OwnKernel()
    model(torch.zeros(1, 1, 4, 4))  # the lazy head gets its weight before the optimizer is built
    _, logged = _fit_on_digits(tmp_path, model, caplog, resolution=4, epochs=1)
    [warning] = [message for message in logged if "no saturation column" in message]
    assert "kernel (a kernel of shape (4, 1, 3, 3) outside any Conv module, as F.conv2d uses)" in warning
    assert "conv (" not in warning and "head" not in warning
    from phd_lab.tracking.tracker import untracked_layers
    assert untracked_layers(torch.nn.Sequential(torch.nn.LazyConv2d(4, 3), torch.nn.LazyLinear(3))) == []
    # nor is the kernel a parametrisation keeps inside its Conv2d
    weight_norm = torch.nn.utils.parametrizations.weight_norm
    assert untracked_layers(torch.nn.Sequential(weight_norm(torch.nn.Conv2d(1, 4, 3)))) == []


class _NoTrackedLayer(torch.nn.Module):
    """A linear classifier on the flattened image by a matrix product: no Conv2d, Linear or LSTM module."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(10, 16) / 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


@pytest.mark.parametrize("mode", ["passes", "inline"])
def test_a_model_without_a_layer_to_track_is_named_once_per_run(tmp_path: Path, mode: str,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Every tracker the callback made warned that the model had no layer to track: twice per epoch in passes mode
    (the test evaluation's tracker and the training split's), twice per run inline. Once per run, naming it."""
    seed_everything(3)
    rows, logged = _fit_on_digits(tmp_path, _NoTrackedLayer(), caplog, resolution=4, epochs=2, mode=mode)
    warnings = [message for message in logged if "no Conv2d, Linear or LSTM layer to track" in message]
    assert len(warnings) == 1, warnings
    # no class name of the framework's internals; what it means for the results and what to do
    assert warnings[0] == ("the model (_NoTrackedLayer) has no Conv2d, Linear or LSTM layer to track, so its "
                           "saturation table is empty and s_mu is NaN; set track_saturation false for such a model, "
                           "or give it a layer of those types.")
    assert len(rows) == 2 and all(row["train_saturation_mean"] != row["train_saturation_mean"] for row in rows)


def test_patterns_that_leave_no_layer_to_track_are_named_in_words(caplog: pytest.LogCaptureFixture) -> None:
    """A tracker whose include/exclude patterns matched no layer warned 'the model (Sequential) has no Conv2d,
    Linear or LSTM layer that include ['head*'] and exclude [] leave to track', which does not parse, and told to
    set track_saturation false or give the model such a layer, though it has one: the patterns are at fault."""
    from phd_lab.tracking.tracker import SaturationTracker
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    with caplog.at_level(logging.WARNING):
        SaturationTracker(model, include=("head*",))
    assert [record.getMessage() for record in caplog.records] == [
        "the include patterns ['head*'] and exclude patterns [] leave no Conv2d, Linear or LSTM layer of the model "
        "(Sequential) to track, so its saturation table is empty and s_mu is NaN; give patterns that match some of "
        "its layers' qualified names."]


class _WideHead(torch.nn.Module):
    """A 4×4 image flattened into a 256-wide Linear layer, then a 10-way head."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = torch.nn.Linear(16, 256)
        self.head = torch.nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.wide(x.flatten(1))))


def test_a_layer_with_no_more_observations_than_features_is_named_once_with_its_bound(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """With n observations a covariance has rank n - 1 at most, so a layer wider than its pass' n (a small data
    set, a small tracking_max_batches) got a saturation of at most (n - 1)/d, read without a word as a low one."""
    from phd_lab.tracking.tracker import TrackerOptions
    from phd_lab.trainer import Trainer
    seed_everything(3)
    model = _WideHead()
    optimizer, scheduler = adam(model, epochs=2)
    callback = SaturationCallback(None, options=TrackerOptions(max_batches=1))  # one batch of 64: n = 64 ≤ 256
    trainer = Trainer(model, optimizer, scheduler, metrics={"accuracy": Accuracy()}, epochs=2,
                      device=torch.device("cpu"), callbacks=[callback], progress=False)
    bundle = Digits(batch_size=64, resolution=4, data_dir="", seed=3, num_workers=0)
    with caplog.at_level("WARNING"):
        rows = trainer.fit(bundle, CheckpointStore(tmp_path / "m.pt", tmp_path / "m.previous.pt"))
    assert rows[-1]["wide_train_saturation"] <= 63 / 256
    warnings = [r.getMessage() for r in caplog.records if "too few observations" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per run, not every epoch
    assert "wide (train pass: n=64 ≤ 256 features; test pass: n=64 ≤ 256 features)" in warnings[0]
    assert "head (" not in warnings[0]  # 64 observations > its 10 features
    assert "(n - 1)/d" in warnings[0] and "tracking_max_batches" in warnings[0]


def test_the_per_epoch_saturation_plot_names_the_run_its_epoch_and_its_variant(tmp_path: Path) -> None:
    """Every run of a grid has the same file prefix, so a per-epoch plot titled by it and the epoch alone could not
    be told from another run's once copied out of its folder: the title's second line is the run id and variant
    folder. The plot a run wrote is the one drawn from its CSV row with that title."""
    from phd_lab.plots.saturation import save_saturation_plot
    folder = run_main(tmp_path, "b")
    name = "vgg11-Digits-r8-bs64-e2"
    row = pd.read_csv(folder / f"{name}.csv").iloc[1].to_dict()
    save_saturation_plot(row, tmp_path / "expected.png", title=f"{name} epoch 2, δ=0.99\nb/{folder.name}")
    save_saturation_plot(row, tmp_path / "without.png", title=f"{name} epoch 2, δ=0.99")
    written = (folder / f"{name}_saturation_epoch2.png").read_bytes()
    assert written == (tmp_path / "expected.png").read_bytes() != (tmp_path / "without.png").read_bytes()
