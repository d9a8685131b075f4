"""Several latents sets from one trained model (§8.3's probe ablation): the extract step's ``sizes`` and
``methods``, nearest interpolation, the folders and probe results of each set, and the plot comparing them."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from phd_lab.config_file import load_config_file
from phd_lab.extraction import extract_latents
from phd_lab.file_hash import latents_digest
from phd_lab.grid import Grid
from phd_lab.latents_folder import MANIFEST
from phd_lab.latents_sets import LatentsSet, config_sets, extraction_sets, named_set, set_of_folder
from phd_lab.pooling import nearest_to, pool_to
from phd_lab.probes.cli import probe_cli
from phd_lab.probes.outputs import probe_set_tables
from phd_lab.rundir import RunDir
from tests.conftest import main_in_process, run_folders, write_config
from tests._extraction_models import build_model, loaders
from tests.test_extraction import reference_outputs

PNG = b"\x89PNG\r\n\x1a\n"
ABLATION = {"name": "extract", "sizes": [1, 2], "methods": ["adaptive_avg", "nearest"]}


def test_nearest_to_keeps_the_first_position_of_each_cell():
    maps = torch.arange(2 * 3 * 8 * 6, dtype=torch.float32).reshape(2, 3, 8, 6)
    assert torch.equal(nearest_to(maps, (4, 3)), maps[:, :, ::2, ::2])
    assert torch.equal(nearest_to(maps, 1), maps[:, :, :1, :1])
    odd = torch.arange(7 * 7, dtype=torch.float32).reshape(1, 1, 7, 7)
    rows = [0, 2, 4]  # floor(i * 7 / 3)
    assert torch.equal(nearest_to(odd, 3), odd[:, :, rows][:, :, :, rows])
    assert nearest_to(maps, (8, 6)) is maps
    assert not torch.equal(nearest_to(maps, 2), pool_to(maps, 2))


def test_sets_are_named_after_size_and_method_and_the_default_set_comes_first():
    sets = extraction_sets(4, [1, 4, None, "pixelwise"], ["adaptive_avg", "nearest"])
    assert sets == [LatentsSet(4), LatentsSet(1, "adaptive_avg", "1x1_avg"), LatentsSet(1, "nearest", "1x1_nearest"),
                    LatentsSet(4, "nearest", "4x4_nearest"), LatentsSet(None, "adaptive_avg", "full"),
                    LatentsSet("pixelwise", "adaptive_avg", "pixelwise")]
    assert [s.folder_name for s in sets[:2]] == ["latents", "latents_1x1_avg"]
    assert all(named_set(s.name) == s for s in sets[1:]) and named_set("old") is None  # names read back
    assert extraction_sets(2) == [LatentsSet(2)]
    assert [set_of_folder(name) for name in ("latents", "latents_1x1_nearest", "latents_full", "latents_old",
                                             "latents_0x0_avg", "mine")] == ["", "1x1_nearest", "full", "", "", ""]
    values = {"downsampling": 3, "post_processing": [{"name": "flops"}, {"name": "extract", "sizes": [1]}]}
    assert [s.name for s in config_sets(values)] == ["", "1x1_avg"]
    assert config_sets({"downsampling": 3, "post_processing": [{"name": "extract", "downsampling": 5}]}) \
        == [LatentsSet(5)]


def test_nearest_extraction_keeps_the_first_position_and_is_not_reused_for_averaging(tmp_path):
    data = loaders()
    model = build_model()
    folder = tmp_path / "latents_2x2_nearest"
    manifest = extract_latents(model, data, folder, run_dir=tmp_path, downsampling=2, method="nearest",
                               progress=False)
    assert manifest["downsampling_method"] == "nearest"
    images = torch.cat([batch[0] for batch in data["train"]])
    expected = reference_outputs(model, images)["body.0"]
    stored = np.load(folder / "train-body.0.npy", allow_pickle=False)
    np.testing.assert_array_equal(stored, nearest_to(expected, 2).flatten(1).numpy())
    written = (folder / "train-body.0.npy").stat().st_mtime_ns
    again = extract_latents(model, data, folder, run_dir=tmp_path, downsampling=2, method="nearest", progress=False)
    assert again == manifest and (folder / "train-body.0.npy").stat().st_mtime_ns == written  # reused
    averaged = extract_latents(model, data, folder, run_dir=tmp_path, downsampling=2, progress=False)
    assert "downsampling_method" not in averaged  # the manifests of earlier versions stay reusable
    np.testing.assert_allclose(np.load(folder / "train-body.0.npy", allow_pickle=False),
                               pool_to(expected, 2).flatten(1).numpy(), rtol=1e-5, atol=1e-6)


def test_one_trained_model_gives_every_set_its_folder_probe_results_and_a_comparison_plot(tmp_path, capsys):
    config = write_config(tmp_path, epoch=1, downsampling=2, probe_solver="lbfgs",
                          post_processing=[ABLATION, "analysis"])
    code, err = main_in_process(capsys, "--config", str(config))
    assert code == 0, err
    [run] = run_folders(tmp_path / "logs")
    names = ["latents", "latents_1x1_avg", "latents_1x1_nearest", "latents_2x2_nearest"]
    assert sorted(p.name for p in run.glob("latents*")) == names  # (2, avg) is the default set: no second copy
    manifests = {name: json.loads((run / name / MANIFEST).read_text()) for name in names}
    assert [m.get("downsampling_method") for m in manifests.values()] == [None, None, "nearest", "nearest"]
    assert [m["downsampling"] for m in manifests.values()] == [2, 1, 1, 2]
    first_conv = {name: m["layers"][0]["shape"][1] for name, m in manifests.items()}
    assert first_conv["latents"] == 4 * first_conv["latents_1x1_avg"] == 4 * first_conv["latents_1x1_nearest"]
    default = np.load(run / "latents" / "train-features.0.npy", allow_pickle=False)
    nearest = np.load(run / "latents_2x2_nearest" / "train-features.0.npy", allow_pickle=False)
    assert default.shape == nearest.shape and not np.array_equal(default, nearest)
    stamps = {path: path.stat().st_mtime_ns for path in run.glob("latents*/*.npy")}
    code, err = main_in_process(capsys, "--config", str(config))  # a rerun extracts nothing again
    assert code == 0, err
    assert {path: path.stat().st_mtime_ns for path in run.glob("latents*/*.npy")} == stamps

    capsys.readouterr()
    assert probe_cli(["--config", str(config), "-mp", "0", "--no-progress"]) == 0
    # the Linear layers' latents are the same in every set: each is fitted once, the other sets take its result
    said = " ".join(capsys.readouterr().err.split())
    files = [(layer["sha256"]["train"], layer["sha256"]["eval"]) for m in manifests.values() for layer in m["layers"]]
    shared = len(files) - len(set(files))  # the Linear layers, and maps already at most 1×1 or 2×2
    assert shared >= 9 and f"probing 40 layer(s) ({shared} identical to another layer's, fitted once), 0 found" \
        in said, re.findall("probing .{0,90}", said)
    sets = ["", "_1x1_avg", "_1x1_nearest", "_2x2_nearest"]
    tables = {s: pd.read_csv(run / f"probe_performances{s}.csv") for s in sets}
    written = {s: (run / f"probe_performances{s}.csv").read_bytes() for s in sets}
    for s in sets:
        (run / f"probe_performances{s}.csv").unlink()
    assert probe_cli(["--config", str(config), "-mp", "0", "--no-progress", "-q"]) == 0  # all from the cache
    assert {s: (run / f"probe_performances{s}.csv").read_bytes() for s in sets} == written  # seconds too
    # the analysis reads the default set's probes, whichever set was written last
    probes = json.loads((run / "analysis.json").read_text())["probes"]
    from phd_lab.report.cli import main_report
    assert main_report([str(tmp_path / "logs"), "--out", str(tmp_path / "report.html"), "-q"]) == 0
    assert json.loads((run / "analysis.json").read_text())["probes"] == probes
    assert probes["layers_probed"] == len(tables[""])
    layers = list(tables[""]["layer"])
    assert all(list(table["layer"]) == layers for table in tables.values())
    assert all((run / f"probe_performances{s}.png").read_bytes().startswith(PNG) for s in sets)
    assert all(any((run / f"probe_confusion{s}").glob("*.npy")) for s in sets)
    assert (run / "probe_performances_by_set.png").read_bytes().startswith(PNG)
    (run / "probe_performances_by_set.png").unlink()  # every layer from the cache: it was not drawn again
    assert probe_cli(["--config", str(config), "-mp", "0", "--no-progress", "-q"]) == 0
    assert (run / "probe_performances_by_set.png").read_bytes().startswith(PNG)
    recorded = json.loads((run / "probe_settings_1x1_nearest.json").read_text())
    assert recorded["latents"] == {"downsampling": 1, "downsampling_method": "nearest",
                                   "sha256": latents_digest(manifests["latents_1x1_nearest"])}
    # the comparison draws the sets fitted with the same probe settings only
    assert len(probe_set_tables(RunDir(run, ""), recorded["settings"])) == 4
    assert probe_set_tables(RunDir(run, ""), {**recorded["settings"], "solver": "saga"}) == []
    older = json.loads((run / "probe_settings.json").read_text())
    del older["latents"]  # the default set probed by a version that did not record its extraction
    (run / "probe_settings.json").write_text(json.dumps(older))
    labels = [label for label, _, _ in probe_set_tables(RunDir(run, ""), older["settings"])]
    assert labels == ["1×1", "2×2 (latents/)", "1×1", "2×2"]  # its size read off latents/manifest.json
    log_text = (run / "probe.log").read_text()
    assert log_text.count("probe job started") == 3  # one per job, each ending with this run's probes finished
    assert log_text.count("this run's probes finished") == 3
    # the sets differ only in how the convolutions' maps were reduced: the Linear layers' probes agree
    linear = [layer for layer in layers if layer.startswith("classifier")]
    assert linear and all(np.allclose(tables[s].set_index("layer").loc[linear, "eval_acc"],
                                      tables[""].set_index("layer").loc[linear, "eval_acc"]) for s in sets)

    (run / "probe_performances_1x1_nearest.csv").unlink()
    before = (run / "probe_performances.csv").read_bytes()
    assert probe_cli(["--latents", str(run / "latents_1x1_nearest"), "-mp", "0", "--solver", "lbfgs",
                      "--no-progress", "-q"]) == 0
    refitted = pd.read_csv(run / "probe_performances_1x1_nearest.csv")
    assert refitted.drop(columns="seconds").equals(tables["_1x1_nearest"].drop(columns="seconds"))
    assert (run / "probe_performances.csv").read_bytes() == before
    page = (tmp_path / "report.html").read_text()
    assert all(f">probe_performances{s}.csv<" in page for s in sets) and ">probe_performances_by_set.png<" in page
    capsys.readouterr()
    assert probe_cli(["--latents", str(run), "-mp", "0", "--no-progress", "-q"]) == 2  # the run folder, not a set
    said = " ".join(capsys.readouterr().err.split())
    assert "holds no manifest.json itself" in said and "pass one of those latents folders" in said, said


@pytest.mark.parametrize("step, match", [
    ({"sizes": []}, "'sizes' is \\[\\]; give a non-empty list"),
    ({"sizes": [0, 2]}, "'sizes' holds 0"),
    ({"sizes": [2, "2"]}, "'sizes' holds \"2\""),
    ({"sizes": [2, 2]}, "'sizes' names 2 more than once"),
    ({"sizes": [2], "methods": ["bilinear"]}, "'methods' must be a non-empty list of 'adaptive_avg', 'nearest'"),
    ({"sizes": [2], "methods": []}, "'methods' must be a non-empty list"),
    ({"sizes": [2], "methods": ["nearest", "nearest"]}, "'methods' names a method more than once"),
    ({"methods": ["nearest"]}, "'methods' is \\[\"nearest\"\\] but 'sizes' is null"),
    ({"sizes": 2}, "the key 'sizes' must be a list"),
])
def test_bad_sizes_and_methods_are_refused_before_training(tmp_path, capsys, step, match):
    config = write_config(tmp_path, post_processing=[{"name": "extract", **step}])
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    said = " ".join(err.split())  # the console wraps long messages
    assert code == 2
    assert "step 'extract'" in said and "Traceback" not in said
    assert re.search(match, said), said
    assert not (tmp_path / "logs").exists()


def test_the_probe_job_finds_a_set_under_latents_dir_and_says_which_set_is_skipped(tmp_path, capsys):
    """Sets mirrored under latents_dir are found there; a set not extracted yet leaves the others probed."""
    scratch = tmp_path / "elsewhere"
    config = write_config(tmp_path, epoch=1, downsampling=1, probe_solver="lbfgs",
                          post_processing=[{"name": "extract", "latents_dir": str(scratch), "sizes": [1],
                                            "methods": ["nearest"]}])
    code, err = main_in_process(capsys, "--config", str(config))
    assert code == 0, err
    rundir = RunDir.for_run(Grid(load_config_file(config))[0])
    assert (rundir.latents(str(scratch), "latents_1x1_nearest") / MANIFEST).is_file()
    assert not (rundir.root / "latents").exists()
    edited = json.loads(config.read_text())
    edited["post_processing"][0]["sizes"] = [1, 3]  # a set that was never extracted
    config.write_text(json.dumps(edited))
    capsys.readouterr()
    assert probe_cli(["--config", str(config), "-mp", "0", "--no-progress"]) == 0
    assert "no latents_3x3_nearest yet" in " ".join(capsys.readouterr().err.split())
    assert sorted(p.name for p in rundir.root.glob("probe_performances*.csv")) == [
        "probe_performances.csv", "probe_performances_1x1_nearest.csv"]


def test_a_sets_results_replaced_with_other_settings_take_the_comparison_that_drew_the_earlier_ones_away(
        tmp_path, capsys):
    """probe_performances_by_set.png is drawn from the sets fitted with the job's settings, and only where there are
    two: a set probed again with other settings (--latents --solver saga) left the plot of its earlier results in the
    run folder (and in the report's file list), showing accuracies no table of the run held any more. Also: each
    layer's line in the run's probe.log names its latents set."""
    config = write_config(tmp_path, epoch=1, downsampling=2, probe_solver="lbfgs",
                          post_processing=[{"name": "extract", "sizes": [1]}])
    code, err = main_in_process(capsys, "--config", str(config))
    assert code == 0, err
    run = RunDir.for_run(Grid(load_config_file(config))[0]).root
    plot = run / "probe_performances_by_set.png"
    assert probe_cli(["--config", str(config), "-mp", "0", "--no-progress", "-q"]) == 0
    assert plot.read_bytes().startswith(PNG)
    # the sets of a run share its probe.log, and the line of each layer named no set: 'layer features.0 (index 1)'
    # twice, with two accuracies, one of them the 1×1 set's
    text = (run / "probe.log").read_text()
    tables = {name: pd.read_csv(run / f"probe_performances{suffix}.csv", dtype={"layer": str})
              for name, suffix in (("", ""), ("1x1_avg", "_1x1_avg"))}
    for name, table in tables.items():
        first = table.iloc[0]
        said = re.findall(rf"layer {re.escape(first['layer'])} \(index 1{', latents set ' + name if name else ''}\): "
                          r"eval acc ([0-9.]+)", text)
        assert said == [f"{first['eval_acc']:.4f}"], (name, said)
    assert probe_cli(["--latents", str(run / "latents_1x1_avg"), "-mp", "0", "--solver", "saga",
                      "--no-progress", "-q"]) == 0
    assert not plot.exists()  # it drew the 1×1 set's lbfgs results, replaced by saga's
    assert probe_cli(["--config", str(config), "-mp", "0", "--no-progress", "-q"]) == 0  # lbfgs again: cached
    assert plot.read_bytes().startswith(PNG)


def test_the_line_naming_sets_left_out_of_a_runs_comparison_stays_in_that_runs_probe_log(tmp_path, capsys):
    """'left out of probe_performances_by_set.png, fitted with other probe settings' carried no run's tag, so a grid
    job wrote it, naming one run folder, into the probe.log of every run it probed."""
    config = write_config(tmp_path, epoch=1, downsampling=2, probe_solver="lbfgs", run_id=["0", "1"],
                          post_processing=[{"name": "extract", "sizes": [1], "methods": ["adaptive_avg", "nearest"]}])
    code, err = main_in_process(capsys, "--config", str(config))
    assert code == 0, err
    first, second = (RunDir.for_run(cfg).root for cfg in Grid(load_config_file(config)))
    assert probe_cli(["--config", str(config), "-mp", "0", "--no-progress", "-q"]) == 0
    assert probe_cli(["--latents", str(first / "latents_1x1_nearest"), "-mp", "0", "--solver", "saga",
                      "--no-progress", "-q"]) == 0
    assert probe_cli(["--config", str(config), "-mp", "0", "--no-progress", "-q"]) == 0  # the saga set left out
    assert f"{first}: left out of probe_performances_by_set.png" in (first / "probe.log").read_text()
    assert str(first) not in (second / "probe.log").read_text()


@pytest.mark.parametrize("step, match", [
    ({"sizes": ["abc"]}, "'sizes' holds \"abc\""),
    ({"sizes": [[2]]}, "'sizes' holds \\[2\\]"),
    ({"sizes": [2], "methods": ["Nearest"]}, "'methods' must be a non-empty list"),
    ({"sizes": [2], "methods": "nearest"}, "'methods' must be a non-empty list"),
    ({"sizes": [True]}, "'sizes' holds true"),
])
def test_the_probe_job_refuses_bad_sizes_and_methods_as_training_does(tmp_path, capsys, step, match):
    config = write_config(tmp_path, post_processing=[{"name": "extract", **step}])
    capsys.readouterr()
    assert probe_cli(["--config", str(config), "-mp", "0", "--no-progress", "-q"]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "step 'extract'" in said and "Traceback" not in said and re.search(match, said), said


def test_folders_named_like_a_set_with_more_after_it_are_the_default_set_and_sets_describe_themselves():
    """A user's copy such as latents_2x2_avg_backup starts like a set's name; only a whole name is one."""
    assert [set_of_folder(name) for name in ("latents_2x2_avg_backup", "latents_fullx", "latents_2x2_avg")] == [
        "", "", "2x2_avg"]
    assert named_set("1x1_nearest_old") is None and named_set("pixelwise2") is None
    assert [s.describe() for s in extraction_sets(4, [2, None, "pixelwise"], ["nearest"])] == [
        "4×4, adaptive_avg", "2×2, nearest", "whole feature maps", "pixelwise"]
