"""Runs end to end: folder layout, logged config round trip, finished-run skip, grid index."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from phd_lab.cli import main_cli
from phd_lab.config import META_KEY
from phd_lab.errors import UsageError
from phd_lab.experiment import Main
from tests.conftest import ROOT, main_in_process, read_metrics, run_folders, run_name, write_config

CSV_COLUMNS = ["epoch", "train_loss", "test_loss", "train_accuracy", "train_top5accuracy", "test_accuracy",
               "test_top5accuracy", "epoch_seconds"]


def weights(folder):
    state = torch.load(folder / f"{run_name(folder)}.pt", map_location="cpu", weights_only=True)
    return state["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_metrics(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Bit-identical metrics; epoch_seconds is wall time and the only column allowed to differ."""
    pd.testing.assert_frame_equal(a.drop(columns="epoch_seconds"), b.drop(columns="epoch_seconds"),
                                  check_exact=True)


def test_run_folder_layout_and_files(tmp_path, capsys):
    config = write_config(tmp_path, epoch=2, metrics=["Accuracy", "Top5Accuracy"])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    rel = folder.relative_to(tmp_path / "logs").parts
    assert rel[:3] == ("vgg11", "Digits_16", "0")
    name = run_name(folder)
    assert name == "vgg11-Digits-r16-bs128-e2"
    assert {p.name for p in folder.iterdir()} >= {f"{name}_config.json", f"{name}.csv", f"{name}.pt",
                                                   f"{name}.log"}
    # DESIGN.md's checkpoint: the current and the previous generation, each with every part a resume needs
    assert (folder / f"{name}.previous.pt").is_file()
    state = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
    assert state["format"] == 1 and state["epoch"] == 2 and {"python", "numpy", "torch"} <= set(state["rng"])
    assert {"model", "optimizer", "scheduler", "scaler"} <= set(state)
    metrics = read_metrics(folder)
    # DESIGN.md's and the README's columns: train_<metric> for every metric, then test_<metric> for every metric
    assert list(metrics.columns[:len(CSV_COLUMNS)]) == CSV_COLUMNS
    layers = [column[:-len("_train_saturation")] for column in metrics.columns if column.endswith("_train_saturation")]
    assert layers[0] == "features.0" and len(layers) == 10  # vgg11's 8 convolutions and 2 hidden Linear layers
    assert list(metrics.columns[len(CSV_COLUMNS):]) == [
        f"{layer}_{split}_{statistic}" for layer in layers for statistic in ("saturation", "intrinsic_dimension")
        for split in ("train", "test")] + ["train_saturation_mean", "test_saturation_mean"]
    assert metrics["epoch"].tolist() == [1, 2]
    captured = capsys.readouterr()
    assert str(folder) in captured.out
    assert "epoch 2/2" not in captured.err  # -q keeps the console quiet ...
    assert "epoch 2/2" in (folder / f"{name}.log").read_text()  # ... but the run's log is complete
    # also on the data it trained on (logged while the data were opened, before the log file was)
    assert (f"Data Digits: 1437 training and 360 test samples, 10 classes, 1 channel(s) at 16 px (data_dir "
            f"{tmp_path / 'data'})") in (folder / f"{name}.log").read_text()


def test_logged_config_reruns_bit_identically_under_another_run_id(tmp_path):
    config = write_config(tmp_path, epoch=2)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [first] = run_folders(tmp_path / "logs")
    logged = json.loads((first / f"{run_name(first)}_config.json").read_text())
    assert logged["seed"] == 7 and logged["model_args"] == {"width": 0.0625, "linear_init": "torch_output"}
    assert logged[META_KEY]["torch"] == torch.__version__ and "phd_lab" in logged[META_KEY]
    # which device 'auto' became, and whether the checkout had uncommitted changes (git_commit alone would
    # name code that did not run)
    assert logged[META_KEY]["device"] == "cpu" and logged[META_KEY]["device_name"]
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    if models:  # the CPU's model, not platform.processor()'s "x86_64"
        assert logged[META_KEY]["device_name"] == models[0]
    assert logged[META_KEY]["registry_files"]["models"] == str(ROOT / "registries" / "models.py")
    assert logged[META_KEY]["working_directory"] == os.getcwd()
    # the code a custom registry file held, and the factory defaults the config left in effect (TINY sets lr)
    assert logged[META_KEY]["registry_sha256"]["models"] == hashlib.sha256(
        (ROOT / "registries" / "models.py").read_bytes()).hexdigest()
    from phd_lab.factory_digest import factory_sha256
    from registries import models as builtin_models
    assert logged[META_KEY]["registry_factory_sha256"]["models"] == {"vgg11": factory_sha256(builtin_models.vgg11)}
    assert logged[META_KEY]["defaults_in_effect"]["optimizer_args"] == {
        "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False, "step_size": None,
        "gamma": None}
    assert logged[META_KEY]["defaults_in_effect"]["model_args"] == {"batch_norm": True, "dilation": 1, "head": "mlp"}
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                            text=True)
    untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", "*.py"], cwd=ROOT,
                               capture_output=True, text=True)  # code a tracked file may import counts too
    assert logged[META_KEY]["git_dirty"] == (bool(status.stdout.strip() or untracked.stdout.strip())
                                             if status.returncode == 0 else None)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)  # DESIGN.md
    assert logged[META_KEY]["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert logged["epoch"] == 2 and logged["optimizer"] == "adam" and logged["delta"] == 0.99  # defaults injected
    logged_path = first / f"{run_name(first)}_config.json"
    assert main_cli(["--config", str(logged_path), "--run-id", "other", "--no-progress", "-q"]) == 0
    second = [f for f in run_folders(tmp_path / "logs") if f != first]
    assert len(second) == 1 and second[0].relative_to(tmp_path / "logs").parts[2] == "other"
    assert_same_metrics(read_metrics(first), read_metrics(second[0]))
    assert_same_weights(weights(first), weights(second[0]))


def test_a_run_logged_by_0_1_reruns_with_the_model_s_own_linear_draw_in_its_own_folder(tmp_path, capsys):
    """0.1 named no linear_init: its families drew their Linear layers by Kaiming fan-out. Since 0.2 a config
    naming none draws the output layer again with torch's default, but a logged config of 0.1 still reruns its
    run: the same folder, the same weights. A hand-written config naming none is another run, and both
    commands say so once, naming the key that continues the 0.1 run."""
    from phd_lab.probes.cli import probe_cli

    def new_folders(*known):
        return [folder for folder in run_folders(tmp_path / "logs") if folder not in known]

    model_args = {"width": 0.0625, "linear_init": None}  # the model's own draw, as 0.1 ran every run
    assert main_cli(["--config", str(write_config(tmp_path, epoch=1, model_args=model_args)), "--no-progress",
                     "-q"]) == 0
    [old] = run_folders(tmp_path / "logs")
    logged_path = old / f"{run_name(old)}_config.json"
    logged = json.loads(logged_path.read_text())
    assert logged["model_args"] == model_args
    del logged["model_args"]["linear_init"]  # as 0.1 logged it
    logged[META_KEY]["phd_lab"] = "0.1.0"
    logged_path.write_text(json.dumps(logged))
    checkpoint = (old / f"{run_name(old)}.pt").read_bytes()
    assert main_cli(["--config", str(logged_path), "--no-progress", "-q"]) == 0
    assert not new_folders(old) and (old / f"{run_name(old)}.pt").read_bytes() == checkpoint  # found, complete
    assert main_cli(["--config", str(logged_path), "--run-id", "again", "--no-progress", "-q"]) == 0
    [again] = new_folders(old)
    assert_same_weights(weights(old), weights(again))

    explicit = write_config(tmp_path, name="explicit.json", epoch=1,
                            model_args={"width": 0.0625, "linear_init": "torch_output"})
    capsys.readouterr()
    assert main_cli(["--config", str(explicit), "--dry-run", "--no-progress"]) == 0
    assert "phd-lab 0.1" not in capsys.readouterr().err  # a config that names the default means it
    written = write_config(tmp_path, name="new.json", epoch=1, post_processing=["extract"])
    assert probe_cli(["--config", str(written), "--no-progress", "-q"]) == 2
    hint = " ".join(capsys.readouterr().err.split())
    assert f"trained by phd-lab 0.1 (e.g. {old})" in hint and '"linear_init": null' in hint
    assert main_cli(["--config", str(written), "--no-progress", "-q"]) == 0
    [new] = new_folders(old, again)
    warning = " ".join(capsys.readouterr().err.split())
    assert warning.count(f"1 of the 1 run(s) of this config were trained by phd-lab 0.1 (e.g. {old})") == 1
    assert '"linear_init": null' in warning
    logged_new = json.loads((new / f"{run_name(new)}_config.json").read_text())
    assert logged_new["model_args"]["linear_init"] == "torch_output"
    head = [name for name, value in weights(old).items() if name.startswith("classifier") and value.dim() == 2]
    assert len(head) == 2 and not any(torch.equal(weights(old)[name], weights(new)[name]) for name in head)
    capsys.readouterr()
    assert main_cli(["--config", str(written), "--dry-run", "--no-progress"]) == 0
    assert "phd-lab 0.1" not in capsys.readouterr().err  # its own run exists now


def test_finished_run_is_not_trained_again(tmp_path):
    config = write_config(tmp_path, epoch=1)  # cpu_threads null: the count in effect is logged
    assert main_cli(["--config", str(config), "--no-progress"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    before = (folder / f"{run_name(folder)}.pt").read_bytes()
    logged_path = folder / f"{run_name(folder)}_config.json"
    logged = json.loads(logged_path.read_text())
    assert logged["cpu_threads"] == torch.get_num_threads()
    # a rerun with another thread count and new post-processing neither retrains nor logs the thread count it
    # was not trained with; the keys that did not shape the weights follow the rerun (the report reads them)
    other = write_config(tmp_path, name="other.json", epoch=1, cpu_threads=logged["cpu_threads"] + 1,
                         post_processing=["receptive_field"], target_saturation=[0.1, 0.2])
    assert main_cli(["--config", str(other), "--no-progress"]) == 0
    assert (folder / f"{run_name(folder)}.pt").read_bytes() == before
    rewritten = json.loads(logged_path.read_text())
    assert rewritten["cpu_threads"] == logged["cpu_threads"]
    assert rewritten["post_processing"] == [{"name": "receptive_field"}]
    assert rewritten["target_saturation"] == [0.1, 0.2]
    log_text = (folder / f"{run_name(folder)}.log").read_text()
    assert "already finished 1 epoch; skipping to post-processing" in log_text
    assert f"differs from the logged config {logged_path.name} in cpu_threads={logged['cpu_threads'] + 1}" in log_text
    # a config logged by an older version (a key since removed, one since added, other versions): no crash, and
    # what the run was trained with stays
    older = {k: v for k, v in rewritten.items() if k != "probe_seed"}
    older.update(removed_key_of_an_older_version=1, _meta={**rewritten["_meta"], "git_commit": "OLD-COMMIT"})
    logged_path.write_text(json.dumps(older))
    assert main_cli(["--config", str(other), "--no-progress", "-q"]) == 0
    again = json.loads(logged_path.read_text())
    assert again["_meta"]["git_commit"] == "OLD-COMMIT" and again["cpu_threads"] == logged["cpu_threads"]
    assert "removed_key_of_an_older_version" not in again and "probe_seed" in again


def test_logged_config_reruns_its_own_run_from_any_directory_and_after_the_logs_moved(tmp_path, capsys, monkeypatch):
    """A run trained with a relative logs_dir (the default ./logs) is found again when its logged config is
    run from another working directory (a job script), and after the logs tree was moved: no duplicate run."""
    project = tmp_path / "project"
    project.mkdir()
    write_config(project, epoch=1, logs_dir="logs", data_dir=None)  # both relative to the working directory
    monkeypatch.chdir(project)
    assert main_in_process(capsys, "--config", "exp.json", "--no-progress", "-q")[0] == 0
    [folder] = run_folders(project / "logs")
    name = run_name(folder)
    logged_path = folder / f"{name}_config.json"
    logged = json.loads(logged_path.read_text())
    assert logged["logs_dir"] == str(project / "logs") and logged["data_dir"] == str(project / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    checkpoint = (folder / f"{name}.pt").read_bytes()
    monkeypatch.chdir(elsewhere)
    code, err = main_in_process(capsys, "--config", str(logged_path), "--no-progress")
    assert code == 0, err
    assert list(elsewhere.iterdir()) == [] and run_folders(project / "logs") == [folder]
    assert (folder / f"{name}.pt").read_bytes() == checkpoint
    assert "already finished 1 epoch;" in (folder / f"{name}.log").read_text()
    # the whole tree moved (another disk, another machine): the logged config still names its own folder
    moved = tmp_path / "archive" / "logs"
    moved.parent.mkdir()
    (project / "logs").rename(moved)
    [moved_folder] = run_folders(moved)
    code, err = main_in_process(capsys, "--config", str(moved_folder / logged_path.name), "--no-progress")
    assert code == 0, err
    assert "lies in its run folder: logs_dir is" in err
    assert not (project / "logs").exists() and run_folders(moved) == [moved_folder]
    assert (moved_folder / f"{name}.pt").read_bytes() == checkpoint
    # the rerun logged where the run is now; a copy of that file anywhere else finds it there
    copy = elsewhere / "copy.json"
    copy.write_text((moved_folder / logged_path.name).read_text())
    assert json.loads(copy.read_text())["logs_dir"] == str(moved)
    assert main_in_process(capsys, "--config", str(copy), "--no-progress", "-q")[0] == 0
    assert run_folders(moved) == [moved_folder] and (moved_folder / f"{name}.pt").read_bytes() == checkpoint


def test_a_logged_config_rerun_under_another_run_id_goes_beside_its_moved_run(tmp_path, capsys):
    """--run-id applies once the logged config has found its own run folder: after the logs tree moved, the new
    repetition goes beside the logged run in the moved tree, without a warning, not to the logs_dir logged."""
    import phd_lab
    from phd_lab.grid import Grid
    from phd_lab.rundir import RunDir
    raw = json.loads(write_config(tmp_path, epoch=1).read_text())
    [cfg] = Grid(raw)
    rundir = RunDir.for_run(cfg).create()
    # as this version logs it (here without training)
    rundir.config.write_text(json.dumps({**raw, META_KEY: {"phd_lab": phd_lab.__version__}}))
    moved = tmp_path / "archive" / "logs"
    moved.parent.mkdir()
    (tmp_path / "logs").rename(moved)
    capsys.readouterr()
    logged = moved / rundir.config.relative_to(tmp_path / "logs")
    assert main_cli(["--config", str(logged), "--run-id", "rerun", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "does not lie in the run folder" not in err
    assert str(moved / "vgg11" / "Digits_16" / "rerun") in out and str(tmp_path / "logs") not in out


def test_index_runs_one_point_and_dry_run_shows_grid(tmp_path, capsys):
    config = write_config(tmp_path, epoch=1, batch_size=[64, 128], model_args={"width": [0.0625, 0.125]})
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 run(s)" in out and "batch_size" in out and "model_args.width" in out
    assert not (tmp_path / "logs").exists()
    assert main_cli(["--config", str(config), "--dry-run", "--index", "4"]) == 2  # the grid has 0 … 3
    assert "--index" in " ".join(capsys.readouterr().err.split())
    assert main_cli(["--config", str(config), "--dry-run", "--index", "2"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert "4 run(s)" in rows[0] and "--index runs 1" in rows[0] and [r.split()[0] for r in rows[2:]] == ["2"]
    assert main_cli(["--config", str(config), "--index", "3", "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged = json.loads((folder / f"{run_name(folder)}_config.json").read_text())
    assert logged["batch_size"] == 128 and logged["model_args"] == {"width": 0.125, "linear_init": "torch_output"}
    # coming back to the grid: the dry run tells which points are done and where their folders are
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    rows = [row.split() for row in capsys.readouterr().out.splitlines()[1:]]
    assert rows[0] == ["index", "batch_size", "model_args.width", "status", "folder"]
    assert [row[3] for row in rows[1:]] == ["new", "new", "new", "finished"] and rows[4][4] == str(folder)


def test_user_registry_module_from_config(tmp_path, capsys):
    module = tmp_path / "my_models.py"
    module.write_text(
        "from torch import nn\n"
        "def tiny_mlp(*, num_classes, in_channels=3, hidden=16):\n"
        "    '''A two-layer perceptron.'''\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))\n")
    config = write_config(tmp_path, model="tiny_mlp", model_args={"hidden": [8, 12]}, epoch=1,
                          registries={"models": str(module)})
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert len(run_folders(tmp_path / "logs")) == 2
    bad = write_config(tmp_path, name="bad.json", model="vgg11", registries={"models": str(module)})
    assert main_cli(["--config", str(bad)]) == 2
    assert "Unknown model 'vgg11'" in " ".join(capsys.readouterr().err.split())


def test_a_model_factory_that_crashes_shows_its_traceback_and_names_no_missing_log(tmp_path, capsys):
    """A bug in a user's model factory used to end in 'failed: IndexError ... Its log: <file>', a log that was
    never written (the model is built before the run folder exists): the traceback was nowhere."""
    module = tmp_path / "buggy_models.py"
    module.write_text(
        "from torch import nn\n"
        "def buggy_cnn(*, num_classes, in_channels=3):\n"
        "    widths = [8, 16]\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, widths[2], 3), nn.Flatten(), nn.LazyLinear(num_classes))\n")
    config = write_config(tmp_path, model="buggy_cnn", model_args={}, epoch=1, registries={"models": str(module)})
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress")
    assert code == 1, err
    text = " ".join(err.split())
    assert "failed before its run log was opened (while building its data, model or optimizer)" in text
    assert "Traceback" in err and "buggy_models.py" in err and "widths[2]" in err
    assert "Its log" not in text and not run_folders(tmp_path / "logs")
    # nor does the summary send the user to a run log that does not exist
    assert "see each failed run's .log file" not in text
    assert ("1 of 1 run(s) failed. 1 of them failed before a run log was opened (while building the data, model "
            "or optimizer); their tracebacks are above.") in text


def test_relative_registry_path_is_found_beside_the_config_and_logged_absolute(tmp_path):
    folder = tmp_path / "experiment"
    folder.mkdir()
    module = folder / "my_models.py"
    module.write_text("from torch import nn\n"
                      "def flat(*, num_classes, in_channels=3):\n"
                      "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")
    config = write_config(folder, model="flat", model_args={}, epoch=1, registries={"models": "my_models.py"})
    assert os.getcwd() != str(folder)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [run] = run_folders(folder / "logs")
    logged = run / f"{run_name(run)}_config.json"
    assert json.loads(logged.read_text())["registries"] == {"models": str(module.resolve())}
    assert main_cli(["--config", str(logged), "--run-id", "again", "--no-progress", "-q"]) == 0
    # a path found from the working directory (not beside the config) is logged absolute as well
    elsewhere = tmp_path / "configs"
    elsewhere.mkdir()
    config = write_config(elsewhere, model="flat", model_args={}, epoch=1, registries={"models": "my_models.py"})
    cwd = os.getcwd()
    try:
        os.chdir(folder)
        assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    finally:
        os.chdir(cwd)
    [run] = run_folders(elsewhere / "logs")
    logged = run / f"{run_name(run)}_config.json"
    assert json.loads(logged.read_text())["registries"] == {"models": str(module.resolve())}
    # a run logged by an older version with the relative path: a rerun from the same place is no change
    logged.write_text(json.dumps({**json.loads(logged.read_text()), "registries": {"models": "my_models.py"}}))
    try:
        os.chdir(folder)
        assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    finally:
        os.chdir(cwd)
    log_text = (run / f"{run_name(run)}.log").read_text()
    assert "Post-processing" in log_text or "already" in log_text or "Run folder" in log_text  # this rerun's log
    assert "differs from the logged config" not in log_text
    assert json.loads(logged.read_text())["registries"] == {"models": str(module.resolve())}


def test_logged_config_with_a_list_valued_factory_argument_reruns_the_same_single_run(tmp_path):
    """``"widths": [[4, 8]]`` is one value (a list), not a sweep; the logged config must say it the
    same way, or rerunning it would sweep over 4 and 8."""
    module = tmp_path / "list_models.py"
    module.write_text("from torch import nn\n"
                      "def stack(*, num_classes, in_channels=3, widths=(4,)):\n"
                      "    layers = [nn.Flatten()]\n"
                      "    for width in widths:\n"
                      "        layers += [nn.LazyLinear(width), nn.ReLU()]\n"
                      "    return nn.Sequential(*layers, nn.LazyLinear(num_classes))\n")
    config = write_config(tmp_path, model="stack", model_args={"widths": [[4, 8]]}, epoch=1,
                          registries={"models": str(module)})
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [run] = run_folders(tmp_path / "logs")
    logged = run / f"{run_name(run)}_config.json"
    assert json.loads(logged.read_text())["model_args"] == {"widths": [[4, 8]], "linear_init": "torch_output"}
    assert main_cli(["--config", str(logged), "--no-progress", "-q"]) == 0  # the same run: found finished
    assert main_cli(["--config", str(logged), "--run-id", "again", "--no-progress", "-q"]) == 0
    runs = run_folders(tmp_path / "logs")
    assert len(runs) == 2
    assert_same_weights(*(weights(run) for run in runs))


def test_loader_workers_do_not_change_an_unaugmented_run(tmp_path):
    """Digits has no augmentation: with the same seed, 0 and 2 DataLoader workers must train the same
    weights (PyTorch draws the shuffle order from the loader's generator either way). A progress bar
    that opened the loader a second time drew one permutation too many whenever workers were used."""
    for workers in (0, 2):
        config = write_config(tmp_path, name=f"w{workers}.json", epoch=1, num_workers=workers)
        assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    runs = run_folders(tmp_path / "logs")
    assert len(runs) == 2
    assert_same_weights(*(weights(run) for run in runs))


@pytest.mark.parametrize("registries, fragment", [
    ({"models": 3}, "the key 'registries.models' must name a module"),
    ({"models": ""}, "the key 'registries.models' must name a module"),
    ({"models": "BROKEN"}, "failed while being imported: SyntaxError"),
    ({"models": "RAISES"}, "failed while being imported: RuntimeError: no GPU driver"),
    ({"models": "NEEDS"}, "imports 'timm_not_installed', which is not installed here"),  # not "importable from"
])
def test_unusable_registry_modules_are_named(tmp_path, capsys, registries, fragment):
    broken, raises, needs = tmp_path / "broken.py", tmp_path / "raises.py", tmp_path / "needs.py"
    broken.write_text("def net(:\n")
    raises.write_text("raise RuntimeError('no GPU driver')\n")
    needs.write_text("import timm_not_installed\n")
    paths = {"BROKEN": str(broken), "RAISES": str(raises), "NEEDS": str(needs)}
    config = write_config(tmp_path, registries={k: paths.get(v, v) for k, v in registries.items()})
    assert main_cli(["--config", str(config), "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert fragment in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists()


def test_a_ctrl_c_while_a_registry_module_imports_a_compiled_one_stops_the_command(tmp_path, capsys):
    """A registry module that imports a compiled module (timm, a CUDA extension) at its own import: a Ctrl-C that
    landed there came out as "ImportError: initialization failed", taken for a broken registry module ('failed while
    being imported', exit 2)."""
    module = tmp_path / "heavy.py"
    module.write_text("try:\n"
                      "    raise KeyboardInterrupt  # where the compiled module's initialisation was stopped\n"
                      "except KeyboardInterrupt as landed:\n"
                      "    raise ImportError('initialization failed') from landed\n")
    config = write_config(tmp_path, registries={"models": str(module)})
    assert main_cli(["--config", str(config), "--no-progress"]) == 130
    err = " ".join(capsys.readouterr().err.split())
    assert "interrupted" in err and "failed while being imported" not in err and "Traceback" not in err


def test_list_commands(capsys):
    assert main_cli(["--list", "models"]) == 0
    assert "vgg11" in capsys.readouterr().out
    assert main_cli(["--list", "models", "--pattern", "tv:resnet1*"]) == 0  # torchvision's, by their prefix
    listed = capsys.readouterr().out.split()
    assert listed == ["By", "prefix", "(3):", "tv:resnet101,", "tv:resnet152,", "tv:resnet18"]
    assert main_cli(["--list", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "Digits" in out and "FakeData" in out
    assert main_cli(["--list", "datasets", "--pattern", "cifar*"]) == 0  # case-insensitive, like did-you-mean
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["Cifar10", "Cifar100"]
    assert main_cli(["--list", "steps", "--pattern", "ex*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "extract" and all(line.startswith("    ") for line in lines[1:])
    assert any(line.strip().startswith("dtype (one of 'float32', 'float16', default \"float32\")") for line in lines)
    assert main_cli(["--list", "steps", "--pattern", "project"]) == 0  # every parameter is documented
    assert "exclude (" in capsys.readouterr().out
    assert main_cli(["--list-keys"]) == 0
    out = capsys.readouterr().out
    for key in ("model", "epoch", "batch_size", "delta", "downsampling", "post_processing", "data_parallel"):
        assert f"\n{key} " in "\n" + out


def test_a_ctrl_c_that_a_compiled_import_turned_into_its_error_stops_the_grid(tmp_path, capsys):
    """A Ctrl-C that lands while a compiled module is first imported comes out of the import as "ImportError:
    initialization failed" raised from the KeyboardInterrupt (seen with matplotlib's in the probe job): the grid
    recorded the run as failed and went on to the next point. The forward pass raises what such an import raises."""
    module = tmp_path / "interrupted.py"
    module.write_text(
        "from torch import nn\n"
        "class Interrupted(nn.Module):\n"
        "    def __init__(self, n):\n"
        "        super().__init__(); self.fc = nn.Linear(1, n)\n"
        "    def forward(self, x):\n"
        "        if x.is_meta:  # the checks before training: the Ctrl-C lands in the first run's training\n"
        "            return self.fc(x.flatten(1)[:, :1])\n"
        "        try:\n"
        "            raise KeyboardInterrupt\n"
        "        except KeyboardInterrupt as landed:\n"
        "            raise ImportError('initialization failed') from landed\n"
        "def net(*, num_classes, in_channels=3, width=1):\n"
        "    return Interrupted(num_classes)\n")
    config = write_config(tmp_path, model="net", model_args={"width": [1, 2]}, epoch=1,
                          registries={"models": str(module)})
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "failed" not in err and "Traceback" not in err
    assert len(list((tmp_path / "logs").rglob("*.log"))) == 1  # the second point never started


def test_a_failing_run_does_not_stop_the_grid(tmp_path, capsys):
    module = tmp_path / "fragile.py"
    module.write_text(
        "from torch import nn\n"
        "class Explodes(nn.Module):\n"
        "    def __init__(self, n):\n"
        "        super().__init__(); self.fc = nn.Linear(1, n)\n"
        "    def forward(self, x):\n"
        "        raise RuntimeError('boom in forward')\n"
        "def net(*, num_classes, in_channels=3, explode=False):\n"
        "    return Explodes(num_classes) if explode else nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")
    config = write_config(tmp_path, model="net", model_args={"explode": [True, False]}, epoch=1,
                          registries={"models": str(module)})
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 1
    captured = capsys.readouterr()
    assert "1 of 2 run(s) failed" in captured.err
    assert "Summary:" in captured.err and "boom in forward" in captured.err  # shown even with -q
    assert "Traceback" not in captured.err  # the console gets one line per failed run, the log the traceback
    logs = sorted((tmp_path / "logs").rglob("*.log"))
    assert len(logs) == 2
    assert any("boom in forward" in log.read_text() and "Traceback" in log.read_text() for log in logs)
    finished = [f for f in run_folders(tmp_path / "logs") if (f / f"{run_name(f)}.csv").exists()]
    assert len(finished) == 1


def test_the_advice_on_failed_runs_says_where_each_traceback_is():
    """Runs that failed before their log was opened have their traceback on the console (or in a worker's log):
    the summary must not send the user to .log files those runs do not have."""
    from phd_lab.cli import failed_runs_advice
    from phd_lab.experiment import RunOutcome
    logged = RunOutcome(0, "a", "/logs/a", "failed", "boom", logged=True)
    unlogged = RunOutcome(1, "b", "/logs/b", "failed", "boom", logged=False)
    assert failed_runs_advice([logged], 3, False) == "1 of 3 run(s) failed; see each failed run's .log file."
    mixed = failed_runs_advice([logged, unlogged], 3, False)
    assert "1 of them failed before a run log was opened" in mixed and "tracebacks are above" in mixed
    assert "The other 1: see their .log files." in mixed
    assert "in the logs of the Dask workers" in failed_runs_advice([unlogged], 3, True)
    # a run whose Dask worker processes died (KilledWorker) before its log was opened has no traceback anywhere
    died = RunOutcome(2, "c", "/logs/c", "failed", "KilledWorker: ...", logged=False, died=True)
    assert failed_runs_advice([died], 3, True) == ("1 of 3 run(s) failed. 1 of them ended with their Dask worker "
                                                   "processes (no traceback exists; the same command resumes them).")


def test_device_option_overrides_the_config(tmp_path, capsys):
    config = write_config(tmp_path, epoch=1, device="cuda:7")
    if not torch.cuda.is_available():
        assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2  # a dry run only warns of it
        assert "'device' 'cuda:7'" in " ".join(capsys.readouterr().err.split())
    assert main_cli(["--config", str(config), "--device", "cpu", "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    assert json.loads((folder / f"{run_name(folder)}_config.json").read_text())["device"] == "cpu"


def test_a_device_option_naming_the_device_the_run_trained_on_is_no_difference(tmp_path):
    """A run trained with device 'auto', rerun with --device naming what 'auto' became (its logged _meta device,
    'cpu' on a machine without a GPU): the same device trains and post-processes it, so no warning says the rerun
    differs in a value that shaped the weights; the logged config keeps 'auto'."""
    config = write_config(tmp_path, epoch=1, device="auto")
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    became = json.loads(logged_path.read_text())[META_KEY]["device"]
    assert main_cli(["--config", str(logged_path), "--device", became, "--no-progress", "-q"]) == 0
    log_text = (folder / f"{run_name(folder)}.log").read_text()
    assert log_text.count("already finished 1 epoch") == 1
    assert "differs from the logged config" not in log_text
    assert json.loads(logged_path.read_text())["device"] == "auto"


def test_progress_bars_cover_evaluation_and_the_saturation_passes(tmp_path, capsys):
    """Each epoch's separate pass (the whole training split again) showed no bar; the test split is tracked
    during the evaluation, under its bar."""
    config = write_config(tmp_path, epoch=1)
    assert main_cli(["--config", str(config)]) == 0  # not -q, which hides the bars
    err = capsys.readouterr().err
    assert "saturation (test)" not in err
    for description in ("epoch 1/1", "saturation (train)", "evaluating"):
        assert description in err, description


def test_runs_in_threads_of_one_process_take_turns_and_equal_sequential_runs(tmp_path, caplog):
    """A Dask worker with several threads runs several grid points in one process. Seeds and thread counts
    are process-wide, so two runs at once drew from each other's random streams: they must take turns and
    give exactly the weights of runs made one after the other."""
    import threading

    from phd_lab.experiment import Main

    def executor(folder: Path, seed: int):
        folder.mkdir(parents=True, exist_ok=True)
        main = Main(progress=False)
        main.load(write_config(folder, seed=seed, epoch=2, cpu_threads=1, post_processing=[],
                                    track_saturation=False))
        return main.executors[0]

    def weights(run) -> dict:
        return torch.load(run.checkpoint, weights_only=True)["model"]

    sequential = [executor(tmp_path / "sequential", seed).run() for seed in (1, 2)]
    threaded = [executor(tmp_path / "threads", seed) for seed in (1, 2)]
    caplog.set_level("INFO", logger="phd_lab.lock")
    workers = [threading.Thread(target=one.run) for one in threaded]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for alone, together in zip(sequential, threaded):
        first, second = weights(alone), weights(together.rundir)
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert "Another training run is in progress in this process" in caplog.text


def test_a_logs_dir_under_the_home_folder_is_expanded(tmp_path, capsys, monkeypatch):
    """'~/phd_logs' trained into ./~/phd_logs (a folder named '~' in the working directory) while the logged
    config named the home folder's, so a rerun of the logged config found no trained run."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    config = write_config(tmp_path, epoch=1, logs_dir="~/phd_logs", track_saturation=False)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 0, err
    [folder] = run_folders(home / "phd_logs")
    assert not (work / "~").exists()
    logged = json.loads((folder / f"{run_name(folder)}_config.json").read_text())
    assert logged["logs_dir"] == str(home / "phd_logs")
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    assert "finished" in capsys.readouterr().out


def test_a_dotted_registry_module_in_the_working_directory_is_found(tmp_path, capsys, monkeypatch):
    """main.py puts its own folder first on sys.path, so 'my_models' beside the user's config, in the working
    directory, was refused as not "importable from the working directory", which the message itself promised."""
    (tmp_path / "cwd_models_for_test.py").write_text(
        "from torch import nn\n"
        "def tiny_mlp(*, num_classes, in_channels=3):\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    config = write_config(tmp_path, model="tiny_mlp", model_args={}, epoch=1, track_saturation=False,
                          registries={"models": "cwd_models_for_test"})
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 0, err
    assert len(run_folders(tmp_path / "logs")) == 1


def test_a_registries_package_that_shadows_the_built_in_one_is_named(tmp_path, caplog):
    """Under `python -m phd_lab` a 'registries' package in the working directory replaced the built-in one
    silently, and the logged config ('registries': {}) could not tell which factories had trained the run."""
    from phd_lab.registry import Registries
    shadow = tmp_path / "registries"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("")
    for kind in ("models", "datasets", "optimizers", "metrics"):
        (shadow / f"{kind}.py").write_text("def thing(**kwargs):\n    return None\n")
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "registries"}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(tmp_path))
    try:
        with caplog.at_level("WARNING", logger="phd_lab.registry"):
            registries = Registries()
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name.split(".")[0] == "registries"]:
            del sys.modules[name]
        sys.modules.update(saved)
    assert registries.files["models"] == str(shadow / "models.py")
    assert "shadows it" in caplog.text and str(shadow / "models.py") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="phd_lab.registry"):
        builtin = Registries()
    assert builtin.files["models"] == str(ROOT / "registries" / "models.py") and "shadows" not in caplog.text


CHANNELS_LAST_MODELS = """
from torch import nn


class ToChannelsLast(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


def pointwise(*, num_classes, in_channels=3):
    \"\"\"A Linear on a channels-last map (ConvNeXt's blocks): extraction version 3 pools it otherwise than 2.\"\"\"
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), ToChannelsLast(), nn.Linear(4, 4),
                         nn.Flatten(), nn.Linear(4 * 16 * 16, num_classes))


def plain(*, num_classes, in_channels=3):
    \"\"\"Latents that extraction versions 2 and 3 make alike (a VGG's or a ResNet's too).\"\"\"
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 16 * 16, num_classes))
"""


def test_dry_run_says_which_latents_of_an_older_extraction_version_the_run_extracts_again(tmp_path, capsys):
    """--dry-run called a run 'finished' whose latents an older phd-lab had extracted (no extraction_version, no
    model fingerprint, or version 2 of a model with a channels-last Linear), although the plain command extracts
    them again; it now lists 'extract' there, and keeps calling other models' version-2 latents, which are reused,
    done."""
    (tmp_path / "my_models.py").write_text(CHANNELS_LAST_MODELS)
    common = {"epoch": 1, "cpu_threads": 1, "track_saturation": False, "post_processing": ["extract"],
              "model_args": {}, "registries": {"models": "my_models.py"}}
    configs = [write_config(tmp_path, f"{model}.json", **common, model=model) for model in ("plain", "pointwise")]

    def status(config) -> str:
        capsys.readouterr()
        assert main_cli(["--config", str(config), "--dry-run"]) == 0
        return capsys.readouterr().out.splitlines()[-1].split(str(tmp_path))[0].split(None, 1)[1].strip()

    for config in configs:
        assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    plain, own = sorted(run_folders(tmp_path / "logs"), key=lambda folder: "pointwise" in str(folder))
    current = {folder: json.loads((folder / "latents" / "manifest.json").read_text()) for folder in (plain, own)}

    def write_manifest(folder, **changes) -> None:
        manifest = {k: v for k, v in {**current[folder], **changes}.items() if v is not None}
        (folder / "latents" / "manifest.json").write_text(json.dumps(manifest))

    assert [status(config) for config in configs] == ["finished", "finished"]
    write_manifest(plain, extraction_version=2)  # as phd-lab wrote it from 2026-11-28 to 2026-12-02
    write_manifest(own, extraction_version=2)
    assert [status(config) for config in configs] == ["finished", "trained, steps left: extract"]
    for changes in ({"extraction_version": None}, {"model_sha256": None}, {"dtype": "float16"}):  # older still
        write_manifest(plain, **changes)
        assert status(configs[0]) == "trained, steps left: extract", changes
    for config in configs:  # the plain command agrees: it extracts both again
        assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert [status(config) for config in configs] == ["finished", "finished"]
    assert all(json.loads((folder / "latents" / "manifest.json").read_text())["extraction_version"] == 3
               for folder in (plain, own))


def test_dry_run_says_latents_of_other_weights_than_the_checkpoints_are_extracted_again(tmp_path, capsys):
    """A run retrained in its folder (checkpoints deleted, another device or precision) keeps latents whose model
    fingerprint is the old weights': the plain command extracts them again, but --dry-run called the run finished.
    It now compares the manifest's fingerprint with that of the checkpoint's weights, by the same function."""
    import torch

    from phd_lab.checkpoint import CheckpointStore
    config = write_config(tmp_path, "exp.json", epoch=1, cpu_threads=1, track_saturation=False,
                          post_processing=["extract"])

    def status() -> str:
        capsys.readouterr()
        assert main_cli(["--config", str(config), "--dry-run"]) == 0
        return capsys.readouterr().out.splitlines()[-1].split(str(tmp_path))[0].split(None, 1)[1].strip()

    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    (folder,) = run_folders(tmp_path / "logs")
    assert status() == "finished"
    checkpoint = next(path for path in folder.glob("*.pt") if not path.name.endswith(".previous.pt"))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    first = sorted(state["model"])[0]
    state["model"][first] = state["model"][first] + 1  # the weights of another training in the same folder
    checkpoint.unlink()
    CheckpointStore(checkpoint, checkpoint.with_suffix(".previous.pt")).save(state)
    assert status() == "trained, steps left: extract"
    manifest = (folder / "latents" / "manifest.json").read_text()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0  # the plain command agrees
    assert (folder / "latents" / "manifest.json").read_text() != manifest
    assert status() == "finished"


COUNTED_MODELS = """
from pathlib import Path

import torch
from torch import nn


def counted(*, num_classes, in_channels=3):
    \"\"\"A model that notes each build on the meta device in meta_builds.txt beside this file.\"\"\"
    if torch.empty(0).device.type == "meta":
        with open(Path(__file__).with_name("meta_builds.txt"), "a") as notes:
            notes.write("built\\n")
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 16 * 16, num_classes))
"""


def test_dry_run_builds_each_meta_model_once(tmp_path, capsys):
    """The status of a run whose latents a version-2 extraction made asks for the model on the meta device; --dry-run
    built it again for every such point, although the grid check had built it already."""
    (tmp_path / "counted_models.py").write_text(COUNTED_MODELS)
    config = write_config(tmp_path, "exp.json", epoch=1, cpu_threads=1, track_saturation=False,
                          post_processing=["extract"], model="counted", model_args={},
                          registries={"models": "counted_models.py"})
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    (folder,) = run_folders(tmp_path / "logs")
    manifest = json.loads((folder / "latents" / "manifest.json").read_text())
    (folder / "latents" / "manifest.json").write_text(json.dumps({**manifest, "extraction_version": 2}))
    builds = tmp_path / "meta_builds.txt"
    builds.unlink(missing_ok=True)
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    assert "finished" in capsys.readouterr().out  # version 2 of a model without channels-last Linears: reused
    assert builds.read_text().splitlines() == ["built"]


def dry_run_status(capsys, config, folder) -> str:
    """The status --dry-run lists for the run in ``folder`` (the last line of its listing)."""
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    return " ".join(capsys.readouterr().out.splitlines()[-1].split(str(folder))[0].split()[1:])


def test_dry_run_names_the_steps_a_trained_run_still_lacks(tmp_path, capsys):
    """A run killed during its extraction (the manifest is written last) was listed as finished, so a user
    checking a grid with --dry-run never learnt that its latents were missing."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False,
                          post_processing=["receptive_field", "extract"])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")

    def status() -> str:
        return dry_run_status(capsys, config, folder)

    assert status() == "finished"
    (folder / "latents" / "manifest.json").unlink()  # the state a SIGKILL during the extraction leaves
    (folder / "receptive_field.png").unlink()
    assert status() == "trained, steps left: receptive_field, extract"
    write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False,
                 post_processing=["receptive_field", "extract", "flops"])  # a step added since
    assert status() == "trained, steps left: receptive_field, extract, flops"
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert status() == "finished"
    # a latents file deleted or truncated after the manifest was written: the real run extracts again
    latents = sorted((folder / "latents").glob("train-*.npy"))
    latents[-1].unlink()
    assert status() == "trained, steps left: extract"
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert status() == "finished"
    with open(latents[0], "r+b") as handle:
        handle.truncate(handle.seek(0, os.SEEK_END) - 16)
    assert status() == "trained, steps left: extract"


def test_a_run_killed_as_its_analysis_was_written_is_not_called_finished(tmp_path, capsys):
    """The analysis step declares no outputs of its own (it reads the latest tables and runs on every rerun), so a
    SIGKILL while analysis.json and analysis.png were written left a run that --dry-run called finished and that a
    Dask rerun did not submit ("finished, with no post-processing step left"): its analysis was never written."""
    from phd_lab.experiment import rerun_changes_nothing
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False,
                          post_processing=["receptive_field", "analysis"])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")

    def status() -> str:
        return dry_run_status(capsys, config, folder)

    assert status() == "finished"
    for written in ("analysis.json", "analysis.png"):
        saved = (folder / written).read_bytes()
        (folder / written).unlink()  # the state a kill before this file's rename leaves
        assert status() == "trained, steps left: analysis"
        main = Main(progress=False)
        main.load(config)
        assert not rerun_changes_nothing(main.executors[0])  # a Dask grid sends it to a worker
        assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
        assert status() == "finished" and (folder / written).read_bytes() == saved


def test_dry_run_counts_the_checkpoints_epochs_where_a_kill_left_the_csv_behind_it(tmp_path, capsys):
    """A SIGKILL between an epoch's checkpoint and its CSV row (written second) left --dry-run saying "stopped 2/3
    epochs" (or "not started" after the first epoch) while the rerun resumed after the checkpoint's epoch 3 and
    trained nothing. A checkpoint saved after the CSV's last write is read for its epochs."""
    config = write_config(tmp_path, epoch=2, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    [csv] = [path for path in folder.glob("*.csv")]
    [checkpoint] = [path for path in folder.glob("*.pt") if not path.name.endswith(".previous.pt")]
    rows = csv.read_text().splitlines(keepends=True)

    def status() -> str:
        return dry_run_status(capsys, config, folder)

    assert status() == "finished"
    csv.write_text("".join(rows[:2]))  # the epoch-2 row never written
    later = csv.stat().st_mtime_ns + 10**9
    os.utime(checkpoint, ns=(later, later))
    assert status() == f"finished (the epochs trained are those of {checkpoint.name}: the metrics CSV lists 1 of its 2)"
    os.utime(checkpoint, ns=(later - 2 * 10**9, later - 2 * 10**9))  # the CSV written last: not read
    assert status() == "stopped 1/2 epochs"
    csv.unlink()  # killed before the first epoch's row: "not started" was said
    assert status().startswith(f"finished (the epochs trained are those of {checkpoint.name}: the metrics CSV "
                               f"lists 0 of its 2)")


def test_a_logged_config_edited_in_place_is_named_when_its_original_config_looks_for_the_run(tmp_path, capsys):
    """A user edited 'epoch' in a run's logged config and ran that file (another run, as documented). The original
    experiment config then found its folder holding the edited run's config and silently trained its run again from
    the start in a long-digest folder; the dry run said "new". Now a warning names the folder and the remedy."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    [logged] = folder.glob("*_config.json")
    logged.write_text(logged.read_text().replace('"epoch": 1', '"epoch": 2'))  # edited in place
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    said = " ".join(capsys.readouterr().err.split())
    assert f"The run folder {folder} is named after this run, but its logged config (*_config.json) names another " \
           "run" in said, said
    assert "To continue the run trained in" in said and "restore the values of its logged config" in said
    assert said.count("is named after this run") == 1  # once, though the grid check and the listing look it up


def test_dry_run_reads_a_damaged_metrics_csv_as_the_report_does_and_counts_the_checkpoints_epochs(tmp_path, capsys):
    """--dry-run read the metrics CSV with a plain pd.read_csv and turned any error (a file cut in its header, bytes
    that are no UTF-8) into "not started", although the checkpoint held every epoch. It reads the file as the report
    does (the complete rows), names the damage, and takes the epochs trained from the checkpoint where it holds more."""
    config = write_config(tmp_path, epoch=2, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    csv_path = folder / f"{run_name(folder)}.csv"
    whole = csv_path.read_bytes()
    header, first, _ = whole.split(b"\n", 2)

    def status() -> str:
        return dry_run_status(capsys, config, folder)

    checkpoint = f"the epochs trained are those of {run_name(folder)}.pt"
    csv_path.write_bytes(b"\xff" + whole[1:])  # no UTF-8
    said = status()
    assert said.startswith(f"finished ({csv_path.name} cannot be read: 'utf-8' codec can't decode byte 0xff")
    assert said.endswith(f"; {checkpoint})")
    csv_path.write_bytes(header[: len(header) // 2])
    assert status() == (f"finished ({csv_path.name} cannot be used: the last row is incomplete (truncated?); "
                        f"{checkpoint})")
    csv_path.write_bytes(header + b"\n" + first + b"\n" + b"2,0.")
    assert status() == (f"finished ({csv_path.name}: the last row is incomplete (truncated?); only its 1 complete "
                        f"row(s) are used; {checkpoint})")
    csv_path.write_bytes(whole)
    assert status() == "finished"


def test_points_that_differ_in_keys_the_model_checks_do_not_read_share_their_checks(tmp_path):
    """Every grid point ran the meta-model checks again (a forward pass, the receptive-field trace): most of a
    large grid's start, paid again by every array task of a SLURM job. Points that differ only in seeds or
    learning rates now share them; another resolution checks the input size and the output again."""
    module = tmp_path / "counting_models.py"
    module.write_text(
        "from torch import nn\n"
        "FORWARDS = []\n"
        "class Counting(nn.Sequential):\n"
        "    def forward(self, x):\n"
        "        FORWARDS.append(1)\n"
        "        return super().forward(x)\n"
        "def counting_cnn(*, num_classes, in_channels=3):\n"
        "    '''A small CNN that counts its forward passes.'''\n"
        "    return Counting(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                    nn.Flatten(), nn.Linear(4, num_classes))\n")

    def forwards_to_load(**grid) -> int:
        fresh = tmp_path / f"counting_models_{len(list(tmp_path.glob('counting_models*')))}.py"  # its own counter
        fresh.write_text(module.read_text())
        config = write_config(tmp_path, model="counting_cnn", model_args={}, registries={"models": str(fresh)},
                              post_processing=["receptive_field"], **grid)
        main = Main(progress=False)
        main.load(config)
        return len(main.executors[0].registries.models.get("counting_cnn").__globals__["FORWARDS"])

    one = forwards_to_load()
    assert one >= 1
    assert forwards_to_load(optimizer_args={"lr": [0.1, 0.01, 0.001]}, seed=[1, 2, 3]) == one  # 9 points
    # the input size and the single output (a training-mode and an eval-mode pass) again, and the receptive-field
    # trace, which runs at the run's resolution (a model made for one input size runs at no other)
    assert forwards_to_load(resolution=[16, 24]) == one + 4


def test_the_csv_test_columns_are_the_trained_models_scores_on_the_test_split(tmp_path):
    """test_loss and test_accuracy in a run's CSV are the final model's cross-entropy and accuracy on the 360
    test samples, recomputed here from the checkpoint's weights: scores of the training split would look fine."""
    import torch.nn.functional as F
    main = Main(progress=False)
    main.load(write_config(tmp_path, epoch=1, track_saturation=False, post_processing=[]))
    executor = main.executors[0]
    rundir = executor.run()
    row = pd.read_csv(rundir.metrics_csv).iloc[-1]
    bundle = executor.build_data()
    model = executor.build_model(bundle)
    model.load_state_dict(torch.load(rundir.checkpoint, map_location="cpu", weights_only=True)["model"])
    model.eval()
    images, labels = (torch.cat(parts) for parts in zip(*bundle.test))
    with torch.no_grad():
        outputs = model(images)
    assert len(labels) == 360
    assert row["test_loss"] == pytest.approx(float(F.cross_entropy(outputs, labels)), rel=1e-5)
    assert row["test_accuracy"] == pytest.approx(float((outputs.argmax(dim=1) == labels).double().mean()))


def test_the_model_is_drawn_from_the_seed_whatever_the_dataset_code_draws(tmp_path):
    """A dataset factory that draws from torch's global generator (here: choosing preview samples with
    torch.randperm, the data left as they are) must not change the model's initial weights: the same seed and the
    same data train the same weights as plain Digits."""
    module = tmp_path / "my_datasets.py"
    module.write_text(
        "import torch\n"
        "import registries.datasets as builtin\n"
        "def PreviewDigits(**kwargs):\n"
        "    '''Digits, after drawing 8 preview samples from torch's global generator.'''\n"
        "    torch.randperm(1437)[:8]\n"
        "    return builtin.Digits(**kwargs)\n")
    plain = write_config(tmp_path, name="plain.json", epoch=1, track_saturation=False, post_processing=[])
    drawing = write_config(tmp_path, name="drawing.json", epoch=1, track_saturation=False, post_processing=[],
                           dataset="PreviewDigits", registries={"datasets": str(module)})
    for config in (plain, drawing):
        assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    runs = run_folders(tmp_path / "logs")
    assert len(runs) == 2
    assert_same_weights(*(weights(run) for run in runs))


def test_each_run_of_a_grid_logs_into_its_own_log_file_only(tmp_path, capsys):
    """A run's log handler is taken off when the run ends: the next point's lines went on into the earlier
    run's .log file (reopened by the closed handler)."""
    config = write_config(tmp_path, epoch=1, resolution=8, track_saturation=False, post_processing=[],
                          optimizer_args={"lr": [0.003, 0.001]})
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 0, err
    first, second = run_folders(tmp_path / "logs")
    for own, other in ((first, second), (second, first)):
        log_text = (own / f"{run_name(own)}.log").read_text()
        assert f"Run folder {own}" in log_text and str(other) not in log_text


def test_a_run_folder_that_another_run_logged_its_config_in_meanwhile_is_refused(tmp_path):
    """Two commands whose runs share a folder digest (a CRC-32 collision): the folder was chosen when the config
    was loaded, and if the other run logged its config there since, this run stops instead of overwriting it."""
    main = Main(progress=False)
    main.load(write_config(tmp_path, epoch=1, track_saturation=False, post_processing=[]))
    executor = main.executors[0]
    other = Main(progress=False)
    other.load(write_config(tmp_path, name="other.json", epoch=1, optimizer_args={"lr": 0.001}))
    written = json.dumps(other.executors[0].logged_config())
    executor.rundir.create()
    executor.rundir.config.write_text(written)
    with pytest.raises(UsageError, match="holds a run with a different config .*; use another run id"):
        executor.run()
    assert executor.rundir.config.read_text() == written
    assert not executor.rundir.checkpoint.exists() and not executor.rundir.metrics_csv.exists()
    log_text = executor.rundir.log.read_text()  # a refusal, said on the console: no failure with a traceback
    assert "Run failed" not in log_text and "Traceback" not in log_text


def test_a_point_refused_as_it_runs_is_not_sent_to_a_run_log_that_does_not_exist(tmp_path, capsys):
    """A grid point whose dataset argument its factory refuses (found only when the point builds its data) was listed
    with "see each failed run's .log file", in a folder that was never made; the error is on the console."""
    (tmp_path / "my_data.py").write_text(
        "from registries.datasets import Digits\n\n\n"
        "def Digits2(*, mode='ok', **kwargs):\n"
        "    if mode != 'ok':\n"
        "        raise ValueError(f'unknown mode {mode!r}: expected \\'ok\\'')\n"
        "    return Digits(**kwargs)\n")
    config = write_config(tmp_path, dataset="Digits2", dataset_args={"mode": ["ok", "bad"]}, epoch=1, cpu_threads=1,
                          track_saturation=False, post_processing=[], registries={"datasets": "my_data.py"})
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    text = " ".join(err.split())
    assert code == 1, text
    assert "unknown mode 'bad'" in text and "see each failed run's .log file" not in text
    assert "1 of 2 run(s) failed. 1 of them failed before a run log was opened" in text
    assert len(run_folders(tmp_path / "logs")) == 1
