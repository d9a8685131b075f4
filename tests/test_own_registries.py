"""A researcher's own optimizer and metric factories: what the trainer steps and reads, and what it refuses."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from phd_lab.checkpoint import CheckpointStore
from phd_lab.cli import main_cli
from phd_lab.errors import RunFailure
from phd_lab.metrics import Metric
from phd_lab.registry_import import import_registry_module
from tests.conftest import ROOT, run_folders, write_config
from tests.test_recovery import CrashAt, make_trainer

OWN_OPTIMIZERS = '''
import numpy as np
import torch


def plateau(model, *, epochs, lr=0.01, mode="min"):
    """SGD, the rate halved whenever the test loss does not fall by half (ReduceLROnPlateau)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, patience=0, factor=0.5,
                                                                 threshold=0.5)


def lbfgs(model, *, epochs, lr=0.1):
    """LBFGS, whose step needs a closure."""
    return torch.optim.LBFGS(model.parameters(), lr=lr), None


class Warmup:
    """A hand-written warm-up whose state holds a numpy integer (torch.load(weights_only=True) refuses it)."""

    def __init__(self, optimizer):
        self.optimizer, self.done = optimizer, np.int64(0)

    def step(self):
        self.done += 1

    def state_dict(self):
        return {"done": self.done}

    def load_state_dict(self, state):
        self.done = state["done"]


def warmup(model, *, epochs, lr=0.1):
    """SGD with a Warmup, whose checkpointed state no resume could read."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return optimizer, Warmup(optimizer)


class Decay:
    """A hand-written decay that halves the rate each epoch and records it as numpy computes it: a Python number
    until its second step, then a numpy scalar (which torch.load(weights_only=True) refuses)."""

    def __init__(self, optimizer):
        self.optimizer, self.steps, self.factor = optimizer, 0, 1.0

    def step(self):
        self.steps += 1
        self.factor = self.factor if self.steps < 2 else np.float64(0.5) ** self.steps
        for group in self.optimizer.param_groups:
            group["lr"] = 0.1 * float(self.factor)

    def state_dict(self):
        return {"steps": self.steps, "factor": self.factor}

    def load_state_dict(self, state):
        self.steps, self.factor = state["steps"], state["factor"]


def late_numpy(model, *, epochs, lr=0.1):
    """SGD with a Decay, whose state passes the check up front and takes a numpy scalar in its second epoch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return optimizer, Decay(optimizer)


def scaled(model, *, epochs, batch_size=256):
    """SGD at the square-root scaled rate, computed with numpy: a numpy scalar in its parameter group."""
    return torch.optim.SGD(model.parameters(), lr=0.1 * np.sqrt(batch_size / 256)), None


def another_model(model, *, epochs, lr=0.1):
    """SGD over a model of its own making, not the one it is given."""
    return torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=lr), None


def head_only(model, *, epochs, lr=0.1):
    """SGD over the model's last parameter tensor alone (a fine-tuned head)."""
    return torch.optim.SGD([list(model.parameters())[-1]], lr=lr), None


def no_epochs(model, lr=0.1):
    """SGD, its factory without the contract's epochs."""
    return torch.optim.SGD(model.parameters(), lr=lr), None


def MacroF1(num_classes):
    """A metric factory that wants an argument its contract does not pass."""
    raise AssertionError("not called")
'''


def own_config(tmp_path, optimizer, optimizer_args=None, **overrides):
    """A tiny Digits config (8 px) whose optimizer comes from OWN_OPTIMIZERS."""
    (tmp_path / "my_optimizers.py").write_text(textwrap.dedent(OWN_OPTIMIZERS))
    overrides.setdefault("registries", {"optimizers": str(tmp_path / "my_optimizers.py")})
    return write_config(tmp_path, optimizer=optimizer, optimizer_args=optimizer_args or {}, track_saturation=False,
                        resolution=8, batch_size=256, **overrides)


def test_reduce_lr_on_plateau_is_stepped_with_the_test_loss_and_resumes_where_it_was(tmp_path):
    """ReduceLROnPlateau's step needs a metric: the run failed after its first epoch with 'step() missing 1
    required positional argument: metrics'. It is stepped with the epoch's test loss, and a resume restores it:
    its best is epoch 1's loss (the attempt that was killed), and epoch 2, not half as low, halved the rate."""
    config = own_config(tmp_path, "plateau", epoch=2)
    store = CheckpointStore(tmp_path / "run.pt", tmp_path / "run.prev.pt")
    crashing, bundle, _ = make_trainer(config, tmp_path, [CrashAt(2)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.fit(bundle, store)
    resumed, bundle, _ = make_trainer(config, tmp_path)
    resumed.fit(bundle, store)
    assert resumed.epochs_run == [2]
    first, second = (row["test_loss"] for row in resumed.history)
    assert second > first / 2
    assert resumed.scheduler.best == first and resumed.scheduler.last_epoch == 2
    assert resumed.optimizer.param_groups[0]["lr"] == 0.005


def test_an_optimizer_or_scheduler_the_trainer_cannot_step_is_refused_before_its_run_folder(tmp_path, capsys):
    """LBFGS (its step needs a closure) failed after the first batch with a TypeError, exit 1, its run folder
    made; a ReduceLROnPlateau in mode 'max' would have been stepped with a loss. Both are refused up front."""
    assert main_cli(["--config", str(own_config(tmp_path, "lbfgs")), "--no-progress", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "optimizer factory 'lbfgs'" in err and "LBFGS's step() requires closure" in err
    assert "Traceback" not in err
    config = own_config(tmp_path, "plateau", optimizer_args={"mode": "max"})
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2
    assert "ReduceLROnPlateau has mode 'max'" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "logs").exists() or not run_folders(tmp_path / "logs")


def test_an_optimizer_over_none_of_the_models_parameters_is_refused_before_its_run_folder(tmp_path, capsys):
    """An optimizer made over another model's parameters trained with exit 0 and left the model as initialised,
    every epoch's numbers those of the untrained model; refused up front (exit 2). One over part of the model's
    parameters trains."""
    assert main_cli(["--config", str(own_config(tmp_path, "another_model")), "--no-progress", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "optimizer factory 'another_model'" in err and "none of them the model's it was given" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "logs").exists() or not run_folders(tmp_path / "logs")
    assert main_cli(["--config", str(own_config(tmp_path, "head_only", epoch=1)), "--no-progress", "-q"]) == 0
    assert len(run_folders(tmp_path / "logs")) == 1


class ReadCounted(Metric):
    """Accuracy whose value says how often it was read, and returns a tensor of shape (1,) as a user's may."""

    def __init__(self, value=None) -> None:
        self.reads, self.fixed = 0, value
        self.reset()

    def reset(self) -> None:
        self.correct, self.total = 0, 0

    def update(self, y_true, y_pred) -> None:
        self.correct += int((y_pred.argmax(1) == y_true).sum())
        self.total += len(y_true)

    @property
    def value(self):
        self.reads += 1
        return torch.tensor([self.correct / self.total]) if self.fixed is None else self.fixed


@pytest.mark.parametrize("progress", [False, True])
def test_a_metric_is_read_once_per_pass_without_a_bar_and_may_be_a_one_element_tensor(tmp_path, progress):
    """The bar's postfix read the first metric's value after every batch even with --no-progress (an sklearn
    metric over all its predictions cost a pass each batch), and a value of shape (1,) failed the run with
    'unsupported format string passed to Tensor.__format__'."""
    trainer, bundle, _ = make_trainer(own_config(tmp_path, "plateau", epoch=1), tmp_path)
    trainer.metrics = {"counted": ReadCounted()}
    trainer.progress = progress
    trainer.fit(bundle, CheckpointStore(tmp_path / "run.pt", tmp_path / "run.prev.pt"))
    assert 0 < trainer.history[0]["train_counted"] <= 1
    batches = len(bundle.train)
    assert trainer.metrics["counted"].reads == (2 if not progress else 2 + batches)


def test_a_metric_whose_value_is_no_number_is_named_with_what_a_value_may_be(tmp_path):
    trainer, bundle, _ = make_trainer(own_config(tmp_path, "plateau", epoch=1), tmp_path)
    trainer.metrics = {"f1": ReadCounted({"macro": "0.5 (of 10 classes)"})}
    with pytest.raises(RunFailure, match=r"metric \"f1\['macro'\]\" is str '0.5 \(of 10 classes\)', not a number"):
        trainer.fit(bundle, CheckpointStore(tmp_path / "run.pt", tmp_path / "run.prev.pt"))


OWN_METRICS = '''
class Wordy:
    """A metric whose value is a sentence."""

    def update(self, y_true, y_pred):
        pass

    @property
    def value(self):
        return "high"

    def reset(self):
        pass


def wordy():
    """A metric whose value is no number."""
    return Wordy()
'''


def test_a_metric_value_that_is_no_number_fails_the_run_with_its_log_saying_why(tmp_path, capsys):
    """Found once the run trains, such a value ended main.py with exit 2, which says 'nothing written', beside the
    run folder it had made, and the run's log did not say why the run stopped: the run fails (exit 1), its log
    holds the error and the console names it."""
    (tmp_path / "my_metrics.py").write_text(OWN_METRICS)
    config = write_config(tmp_path, epoch=1, resolution=8, batch_size=256, track_saturation=False, post_processing=[],
                          metrics=["wordy"], registries={"metrics": str(tmp_path / "my_metrics.py")})
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 1
    said = " ".join(capsys.readouterr().err.split())
    [folder] = run_folders(tmp_path / "logs")
    [log] = folder.glob("*.log")
    assert "RunFailure: The value of metric 'wordy' is str 'high', not a number" in said and "Its log" in said, said
    assert "The value of metric 'wordy' is str 'high', not a number" in log.read_text(encoding="utf-8")


def test_an_optimizer_or_metric_factory_of_another_signature_is_named_with_its_contract(tmp_path, capsys):
    """A metric factory that takes an argument ended the grid check with a TypeError traceback (exit 1); an
    optimizer factory without 'epochs' was said to be built with the wrong optimizer_args. Both are exit 2 now,
    naming the factory and its contract, before any run folder."""
    assert main_cli(["--config", str(own_config(tmp_path, "no_epochs")), "--no-progress", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the optimizer factory 'no_epochs' has no parameter 'epochs'" in err
    assert "which phd-lab passes to every optimizer factory (model, epochs, then the optimizer_args)" in err
    config = own_config(tmp_path, "plateau", metrics=["MacroF1"],
                        registries={"optimizers": str(tmp_path / "my_optimizers.py"),
                                    "metrics": str(tmp_path / "my_optimizers.py")})
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the metric factory 'MacroF1'" in err and "missing a required argument: 'num_classes'" in err
    assert "a metric factory is f() ->" in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists() or not run_folders(tmp_path / "logs")


def test_a_scheduler_whose_state_no_checkpoint_can_restore_is_refused_before_its_run_folder(tmp_path, capsys):
    """Its checkpoints were written every epoch, but each resume said 'Every checkpoint ... is damaged
    (UnpicklingError). Delete them to retrain this run from the start'; a scheduler without state_dict failed the
    run after its first epoch. The factory is named up front, with what its state holds."""
    assert main_cli(["--config", str(own_config(tmp_path, "warmup")), "--no-progress", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the optimizer factory 'warmup'" in err and "its scheduler Warmup's state_dict() holds numpy" in err
    assert "torch.load(weights_only=True)" in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists() or not run_folders(tmp_path / "logs")


def test_an_optimizer_whose_hyperparameters_no_checkpoint_restores_is_refused_up_front(tmp_path, capsys):
    """An optimizer whose lr was a numpy scalar trained and wrote a checkpoint every epoch, but
    torch.load(weights_only=True) refuses numpy scalars: a resume (or the rerun of the finished run for a new step)
    said 'Every checkpoint ... is damaged (UnpicklingError)', the run lost. The factory is named up front."""
    assert main_cli(["--config", str(own_config(tmp_path, "scaled", epoch=1)), "--no-progress", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "the optimizer factory 'scaled'" in err and "its optimizer SGD's parameter group 0 holds 'lr'" in err, err
    assert "torch.load(weights_only=True)" in err and "Traceback" not in err
    assert not (tmp_path / "logs").exists() or not run_folders(tmp_path / "logs")


def test_a_state_no_checkpoint_restores_once_it_steps_stops_the_run_with_the_last_readable_checkpoint(tmp_path,
                                                                                                        capsys):
    """A scheduler whose state takes a numpy scalar only once it steps passes the check up front: every checkpoint
    from then on was written, but none could be read back, so the resume after a kill lost the run ('Every
    checkpoint ... is damaged'). The save reads the file back: the run stops at the first such epoch, naming the
    entry and what it holds, and the checkpoint of the epoch before stays the one a resume reads."""
    config = own_config(tmp_path, "late_numpy", epoch=3, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "The checkpoint of epoch 2" in err and "its entry 'scheduler' holds numpy" in err, err
    assert "torch.load(weights_only=True)" in err and "Traceback" not in err
    [folder] = run_folders(tmp_path / "logs")
    [current] = [path for path in folder.glob("*.pt") if not path.name.endswith(".previous.pt")]
    store = CheckpointStore(current, current.with_name(current.name[:-3] + ".previous.pt"))
    assert not store.staged.exists() and store.load()["epoch"] == 1
    state = torch.load(store.path, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["scheduler"] == {"steps": 1, "factor": 1.0}


def test_a_registry_file_given_by_its_path_runs_under_its_own_future_statements(tmp_path):
    """A registry file given by its path was compiled under ``from __future__ import annotations`` of phd-lab's
    importing module: its annotations were strings (``'int'``), unlike the same file imported by its dotted name,
    and in a worker process that imports it again by its module name. It runs as Python runs it now."""
    path = tmp_path / "annotated_models.py"
    path.write_text("def tiny(*, num_classes: int, in_channels=3):\n    return num_classes\n")
    assert import_registry_module(str(path), "models").tiny.__annotations__ == {"num_classes": int}
    code = ("import importlib, sys\nfrom pathlib import Path\nfrom phd_lab.registry_files import module_name\n"
            "print(importlib.import_module(module_name('models', Path(sys.argv[1]))).tiny.__annotations__)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "{'num_classes': <class 'int'>}", done.stderr


def test_a_registry_file_of_a_package_that_imports_relatively_is_refused_with_the_dotted_name(tmp_path,
                                                                                              monkeypatch):
    """A registry file inside a package (``proj/lenses/models.py`` beside ``__init__.py``) given by its path is
    executed as a module of its own: its ``from .layers import WIDTH`` said it "imports
    'phd_lab.registry_files.layers', which is not installed here", and ``from . import layers`` "cannot import
    name 'layers' from 'phd_lab.registry_files'", naming neither the relative import nor what to give instead.
    It is refused before it runs, with the dotted module name that imports it as part of its package; one that
    imports its own package by name (``from lenses.layers import WIDTH``) was said to need 'lenses' installed."""
    from phd_lab.errors import RegistryError
    package = tmp_path / "lenses_relative"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text("WIDTH = 4\n")
    code = "import torch\n\n\ndef tiny(*, num_classes):\n    {}\n    return torch.nn.Linear(WIDTH, num_classes)\n"
    (package / "models.py").write_text("from .layers import WIDTH\n" + code.format("pass"))
    (package / "late.py").write_text(code.format("from . import layers\n    WIDTH = layers.WIDTH"))
    for name, line in (("models", 1), ("late", 5)):
        with pytest.raises(RegistryError) as caught:
            import_registry_module(str(package / f"{name}.py"), "models")
        message = " ".join(str(caught.value).split())
        assert f"imports relatively (line {line}: 'from ." in message and "phd_lab.registry_files" not in message
        assert f"Give the dotted module name 'lenses_relative.{name}' (from {str(tmp_path)!r}," in message, message
    (package / "byname.py").write_text("from lenses_relative.layers import WIDTH\n" + code.format("pass"))
    with pytest.raises(RegistryError) as caught:  # said to install 'lenses_relative', its own package
        import_registry_module(str(package / "byname.py"), "models")
    message = " ".join(str(caught.value).split())
    assert "imports the package it lies in by name ('lenses_relative')" in message and "Install" not in message
    assert f"Give the dotted module name 'lenses_relative.byname' (from {str(tmp_path)!r}," in message, message
    monkeypatch.syspath_prepend(str(tmp_path))  # what the dotted name needs: the folder above the package
    for name in ("models", "byname"):
        assert import_registry_module(f"lenses_relative.{name}", "models").tiny(num_classes=3).in_features == 4


OWN_DATASETS = '''
from phd_lab.data import make_bundle
from phd_lab.datasets.digits import digits_tensors


def Shifted(*, batch_size, resolution, data_dir, seed, num_workers, shift: float = 0.0):
    """Digits plus a constant."""
    train, test = digits_tensors(resolution)
    train.tensors = (train.tensors[0] + shift, train.tensors[1])
    return make_bundle("Shifted", train, test, train, num_classes=10, in_channels=1, resolution=resolution,
                       batch_size=batch_size, seed=seed, num_workers=num_workers)


def _look(data_dir):
    """A check_data without the contract's **dataset_args."""
    return None


def _look_at_all(data_dir, **dataset_args):
    return None


Shifted.check_data = _look
'''


def test_a_check_data_that_cannot_take_the_dataset_args_is_named_with_its_contract(tmp_path, capsys):
    """A dataset factory's check_data(data_dir) without **dataset_args ended the grid check, a dry run's too, with
    a TypeError traceback and exit 1. It is exit 2 now, naming the dataset, its file and the contract, before any
    run folder; with the contract's signature the same config trains."""
    registry = tmp_path / "my_datasets.py"
    registry.write_text(OWN_DATASETS)
    config = write_config(tmp_path, dataset="Shifted", dataset_args={"shift": 0.5}, epoch=1, resolution=8,
                          track_saturation=False, registries={"datasets": str(registry)})
    for dry_run in (["--dry-run"], []):
        assert main_cli(["--config", str(config), "--no-progress", "-q", *dry_run]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "the check_data of the dataset factory 'Shifted' of " in err and str(registry) in err
        assert "unexpected keyword argument 'shift'" in err and "check_data(data_dir, **dataset_args)" in err
        assert "Traceback" not in err
        assert not (tmp_path / "logs").exists() or not run_folders(tmp_path / "logs")
    registry.write_text(OWN_DATASETS.replace("Shifted.check_data = _look", "Shifted.check_data = _look_at_all"))
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert len(run_folders(tmp_path / "logs")) == 1



def test_a_check_data_that_raises_anything_but_a_data_error_is_named_without_a_traceback(tmp_path, capsys):
    """A check_data that failed with an error of its own (a KeyError of a dict it looks up) ended the grid check, a
    dry run's too, with that traceback and exit 1; a fault of the registry's code is a usage error (exit 2) that
    names the dataset, its file and the error, before any run folder."""
    registry = tmp_path / "my_datasets.py"
    registry.write_text(OWN_DATASETS.replace("Shifted.check_data = _look", "def _look_it_up(data_dir, **args):\n"
                                             "    return {}['split']\n\n\nShifted.check_data = _look_it_up"))
    config = write_config(tmp_path, dataset="Shifted", epoch=1, resolution=8, track_saturation=False,
                          registries={"datasets": str(registry)})
    for dry_run in (["--dry-run"], []):
        assert main_cli(["--config", str(config), "--no-progress", "-q", *dry_run]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"the check_data of the dataset factory 'Shifted' of '{registry}' failed with KeyError: 'split'" in err
        assert "Traceback" not in err
        assert not (tmp_path / "logs").exists() or not run_folders(tmp_path / "logs")

COLUMN_METRICS = '''
from phd_lab.metrics import TopKAccuracy


def Loss():
    """Accuracy under the name of the loss."""
    return TopKAccuracy(1)


def Saturation_Mean():
    return TopKAccuracy(1)


def Hits():
    return TopKAccuracy(1)


def hits():
    return TopKAccuracy(1)
'''


@pytest.mark.parametrize(("metrics", "said"), [
    (["Loss"], "The metric 'Loss' of key 'metrics' would write its values into the columns train_loss and test_loss"),
    (["Saturation_Mean"], "would write its values into the columns train_saturation_mean and test_saturation_mean"),
    (["Hits", "hits"], "The metrics 'Hits', 'hits' of key 'metrics' differ only in letter case")])
def test_a_metric_whose_columns_are_another_columns_is_refused_before_its_run_folder(tmp_path, capsys, metrics, said):
    """A metric's columns are train_<name> and test_<name>, lower-cased: one named Loss wrote its accuracy into the
    CSV's loss columns (exit 0), Saturation_Mean's values were overwritten by the saturation mean, and Hits and hits
    shared one column, each without a word. Refused up front (exit 2)."""
    (tmp_path / "my_metrics.py").write_text(COLUMN_METRICS)
    config = write_config(tmp_path, metrics=metrics, registries={"metrics": str(tmp_path / "my_metrics.py")},
                          resolution=8, epoch=1, batch_size=256, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert said in err and "Traceback" not in err, err
    assert not (tmp_path / "logs").exists() or not run_folders(tmp_path / "logs")
    config = write_config(tmp_path, metrics=["Hits"], registries={"metrics": str(tmp_path / "my_metrics.py")},
                          resolution=8, epoch=1, batch_size=256, post_processing=[], track_saturation=False)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
