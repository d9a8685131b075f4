"""Edge inputs of a config: run-folder digests that collide, paths the OS refuses, strings UTF-8 cannot encode,
a hand-written ``_meta`` and repeated metrics. Bad input is exit status 2, one paragraph, nothing written."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from phd_lab.cli import main_cli
from phd_lab.grid import Grid
from tests.conftest import flat, main_in_process, run_folders, run_main, run_name, write_config

# Two learning rates whose runs' identities (the config below) share the CRC-32 c998f298 (found by a search of
# random rates); and two deltas that share one (delta is not in the folder's readable part: same folder name)
COLLIDING_LR = (0.7950524859260707, 0.48695836658792335)
COLLIDING_DELTA = (0.7827254627313773, 0.7235952987416239)
FAST = {"resolution": 8, "epoch": 1, "batch_size": 256, "seed": 1, "track_saturation": False}


def dry_run(capsys: pytest.CaptureFixture, config: Path) -> dict[int, tuple[str, Path]]:
    """``--dry-run``'s table: each index with its status and folder."""
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--dry-run"]) == 0, capsys.readouterr().err
    rows = capsys.readouterr().out.splitlines()[2:]
    return {int(row.split()[0]): (row.split()[-2], Path(row.split()[-1])) for row in rows}


def logged_lr(folder: Path) -> float:
    [config] = folder.glob("*_config.json")
    return json.loads(config.read_text())["optimizer_args"]["lr"]


def test_runs_whose_digests_collide_train_into_folders_of_their_own(tmp_path, capsys):
    grid_config = write_config(tmp_path, "grid.json", **FAST, optimizer_args={"lr": list(COLLIDING_LR)})
    second = write_config(tmp_path, "second.json", **FAST, optimizer_args={"lr": COLLIDING_LR[1]})
    first_run, second_run = Grid(json.loads(grid_config.read_text()))
    assert first_run.identity_hash() == second_run.identity_hash() == "c998f298"
    assert first_run.identity() != second_run.identity()

    code, err = main_in_process(capsys, "--config", str(grid_config), "--index", "0", "--no-progress", "-q")
    assert code == 0, err
    [first_folder] = run_folders(tmp_path / "logs")
    assert first_folder.name.endswith("-c998f298")  # a run without a collision keeps the 8-character digest
    status = dry_run(capsys, grid_config)  # was: exit 2, "they differ only in ['optimizer_args']"
    assert status[0] == ("finished", first_folder)
    assert status[1][0] == "new" and status[1][1] != first_folder
    assert dry_run(capsys, second) == {0: status[1]}  # was: "finished", the first run's folder

    code, err = main_in_process(capsys, "--config", str(grid_config), "--no-progress", "-q")
    assert code == 0, err
    folders = run_folders(tmp_path / "logs")
    assert folders == sorted([first_folder, status[1][1]])
    assert logged_lr(first_folder) == COLLIDING_LR[0] and logged_lr(status[1][1]) == COLLIDING_LR[1]
    assert len(status[1][1].name.rsplit("-", 1)[1]) == 16  # the colliding run's long digest
    assert dry_run(capsys, grid_config) == {0: ("finished", first_folder), 1: ("finished", status[1][1])}
    assert dry_run(capsys, second) == {0: ("finished", status[1][1])}
    for folder in folders:  # each logged config, rerun from its folder, finds its own run
        [logged] = folder.glob("*_config.json")
        assert dry_run(capsys, logged) == {0: ("finished", folder)}
    code, err = main_in_process(capsys, "--config", str(grid_config), "--no-progress", "-q")
    assert code == 0, err
    assert run_folders(tmp_path / "logs") == folders


def test_a_digest_collision_in_one_grid_is_no_duplicate_but_a_repeated_value_is(tmp_path, capsys):
    config = write_config(tmp_path, "grid.json", **FAST, delta=list(COLLIDING_DELTA))
    first_run, second_run = Grid(json.loads(config.read_text()))
    assert first_run.variant_slug() == second_run.variant_slug()  # one folder name for two runs
    status = dry_run(capsys, config)  # was: exit 2, "they differ only in ['delta'], which do not change ..."
    assert status[0][1] != status[1][1] and {status[0][0], status[1][0]} == {"new"}
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--index", "1", "--dry-run"]) == 0
    assert str(status[1][1]) in capsys.readouterr().out  # the same folder when only that point is chosen
    repeated = write_config(tmp_path, "repeated.json", **FAST, delta=[COLLIDING_DELTA[0]] * 2)
    assert main_cli(["--config", str(repeated), "--dry-run"]) == 2
    assert "the list of delta holds a value twice; remove the repeat" in flat(capsys.readouterr().err)
    assert not (tmp_path / "logs").exists()


def test_values_written_differently_but_read_the_same_are_named_as_one_folders(tmp_path, capsys):
    """run_id [5, "5"] (a run_id is read as a string) and seed [1, 1] were refused with "remove the duplicate value
    from the lists", which named neither the key nor the values."""
    for name, values, said in (("run_id", [5, "5"], 'their values of run_id (5 and "5") are read as the same '
                                                     'value; keep one of each in the list'),
                               ("seed", [1, 1], "the list of seed holds a value twice; remove the repeat")):
        config = write_config(tmp_path, f"{name}.json", **{**FAST, name: values})
        assert main_cli(["--config", str(config), "--dry-run"]) == 2
        err = flat(capsys.readouterr().err)
        assert "runs 0 and 1 would share the folder" in err and said in err, err
    assert not (tmp_path / "logs").exists()


def test_a_same_named_folder_holding_another_run_sends_a_new_run_to_its_long_digest(tmp_path, capsys):
    """Two commands whose runs share the whole folder name (deltas of one CRC-32): once the first run logged its
    config there, the second run's folder is another one, and the first run still finds its own."""
    from phd_lab.experiment import Main
    first_config = write_config(tmp_path, "first.json", **FAST, delta=COLLIDING_DELTA[0])
    main = Main(progress=False)
    main.load(first_config)
    first = main.executors[0]
    first.rundir.create()
    first.rundir.config.write_text(json.dumps(first.logged_config()))
    second = dry_run(capsys, write_config(tmp_path, "second.json", **FAST, delta=COLLIDING_DELTA[1]))
    assert second[0][0] == "new" and second[0][1].parent == first.rundir.root.parent
    assert second[0][1] != first.rundir.root and len(second[0][1].name.rsplit("-", 1)[1]) == 16
    assert dry_run(capsys, first_config)[0][1] == first.rundir.root
    # a copy of the other run's logged config put beside the run's own does not make the folder another run's
    other = Main(progress=False)
    other.load(tmp_path / "second.json")
    (first.rundir.root / "copied_config.json").write_text(json.dumps(other.executors[0].logged_config()))
    assert dry_run(capsys, first_config)[0][1] == first.rundir.root


def test_two_folders_with_the_run_s_digest_are_not_guessed_between(tmp_path, capsys):
    """The digest names the run's folder only where one folder has it: of two (left by hand or by other versions'
    readable parts), neither is taken at random; the run gets its own folder name."""
    config = write_config(tmp_path, **FAST)
    [run] = Grid(json.loads(config.read_text()))
    [(status, folder)] = dry_run(capsys, config).values()
    assert status == "new" and folder.name == run.variant_slug()
    for readable in ("older", "other"):
        (folder.parent / f"{readable}-{run.identity_hash()}").mkdir(parents=True)
    assert dry_run(capsys, config)[0][1] == folder


NO_USER = "~phdlab_no_such_user_4711"


@pytest.mark.parametrize("case", ["logs_dir_path", "latents_dir_name", "data_dir_name", "logs_dir_home",
                                  "step_latents_dir_home", "data_dir_home"])
def test_paths_the_system_refuses_are_config_errors_naming_the_key(case, tmp_path, capsys):
    overrides, fragments = {
        "logs_dir_path": ({"logs_dir": str(tmp_path / "/".join(["d" * 200] * 25))},
                          ["the key 'logs_dir'", "path too long"]),
        "latents_dir_name": ({"latents_dir": str(tmp_path / ("z" * 300)), "post_processing": ["extract"]},
                             ["the key 'latents_dir'", "path too long", "300 bytes"]),
        "data_dir_name": ({"dataset": "MNIST", "data_dir": str(tmp_path / ("q" * 300))},
                          ["the key 'data_dir'", "path too long", "300 bytes"]),
        "logs_dir_home": ({"logs_dir": f"{NO_USER}/x"}, ["the key 'logs_dir'", f"no user {NO_USER[1:]}"]),
        "step_latents_dir_home": ({"post_processing": [{"name": "extract", "latents_dir": f"{NO_USER}/l"}]},
                                  ["the key 'latents_dir'", f"no user {NO_USER[1:]}"]),
        "data_dir_home": ({"data_dir": NO_USER}, ["the key 'data_dir'", f"no user {NO_USER[1:]}"]),
    }[case]
    config = write_config(tmp_path, **overrides)
    for extra in ([], ["--dry-run"]):
        code = main_cli(["--config", str(config), "--no-progress", "-q", *extra])
        err = flat(capsys.readouterr().err)
        assert code == 2, err
        assert err.startswith("error: ") and "Traceback" not in err
        for fragment in fragments:
            assert fragment in err, (fragment, err)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exp.json"]


def _write_escaped(tmp_path: Path, **overrides: object) -> Path:
    """A config written with JSON's escapes (a lone surrogate as \\ud800)."""
    path = write_config(tmp_path)
    path.write_text(json.dumps({**json.loads(path.read_text()), **overrides}, ensure_ascii=True))
    return path


@pytest.mark.parametrize("overrides, fragment", [
    ({"run_id": "\ud800"}, "the key 'run_id' holds \"\\ud800\""),
    ({"logs_dir": "/tmp/phd_lab_\udc00"}, "the key 'logs_dir' holds \"/tmp/phd_lab_\\udc00\""),
    ({"run_id": ["0", "r\udfff"]}, "the key 'run_id' holds \"r\\udfff\""),
    ({"model_args": {"width": 0.0625, "\ud801": 1}}, "the key name \"\\ud801\" inside 'model_args'"),
])
def test_strings_utf8_cannot_encode_are_refused_when_read(overrides, fragment, tmp_path, capsys):
    config = _write_escaped(tmp_path, **overrides)
    for extra in ([], ["--dry-run"]):
        code = main_cli(["--config", str(config), "--no-progress", "-q", *extra])
        err = flat(capsys.readouterr().err)
        assert code == 2, err
        assert "Traceback" not in err and fragment in err and "lone surrogate" in err, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exp.json"]


def test_a_run_id_option_that_is_no_utf8_text_is_refused(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main_cli(["--config", str(config), "--run-id", "r\udcff", "--dry-run"]) == 2  # undecodable argv bytes
    err = flat(capsys.readouterr().err)
    assert err.startswith("error: --run-id:") and "UTF-8" in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("meta", ["x", [], None, 3])
def test_a_meta_that_is_no_object_is_refused(meta, tmp_path, capsys):
    config = write_config(tmp_path)
    config.write_text(json.dumps({**json.loads(config.read_text()), "_meta": meta}))
    assert main_cli(["--config", str(config), "--dry-run"]) == 2
    err = flat(capsys.readouterr().err)
    assert "the key '_meta' must be a JSON object" in err and "remove it" in err, err
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("metrics, named", [(["Accuracy", "Accuracy"], "'Accuracy'"),
                                            ([["MCC"], ["Accuracy", "MCC", "Accuracy", "MCC"]], "'Accuracy', 'MCC'")])
def test_a_metric_named_twice_is_refused_and_distinct_metrics_keep_their_folders(metrics, named, tmp_path, capsys):
    config = write_config(tmp_path, metrics=metrics)
    assert main_cli(["--config", str(config), "--dry-run"]) == 2
    err = flat(capsys.readouterr().err)
    assert f"the key 'metrics' names {named} more than once" in err, err
    assert not (tmp_path / "logs").exists()
    ordered = Grid(json.loads(write_config(tmp_path, metrics=[["Accuracy", "MCC"], ["MCC", "Accuracy"]]).read_text()))
    assert [run.identity_hash() for run in ordered] == ["068da52a", "610e4c5e"]  # the order still counts


def test_a_logged_config_with_a_metric_named_twice_still_reruns(tmp_path, capsys):
    """Runs trained before repeated metrics were refused must stay reachable through their logged configs: the
    refusal of the logged config left no way to resume them but retraining under another folder."""
    config = write_config(tmp_path, metrics=["Accuracy", "Accuracy"], _meta={"phd_lab_version": "0.3"})
    assert main_cli(["--config", str(config), "--dry-run"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("key, home", [("lr", "optimizer_args"), ("width", "model_args"), ("flip", "dataset_args")])
def test_a_factory_argument_at_the_top_level_is_pointed_to_its_args_mapping(key, home, tmp_path, capsys):
    """{"lr": 0.1} got only "unknown config key(s) ['lr']" and the list of every config key."""
    config = write_config(tmp_path, **{key: 1})
    assert main_cli(["--config", str(config), "--dry-run"]) == 2
    err = flat(capsys.readouterr().err)
    assert f"write it inside {home}, e.g. {{\"{home}\": {{\"{key}\": ...}}}}" in err, err
    config = write_config(tmp_path, "typo.json", batchsize=1)  # a misspelt config key keeps its own hint
    assert main_cli(["--config", str(config), "--dry-run"]) == 2
    err = flat(capsys.readouterr().err)
    assert "did you mean 'batch_size'" in err and "write it inside" not in err, err


def test_an_argument_the_framework_supplies_is_not_pointed_to_an_args_mapping(tmp_path, capsys):
    """in_channels at the top level: the framework passes it to the model factory from the data, and model_args
    refuses it, so the message must not send the user there."""
    config = write_config(tmp_path, in_channels=1)
    assert main_cli(["--config", str(config), "--dry-run"]) == 2
    err = flat(capsys.readouterr().err)
    assert "unknown config key(s) ['in_channels']" in err and "write it inside" not in err, err


def test_a_model_or_dataset_factory_may_take_an_argument_named_model():
    """Only an optimizer factory gets the model from the framework; a model wrapper's own ``model`` keyword (which
    torchvision architecture to wrap) was refused with "It accepts: no arguments"."""
    from phd_lab.errors import ConfigError
    from phd_lab.factory_args import SUPPLIED_ARGS, check_factory_args

    def wrapper(*, num_classes, in_channels=3, model="resnet18"):
        raise AssertionError("only its signature is read")

    check_factory_args(wrapper, {"model": "resnet50"}, "model_args", "wrapper", "exp.json", SUPPLIED_ARGS["models"])
    def data_wrapper(*, batch_size, resolution, data_dir, seed, num_workers, model="resnet18"):
        raise AssertionError("only its signature is read")

    check_factory_args(data_wrapper, {"model": "resnet50"}, "dataset_args", "data_wrapper", "exp.json",
                       SUPPLIED_ARGS["datasets"])

    def optimizer(model, epochs, lr=0.1):
        raise AssertionError("only its signature is read")

    with pytest.raises(ConfigError, match=r"optimizer_args \['model'\] are not accepted by 'sgd'.* It accepts: lr"):
        check_factory_args(optimizer, {"model": "x"}, "optimizer_args", "sgd", "exp.json",
                           SUPPLIED_ARGS["optimizers"])

    def named_otherwise(net, *, epochs, lr=0.1):  # the model is passed by position: any first name takes it
        raise AssertionError("only its signature is read")

    check_factory_args(named_otherwise, {"lr": 0.5}, "optimizer_args", "mine", "exp.json", SUPPLIED_ARGS["optimizers"])
    with pytest.raises(ConfigError, match=r"the optimizer factory 'kw' has no parameter 'model'"):
        check_factory_args(lambda *, epochs: None, {}, "optimizer_args", "kw", "exp.json",
                           SUPPLIED_ARGS["optimizers"])


@pytest.mark.parametrize("overrides, key, words", [
    ({"logs_dir": "lo\u0000gs"}, "logs_dir", "NUL character"),
    ({"data_dir": ["data", "da\u0000ta"]}, "data_dir", "NUL character"),
    ({"latents_dir": "lat\u0000", "post_processing": ["extract"]}, "latents_dir", "NUL character"),
    ({"post_processing": [{"name": "extract", "latents_dir": "l\u0000"}]}, "post_processing.latents_dir",
     "NUL character"),
    ({"registries": {"models": "my\u0000models.py"}}, "registries.models", "NUL character"),
    ({"logs_dir": " "}, "logs_dir", "only white space"),
    ({"data_dir": ["data", "\t"]}, "data_dir", "only white space"),
    ({"latents_dir": "  ", "post_processing": ["extract"]}, "latents_dir", "only white space"),
    ({"post_processing": [{"name": "extract", "latents_dir": " "}]}, "post_processing.latents_dir",
     "only white space"),
])
def test_a_path_key_of_a_nul_or_only_white_space_is_refused_when_read(overrides, key, words, tmp_path, capsys,
                                                                     monkeypatch):
    """No file or folder name can hold a NUL: it failed with a traceback where the path was first used. "logs_dir":
    " " passed the dry run and trained into a folder named " " in the working directory. Both are refused by the
    dry run and by the run, naming the key, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path, **overrides)
    for extra in (["--dry-run"], []):
        code = main_cli(["--config", str(config), "--no-progress", "-q", *extra])
        err = flat(capsys.readouterr().err)
        assert code == 2, err
        assert err.startswith("error: ") and "Traceback" not in err, err
        assert f"the key '{key}' holds" in err and words in err, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exp.json"]


@pytest.mark.parametrize("overrides, key", [
    ({"logs_dir": "{loop}/logs"}, "the key 'logs_dir'"),
    ({"latents_dir": "{loop}/lat", "post_processing": ["extract"]}, "the key 'latents_dir'"),
    ({"post_processing": [{"name": "extract", "latents_dir": "{loop}/lat"}]}, "step 'extract': the key 'latents_dir'"),
])
def test_a_path_key_through_a_symlink_loop_is_a_config_error_naming_the_key(overrides, key, tmp_path, capsys):
    """Path.resolve raises RuntimeError (not OSError) on a loop of symbolic links: it was a traceback."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    config = write_config(tmp_path, **json.loads(json.dumps(overrides).replace("{loop}", str(tmp_path / "a"))))
    for extra in ([], ["--dry-run"]):
        code = main_cli(["--config", str(config), "--no-progress", "-q", *extra])
        err = flat(capsys.readouterr().err)
        assert code == 2, err
        assert err.startswith("error: ") and "Traceback" not in err, err
        assert key in err and "loop of symbolic links" in err, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a", "b", "exp.json"]


@pytest.mark.parametrize("blocking", ["vgg11", "vgg11/Digits_8", "vgg11/Digits_8/0"])
def test_a_file_where_a_folder_of_the_run_must_go_is_named_up_front(blocking, tmp_path, capsys):
    """A file in logs_dir where a folder above the run's must go (a shared tree, a stray download): --dry-run
    said "new" without a word, and the run failed with a NotADirectoryError traceback and "failed before a run
    log was opened (while building the data, model or optimizer)". As for a logs_dir that cannot be written,
    the dry run (which writes nothing) warns."""
    config = write_config(tmp_path, **FAST)
    file = tmp_path / "logs" / blocking
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("not a folder")
    for extra, status in (([], 2), (["--dry-run"], 0)):
        code = main_cli(["--config", str(config), "--no-progress", *extra])
        err = flat(capsys.readouterr().err)
        assert code == status, err
        assert "Traceback" not in err and "before a run log" not in err and "before its run log" not in err, err
        assert f"the folder of run 0, {tmp_path / 'logs' / 'vgg11' / 'Digits_8' / '0'}/" in err, err
        assert f"but {str(file)!r} is a file where a folder must go" in err and "logs_dir" in err, err
        assert err.startswith("error: ") if status else "WARNING" in err
    assert file.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["exp.json", "logs"]


def test_a_run_folder_made_impossible_after_the_checks_is_one_clear_line(tmp_path):
    """Where a file takes a folder's place between the up-front checks and the run (another process), creating
    the run folder is a DataError naming it, not a NotADirectoryError traceback."""
    from phd_lab.errors import DataError
    from phd_lab.rundir import RunDir
    from phd_lab.run_guards import writable_lock
    [run] = Grid(json.loads(write_config(tmp_path, **FAST).read_text()))
    rundir = RunDir.for_run(run)
    (tmp_path / "logs").write_text("not a folder")
    with pytest.raises(DataError) as raised:
        with writable_lock(rundir):
            pass
    message = flat(str(raised.value))
    assert f"The run folder {str(rundir.root)!r} cannot be created" in message, message
    assert f"({str(tmp_path / 'logs')!r} is a file where a folder must go)" in message, message


def test_a_config_file_name_that_is_no_utf8_reaches_the_run_log(tmp_path):
    """``main.py --config $'x\\xff.json'``: the byte the file system allows in a name is a lone surrogate in the
    path, and the run log's strict UTF-8 handler printed "--- Logging error ---" with a traceback for every
    record that named the file, which never reached the log. It is written escaped, as stderr writes it (a real
    process: pytest's captured stderr is strict)."""
    import os
    config = write_config(tmp_path, **{**FAST, "track_saturation": True}, tracking_fast=True)
    odd = config.rename(tmp_path / os.fsdecode(b"x\xff.json"))
    result = run_main("--config", str(odd), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "Logging error" not in result.stderr and "UnicodeEncodeError" not in result.stderr, result.stderr
    [folder] = run_folders(tmp_path / "logs")
    log_text = (folder / f"{run_name(folder)}.log").read_text(encoding="utf-8")
    assert f"{tmp_path}/x\\udcff.json (run 0): 'tracking_fast' is retired" in log_text, log_text


NO_UTF8_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


def test_a_folder_the_locale_cannot_name_is_refused_when_read(tmp_path):
    """Under a locale whose file-name encoding is ASCII (Python's UTF-8 mode and locale coercion off), a logs_dir of
    '数据' ended the dry run with a UnicodeEncodeError traceback at its first stat (exit 1)."""
    encoding = subprocess.run([sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"],
                              env={**os.environ, **NO_UTF8_LOCALE}, capture_output=True, text=True).stdout.strip()
    if encoding.lower().replace("-", "") == "utf8":  # macOS: file names are UTF-8 whatever the locale
        pytest.skip("this system's file names are UTF-8 under every locale")
    config = write_config(tmp_path, logs_dir=str(tmp_path / "数据"))
    done = run_main("--config", str(config), "--dry-run", env=NO_UTF8_LOCALE)
    err = flat(done.stderr)
    assert done.returncode == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert "the key 'logs_dir'" in err and "\\u6570\\u636e" in err and "PYTHONUTF8=1" in err, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exp.json"]


def test_a_run_logged_under_a_locale_that_cannot_name_its_working_directory_is_reproduced(tmp_path, capsys):
    """Started under LC_ALL=C (Python's UTF-8 mode off) in a working directory '数据', a run logged that folder in
    its config's _meta by the escapes of its bytes, and `main.py --config <its logged config>` refused the file in
    every locale ('the key '_meta.working_directory' holds ... a lone surrogate escape', exit 2). About 6 s."""
    encoding = subprocess.run([sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"],
                              env={**os.environ, **NO_UTF8_LOCALE}, capture_output=True, text=True).stdout.strip()
    if encoding.lower().replace("-", "") == "utf8":  # macOS: file names are UTF-8 whatever the locale
        pytest.skip("this system's file names are UTF-8 under every locale")
    config = write_config(tmp_path, epoch=1, track_saturation=False, post_processing=[])
    (tmp_path / "数据").mkdir()
    done = run_main("--config", str(config), "--no-progress", "-q", env=NO_UTF8_LOCALE, cwd=tmp_path / "数据")
    assert done.returncode == 0, done.stderr
    [folder] = run_folders(tmp_path / "logs")
    logged = folder / f"{run_name(folder)}_config.json"
    assert "\\udce6" in logged.read_text(encoding="utf-8")  # the folder's bytes, as that process named them
    code, err = main_in_process(capsys, "--config", str(logged), "--dry-run")
    assert code == 0 and "surrogate" not in err, err
    assert run_folders(tmp_path / "logs") == [folder]


def test_a_run_logged_below_a_folder_the_locale_cannot_name_is_reproduced_in_it(tmp_path, capsys):
    """A run logged under a UTF-8 locale below '数据': its logged config was refused under LC_ALL=C (Python's UTF-8
    mode off) for its logs_dir, which its reproduction replaces by the folder the file lies in. Reproduced there,
    it stays in its folder, and its logged config (which names that folder by the escapes of its bytes now) is
    reproduced under the UTF-8 locale again. About 8 s (a subprocess under LC_ALL=C)."""
    encoding = subprocess.run([sys.executable, "-c", "import sys; print(sys.getfilesystemencoding())"],
                              env={**os.environ, **NO_UTF8_LOCALE}, capture_output=True, text=True).stdout.strip()
    if encoding.lower().replace("-", "") == "utf8":  # macOS: file names are UTF-8 whatever the locale
        pytest.skip("this system's file names are UTF-8 under every locale")
    config = write_config(tmp_path, epoch=1, logs_dir=str(tmp_path / "数据"), track_saturation=False,
                          post_processing=[])
    assert main_in_process(capsys, "--config", str(config), "--no-progress", "-q")[0] == 0
    [folder] = run_folders(tmp_path / "数据")
    logged = folder / f"{run_name(folder)}_config.json"
    done = run_main("--config", str(logged), "--no-progress", env=NO_UTF8_LOCALE)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "already finished 1 epoch" in done.stderr and run_folders(tmp_path / "数据") == [folder]
    code, err = main_in_process(capsys, "--config", str(logged), "--no-progress")
    assert code == 0 and "already finished 1 epoch" in err, err
    assert run_folders(tmp_path / "数据") == [folder]
    copied = tmp_path / "copied_config.json"  # outside its run folder: its logs_dir is used, and checked
    copied.write_text(json.dumps({**json.loads(logged.read_text(encoding="utf-8")), "logs_dir": "\ud800"}))
    code, err = main_in_process(capsys, "--config", str(copied), "--dry-run")
    assert code == 2 and "the key 'logs_dir' holds \"\\ud800\", which has a lone surrogate" in flat(err), err


def test_a_logs_dir_through_a_link_that_leads_nowhere_is_refused_up_front(tmp_path, capsys):
    """A logs link into a purged scratch space: the check followed it to the root and passed, and the run then said
    'The run folder ... cannot be created (File exists)', naming no link."""
    (tmp_path / "logs").symlink_to(tmp_path / "purged" / "logs")
    config = write_config(tmp_path)
    assert main_cli(["--config", str(config), "--no-progress"]) == 2
    err = flat(capsys.readouterr().err)
    assert err.startswith("error: ") and "the key 'logs_dir'" in err, err
    assert f"'{tmp_path / 'logs'}' on the way is a symbolic link to '{tmp_path / 'purged' / 'logs'}'" in err, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exp.json", "logs"]


def test_a_logs_dir_below_a_home_whose_name_is_no_utf8_is_planned(tmp_path, monkeypatch):
    """logs_dir '~/logs' with a home folder named with a byte that is no UTF-8 (a Latin-1 'é'; '数据' under LC_ALL=C
    without UTF-8 mode): the run folder's name-length check encoded its names as strict UTF-8 and the dry run ended
    with a UnicodeEncodeError traceback (exit 1). Names are counted in the bytes the file system holds."""
    home = tmp_path / os.fsdecode(b"h\xe9")
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    config = write_config(tmp_path, logs_dir="~/logs")
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="surrogateescape")  # the name's byte as it is
    monkeypatch.setattr(sys, "stdout", out)
    assert main_cli(["--config", str(config), "--dry-run", "--no-progress", "-q"]) == 0
    out.flush()
    assert b"/h\xe9/logs/vgg11/Digits_16/0/" in out.buffer.getvalue()


def test_a_key_unknown_to_this_version_in_a_logged_config_of_another_is_said_to_be_that_version_s(tmp_path, capsys):
    """A logged config written by a newer phd-lab (a colleague's logs) was refused with 'did you mean' for its new
    keys, as if they were typos, without a word that its _meta names another version to rerun it with."""
    from phd_lab import __version__
    from phd_lab.config import META_KEY
    config = write_config(tmp_path, epoch=1, track_saturation=False, post_processing=[])
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 0, err
    [folder] = run_folders(tmp_path / "logs")
    logged = json.loads((folder / f"{run_name(folder)}_config.json").read_text())
    newer = {**logged, "tracking_newthing": 3, META_KEY: {**logged[META_KEY], "phd_lab": "9.9.9"}}
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    code, err = main_in_process(capsys, "--config", str(tmp_path / "newer.json"), "-q")
    err = " ".join(err.split())
    assert code == 2 and "unknown config key(s) ['tracking_newthing']" in err, err
    assert "This logged config was written by phd-lab 9.9.9" in err and f"this is phd-lab {__version__}" in err, err
    (tmp_path / "same.json").write_text(json.dumps({**logged, "tracking_newthing": 3}))  # this version's own: a typo
    code, err = main_in_process(capsys, "--config", str(tmp_path / "same.json"), "-q")
    err = " ".join(err.split())  # the message is wrapped at a width its temporary path's length moves
    assert code == 2 and "unknown config key(s)" in err and "written by" not in err, err


def test_data_missing_for_a_logged_config_says_that_its_data_dir_may_be_set_to_the_data_s_place_here(tmp_path,
                                                                                                     capsys):
    """A logged config names the data_dir of the machine and day it trained (absolute): rerun elsewhere, or after the
    data moved, it was told only to place the data under that old path, not that data_dir may be set in the logged
    config without making it another run (as the README's 'Run folders and configs from someone else' says)."""
    from phd_lab.config import META_KEY
    config = write_config(tmp_path, epoch=1, track_saturation=False, post_processing=[])
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 0, err
    [folder] = run_folders(tmp_path / "logs")
    logged = json.loads((folder / f"{run_name(folder)}_config.json").read_text())
    assert META_KEY in logged
    gone = str(tmp_path / "moved_data")
    (tmp_path / "cifar_logged.json").write_text(json.dumps({**logged, "dataset": "Cifar10", "data_dir": gone}))
    code, err = main_in_process(capsys, "--config", str(tmp_path / "cifar_logged.json"), "-q")
    err = " ".join(err.split())
    assert code == 2 and f"is not in data_dir '{gone}'" in err, err
    assert ("This is a logged config, whose data_dir is the one the run was trained with (another machine's, or a "
            "folder moved since): set \"data_dir\" in it to where the data lies here.") in err, err
    plain = write_config(tmp_path, "cifar.json", dataset="Cifar10", data_dir=gone)  # a config of one's own: no hint
    code, err = main_in_process(capsys, "--config", str(plain), "-q")
    assert code == 2 and f"is not in data_dir '{gone}'" in " ".join(err.split()) and "logged config" not in err, err
