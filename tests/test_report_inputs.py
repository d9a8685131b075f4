"""What the report reads: damaged tables, copied configs, runs named "latents", unreadable configs, numeric names."""

import html
import logging
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from tests.analysis_fixtures import BORDER, LAYERS, read_json, write_run
from tests.conftest import ROOT, main_in_process, write_config
from phd_lab import atomic
from phd_lab.analysis.run_summary import summarize
from phd_lab.analysis.run_tables import discover_runs, load_run, run_folder
from phd_lab.report.cli import write_report
from tests.test_report import report_in_process as report


def cut(path, keep_rows, extra_bytes):
    """Cut a CSV after its header, ``keep_rows`` rows and ``extra_bytes`` bytes of the next row."""
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"".join(line + b"\n" for line in lines[:1 + keep_rows]) + lines[1 + keep_rows][:extra_bytes])


def test_a_metrics_csv_cut_in_the_middle_of_a_row_is_used_up_to_its_last_complete_row(tmp_path):
    """The partial row was read as the last epoch: 'finished', s_mu from 4 of the layers, no problem."""
    logs = tmp_path / "logs"
    rundir = write_run(logs, width=0.25, stage="full", epochs=2)
    first_epoch = pd.read_csv(rundir.metrics_csv).iloc[0]
    cut(rundir.metrics_csv, 1, 150)
    summary = summarize(load_run(rundir))
    status = summary["run"]["status"]
    assert status["state"] == "unknown" and status["epochs_done"] == 1  # stopped or finished: cannot be told
    assert "truncated" in status["label"] and rundir.metrics_csv.name in status["label"]
    split = summary["settings"]["analysis_split"]
    assert summary["saturation"]["epoch"] == 1 and len(summary["saturation"]["layers"]) == len(LAYERS)
    assert summary["saturation"]["mean"] == pytest.approx(first_epoch[f"{split}_saturation_mean"])
    problem = f"{rundir.metrics_csv.name}: the last row is incomplete (truncated?)"
    assert any(p.startswith(problem) for p in summary["problems"])
    assert summary["recommendations"][0]["kind"] == "provisional"
    assert "Training is not finished" not in summary["recommendations"][0]["text"]
    page = html.unescape(write_report(logs, tmp_path / "r.html").read_text(encoding="utf-8"))
    assert problem in page

    # a row with fewer fields than the header (ending with its newline) is left out as well
    cut(rundir.metrics_csv, 1, 0)
    text = rundir.metrics_csv.read_text(encoding="utf-8")
    rundir.metrics_csv.write_text(text + ",".join(text.splitlines()[1].split(",")[:4]) + "\n", encoding="utf-8")
    tables = load_run(rundir)
    assert len(tables.metrics) == 1 and tables.status.state == "unknown"
    assert any(p.startswith(f"{rundir.metrics_csv.name}: line(s) 3 have fewer fields than the header")
               for p in tables.problems)
    # cut within its first row: no epoch can be read, and the status does not say "not started"
    cut(rundir.metrics_csv, 0, 150)
    tables = load_run(rundir)
    assert tables.metrics is None and tables.status.state == "unknown" and tables.status.epochs_done == 0
    assert f"{rundir.metrics_csv.name} cannot be used: the last row is incomplete (truncated?)" in tables.problems


def test_a_cut_receptive_field_table_gives_no_border_layers_and_says_why(tmp_path):
    """A cut receptive_field.csv gave b_min None, "tail at b_min: yes (none)" and no problem."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full")
    cut(rundir.receptive_field_csv, 6, 20)
    summary = summarize(load_run(rundir))
    assert summary["borders"] is None and summary["agreement"] is None and summary["truncation"] is None
    assert "receptive_field.csv cannot be used: the last row is incomplete (truncated?)" in summary["problems"]
    depth = " ".join(a["text"] for a in summary["recommendations"] if a["kind"] == "depth")
    assert "(no border layer; receptive_field.csv cannot be used)" in depth
    # per-layer tables lose layers when cut: none of them is used in part
    cut(rundir.computational_info_csv, 3, 10)
    cut(rundir.probe_csv, 4, 10)
    tables = load_run(rundir)
    assert tables.computational_layers is None and tables.probes is None
    assert {p.split(" cannot be used")[0] for p in tables.problems if "truncated?" in p} == {
        "receptive_field.csv", "computational_info.csv", "probe_performances.csv"}


def test_a_logged_config_copied_into_the_logs_folder_is_no_run(tmp_path, caplog):
    """A copied logged config became a "not started" run, and analysis.json/png were written beside it."""
    logs = tmp_path / "logs"
    rundir = write_run(logs, width=0.25, stage="full")
    shutil.copy(rundir.config, logs / rundir.config.name)
    (logs / "configs").mkdir()
    shutil.copy(rundir.config, logs / "configs" / rundir.config.name)
    with caplog.at_level(logging.INFO, logger="phd_lab.analysis.run_tables"):
        assert [run.root for run in discover_runs(logs)] == [rundir.root]
    assert str(logs / rundir.config.name) in caplog.text and str(logs / "configs" / rundir.config.name) in caplog.text
    write_report(logs, tmp_path / "r.html")
    for folder in (logs, logs / "configs"):
        assert not (folder / "analysis.json").exists() and not (folder / "analysis.png").exists()
    assert read_json(rundir.analysis_json)["run"]["status"]["state"] == "finished"
    # a report over a folder above the logs folder still finds the run by its config, which lies in its folder
    assert [run.root for run in discover_runs(tmp_path)] == [rundir.root]
    # values that name no run folder (a key of another version): a config beside the run's tables is a run
    for path in (rundir.config, logs / "configs" / rundir.config.name):
        path.write_text(path.read_text(encoding="utf-8").replace('"epoch"', '"new_key": 1, "epoch"'), encoding="utf-8")
        assert '"new_key": 1' in path.read_text(encoding="utf-8")
    assert [run.root for run in discover_runs(logs / "vgg11")] == [rundir.root]


def test_a_run_folder_copied_out_of_its_logs_tree_is_a_run(tmp_path):
    """One run folder copied to archive/my_run (its logged config beside its metrics CSV and tables, at another
    depth than a logs tree's) was no run: the report said 'holds no runs: no folder below it has a
    <name>_config.json', next to that very file. A logged config alone stays no run (the test above)."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full")
    copy = tmp_path / "archive" / "my_run"
    shutil.copytree(rundir.root, copy)
    assert [run.root for run in discover_runs(tmp_path / "archive")] == [copy]
    write_report(tmp_path / "archive", tmp_path / "r.html", processes=0)
    assert read_json(copy / "analysis.json")["run"]["status"]["state"] == "finished"
    # only its metrics CSV beside the config (a run that trained without steps) is a run too
    for name in ("receptive_field.csv", "computational_info.json", "probe_performances.csv", "analysis.json"):
        (copy / name).unlink()
    assert [run.root for run in discover_runs(tmp_path / "archive")] == [copy]


def test_a_folder_of_logged_configs_alone_is_refused_without_saying_it_has_none(tmp_path, capsys):
    """Logged configs copied on their own (no run) gave 'holds no runs: no folder below it has a <name>_config.json',
    next to those very files; the message now says which configs make a run."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full")
    (tmp_path / "configs" / "x").mkdir(parents=True)
    shutil.copy(rundir.config, tmp_path / "configs" / "x" / rundir.config.name)
    done = report(capsys, tmp_path / "configs", "-q")
    message = " ".join(done.stderr.split())
    assert done.returncode == 2 and "Traceback" not in message, done.stderr
    assert "holds no runs: no folder below it holds a run's logged <name>_config.json in its place in a logs tree " \
           "or beside the run's metrics CSV or a post-processing table (a logged config copied elsewhere on its own " \
           "is no run)" in message
    assert sorted(p.name for p in (tmp_path / "configs").rglob("*")) == sorted(["x", rundir.config.name])  # nothing new


def test_a_run_folder_that_cannot_be_read_is_named_not_left_out_without_a_word(tmp_path):
    """os.walk skips a folder it cannot list (a run folder of another user on a shared file system, mode 0700)
    without a word: the report covered the other runs and said nothing of the one it left out (or, with no other,
    that LOGS_DIR holds no runs). A warning names the folder and what to do. Root reads any folder, so as root the
    listing runs without the capabilities that let it (setpriv), as any other user would."""
    logs = tmp_path / "logs"
    seen = write_run(logs, width=0.25, stage="full")
    hidden = write_run(logs, width=0.5, stage="full")
    script = ("import logging, sys; logging.basicConfig(level=logging.WARNING); "
              "from phd_lab.analysis.run_tables import discover_runs; "
              f"print([str(run.root) for run in discover_runs({str(logs)!r})])")
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root reads every folder, and setpriv, which drops that, is not installed")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    hidden.root.chmod(0)
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    finally:
        hidden.root.chmod(0o755)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str([str(seen.root)])
    warning = " ".join(done.stderr.split())
    assert f"1 folder(s) below {logs} cannot be read, so any runs in them are left out: {hidden.root}" in warning
    assert "Permission denied" in warning and "Make them readable" in warning


def test_a_run_whose_run_id_is_latents_is_reported(tmp_path):
    """Every folder named "latents" was skipped, and with it every run of run_id "latents"."""
    logs = tmp_path / "logs"
    plain = write_run(logs, width=0.25, stage="full")
    named = write_run(logs, width=0.25, stage="full", run_id="latents")
    assert named.root.parent.name == "latents" and (named.root / "latents" / "manifest.json").is_file()
    assert [run.root for run in discover_runs(logs)] == sorted([plain.root, named.root])
    assert [run.root for run in discover_runs(tmp_path)] == sorted([plain.root, named.root])  # not at run depth


def test_a_finished_run_whose_config_cannot_be_read_is_not_said_to_have_stopped(tmp_path):
    """It showed "stopped after 2 epochs" and "Training is not finished": the epochs planned are unknown."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full", epochs=2)
    rundir.config.write_text('{"model": "vgg11", ', encoding="utf-8")
    summary = summarize(load_run(rundir))
    status = summary["run"]["status"]
    assert status["state"] == "unknown" and status["epochs_done"] == 2 and status["epochs_planned"] is None
    assert status["label"] == f"unknown after 2 epochs ({rundir.config.name} cannot be read)"
    assert any(p.startswith(f"{rundir.config.name} cannot be read") for p in summary["problems"])
    texts = [a["text"] for a in summary["recommendations"]]
    assert not any("Training is not finished" in t or "stopped" in t for t in texts)
    assert texts[0].startswith("Whether training is finished cannot be told")


def with_layers_named(rundir, names):
    """The run's tables and latents manifest with the fixture's layers renamed by ``names`` (old: new)."""
    for path in (rundir.receptive_field_csv, rundir.computational_info_csv, rundir.probe_csv):
        table = pd.read_csv(path)
        atomic.write_csv(path, table.assign(layer=table["layer"].map(names)))
    metrics = pd.read_csv(rundir.metrics_csv)
    renamed = {column: names[layer] + column[len(layer):] for column in metrics.columns for layer in names
               if column.startswith(layer + "_")}
    atomic.write_csv(rundir.metrics_csv, metrics.rename(columns=renamed))
    manifest = read_json(rundir.latents() / "manifest.json")
    for layer in manifest["layers"]:
        layer["name"] = names[layer["name"]]
    atomic.write_json(rundir.latents() / "manifest.json", manifest)
    probed = rundir.latents().joinpath("manifest.json").stat().st_mtime + 1  # the probes stay newer: not stale
    os.utime(rundir.probe_csv, (probed, probed))
    return rundir


def test_numeric_layer_names_of_a_sequential_model_are_read_as_names(tmp_path):
    """Layer names of an nn.Sequential ("8") were read as numbers: b_min 8 (int), no b_min index, no truncation
    estimate, and the report stopped with a traceback (html.escape of an int)."""
    logs = tmp_path / "logs"
    numbers = [str(n) for n in (0, 3, 6, 8, 11, 13, 16, 18, 21, 24, 27)]  # VGG11's layers in one flat Sequential
    names = dict(zip(LAYERS, numbers))
    rundir = with_layers_named(write_run(logs, width=0.25, stage="full"), names)
    out = write_report(logs, tmp_path / "r.html", processes=0)
    analysis = read_json(rundir.analysis_json)
    border = names[BORDER]
    assert analysis["borders"]["b_min"] == border and analysis["borders"]["b_min_index"] == 6
    assert analysis["agreement"]["b_min"] == {"border": border, "tail_start": border, "offset": 0, "agrees": True}
    assert analysis["truncation"]["border"] == border
    assert analysis["truncation"]["removed_layers"] == numbers[LAYERS.index(BORDER):]
    assert analysis["probes"]["first_reaching_layer"] == border
    assert [layer["layer"] for layer in analysis["saturation"]["layers"]] == numbers
    assert f">{border}</td>" in out.read_text(encoding="utf-8")


def test_nested_layer_names_of_a_real_sequential_model_are_read_as_names(tmp_path, capsys):
    """A nested nn.Sequential names its layers "0.10": read as the number 0.1, the border layer matched no
    saturation column (b_min 0.1, no tail agreement, no truncation) and the report stopped with a traceback."""
    module = tmp_path / "nested.py"
    module.write_text(
        "from torch import nn\n"
        "def nested_cnn(*, num_classes, in_channels=3, width=8):\n"
        "    conv = lambda c: nn.Conv2d(c, width, 3, padding=1)\n"
        "    body = nn.Sequential(conv(in_channels), nn.ReLU(), nn.MaxPool2d(2), conv(width), nn.ReLU(), conv(width),\n"
        "                         nn.ReLU(), nn.MaxPool2d(2), conv(width), nn.ReLU(), conv(width), nn.ReLU())\n"
        "    return nn.Sequential(body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))\n")
    config = write_config(tmp_path, model="nested_cnn", model_args={}, epoch=1, registries={"models": str(module)},
                          post_processing=["receptive_field", "flops", "analysis"])
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 0, err
    [rundir] = [run_folder(p.parent) for p in (tmp_path / "logs").rglob("*_config.json")]
    # receptive field at 16 px: 0.8 takes 14 px, 0.10 22 px (after two poolings)
    analysis = read_json(rundir.analysis_json)
    assert analysis["borders"]["b_min"] == "0.10" and analysis["borders"]["b_min_index"] == 5
    assert analysis["saturation"]["main_path"] == ["0.0", "0.3", "0.5", "0.8", "0.10", "3"]
    assert analysis["agreement"]["b_min"]["border"] == "0.10"
    assert analysis["truncation"]["border"] == "0.10" and analysis["truncation"]["exact"] is True
    assert "0.1 " not in " ".join(advice["text"] for advice in analysis["recommendations"])
    page = write_report(tmp_path / "logs", tmp_path / "r.html", processes=0).read_text(encoding="utf-8")
    assert ">0.10</td>" in page


def test_a_metrics_row_whose_epoch_is_damaged_is_left_out_and_named(tmp_path):
    """Rows were sorted by the epoch cell as it was read: a string made the column text ("10" before "9", the
    string last), a blank cell sorted last, and accuracy and s_mu came from that row, with no problem listed."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full", epochs=12)
    metrics = pd.read_csv(rundir.metrics_csv)
    split = summarize(load_run(rundir))["settings"]["analysis_split"]
    metrics["epoch"] = metrics["epoch"].astype(object)
    metrics.loc[4, "epoch"] = "x"  # epoch 5
    atomic.write_csv(rundir.metrics_csv, metrics)
    summary = summarize(load_run(rundir))
    assert summary["accuracy"]["epoch"] == summary["saturation"]["epoch"] == 12
    assert summary["accuracy"]["test"] == pytest.approx(metrics["test_accuracy"].iloc[11])
    assert summary["saturation"]["mean"] == pytest.approx(metrics[f"{split}_saturation_mean"].iloc[11])
    assert f"{rundir.metrics_csv.name}: 1 row(s) whose epoch is no number ('x') left out." in summary["problems"]
    metrics.loc[11, "epoch"] = ""  # the last row's epoch is blank: epoch 11 is the last one that can be told
    atomic.write_csv(rundir.metrics_csv, metrics)
    summary = summarize(load_run(rundir))
    assert summary["accuracy"]["epoch"] == summary["saturation"]["epoch"] == 11
    assert summary["accuracy"]["test"] == pytest.approx(metrics["test_accuracy"].iloc[10])
    assert [layer["saturation"] for layer in summary["saturation"]["layers"]] == pytest.approx(
        [metrics[f"{layer}_{split}_saturation"].iloc[10] for layer in LAYERS])
    assert f"{rundir.metrics_csv.name}: 2 row(s) whose epoch is no number ('x', blank) left out." in summary["problems"]
    atomic.write_csv(rundir.metrics_csv, metrics.assign(epoch="?"))  # no epoch can be told: no last epoch either
    summary = summarize(load_run(rundir))
    assert summary["accuracy"]["test"] is None and summary["saturation"] is None
    assert f"{rundir.metrics_csv.name}: 12 row(s) whose epoch is no number ('?', '?', '?', '?', '?', ...) left out." \
        in summary["problems"]


@pytest.mark.parametrize("layers", [5, None, "absent"])
def test_a_latents_manifest_without_a_list_of_layers_leaves_the_layers_extracted_unknown(tmp_path, layers):
    """``"layers": 5`` or null in latents/manifest.json raised a TypeError: the run's whole analysis failed."""
    logs = tmp_path / "logs"
    rundir = write_run(logs, width=0.25, stage="full")
    manifest = read_json(rundir.latents() / "manifest.json")
    manifest.pop("layers") if layers == "absent" else manifest.update(layers=layers)
    atomic.write_json(rundir.latents() / "manifest.json", manifest)
    probed = rundir.probe_csv.stat().st_mtime_ns
    os.utime(rundir.latents() / "manifest.json", ns=(probed, probed - 10**9))  # the probes are no older
    write_report(logs, tmp_path / "r.html", processes=0)
    analysis = read_json(rundir.analysis_json)
    assert analysis["probes"]["status"] == "complete" and analysis["probes"]["layers_extracted"] is None
    assert analysis["probes"]["layers_probed"] == len(LAYERS) and analysis["borders"]["b_min"] == BORDER
    assert ("latents/manifest.json is malformed: its 'layers' is no list, so the number of layers extracted is "
            "unknown") in analysis["problems"]


def test_a_damaged_projections_table_or_manifest_is_named_as_damaged_not_as_missing(tmp_path):
    """A cut projections.csv was listed both as 'not (yet) in the folder' and as unusable, while the page linked
    it; a manifest holding a JSON list was only 'missing'."""
    rundir = write_run(tmp_path / "logs", width=0.25, stage="full")
    config = read_json(rundir.config)
    atomic.write_json(rundir.config, {**config, "post_processing": [*config["post_processing"], "project"]})
    rundir.projections_csv.unlink()
    assert "projections.csv" in load_run(rundir).missing  # not written yet: missing
    rundir.projections_csv.write_text("delta,basis,accuracy,loss\n1.0,none,0.9,0.3\n0.99,pca,0.8")
    manifest = rundir.root / "latents" / "manifest.json"
    manifest.write_text("[]")
    tables = load_run(rundir)
    assert "projections.csv" not in tables.missing and "latents/manifest.json" not in tables.missing
    assert any(problem.startswith("projections.csv cannot be used") for problem in tables.problems), tables.problems
    assert "latents/manifest.json is malformed: it holds a JSON list, not an object" in tables.problems


def test_a_run_folder_without_its_config_is_named_after_its_checkpoint_or_metrics_csv(tmp_path):
    """A run folder that lost its logged config was named after the first CSV in name order: projections_layers
    (or probe_performances_<set>) sorts before vgg11-..., so the report called the run 'projections_layers', read
    that table's 240 rows as epochs and listed 'projections_layers_config.json' as missing."""
    from phd_lab.analysis.run_tables import run_folder
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "vgg11-Digits-r32-bs64-e3.csv").write_text("epoch,train_loss,test_loss\n1,2.0,2.1\n")
    for table in ("projections_layers.csv", "probe_performances_sizes.csv", "aaa_notes.csv"):
        (folder / table).write_text("delta,layer,k\n0.9,features.0,3\n")
    assert run_folder(folder).name == "vgg11-Digits-r32-bs64-e3"
    (folder / "vgg11-Digits-r32-bs64-e3.csv").unlink()  # no metrics either: a table no step writes
    assert run_folder(folder).name == "aaa_notes"
    (folder / "net-Digits-r8.pt").write_bytes(b"")
    (folder / "aaa.previous.pt").write_bytes(b"")
    assert run_folder(folder).name == "net-Digits-r8"  # the checkpoint's name, not the previous one's


@pytest.mark.parametrize("column, value", [("eval_acc", "7"), ("eval_acc", "-0.5"), ("eval_acc", "abc0.9"),
                                           ("train_acc", "1.5"), ("relative_acc", "-1")])
def test_a_probe_table_with_an_accuracy_out_of_range_is_named_as_damaged(tmp_path, capsys, column, value):
    """An eval_acc of 7 was the run's best probe (700 %) in analysis.json and the page, and one of text was left out
    of the verdicts, without a word; such a table is now unusable, as a cut one is, and the page says why."""
    logs = tmp_path / "logs"
    rundir = write_run(logs, width=0.25, stage="full")
    probes = pd.read_csv(rundir.probe_csv, dtype=str)
    probes.loc[1, column] = value
    probes.to_csv(rundir.probe_csv, index=False)
    done = report(capsys, logs, "--no-progress", "-mp", "0")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    analysis = read_json(rundir.root / "analysis.json")
    assert analysis["probes"]["status"].startswith("damaged (probe_performances.csv cannot be used")
    shown = value if value.startswith("abc") else float(value)
    problem = (f"probe_performances.csv cannot be used: its {column} of layer {probes.loc[1, 'layer']!r} is "
               f"{shown}, not a number")
    assert any(p.startswith(problem) for p in analysis["problems"]), analysis["problems"]
    page = html.unescape((logs / "report.html").read_text(encoding="utf-8"))
    assert problem in page


@pytest.mark.parametrize("value", ["7", "-0.5"])
def test_a_test_accuracy_out_of_range_is_named_not_shown(tmp_path, capsys, value):
    """A metrics CSV whose last test_accuracy was 7 gave 'test accuracy 700.00%' on the page and was the probes'
    reference in analysis.json, without a word; it is now left out, and the problem says why."""
    logs = tmp_path / "logs"
    rundir = write_run(logs, width=0.25, stage="full")
    metrics = pd.read_csv(rundir.metrics_csv, dtype=str)
    metrics.loc[len(metrics) - 1, "test_accuracy"] = value
    metrics.to_csv(rundir.metrics_csv, index=False)
    done = report(capsys, logs, "--no-progress", "-mp", "0")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    analysis = read_json(rundir.root / "analysis.json")
    assert analysis["accuracy"]["test"] is None
    assert analysis["probes"]["model_accuracy"] is None or 0 <= analysis["probes"]["model_accuracy"] <= 1
    problem = (f"{rundir.metrics_csv.name}: test_accuracy of its last epoch is {float(value)}, not an accuracy from "
               f"0 to 1; left out")
    assert problem in analysis["problems"], analysis["problems"]
    page = html.unescape((logs / "report.html").read_text(encoding="utf-8"))
    assert problem in page and f"{float(value) * 100:.2f}%" not in page


def test_a_dataset_name_with_dollar_signs_is_drawn_as_it_is_not_as_mathtext(tmp_path, capsys):
    """The comparison plots' legend names each group '<model> / <dataset>': a 'folder:' dataset whose path holds two
    '$' was read as mathtext, and the report ended with a ValueError traceback (exit 1) before its page."""
    logs = tmp_path / "logs"
    rundir = write_run(logs, width=0.25, stage="full")
    atomic.write_json(rundir.config, {**read_json(rundir.config), "dataset": "folder:/data/$x^{$"})
    done = report(capsys, logs, "--no-progress", "-mp", "0")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "folder:/data/$x^{$" in html.unescape((logs / "report.html").read_text(encoding="utf-8"))


@pytest.mark.parametrize("table", ["probe_performances.csv", "receptive_field.csv", "computational_info.csv"])
def test_a_table_row_without_a_layer_name_is_named_as_damaged(tmp_path, capsys, table):
    """An empty layer cell failed the whole analysis of the run (a TypeError or AttributeError in a warning that
    named no file), in each table with a layer column; the table is now unusable, as a cut one is, and the problem
    names its row. The framework writes a name in every row (a model's own layer is '<model>')."""
    logs = tmp_path / "logs"
    rundir = write_run(logs, width=0.25, stage="full")
    rows = pd.read_csv(rundir.root / table, dtype=str, keep_default_na=False)
    rows.loc[1, "layer"] = ""
    rows.to_csv(rundir.root / table, index=False)
    done = report(capsys, logs, "--no-progress", "-mp", "0")
    assert done.returncode == 0 and "failed" not in done.stderr, done.stderr[-2000:]
    analysis = read_json(rundir.root / "analysis.json")
    assert f"{table} cannot be used: its row 2 names no layer" in analysis["problems"]
    if table == "probe_performances.csv":
        assert analysis["probes"]["status"].startswith("damaged (probe_performances.csv cannot be used")


def test_layer_names_pandas_takes_for_missing_values_are_read_as_written(tmp_path):
    """A model's attributes may be called "NA", "null" or "nan" (a layer of that name); pandas read such a name as a
    missing value, which then failed the run's analysis as an empty cell did."""
    from phd_lab.analysis.run_tables import load_run
    logs = tmp_path / "logs"
    rundir = write_run(logs, width=0.25, stage="full")
    tables = load_run(rundir)
    names = {"receptive_field.csv": tables.receptive_field["layer"].tolist(),
             "probe_performances.csv": tables.probes["layer"].tolist()}
    renamed = {old: new for old, new in zip(names["receptive_field.csv"][:3], ["NA", "null", "nan"])}
    for table in names:
        rows = pd.read_csv(rundir.root / table, dtype=str, keep_default_na=False)
        rows["layer"] = rows["layer"].replace(renamed)
        rows.to_csv(rundir.root / table, index=False)
    tables = load_run(rundir)
    assert tables.receptive_field["layer"].tolist()[:3] == ["NA", "null", "nan"]
    assert [renamed.get(name, name) for name in names["probe_performances.csv"]] == tables.probes["layer"].tolist()
    assert not tables.problems, tables.problems
