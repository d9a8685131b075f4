"""Latents mirrored under one latents_dir by two logs trees: the mirrored folder keeps only
<model>/<dataset>_<resolution>/<run_id>/<variant>, so two trees' runs of one config share it. The second one
is refused (exit 2) instead of rewriting the first one's manifest to name its own run folder; a tree that moved
still takes its latents along."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from phd_lab.config_file import load_config_file
from phd_lab.errors import ConfigError
from phd_lab.extraction import extract_latents
from phd_lab.grid import Grid
from phd_lab.latents_folder import MANIFEST
from phd_lab.rundir import RunDir
from tests.conftest import main_in_process, write_config
from tests._extraction_models import build_model, loaders


def _rundir(config: Path) -> RunDir:
    return RunDir.for_run(Grid(load_config_file(config))[0])


def test_a_second_logs_tree_is_refused_the_latents_of_the_first_and_a_moved_tree_keeps_them(tmp_path, capsys):
    """The second tree's run trained and then rewrote the first tree's manifest to name its own folder (exit 0):
    the probe results of the first tree's run then went to the second tree. About 5 s."""
    latents_dir = str(tmp_path / "latents")
    first = write_config(tmp_path, "a.json", epoch=1, logs_dir=str(tmp_path / "a"), latents_dir=latents_dir,
                         post_processing=["extract"])
    code, err = main_in_process(capsys, "--config", str(first))
    assert code == 0, err
    owner = _rundir(first)
    manifest = owner.latents(latents_dir) / MANIFEST
    before = manifest.read_bytes()
    second = write_config(tmp_path, "b.json", epoch=1, logs_dir=str(tmp_path / "b"), latents_dir=latents_dir,
                          post_processing=["extract"])
    code, err = main_in_process(capsys, "--config", str(second))
    said = " ".join(err.split())
    assert code == 2, said
    assert str(owner.root.resolve()) in said and str(_rundir(second).root) in said and "latents_dir" in said
    assert "Traceback" not in said
    assert manifest.read_bytes() == before
    assert not (tmp_path / "b").exists()  # refused before training
    code, err = main_in_process(capsys, "--config", str(second), "--dry-run")
    assert code == 0 and "latents_dir of its own" in " ".join(err.split())
    (tmp_path / "a").rename(tmp_path / "moved")  # a real move: the latents follow the run to its new place
    moved = write_config(tmp_path, "moved.json", epoch=1, logs_dir=str(tmp_path / "moved"), latents_dir=latents_dir,
                         post_processing=["extract"])
    code, err = main_in_process(capsys, "--config", str(moved))
    assert code == 0, err
    assert json.loads(manifest.read_text())["run_dir"] == str(_rundir(moved).root.resolve())


def test_grid_points_that_differ_only_in_logs_dir_are_refused_one_latents_folder_before_training(tmp_path, capsys):
    """Both points trained, and the second one's extraction took over the first one's latents. Under 1 s."""
    config = write_config(tmp_path, epoch=1, logs_dir=[str(tmp_path / "a"), str(tmp_path / "b")],
                          latents_dir=str(tmp_path / "latents"), post_processing=["extract"])
    code, err = main_in_process(capsys, "--config", str(config))
    said = " ".join(err.split())
    assert code == 2, said
    assert "run 1" in said and str(tmp_path / "a") in said and str(tmp_path / "b") in said
    assert "latents_dir of its own" in said and "Traceback" not in said
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    assert code == 0 and "latents_dir of its own" in " ".join(err.split())


@pytest.fixture(scope="module")
def data():
    return loaders()


def test_extraction_refuses_a_folder_whose_manifest_names_another_run_that_still_holds_it(tmp_path, data):
    """The step's own check, for runs the grid check cannot see (another command started meanwhile): neither
    reused (its manifest rewritten) nor extracted over. A run folder that is gone was moved: reused. About 1 s."""
    model = build_model()
    shared = tmp_path / "latents" / "vgg" / "run"
    owner, other = tmp_path / "a" / "run", tmp_path / "b" / "run"
    for folder in (owner, other):
        folder.mkdir(parents=True)
        (folder / "run_config.json").write_text("{}")
    first = extract_latents(model, data, shared, run_dir=owner, progress=False)
    before = (shared / MANIFEST).read_bytes()
    with pytest.raises(ConfigError, match="latents_dir of its own") as refused:
        extract_latents(model, data, shared, run_dir=other, progress=False)
    assert str(owner.resolve()) in str(refused.value) and str(other.resolve()) in str(refused.value)
    assert (shared / MANIFEST).read_bytes() == before
    shutil.rmtree(owner)
    again = extract_latents(model, data, shared, run_dir=other, progress=False)
    assert again == {**first, "run_dir": str(other.resolve())}


def test_a_latents_manifest_holding_nan_is_refused_before_training_not_when_its_move_is_recorded(tmp_path, capsys):
    """A hand-edited manifest's "model_test_accuracy": NaN (Python's JSON reader takes it) was reused after the logs
    tree moved, and its rewrite naming the new place (record_move, atomic.write_json refuses NaN) ended the run
    with a ValueError traceback, after it had resumed. About 3 s."""
    latents_dir = str(tmp_path / "latents")
    first = write_config(tmp_path, "a.json", epoch=1, logs_dir=str(tmp_path / "a"), latents_dir=latents_dir,
                         post_processing=["extract"])
    code, err = main_in_process(capsys, "--config", str(first))
    assert code == 0, err
    manifest = _rundir(first).latents(latents_dir) / MANIFEST
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "model_test_accuracy": float("nan")}))
    before = manifest.read_bytes()
    (tmp_path / "a").rename(tmp_path / "moved")
    moved = write_config(tmp_path, "moved.json", epoch=1, logs_dir=str(tmp_path / "moved"), latents_dir=latents_dir,
                         post_processing=["extract"])
    code, err = main_in_process(capsys, "--config", str(moved))
    said = " ".join(err.split())
    assert code == 2, said
    assert f"run 0: Latents manifest {str(manifest)!r} is invalid: its value at model_test_accuracy is nan" in said
    assert "Traceback" not in said and "started from config" not in said and manifest.read_bytes() == before
    code, err = main_in_process(capsys, "--config", str(moved), "--dry-run")
    assert code == 0 and "its value at model_test_accuracy is nan" in " ".join(err.split())


def test_a_renamed_experiment_folder_is_told_that_its_logged_latents_dir_is_gone_and_how_to_name_the_new_one(
        tmp_path, capsys):
    """An experiment folder renamed with its logs and latents (projA -> projB): the rerun of a logged config in its
    moved run folder extracted the latents again under the old projA/lat, making projA anew without a word, and the
    probe job said only 'No latents found ... or under latents_dir' and to train the run first. About 6 s."""
    from phd_lab.probes.cli import probe_cli
    old, new = tmp_path / "projA", tmp_path / "projB"
    old.mkdir()
    config = write_config(old, epoch=1, latents_dir=str(old / "lat"), post_processing=["extract"])
    code, err = main_in_process(capsys, "--config", str(config))
    assert code == 0, err
    logged = _rundir(config).config
    old.rename(new)
    moved = new / logged.relative_to(old)
    capsys.readouterr()
    assert probe_cli(["--config", str(moved), "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    gone = str(old / "lat")
    assert f"this trained run's latents_dir, {gone}, does not exist" in err, err
    assert f"or under latents_dir '{gone}', which does not exist)" in err, err
    code, err = main_in_process(capsys, "--config", str(moved), "--no-progress")
    err = " ".join(err.split())
    assert code == 0 and "set latents_dir in this logged config to their new place" in err, err
    shutil.rmtree(old)  # the old place the rerun made anew, as it warned
    values = json.loads(moved.read_text())
    moved.write_text(json.dumps({**values, "latents_dir": str(new / "lat")}, indent=2))  # as the warning advises
    code, err = main_in_process(capsys, "--config", str(moved), "--no-progress")
    assert code == 0 and "does not exist" not in err and "are complete; reusing them" in err, err
    assert not old.exists()
    assert probe_cli(["--config", str(moved), "-q", "-mp", "0"]) == 0  # the latents found: fitted here, no workers
