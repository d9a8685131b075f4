"""--dry-run's account of a run whose checkpoints are all damaged, a registry module that exits while it is
imported, and the prefixes --list shows (folder:<path> for an image folder, as tv: for torchvision's models)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from phd_lab.checkpoint import CHECKPOINT_FORMAT, CheckpointStore
from phd_lab.cli import main_cli
from phd_lab.errors import EXIT_USAGE, RegistryError
from phd_lab.registry import Registries
from tests.conftest import ROOT, checkpoint_state, main_in_process, run_folders, run_name, write_config


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # a torn write


def test_a_run_whose_checkpoints_are_both_damaged_is_said_to_stop_not_to_go_back(tmp_path, capsys):
    """--dry-run promised that the next run goes back to <name>.previous.pt when that one was damaged too (the
    run then failed), and the log said of the damaged previous one 'falling back to the previous one'."""
    config = write_config(tmp_path, epoch=2, cpu_threads=1, track_saturation=False)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    name = run_name(folder)
    truncate(folder / f"{name}.pt")
    truncate(folder / f"{name}.previous.pt")
    logged = folder / f"{name}_config.json"  # as if trained under another numpy: a setup difference to say
    values = json.loads(logged.read_text())
    values["_meta"]["numpy"] = "0.0.1"
    logged.write_text(json.dumps(values))

    capsys.readouterr()
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    listing = " ".join(capsys.readouterr().out.split())
    assert "goes back to" not in listing
    assert (f"finished; {name}.pt and {name}.previous.pt are both damaged: the next run stops with an error; "
            f"delete them to train the run again from the start") in listing

    code, err = main_in_process(capsys, "--config", str(config), "--no-progress")
    assert code == 1 and "Every checkpoint in" in " ".join(err.split())
    log_text = " ".join((folder / f"{name}.log").read_text().split())
    assert f"{name}.pt is damaged (BadZipFile: File is not a zip file); falling back to the previous one." in log_text
    assert (f"{name}.previous.pt is damaged (BadZipFile: File is not a zip file); there is no other checkpoint to "
            f"fall back to.") in log_text
    assert "previous.pt is damaged (BadZipFile: File is not a zip file); falling back" not in log_text
    # nor that "the epochs still to train" run under another setup: how many are left cannot be told
    assert "The epochs still to train run under another setup" not in " ".join(err.split()) + log_text


def test_the_fallback_is_the_generation_load_goes_back_to(tmp_path, caplog):
    store = CheckpointStore(tmp_path / "run.pt", tmp_path / "run.previous.pt")
    store.save(checkpoint_state(1))
    store.save(checkpoint_state(2))
    truncate(store.path)
    assert store.current_is_damaged() and store.fallback() == store.previous
    torch.save({"format": CHECKPOINT_FORMAT, **checkpoint_state(3)}, store.staged)  # whole, left by a save cut short
    assert store.fallback() == store.staged
    with caplog.at_level(logging.WARNING, logger="phd_lab.checkpoint"):
        assert CheckpointStore(store.path, store.previous).load()["epoch"] == 3
    assert "falling back to run.pt.next, which a save cut short had written whole" in caplog.text
    truncate(store.staged)
    assert store.fallback() == store.previous
    truncate(store.previous)
    assert store.fallback() is None


REGISTRY_EXITS = "import sys\n\n{call}\n"


@pytest.mark.parametrize("call, said", [("raise SystemExit(3)", "sys.exit(3)"), ("sys.exit()", "sys.exit()")])
def test_a_registry_module_that_exits_at_import_is_a_usage_error_naming_it(tmp_path, capsys, call, said):
    """A registry module that ran sys.exit(3) at import made main.py exit 3 without a word."""
    registry = tmp_path / "exiting_models.py"
    registry.write_text(REGISTRY_EXITS.format(call=call))
    config = write_config(tmp_path, registries={"models": str(registry)})
    code, err = main_in_process(capsys, "--config", str(config), "--dry-run")
    err = " ".join(err.split())
    assert code == EXIT_USAGE
    assert (f"The models registry module {str(registry)!r} failed while being imported: SystemExit: it calls "
            f"{said} or raises SystemExit") in err
    assert err.count("error:") == 1
    with pytest.raises(RegistryError, match="exiting_models.py"):
        Registries({"models": str(registry)})


def test_ctrl_c_while_a_registry_module_is_imported_still_stops(tmp_path):
    registry = tmp_path / "interrupted_models.py"
    registry.write_text("raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        Registries({"models": str(registry)})


def test_list_datasets_shows_the_folder_prefix_as_list_models_shows_tv(capsys):
    """--list datasets never named the folder: prefix of an image folder; --pattern 'folder*' printed (none)."""
    assert main_cli(["--list", "datasets"]) == 0
    listing = capsys.readouterr().out
    assert "and by prefix (1):\n  folder:<path>" in listing and "ImageFolder trees" in listing
    # the docstrings' reStructuredText ``code`` is shown as `code`, as the help texts write it
    assert "`folder:/path`: ImageFolder trees" in listing and "no flips unless `flip`." in listing
    assert "``" not in listing
    assert main_cli(["--list", "datasets", "--pattern", "folder*"]) == 0
    listing = capsys.readouterr().out
    assert "(none)" not in listing and "folder:<path>" in listing
    assert main_cli(["--list", "datasets", "--pattern", "mnist"]) == 0
    assert "folder:" not in capsys.readouterr().out
    assert main_cli(["--list", "models", "--pattern", "tv:resnet1*"]) == 0
    assert capsys.readouterr().out == "By prefix (3):\n  tv:resnet101, tv:resnet152, tv:resnet18\n"  # no "and"


def test_list_with_a_config_lists_the_registry_modules_it_names(tmp_path, capsys):
    """--list ignored --config: it listed the built-in models though the config names its own registry module, and
    the did-you-mean error for a name of such a module sent the user to that listing (`python main.py --list
    models`), which does not hold the names it can use."""
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n\n\n"
        "def tiny_net(*, num_classes: int, in_channels: int = 3):\n"
        "    \"\"\"A user's own model.\"\"\"\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")
    config = tmp_path / "exp.json"
    config.write_text(json.dumps({"model": "tiny_nte", "dataset": "FakeData", "registries": {"models": "my_models.py"},
                                  "logs_dir": str(tmp_path / "logs")}))
    assert main_cli(["--config", str(config), "--dry-run"]) == EXIT_USAGE
    message = " ".join(capsys.readouterr().err.split())
    assert "Did you mean 'tiny_net'?" in message and "`python main.py --config CONFIG --list models`" in message
    assert main_cli(["--config", str(config), "--list", "models"]) == 0
    assert capsys.readouterr().out == "tiny_net                 A user's own model.\n"
    assert main_cli(["--config", str(config), "--list", "optimizers", "--pattern", "sgd"]) == 0  # built-in: kept
    assert capsys.readouterr().out.startswith("sgd ")
    assert not (tmp_path / "logs").exists()


def test_list_shows_a_factory_whose_docstring_is_only_white_space_without_words(tmp_path, capsys):
    """A factory whose docstring held only white space with a tab in it (which ``inspect.getdoc`` keeps as spaces)
    made --list fail with an IndexError traceback; it is listed by its name alone, as one without a docstring."""
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n\n\n"
        "def blank_doc(*, num_classes: int, in_channels: int = 3):\n"
        "    \"\"\"\n\t \n    \"\"\"\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")
    config = tmp_path / "exp.json"
    config.write_text(json.dumps({"model": "blank_doc", "dataset": "FakeData",
                                  "registries": {"models": "my_models.py"}, "logs_dir": str(tmp_path / "logs")}))
    assert main_cli(["--config", str(config), "--list", "models"]) == 0
    assert capsys.readouterr().out == f"{'blank_doc':24} \n"


OWN_MODELS = '''def tiny(*, num_classes, in_channels=3):
    """A tiny network: one convolution.

    More words.
    """
    return num_classes


class Wide:
    """A class factory."""


def bare(*, num_classes, in_channels=3):
    return num_classes
'''


def test_list_under_python_OO_says_what_each_factory_is(tmp_path):
    """``python -OO`` drops docstrings, and --list printed the names of the models, datasets and metrics without
    the line that says what each is (the docstring's first line); it reads them from the factories' source now."""
    registry = tmp_path / "models.py"
    registry.write_text(OWN_MODELS)
    code = ("import sys\nfrom phd_lab.registry import KINDS, Registries\n"
            "models = Registries({kind: sys.argv[1] for kind in KINDS}).models\n"
            "print([models.doc(name) for name in ('tiny', 'Wide', 'bare')])")
    done = subprocess.run([sys.executable, "-OO", "-c", code, str(registry)], cwd=ROOT, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['A tiny network: one convolution.', 'A class factory.', '']"


def test_a_trained_run_whose_checkpoints_were_deleted_is_said_to_train_again_not_to_be_finished(tmp_path, capsys):
    """Checkpoints deleted to save space (or as a damaged one's message advises): --dry-run said 'finished', so a
    Dask rerun skipped the point, while the plain command trained it again from the start and replaced the metrics
    CSV's rows without a word (under another setup, other numbers in place of the run's own)."""
    config = write_config(tmp_path, epoch=2, cpu_threads=1, track_saturation=False)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    name = run_name(folder)
    for checkpoint in (f"{name}.pt", f"{name}.previous.pt"):
        (folder / checkpoint).unlink()

    capsys.readouterr()
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    listing = " ".join(capsys.readouterr().out.split())
    assert (f"finished, but neither {name}.pt nor {name}.previous.pt is there: the plain command trains it again "
            f"from the start and replaces the rows of {name}.csv") in listing, listing
    from phd_lab.experiment import Main, rerun_changes_nothing
    main = Main(progress=False)
    main.load(str(config))
    assert not rerun_changes_nothing(main.executors[0], main.meta_models)  # a Dask rerun sends it to a worker

    code, err = main_in_process(capsys, "--config", str(config), "--no-progress")
    err = " ".join(err.split())
    assert code == 0 and (f"{name}.csv lists 2 trained epochs, but neither checkpoint ({name}.pt, {name}.previous.pt) "
                          f"is in the run folder: the run is trained again from the start") in err, err
    assert f"{name}.csv lists" in " ".join((folder / f"{name}.log").read_text().split())
    assert (folder / f"{name}.pt").exists()
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[1] == "finished"
