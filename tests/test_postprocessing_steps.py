"""The receptive_field, flops and extract steps: validation up front and an end-to-end run of main.py."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phd_lab.errors import ConfigError
from phd_lab.experiment import Main
from tests.conftest import ROOT, main_in_process


def write_config(tmp_path: Path, steps: list) -> Path:
    config = {"model": "vgg11", "model_args": {"width": 0.125, "batch_norm": False, "head": "linear"},
              "dataset": "Digits", "resolution": 8, "epoch": 1,
              "batch_size": 256, "logs_dir": str(tmp_path / "logs"), "device": "cpu", "post_processing": steps}
    path = tmp_path / "exp.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("step, message", [
    ({"name": "extract", "dtype": "float64"}, "'dtype' must be one of 'float32', 'float16'"),
    ({"name": "extract", "downsampling": 0}, "'downsampling' must be an integer ≥ 1, or 'pixelwise' or null"),
    ({"name": "extract", "downsampling": "pixel"}, "'downsampling' must be"),
    ({"name": "extract", "layers": []}, "'layers' is an empty list"),
    ({"name": "extract", "layers": "features.0"}, "'layers' must be a list of non-empty strings"),
    ({"name": "flops", "resolution": 3}, "step 'flops' has unknown parameter"),
])
def test_step_parameters_are_validated_before_training(tmp_path, step, message):
    with pytest.raises(ConfigError, match=message):
        Main(progress=False).load(write_config(tmp_path, [step]))
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_main_runs_the_three_steps_and_reuses_them(tmp_path, capsys):
    config = write_config(tmp_path, ["receptive_field", "flops", {"name": "extract", "dtype": "float16"}])
    run_in_process(config, capsys)
    (run,) = [p.parent for p in (tmp_path / "logs").rglob("*_config.json")]

    table = pd.read_csv(run / "receptive_field.csv")
    assert list(table.columns) == ["index", "layer", "r_min", "r_max", "jump", "in_r_min", "in_r_max", "prev_r_min",
                                   "side_branch", "onward_prev_r_min", "onward_in_r_max", "b_min", "b_max"]
    convs = table[table["index"].notna()]
    assert convs["r_max"].tolist() == [3, 8, 18, 26, 46, 62, 102, 134]
    assert table.loc[table.b_min, "layer"].tolist() == ["features.6"]  # in_r 10 > 8 from the third conv on
    assert (run / "receptive_field.png").stat().st_size > 0

    info = json.loads((run / "computational_info.json").read_text())
    per_layer = pd.read_csv(run / "computational_info.csv")
    assert info["macs"] == per_layer["macs"].sum() > 0 and info["flops"] == 2 * info["macs"]
    assert info["input_shape"] == [1, 8, 8] and info["params_total"] == info["params_trainable"] > 0

    folder = run / "latents"
    manifest = json.loads((folder / "manifest.json").read_text())
    metrics = pd.read_csv(run / f"{run_name(run)}.csv")
    assert manifest["model_test_accuracy"] == pytest.approx(metrics["test_accuracy"].iloc[-1])
    assert manifest["run_dir"] == str(run.resolve()) and manifest["dtype"] == "float16"
    assert [e["name"] for e in manifest["layers"]] == convs["layer"].tolist() + ["classifier"]
    for entry in manifest["layers"]:
        data = np.load(folder / entry["train"], allow_pickle=False)
        assert data.dtype == np.float16 and list(data.shape) == entry["shape"] and data.shape[0] == 1437
        assert hashlib.sha256((folder / entry["eval"]).read_bytes()).hexdigest() == entry["sha256"]["eval"]
    stamp = (folder / "manifest.json").stat().st_mtime_ns

    second = run_in_process(config, capsys)
    assert "skipping to post-processing" in second and "reusing them" in second
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp


def run_in_process(config: Path, capsys: pytest.CaptureFixture) -> str:
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress")
    assert code == 0, err
    return err


def run_name(run: Path) -> str:
    return next(run.glob("*_config.json")).name[: -len("_config.json")]


def test_a_rerun_keeps_results_whose_model_and_parameters_did_not_change(tmp_path, capsys):
    """Rerunning a finished run (a grid extended by one value, a step added) ran every step again,
    project's training pass and test evaluations included."""
    steps = ["receptive_field", "flops", {"name": "project", "deltas": [0.9]}, "analysis"]
    run_in_process(write_config(tmp_path, steps), capsys)
    (run,) = [p.parent for p in (tmp_path / "logs").rglob("*_config.json")]
    outputs = ["receptive_field.csv", "receptive_field.png", "computational_info.json", "projections.csv",
               "projections.png"]
    times = {name: (run / name).stat().st_mtime_ns for name in outputs}
    _assert_titled_by_run_and_variant(run, tmp_path)
    # DESIGN.md's analysis.json (+ png): tails, borders, s_mu (of the last epoch's train pass) and recommendations
    analysis = json.loads((run / "analysis.json").read_text())
    assert isinstance(analysis["tails"], list) and analysis["recommendations"]
    border = pd.read_csv(run / "receptive_field.csv").query("b_min")["layer"].iloc[0]
    assert analysis["borders"]["b_min"] == border and analysis["borders"]["resolution"] == 8
    s_mu = pd.read_csv(run / f"{run_name(run)}.csv")["train_saturation_mean"].iloc[-1]
    assert analysis["saturation"]["split"] == "train" and analysis["saturation"]["mean"] == pytest.approx(s_mu)
    assert (run / "analysis.png").stat().st_size > 1000

    def rerun(steps: list) -> str:
        return run_in_process(write_config(tmp_path, steps), capsys)

    err = rerun(steps)
    for step in ("receptive_field", "flops", "project"):
        assert f"Post-processing step {step} of" in err and f"{step} of vgg11-Digits-r8-bs256-e1: up to date" in err
    assert "step analysis of vgg11-Digits-r8-bs256-e1" in err and "analysis of vgg11-Digits-r8-bs256-e1: up" not in err
    assert times == {name: (run / name).stat().st_mtime_ns for name in outputs}
    # other parameters, or an output that went missing, run the step again; the others stay
    (run / "receptive_field.png").unlink()
    err = rerun(["receptive_field", "flops", {"name": "project", "deltas": [0.9, 0.99]}, "analysis"])
    assert "flops of vgg11-Digits-r8-bs256-e1: up to date" in err
    assert "project of vgg11-Digits-r8-bs256-e1: up to date" not in err
    assert "receptive_field of vgg11-Digits-r8-bs256-e1: up to date" not in err
    assert sorted(pd.read_csv(run / "projections.csv")["delta"].unique()) == [0.9, 0.99, 1.0]
    # another checkpoint (a model whose weights differ) makes every step's results out of date. Deleting the
    # checkpoint and retraining gave a bit-identical one whenever both trainings took the same milliseconds (the
    # only difference, epoch_seconds), and such a checkpoint rightly keeps the results
    from phd_lab.checkpoint import CheckpointStore
    store = CheckpointStore(run / f"{run_name(run)}.pt", run / f"{run_name(run)}.previous.pt")
    state = store.load()
    weight = next(key for key, tensor in state["model"].items() if tensor.is_floating_point())
    state["model"][weight] = state["model"][weight] + 1e-3
    store.save({key: value for key, value in state.items() if key != "format"})
    err = rerun(["receptive_field", "flops", {"name": "project", "deltas": [0.9, 0.99]}, "analysis"])
    assert "up to date" not in err and "Resuming" not in err


def _assert_titled_by_run_and_variant(run: Path, scratch: Path) -> None:
    """receptive_field.png and projections.png were titled by the run's file prefix alone, the same for every run of
    a grid (no swept argument, optimizer, seed or run id): copied out of their folders, two runs' plots could not be
    told apart. Each is now the plot of its saved table titled by the prefix and, below it, the run id and variant
    folder, as the per-epoch saturation plots and the run figure are."""
    from phd_lab.plots.projections import save_projection_plot
    from phd_lab.plots.receptive_field import plot_receptive_field
    name = "vgg11-Digits-r8-bs256-e1"
    titled = f"{name}\n{run.parent.name}/{run.name}"
    receptive_fields = pd.read_csv(run / "receptive_field.csv", dtype={"layer": str})
    projections = pd.read_csv(run / "projections.csv")
    for title, suffix in ((titled, ""), (name, "-without")):
        plot_receptive_field(receptive_fields, 8, scratch / f"rf{suffix}.png", title=title)
        save_projection_plot(projections, scratch / f"projections{suffix}.png", title=title)
    for written, drawn in (("receptive_field.png", "rf"), ("projections.png", "projections")):
        assert (run / written).read_bytes() == (scratch / f"{drawn}.png").read_bytes(), written
        assert (scratch / f"{drawn}.png").read_bytes() != (scratch / f"{drawn}-without.png").read_bytes()


def test_a_copied_run_folder_keeps_its_step_results(tmp_path, capsys):
    """The stamps compared the checkpoint's modification time only, so a run tree copied with `cp -r` (new
    times) recomputed every step, the extraction and projection passes included."""
    import shutil
    steps = ["receptive_field", "flops"]
    run_in_process(write_config(tmp_path, steps), capsys)
    (run,) = [p.parent for p in (tmp_path / "logs").rglob("*_config.json")]
    shutil.copytree(tmp_path / "logs", tmp_path / "moved", copy_function=shutil.copy)  # every file: a new time
    copy = tmp_path / "moved" / run.relative_to(tmp_path / "logs")
    outputs = ["receptive_field.csv", "receptive_field.png", "computational_info.json", "computational_info.csv"]
    times = {name: (copy / name).stat().st_mtime_ns for name in outputs}
    checkpoint = copy / f"{run_name(copy)}.pt"
    assert checkpoint.stat().st_mtime_ns != (run / checkpoint.name).stat().st_mtime_ns

    err = run_in_process(copy / f"{run_name(copy)}_config.json", capsys)
    assert f"Run folder {copy}" in err
    for step in steps:
        assert f"Post-processing step {step} of {run_name(copy)}: up to date" in err
    assert times == {name: (copy / name).stat().st_mtime_ns for name in outputs}
    stamps = json.loads((copy / ".steps.json").read_text())
    assert stamps["flops"]["checkpoint"][1] == checkpoint.stat().st_mtime_ns  # re-stamped: no hashing next time
    assert stamps["flops"]["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()

    # another checkpoint of the same size (other weights) is another model: the steps run again
    data = bytearray(checkpoint.read_bytes())
    original = json.loads((run / ".steps.json").read_text())["flops"]
    assert original["checkpoint"][0] == len(data)
    stamps["flops"]["checkpoint"][1] -= 1  # as if written at another time ...
    stamps["flops"]["checkpoint_sha256"] = "0" * 64  # ... with other content
    (copy / ".steps.json").write_text(json.dumps(stamps))
    err = run_in_process(copy / f"{run_name(copy)}_config.json", capsys)
    assert f"flops of {run_name(copy)}: up to date" not in err
    assert f"receptive_field of {run_name(copy)}: up to date" in err


def test_results_stamped_by_an_older_version_of_a_step_are_computed_again(tmp_path, capsys):
    """A step's stamp records its version: results an earlier version wrote (receptive_field.csv before the
    onward columns, version 2) are recomputed by a rerun, not kept for the same model and parameters."""
    from phd_lab.steps.receptive_field import ReceptiveFieldStep
    config = write_config(tmp_path, ["receptive_field"])
    run_in_process(config, capsys)
    (run,) = [p.parent for p in (tmp_path / "logs").rglob("*_config.json")]
    stamps = json.loads((run / ".steps.json").read_text())
    assert stamps["receptive_field"]["version"] == ReceptiveFieldStep.version == 3
    stamps["receptive_field"]["version"] = 2
    (run / ".steps.json").write_text(json.dumps(stamps))
    err = run_in_process(config, capsys)
    assert f"Post-processing step receptive_field of {run_name(run)}" in err and "up to date" not in err
    assert json.loads((run / ".steps.json").read_text())["receptive_field"]["version"] == 3


def test_a_damaged_stamps_file_is_named_when_every_step_runs_again(tmp_path, capsys):
    """A .steps.json cut short made every step compute its results again (the project step's passes over the data
    included) without a line saying why; a warning names the file, and the rerun writes it whole again."""
    config = write_config(tmp_path, ["receptive_field"])
    run_in_process(config, capsys)
    (run,) = [p.parent for p in (tmp_path / "logs").rglob("*_config.json")]
    stamps = (run / ".steps.json").read_text()
    (run / ".steps.json").write_text(stamps[:len(stamps) // 2])
    err = " ".join(run_in_process(config, capsys).split())
    assert f"The post-processing stamps {run / '.steps.json'} cannot be read (" in err
    assert f"Post-processing step receptive_field of {run_name(run)}" in err and "up to date" not in err
    assert "receptive_field" in json.loads((run / ".steps.json").read_text())
    err = run_in_process(config, capsys)
    assert "cannot be read" not in err and f"receptive_field of {run_name(run)}: up to date" in err


def test_a_step_that_failed_half_way_keeps_no_stamp_of_its_earlier_results(tmp_path, capsys):
    """project writes its CSV, then its plot. When the plot cannot be written (here: a folder in its place) the
    CSV already holds the new deltas; the stamp of the earlier parameters must be gone, so that a rerun with
    those does not keep the new CSV as their results."""
    steps = [{"name": "project", "deltas": [0.9]}]
    run_in_process(write_config(tmp_path, steps), capsys)
    (run,) = [p.parent for p in (tmp_path / "logs").rglob("*_config.json")]
    assert "project" in json.loads((run / ".steps.json").read_text())
    (run / "projections.png").unlink()
    (run / "projections.png").mkdir()
    code, err = main_in_process(capsys, "--config", str(write_config(tmp_path, [{"name": "project",
                                                                                 "deltas": [0.9, 0.99]}])),
                                "--no-progress")
    assert code != 0 and "projections.png" in err and not list(run.glob(".projections.png.*.tmp"))
    assert sorted(pd.read_csv(run / "projections.csv")["delta"].unique()) == [0.9, 0.99, 1.0]  # half done
    assert "project" not in json.loads((run / ".steps.json").read_text())
    code, err = main_in_process(capsys, "--config", str(write_config(tmp_path, steps)), "--no-progress")
    assert f"project of {run_name(run)}: up to date" not in err
    assert f"Post-processing step project of {run_name(run)}" in err


def test_an_output_damaged_since_its_step_wrote_it_is_computed_again(tmp_path, capsys):
    """A stamp checked only that the step's outputs exist: a receptive_field.csv cut in half was kept as up to date
    by every rerun, and the analysis lost its border layers, saying so only inside analysis.json. The stamp records
    each output's size and sha256; a stamp written before it did checks existence only, and the analysis step then
    warns about the table it cannot use."""
    steps = ["receptive_field", "flops", "analysis"]
    config = write_config(tmp_path, steps)
    run_in_process(config, capsys)
    (run,) = [p.parent for p in (tmp_path / "logs").rglob("*_config.json")]
    table, info = run / "receptive_field.csv", run / "computational_info.json"
    whole = {path: path.read_bytes() for path in (table, info)}
    table.write_bytes(whole[table][: len(whole[table]) // 2])  # cut: another size
    middle = len(whole[info]) // 2
    info.write_bytes(whole[info][:middle] + b"\xaa" + whole[info][middle + 1:])  # one byte: the same size
    err = run_in_process(config, capsys)
    assert f"WARNING phd_lab.steps.stamps: {table} is not the file the post-processing step receptive_field" in err
    assert f"{info} is not the file the post-processing step flops wrote (the same size, other content)" in err
    assert "up to date" not in err and "WARNING phd_lab.steps.analysis" not in err
    assert {path: path.read_bytes() for path in (table, info)} == whole

    stamps = json.loads((run / ".steps.json").read_text())  # as versions before the outputs' digests wrote it
    (run / ".steps.json").write_text(json.dumps({name: {k: v for k, v in stamp.items() if k != "outputs"}
                                                 for name, stamp in stamps.items()}))
    table.write_bytes(whole[table][: len(whole[table]) // 2])
    err = run_in_process(config, capsys)
    assert f"receptive_field of {run_name(run)}: up to date" in err and "is not the file" not in err
    assert (f"WARNING phd_lab.steps.analysis: Analysis of {run_name(run)}: receptive_field.csv cannot be used: "
            f"the last row is incomplete (truncated?)") in err


def test_the_extract_step_takes_the_training_split_in_order_and_the_test_split_as_eval(tmp_path, capsys):
    """The probes are fitted on the training split's latents and scored on the test split's ("eval"): the label
    files must be those splits' labels, the training split unshuffled and the eval one not the training split."""
    from phd_lab.datasets.digits import digits_tensors
    run_in_process(write_config(tmp_path, [{"name": "extract", "layers": ["classifier"]}]), capsys)
    (run,) = [p.parent for p in (tmp_path / "logs").rglob("*_config.json")]
    train, test = digits_tensors(8)
    np.testing.assert_array_equal(np.load(run / "latents" / "eval-labels.npy"), test.tensors[1].numpy())
    np.testing.assert_array_equal(np.load(run / "latents" / "train-labels.npy"), train.tensors[1].numpy())
    assert np.load(run / "latents" / "eval-classifier.npy").shape == (360, 10)


def test_a_classifier_trained_without_the_accuracy_metric_still_tells_its_test_accuracy(tmp_path, capsys):
    """Only the metric history's test_accuracy was read: the manifest's model_test_accuracy was null, the probes'
    relative_acc empty and analysis.json's test accuracy None. Measured once on the test set now, it is the
    accuracy the Accuracy metric records for the same weights. About 6 s."""
    from phd_lab.probes.cli import probe_cli
    from tests.conftest import write_config as tiny_config
    steps = [{"name": "extract", "layers": ["features.0", "classifier"]}, "analysis"]
    config = tiny_config(tmp_path, "mcc.json", epoch=1, metrics=["MCC"], probe_solver="lbfgs",
                         post_processing=steps)
    code, err = main_in_process(capsys, "--config", str(config))
    assert code == 0, err
    (run,) = [p.parent for p in (tmp_path / "logs").rglob("*_config.json")]
    assert not [c for c in pd.read_csv(next(run.glob("*.csv"))).columns if "accuracy" in c]
    accuracy = json.loads((run / "latents" / "manifest.json").read_text())["model_test_accuracy"]
    assert isinstance(accuracy, float) and 0.0 <= accuracy <= 1.0
    assert json.loads((run / "analysis.json").read_text())["accuracy"]["test"] == accuracy
    assert probe_cli(["--config", str(config), "-mp", "0", "--no-progress", "--cache-dir", str(tmp_path / "c")]) == 0
    probes = pd.read_csv(run / "probe_performances.csv")
    assert probes["relative_acc"].tolist() == pytest.approx((probes["eval_acc"] / accuracy).tolist())
    assert json.loads((run / "analysis.json").read_text())["probes"]["model_accuracy"] == accuracy
    same = tiny_config(tmp_path, "accuracy.json", epoch=1, logs_dir=str(tmp_path / "same"))
    code, err = main_in_process(capsys, "--config", str(same))
    assert code == 0, err
    (csv,) = (tmp_path / "same").rglob("*.csv")
    assert pd.read_csv(csv)["test_accuracy"].iloc[-1] == pytest.approx(accuracy)


def test_training_and_its_post_processing_import_no_probe_code(tmp_path):
    """DESIGN.md: training never imports the probe code (the opposite of test_probe_job's check that the probe job
    imports no torch). The grid's check of the probe keys loaded the whole probe package, and the step stamps and
    the reuse of latents took their sha256 from it. A rerun checks the stamps and the latents it finds."""
    config = write_config(tmp_path, ["flops", "extract", "analysis"])
    code = ("import sys; from phd_lab.cli import main_cli; "
            f"args = ['--config', {str(config)!r}, '--no-progress', '-q']; "
            "rc = main_cli(args) or main_cli(args); "
            "probes = sorted(m for m in sys.modules if m == 'phd_lab.probes' or m.startswith('phd_lab.probes.')); "
            "assert rc == 0 and not probes, (rc, probes)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "logs").rglob("manifest.json"))) == 1  # the steps ran


ROWS_MODEL = '''
import torch.nn.functional as F
from torch import nn


class Rows(nn.Module):
    """A convolution, then an LSTM over the image rows: its input size is made for one resolution."""

    def __init__(self, num_classes, in_channels, side):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 2, 3, padding=1)
        self.lstm = nn.LSTM(2 * side, 8, batch_first=True)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = F.relu(self.conv(x))
        n, c, h, w = x.shape
        out, _ = self.lstm(x.permute(0, 2, 1, 3).reshape(n, h, c * w))
        return self.fc(out[:, -1])


def rows(*, num_classes: int, in_channels: int = 3, side: int = 16) -> nn.Module:
    """Conv + LSTM over rows."""
    return Rows(num_classes, in_channels, side)
'''


def test_the_receptive_field_check_runs_the_model_at_the_runs_resolution(tmp_path, capsys):
    """A model made for 16 px whose permute needs the shapes of a meta run was refused before training: the
    check ran it at 32 px, where its LSTM cannot take the rows, so the permute's axes were unknown."""
    (tmp_path / "rows_models.py").write_text(ROWS_MODEL)
    config = json.loads(write_config(tmp_path, ["receptive_field"]).read_text())
    config.update(model="rows", model_args={"side": 16}, resolution=16, registries={"models": "rows_models.py"})
    (tmp_path / "exp.json").write_text(json.dumps(config))
    code, err = main_in_process(capsys, "--config", str(tmp_path / "exp.json"), "--dry-run")
    assert code == 0, err
    assert "cannot reason about" not in err
