"""A researcher's own optimizer and metric factories: what the trainer steps and reads, and what it refuses."""

from __future__ import annotations

import textwrap

import pytest

from phd_lab.checkpoint import CheckpointStore
from phd_lab.cli import main_cli
from tests.conftest import run_folders, write_config
from tests.test_recovery import CrashAt, make_trainer

OWN_OPTIMIZERS = '''
import torch


def plateau(model, *, epochs, lr=0.01, mode="min"):
    """SGD, the rate halved whenever the test loss does not fall by half (ReduceLROnPlateau)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, patience=0, factor=0.5,
                                                                 threshold=0.5)


def lbfgs(model, *, epochs, lr=0.1):
    """LBFGS, whose step needs a closure."""
    return torch.optim.LBFGS(model.parameters(), lr=lr), None
'''


def own_config(tmp_path, optimizer, optimizer_args=None, **overrides):
    """A tiny Digits config (8 px) whose optimizer comes from OWN_OPTIMIZERS."""
    (tmp_path / "my_optimizers.py").write_text(textwrap.dedent(OWN_OPTIMIZERS))
    return write_config(tmp_path, optimizer=optimizer, optimizer_args=optimizer_args or {}, track_saturation=False,
                        resolution=8, batch_size=256,
                        registries={"optimizers": str(tmp_path / "my_optimizers.py")}, **overrides)


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
