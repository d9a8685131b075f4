"""Crash recovery: resume after an exception, damaged checkpoints, and the run-folder lock."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from phd_lab import atomic, environment
from phd_lab.callbacks import Callback
from phd_lab.checkpoint import CHECKPOINT_FORMAT, CheckpointStore, verify_checksums
from phd_lab.cli import main_cli
from phd_lab.errors import DataError, RunLockedError, UsageError
from phd_lab.experiment import Main
from phd_lab.lock import RunLock
from phd_lab.trainer import Trainer
from tests.conftest import (ROOT, checkpoint_state, file_size_limit, main_in_process, read_metrics, refused_flock,
                            run_folders, run_name, sigint_as_in_a_terminal, small_disk, write_config)
from tests.test_runs import assert_same_metrics, assert_same_weights, weights

# git's own setting that keeps it from looking up into phd-lab's checkout: a run then sees no git checkout and
# writes no <name>_git.diff, which in a checkout with uncommitted changes comes before its config and checkpoints
# and takes room (a test that sizes a limit or a disk by a run's files would depend on the developer's checkout)
OUTSIDE_GIT = {"GIT_CEILING_DIRECTORIES": str(ROOT)}


class CrashAt(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, bundle, epoch, row):
        if epoch == self.epoch:
            raise RuntimeError("simulated crash")


def make_trainer(config_path, tmp_path, callbacks=()):
    main = Main(progress=False)
    grid = main.load(config_path)
    executor = main.executors[0]
    cfg = executor.config
    from phd_lab.seeding import seed_everything
    seed_everything(cfg.seed)
    bundle = executor.build_data()
    seed_everything(cfg.seed)
    model = executor.build_model(bundle)
    optimizer, scheduler = executor.build_optimizer(model)
    metrics = {"accuracy": executor.registries.metrics.get("Accuracy")()}
    trainer = Trainer(model, optimizer, scheduler, metrics=metrics, epochs=cfg.epoch, device=torch.device("cpu"),
                      callbacks=list(callbacks), progress=False)
    return trainer, bundle, grid


def test_resume_after_crash_continues_at_next_epoch_bit_identically(tmp_path):
    config = write_config(tmp_path, epoch=4, optimizer="sgd", optimizer_args={"lr": 0.05, "step_size": 2})
    reference, bundle, _ = make_trainer(config, tmp_path)
    reference.fit(bundle, CheckpointStore(tmp_path / "ref.pt", tmp_path / "ref.prev.pt"))

    store = CheckpointStore(tmp_path / "run.pt", tmp_path / "run.prev.pt")
    crashing, bundle, _ = make_trainer(config, tmp_path, [CrashAt(3)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.fit(bundle, store)
    assert crashing.epochs_run == [1, 2]
    resumed, bundle, _ = make_trainer(config, tmp_path)
    resumed.fit(bundle, store)
    assert resumed.epochs_run == [3, 4]
    assert resumed.scheduler.last_epoch == 4
    assert_same_weights(reference.model.state_dict(), resumed.model.state_dict())
    for ref_row, row in zip(reference.history, resumed.history):
        assert {k: v for k, v in ref_row.items() if k != "epoch_seconds"} == \
               {k: v for k, v in row.items() if k != "epoch_seconds"}


class Tally(Callback):
    """A callback with state of its own (a running total) that draws from python's and numpy's global generators,
    as a user's schedule or augmentation might; it writes both into the epoch's row."""

    def __init__(self) -> None:
        self.total = 0.0

    def on_epoch_end(self, trainer, bundle, epoch, row):
        self.total += row["train_loss"]
        row.update(train_loss_total=self.total, python_draw=random.random(), numpy_draw=float(np.random.random()))

    def state_dict(self):
        return {"total": self.total}

    def load_state_dict(self, state):
        self.total = state["total"]


def test_a_resume_restores_the_callbacks_state_and_the_python_and_numpy_generators(tmp_path):
    """The checkpoint carries each callback's state_dict and python's and numpy's random states: the resumed
    epochs go on with the total and the draws the uninterrupted run has, not from a fresh callback or the seed."""
    config = write_config(tmp_path, epoch=3, track_saturation=False)
    reference, bundle, _ = make_trainer(config, tmp_path, [Tally()])
    reference.fit(bundle, CheckpointStore(tmp_path / "ref.pt", tmp_path / "ref.prev.pt"))
    store = CheckpointStore(tmp_path / "run.pt", tmp_path / "run.prev.pt")
    crashing, bundle, _ = make_trainer(config, tmp_path, [Tally(), CrashAt(2)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.fit(bundle, store)
    resumed, bundle, _ = make_trainer(config, tmp_path, [Tally()])
    resumed.fit(bundle, store)
    assert resumed.epochs_run == [2, 3]
    columns = ["train_loss", "train_loss_total", "python_draw", "numpy_draw"]
    assert [[row[c] for c in columns] for row in resumed.history] == \
        [[row[c] for c in columns] for row in reference.history]
    assert len({row["python_draw"] for row in reference.history}) == 3


def test_a_resume_goes_on_with_the_loss_scale_of_the_checkpoint():
    """Mixed precision (on CUDA) keeps a loss scale that is halved after each step whose gradients overflowed; a
    resume goes on with the checkpoint's scale, not the initial 65,536, which would skip the steps again that the
    uninterrupted run took. A CPU GradScaler stands in for the CUDA one (the same state and rules)."""
    from torch.utils.data import TensorDataset

    from phd_lab.data import make_bundle
    samples = TensorDataset(torch.ones(4, 2), torch.zeros(4, dtype=torch.long))
    bundle = make_bundle("ones", samples, samples, samples, num_classes=2, in_channels=1, resolution=1, batch_size=2,
                         seed=0, num_workers=0)

    def trainer() -> Trainer:
        model = torch.nn.Linear(2, 2)
        made = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), None, metrics={}, epochs=2,
                       device=torch.device("cpu"), progress=False)
        made.scaler = torch.amp.GradScaler("cpu")
        return made

    trained = trainer()
    for _ in range(2):  # two steps whose scaled gradients overflow: skipped, and the scale halved each time
        loss = trained.model(torch.ones(1, 2)).sum() * float("inf")
        trained.scaler.scale(loss).backward()
        trained.scaler.step(trained.optimizer)
        trained.scaler.update()
    assert trained.scaler.get_scale() == 2.0**16 * 0.5 * 0.5
    resumed = trainer()
    resumed.load_state_dict(trained.state_dict(bundle), bundle)
    assert resumed.scaler.get_scale() == 2.0**14


def test_a_checkpoint_with_more_epochs_than_the_config_asks_for_is_refused(tmp_path):
    """A config asking for fewer epochs than its checkpoint holds must not pass the longer run off as its own
    (one epoch more is the case next to the limit); the checkpoint stays as it was."""
    store = CheckpointStore(tmp_path / "run.pt", tmp_path / "run.prev.pt")
    longer, bundle, _ = make_trainer(write_config(tmp_path, epoch=2, track_saturation=False), tmp_path)
    longer.fit(bundle, store)
    before = (tmp_path / "run.pt").read_bytes()
    shorter, bundle, _ = make_trainer(write_config(tmp_path, name="short.json", epoch=1, track_saturation=False),
                                      tmp_path)
    with pytest.raises(UsageError, match=r"has 2 completed epochs, but the config asks for 1\. Use a new run id"):
        shorter.fit(bundle, store)
    assert shorter.epochs_run == [] and (tmp_path / "run.pt").read_bytes() == before


def test_damaged_checkpoint_falls_back_to_previous_and_ends_identical(tmp_path):
    config = write_config(tmp_path, epoch=3)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    name = run_name(folder)
    expected_weights, expected_metrics = weights(folder), read_metrics(folder)
    checkpoint = folder / f"{name}.pt"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 3])  # a torn write
    assert main_cli(["--config", str(config), "--no-progress"]) == 0
    log_text = (folder / f"{name}.log").read_text()
    assert "is damaged" in log_text and "falling back to the previous one" in log_text
    assert "Resuming run" in log_text and "after epoch 2 of 3" in log_text
    assert_same_weights(expected_weights, weights(folder))
    assert_same_metrics(expected_metrics, read_metrics(folder))
    # the torn file was set aside, not kept as the fallback generation
    assert (folder / f"{name}.pt.damaged").read_bytes() == data[: len(data) // 3]
    torch.load(folder / f"{name}.previous.pt", weights_only=True)


def test_a_checkpoint_with_one_flipped_byte_is_damaged_for_the_resume_and_the_dry_run(tmp_path, capsys):
    """torch.load does not check the zip members' CRC-32: a checkpoint with one flipped byte in a tensor loaded
    silently (an optimizer moment off in one element), and --dry-run showed nothing wrong either."""
    config = write_config(tmp_path, epoch=3, cpu_threads=1, track_saturation=False)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    name = run_name(folder)
    expected_weights, expected_metrics = weights(folder), read_metrics(folder)
    checkpoint = folder / f"{name}.pt"
    data = bytearray(checkpoint.read_bytes())
    with zipfile.ZipFile(checkpoint) as archive:  # the middle of the largest tensor's stored bytes
        member = max(archive.infolist(), key=lambda info: info.file_size)
        with open(checkpoint, "rb") as handle:
            handle.seek(member.header_offset + 26)
            skip = int.from_bytes(handle.read(2), "little") + int.from_bytes(handle.read(2), "little")
        position = member.header_offset + 30 + skip + member.file_size // 2
    data[position] ^= 0x04
    checkpoint.write_bytes(bytes(data))
    torch.load(checkpoint, weights_only=True)  # what the old code did: no complaint

    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    listing = " ".join(capsys.readouterr().out.split())
    assert f"finished; {name}.pt is damaged: the next run goes back to {name}.previous.pt and trains" in listing
    assert main_cli(["--config", str(config), "--no-progress"]) == 0
    log_text = (folder / f"{name}.log").read_text()
    assert "is damaged (BadZipFile: the data of" in log_text and "does not match its CRC-32 checksum" in log_text
    assert "after epoch 2 of 3" in log_text
    assert_same_weights(expected_weights, weights(folder))
    assert_same_metrics(expected_metrics, read_metrics(folder))
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    assert "damaged" not in capsys.readouterr().out


def test_a_kill_between_the_two_renames_of_a_save_is_completed_on_load(tmp_path):
    """save() renames current → previous, then next → current; a kill in between left no <name>.pt for good."""
    store = CheckpointStore(tmp_path / "run.pt", tmp_path / "run.previous.pt")
    store.save(checkpoint_state(1))
    store.save(checkpoint_state(2))
    (tmp_path / "run.pt").replace(tmp_path / "run.previous.pt")  # the first rename of a third save ...
    # ... whose staged file is whole
    torch.save({"format": CHECKPOINT_FORMAT, **checkpoint_state(3)}, tmp_path / "run.pt.next")
    state = CheckpointStore(tmp_path / "run.pt", tmp_path / "run.previous.pt").load()
    assert state["epoch"] == 3
    assert not (tmp_path / "run.pt.next").exists()
    assert torch.load(tmp_path / "run.pt", weights_only=True)["epoch"] == 3


def test_peek_reads_the_generation_that_load_resumes_from_after_a_kill_between_the_renames(tmp_path):
    """With <name>.pt gone and the staged file whole (a kill between the two renames of a save), load() resumes from
    the staged checkpoint; peek(), which the setup warnings and the status read, names that one's epochs too, not
    those of the previous checkpoint (one epoch fewer: 'epochs still to train' for a finished run)."""
    store = CheckpointStore(tmp_path / "run.pt", tmp_path / "run.previous.pt")
    store.save(checkpoint_state(1))
    store.save(checkpoint_state(2))
    (tmp_path / "run.pt").replace(tmp_path / "run.previous.pt")
    torch.save({"format": CHECKPOINT_FORMAT, **checkpoint_state(3)}, tmp_path / "run.pt.next")
    assert store.peek("epoch") == 3
    assert CheckpointStore(tmp_path / "run.pt", tmp_path / "run.previous.pt").load()["epoch"] == 3


def _flip_a_tensor_byte(path: Path) -> None:
    """Flip one byte inside the data of the checkpoint's largest tensor: the archive stays whole, its CRC-32 fails."""
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    data[member.header_offset + 30 + len(member.filename.encode()) + len(member.extra) + member.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "no metric rows"])
def test_peek_passes_over_a_damaged_current_checkpoint_as_load_does(tmp_path, damage):
    """peek() read the current checkpoint without its checksums and entries, which load() checks before it goes
    back to the previous one: with a byte of the newest checkpoint flipped (or its metric rows gone), the room
    check, the setup warning and the dry run's status counted 2 epochs trained where the resume trains the
    second again."""
    store = CheckpointStore(tmp_path / "run.pt", tmp_path / "run.previous.pt")
    store.save(checkpoint_state(1, model={"w": torch.arange(4096.0)}))
    store.save(checkpoint_state(2, model={"w": torch.arange(4096.0) * 2}))
    if damage == "flipped byte":
        _flip_a_tensor_byte(store.path)
    elif damage == "truncated":
        store.path.write_bytes(store.path.read_bytes()[: store.path.stat().st_size // 2])
    else:
        torch.save({"format": CHECKPOINT_FORMAT, **checkpoint_state(2), "history": []}, store.path)
    assert store.peek_epochs() == 1
    assert torch.equal(store.peek("model")["w"], torch.arange(4096.0))
    assert CheckpointStore(store.path, store.previous).load()["epoch"] == 1


def _bytes_read() -> int:
    """The bytes this process has read by read() calls so far (Linux' /proc/self/io)."""
    return int(re.search(r"^rchar: (\d+)$", Path("/proc/self/io").read_text(), re.M).group(1))


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="reads Linux' per-process I/O counters")
def test_peek_reads_an_unchanged_checkpoint_once_and_a_changed_one_again(tmp_path):
    """Since peek checks the checksums, a rerun of a finished grid read every run's checkpoint four times (three
    peeks and the load: 17 % more CPU for 20 runs of VGG11); an unchanged file is read once, and one written since
    (a flipped byte) is checked again and passed over."""
    store = CheckpointStore(tmp_path / "run.pt", tmp_path / "run.previous.pt")
    store.save(checkpoint_state(1, model={"w": torch.arange(4096.0)}))
    store.save(checkpoint_state(2, model={"w": torch.arange(1 << 20, dtype=torch.float32)}))
    old = time.time() - 60  # a file saved in an earlier command
    for path in (store.path, store.previous):
        os.utime(path, (old, old))
    size = store.path.stat().st_size
    before = _bytes_read()
    assert [store.peek_epochs() for _ in range(3)] == [2, 2, 2]
    assert size <= _bytes_read() - before < 1.5 * size
    _flip_a_tensor_byte(store.path)
    assert store.peek_epochs() == 1
    assert CheckpointStore(store.path, store.previous).load()["epoch"] == 1


def test_an_unchanged_checkpoint_is_unpickled_once_by_the_peeks_of_a_status_and_a_rerun(tmp_path, monkeypatch):
    """A finished grid point's dry-run status unpickled its checkpoint twice (the damage check, the extract step's
    fingerprint) and its rerun four times before the load, at about 0.1 ms per tensor (torch's weights-only
    unpickler) however small: half the time of a dry run over 320 trained runs. An unchanged settled file is now
    unpickled once for all of them (the load, which needs real tensors, reads it itself); one written since (a
    flipped byte, a new save) is read again, so damage is still found."""
    import phd_lab.checkpoint as checkpoint
    from phd_lab.checkpoint import misfit
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    store = CheckpointStore(tmp_path / "run.pt", tmp_path / "run.previous.pt")
    store.save(checkpoint_state(1, model=model.state_dict(), optimizer=optimizer.state_dict()))
    store.save(checkpoint_state(2, model=model.state_dict(), optimizer=optimizer.state_dict()))
    old = time.time() - 60  # a file saved in an earlier command
    for path in (store.path, store.previous):
        os.utime(path, (old, old))
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args[0]) or real_load(*args, **kwargs))
    assert not store.current_is_damaged()
    assert [store.peek_epochs(), store.peek("format"), misfit(store, model, optimizer)] == [2, CHECKPOINT_FORMAT, None]
    assert torch.equal(store.peek("model")["weight"], model.weight.detach())
    assert loads == [store.path]
    assert CheckpointStore(store.path, store.previous).load()["epoch"] == 2  # the load reads the file itself
    assert loads == [store.path] * 2
    _flip_a_tensor_byte(store.path)  # written since: found damaged, the previous generation peeked at instead
    assert store.current_is_damaged() and store.peek_epochs() == 1
    assert loads[2:] == [store.previous]
    for number in range(3, 3 + checkpoint._PEEKED_KEPT + 2):  # other runs' checkpoints: a few states are kept
        other = CheckpointStore(tmp_path / f"run{number}.pt", tmp_path / f"run{number}.previous.pt")
        other.save(checkpoint_state(number))
        os.utime(other.path, (old, old))
        assert other.peek_epochs() == number
    assert len(checkpoint._PEEKED) == checkpoint._PEEKED_KEPT


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="reads Linux' per-process I/O counters")
def test_a_checkpoint_modified_within_a_fat_time_tick_is_read_again(tmp_path):
    """A checkpoint whose checksums passed was not read again while its inode, size and times held, once its
    modification time was over 1 s old; FAT (a USB disk) keeps modification times in 2 s steps, so an in-place
    rewrite of the same size within the tick (a flipped byte) kept the modification time, and where the change time
    was no finer, the whole key: it passed as verified. A file modified 1.2 s before it was read is read again now."""
    path = tmp_path / "run.pt"
    torch.save(checkpoint_state(1, model={"w": torch.arange(1 << 18, dtype=torch.float32)}), path)
    recent = time.time_ns() - 1_200_000_000  # within FAT's 2 s, past the 1 s judged before
    os.utime(path, ns=(recent, recent))
    size = path.stat().st_size
    verify_checksums(path)
    before = _bytes_read()
    verify_checksums(path)
    assert _bytes_read() - before >= size


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="reads Linux' per-process I/O counters")
def test_a_checkpoint_s_age_is_read_on_the_file_system_s_clock_before_it_is_kept_as_verified(tmp_path, monkeypatch):
    """Whether a checkpoint was modified long enough ago to be kept as verified was read on this node's clock: one
    an hour ahead of the (shared) file system's took a checkpoint written a moment before for a settled one, and an
    in-place rewrite within its time tick passed as verified. Its age is read on the folder's clock now (the file
    system's times are real here, only this node's clock is moved); a file stamped an hour ahead is never kept."""
    path = tmp_path / "run.pt"
    torch.save(checkpoint_state(1, model={"w": torch.arange(1 << 18, dtype=torch.float32)}), path)
    size = path.stat().st_size
    real_ns, real_s = time.time_ns, time.time
    with monkeypatch.context() as clock:
        clock.setattr(time, "time_ns", lambda: real_ns() + 3600 * 10**9)  # this node runs an hour ahead
        clock.setattr(time, "time", lambda: real_s() + 3600)
        verify_checksums(path)
        before = _bytes_read()
        verify_checksums(path)
        assert _bytes_read() - before >= size
    ahead = time.time_ns() + 3600 * 10**9  # stamped by a node whose clock runs ahead of the file system's
    os.utime(path, ns=(ahead, ahead))
    verify_checksums(path)
    before = _bytes_read()
    verify_checksums(path)
    assert _bytes_read() - before >= size
    settled = time.time_ns() - 60 * 10**9  # and one written a minute ago is kept, read once
    os.utime(path, ns=(settled, settled))
    verify_checksums(path)
    before = _bytes_read()
    verify_checksums(path)
    assert _bytes_read() - before < size


def test_a_folder_where_the_checkpoint_goes_is_named_not_renamed_as_a_damaged_checkpoint(tmp_path):
    """A folder at <name>.pt was taken for a damaged checkpoint: the run went back to the previous one, trained the
    last epoch again and renamed the folder, with the user's files in it, to <name>.pt.damaged. It is named with
    what to do now, and stays as it is; peek and the dry run's status do not count it as a damaged checkpoint."""
    from phd_lab.errors import FolderInTheWay
    store = CheckpointStore(tmp_path / "run.pt", tmp_path / "run.previous.pt")
    store.save(checkpoint_state(1))
    store.save(checkpoint_state(2))
    store.path.unlink()
    store.path.mkdir()
    (store.path / "notes.txt").write_text("mine")
    with pytest.raises(FolderInTheWay, match="run.pt' is a folder, but phd-lab writes a file of that name"):
        store.load()
    assert store.peek_state() == {} and not store.current_is_damaged()
    assert (store.path / "notes.txt").read_text() == "mine" and not (tmp_path / "run.pt.damaged").exists()


def test_every_checkpoint_damaged_is_a_clear_failure(tmp_path, capsys):
    config = write_config(tmp_path, epoch=2)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    for checkpoint in folder.glob("*.pt"):
        checkpoint.write_bytes(b"garbage")
    assert main_cli(["--config", str(config), "--no-progress"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "Every checkpoint in" in err and "Delete them to retrain" in err


def test_checkpoint_of_another_format_is_refused(tmp_path):
    """Refused saying what to do; another program's file (no 'format' entry) was said to be of 'checkpoint format
    'list'' or 'None' (Python's words for a type and a missing value), as if it were a phd-lab checkpoint."""
    store = CheckpointStore(tmp_path / "c.pt", tmp_path / "p.pt")
    torch.save({"format": 99, "epoch": 1}, tmp_path / "c.pt")
    from phd_lab.errors import CheckpointError
    with pytest.raises(CheckpointError, match="has format 99, and this version of phd-lab reads format 1. Resume "
                                              "the run with the phd-lab version that wrote it, or move the run "
                                              "folder away to train the run anew"):
        store.load()
    for content, held in ((["weights"], "a list"), ({"epoch": 1}, "an object without a 'format' entry")):
        torch.save(content, tmp_path / "c.pt")
        with pytest.raises(CheckpointError) as refused:
            store.load()
        assert str(refused.value) == (f"The checkpoint {str(tmp_path / 'c.pt')!r} is no phd-lab checkpoint: it "
                                      f"holds {held} (written by another program?). Put the run's own checkpoint "
                                      f"back, or move the run folder away to train the run anew.")


def test_a_checkpoint_whose_entries_are_missing_or_of_another_type_is_damaged_not_a_traceback(tmp_path, capsys):
    """A checkpoint that passes its checksums and says format 1 but lacks an entry a resume reads, or holds one of
    another type (written by another program, or edited), failed the run with 'KeyError: 'epoch'' or 'TypeError:
    '>' not supported between instances of 'str' and 'int'', naming no file. It is damaged like a cut one: the
    warning names it and what is wrong, the run resumes from the previous checkpoint (retraining its last epoch),
    and with no good generation left the run fails naming every one. --dry-run, which checked the checksums
    only, listed such a run as 'finished'; it names the checkpoint damaged as the resume will find it."""
    config = write_config(tmp_path, epoch=2, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    name = run_name(folder)
    current, previous = folder / f"{name}.pt", folder / f"{name}.previous.pt"
    trained = weights(folder)
    good = torch.load(current, weights_only=True)
    gone = object()
    for change, said in (({"epoch": gone}, "it has no entry 'epoch'"),
                         ({"rng": gone}, "it has no entry 'rng'"),
                         ({"epoch": "2"}, "its entry 'epoch' is a str, not a count of epochs"),
                         ({"model": [1, 2]}, "its entry 'model' is a list, not a state dict"),
                         ({"history": good["history"][:1]}, "it says 2 completed epochs and holds 1 metric rows")):
        state = {k: v for k, v in {**good, **change}.items() if v is not gone}
        torch.save(state, current)
        capsys.readouterr()
        assert main_cli(["--config", str(config), "--dry-run"]) == 0
        listing = " ".join(capsys.readouterr().out.split())
        assert (f"finished; {name}.pt is damaged: the next run goes back to {name}.previous.pt and trains the "
                f"epochs after it again") in listing, (change, listing)
        assert main_cli(["--config", str(config), "--no-progress"]) == 0
        err = " ".join(capsys.readouterr().err.split())
        assert f"Checkpoint {current} is damaged (MalformedCheckpoint: {said}" in err, err
        assert "falling back to the previous one" in err and "Traceback" not in err
        assert_same_weights(weights(folder), trained)  # the last epoch trained again, bit-identically
    torch.save({**good, "rng": None}, current)
    torch.save({**good, "history": None}, previous)
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    listing = " ".join(capsys.readouterr().out.split())
    assert (f"finished; {name}.pt and {name}.previous.pt are both damaged: the next run stops with an error; delete "
            f"them to train the run again from the start") in listing, listing
    assert main_cli(["--config", str(config), "--no-progress"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "Every checkpoint in" in err and "MalformedCheckpoint" in err and "Traceback" not in err


class _OpensAFile:
    """Unpickled, it calls ``open(path, "w")``: the stand-in for any code a crafted checkpoint would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_a_checkpoint_whose_pickle_would_run_code_is_refused_without_running_it(tmp_path):
    """Loading reads plain data only (``weights_only``): a checkpoint is a pickle, and one copied from elsewhere
    must not run code when a run resumes from it, nor when the dry run or the model check peeks at it."""
    from phd_lab.errors import CheckpointError
    marker = tmp_path / "code-ran"
    store = CheckpointStore(tmp_path / "c.pt", tmp_path / "p.pt")
    torch.save({"format": CHECKPOINT_FORMAT, "epoch": 1, "model": _OpensAFile(marker)}, tmp_path / "c.pt")
    assert store.peek_state() == {} and store.peek("epoch") is None
    assert not marker.exists()
    with pytest.raises(CheckpointError) as refused:
        store.load()
    message = " ".join(str(refused.value).split())
    assert "c.pt: UnpicklingError" in message and "Delete them to retrain" in message
    assert not marker.exists()
    assert (tmp_path / "c.pt").exists()  # refused, not deleted


HOLD_LOCK = """
import sys, time
from pathlib import Path
from phd_lab.lock import RunLock
lock = RunLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def lock_held_elsewhere(lock: Path):
    """Another live process holds ``lock`` until the block ends (then it is killed with SIGKILL)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()


def test_second_process_on_same_run_folder_is_refused_until_owner_dies(tmp_path, capsys):
    config = write_config(tmp_path, epoch=1)
    main = Main(progress=False)
    main.load(config)
    rundir = main.executors[0].rundir.create()
    with lock_held_elsewhere(rundir.lock) as pid:
        assert main_cli(["--config", str(config), "--no-progress"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"in use by PID {pid}" in err and "taken over automatically" in err
        assert not rundir.config.exists()
    # the lock file is still there, but its owner is dead: the next run takes it over
    assert rundir.lock.exists()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert rundir.metrics_csv.exists()


HOLD_LOCK_WITH_CHILD = """
import os, sys, time
from pathlib import Path
from phd_lab.lock import RunLock
RunLock(Path(sys.argv[1])).acquire()
child = os.fork()  # like a DataLoader worker, which notices its parent's death only seconds later
if child == 0:
    # said by the child, so only once fork() has returned here, after the at-fork handlers ran (the
    # parent saying it raced them: on a busy machine the test could kill the parent first)
    print(os.getpid(), flush=True)
    time.sleep(60)
    os._exit(0)
time.sleep(120)
"""


def test_a_killed_owners_forked_children_do_not_keep_the_lock(tmp_path):
    lock_path = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK_WITH_CHILD, str(lock_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(RunLockedError):
            RunLock(lock_path).acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert Path(f"/proc/{child}").exists()  # the child lives on ...
        RunLock(lock_path).acquire().release()  # ... but the lock went with its owner
    finally:
        os.kill(child, signal.SIGKILL)


def test_the_lock_file_names_its_live_owner_only_and_a_released_lock_closes_nothing_in_later_children(tmp_path):
    """A killed owner's longer line is not left behind the new owner's, a released lock leaves the file empty
    (the report reads an owner line as a run in progress), and the descriptor a released lock had, reused by a
    file opened later, is not closed in a forked child (a DataLoader worker reading that file)."""
    lock_path = tmp_path / ".lock"
    lock_path.write_text("PID 4194303 on host a-killed-owner-s-machine-with-a-long-name.cluster.example.org\n")
    free = os.open(os.devnull, os.O_RDONLY)
    os.close(free)  # the lowest free descriptor: the lock's, and after its release the data file's
    lock = RunLock(lock_path).acquire()
    assert lock_path.read_text() == f"PID {os.getpid()} on host {socket.gethostname()}\n"
    descriptors = len(os.listdir("/proc/self/fd"))
    with pytest.raises(RunLockedError):  # another open file of the same lock (as another process's) is refused
        RunLock(lock_path).acquire()
    assert len(os.listdir("/proc/self/fd")) == descriptors  # ... without leaving a descriptor open per refusal
    lock.release()
    assert lock_path.read_text() == ""
    data = tmp_path / "data.bin"
    data.write_bytes(b"batch")
    fd = os.open(data, os.O_RDONLY)
    try:
        assert fd == free
        child = os.fork()
        if child == 0:  # the child: exit 0 when the file is still open and readable
            try:
                os._exit(0 if os.pread(fd, 5, 0) == b"batch" else 1)
            except BaseException:
                os._exit(1)
        assert os.waitpid(child, 0)[1] == 0
    finally:
        os.close(fd)


def test_a_lock_whose_owner_line_cannot_be_written_is_not_left_held(tmp_path):
    """A full disk after the flock succeeded (the owner line fails with EFBIG here): the descriptor is closed, so
    the folder is not "in use by unknown process" for the rest of this process (a Dask worker's: for ever)."""
    lock_path = tmp_path / ".lock"
    descriptors = len(os.listdir("/proc/self/fd"))
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    default = signal.getsignal(signal.SIGXFSZ)
    file_size_limit(0)()  # a write that starts at the limit fails (one that crosses it is cut short)
    try:
        with pytest.raises(DataError, match="could not be written"):
            RunLock(lock_path).acquire()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
        signal.signal(signal.SIGXFSZ, default)
    assert len(os.listdir("/proc/self/fd")) == descriptors
    RunLock(lock_path).acquire().release()  # the next try takes the lock


_LOCK_REFUSED = """
import os, sys
from pathlib import Path
from phd_lab.errors import DataError
from phd_lab.lock import RunLock, waiting_lock
folder = Path(sys.argv[1])
descriptors = len(os.listdir("/proc/self/fd"))
for take in (lambda: RunLock(folder / ".lock").acquire(),
             lambda: waiting_lock(folder / ".MNIST.download.lock").__enter__()) * 3:
    try:
        take()
    except (DataError, OSError) as error:
        print(error)
print(len(os.listdir("/proc/self/fd")) - descriptors, "descriptors left open")
"""


def test_a_lock_on_a_file_system_that_refuses_locks_is_said_and_leaves_no_descriptor_open(tmp_path):
    """A file system that refuses ``flock`` (here: every flock fails with ENOLCK, as on an NFS mount without its lock
    service) raised a bare "OSError: [Errno 37] No locks available" naming no file, and each try left the lock
    file's descriptor open (a Dask worker retrying runs for days ran out of them). The lock file and the cause are
    said in one paragraph now, and the descriptor is closed."""
    done = subprocess.run([sys.executable, "-c", _LOCK_REFUSED, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                          preexec_fn=refused_flock(errno.ENOLCK))
    if done.returncode == 99:
        pytest.skip("this machine does not let a process install a seccomp filter")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[-1] == "0 descriptors left open" and len(lines) == 7
    for line, name in zip(lines, [".lock", ".MNIST.download.lock"] * 3):
        assert line.startswith(f"The lock file {str(tmp_path / name)!r} could not be locked: the file system of its "
                               f"folder refused the lock (No locks available, ENOLCK); this file system does not "
                               f"support locks"), line


def test_a_run_whose_lock_cannot_be_unlocked_at_its_end_is_finished_not_failed(tmp_path):
    """The unlock at a run's end refused (ENOLCK: an NFS mount whose lock service went away during the run; a
    seccomp filter refuses flock(LOCK_UN) alone here): a run that had trained and written its results was reported
    "failed before its run log was opened (while building its data, model or optimizer)" with a traceback, exit 1,
    and its lock's descriptor stayed open. Now it is a warning naming the lock file; the run is finished, and the
    lock is let go by the close."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False)
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(config), "--no-progress"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)},
                          preexec_fn=refused_flock(errno.ENOLCK, fcntl.LOCK_UN))
    if done.returncode == 99:
        pytest.skip("this machine does not let a process install a seccomp filter")
    assert done.returncode == 0, done.stderr[-3000:]
    [folder] = run_folders(tmp_path / "logs")
    err = " ".join(done.stderr.split())
    assert (f"The lock file {folder / '.lock'} could not be emptied or unlocked (No locks available)" in err
            and "Traceback" not in err and " finished " in err), err
    assert len(read_metrics(folder)) == 1
    RunLock(folder / ".lock").acquire().release()  # not held by anyone


def test_a_lock_whose_owner_line_is_cut_short_is_not_held_with_half_a_line(tmp_path):
    """A write that crosses a file size limit (or fills the disk part-way) is cut short without an error: the lock
    was taken with an owner line of 10 bytes ('PID 12345 ', no host), and a second process was told the folder
    was in use by that fragment. The rest of the line is written too, or its failure said (EFBIG here) with the
    lock let go, as for a line that cannot be written at all. (A short write whose rest then succeeds cannot be
    made on demand on a local file system; the same loop writes it.)"""
    lock_path = tmp_path / ".lock"
    descriptors = len(os.listdir("/proc/self/fd"))
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    default = signal.getsignal(signal.SIGXFSZ)
    file_size_limit(10)()  # the owner line ("PID <pid> on host <host>") is longer: its first write stops at 10
    try:
        with pytest.raises(DataError, match=r"could not be written \(File too large\)"):
            RunLock(lock_path).acquire()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
        signal.signal(signal.SIGXFSZ, default)
    assert len(os.listdir("/proc/self/fd")) == descriptors
    with RunLock(lock_path):  # the next try takes the lock, with its whole owner line
        assert lock_path.read_text() == f"PID {os.getpid()} on host {socket.gethostname()}\n"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_permissions_of_any_new_file(tmp_path, umask):
    """mkstemp makes files 0600; atomic writes' results on a shared logs_dir must
    be readable as the umask allows, like any other new file (and the temp file must not stay)."""
    from phd_lab import atomic
    previous = os.umask(umask)
    try:
        atomic.write_text(tmp_path / "result.csv", "a,b\n1,2\n")
        with open(tmp_path / "plain.txt", "w") as handle:  # what the umask gives an ordinary file
            handle.write("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "result.csv").stat().st_mode) == 0o666 & ~umask
    plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "result.csv").stat().st_mode) == plain
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "result.csv"]


def test_written_files_get_what_a_folder_s_default_acl_gives_any_new_file(tmp_path):
    """A lab's project folder with a default ACL (group read) gives a new file 0640 whatever the umask; atomic
    writes chmod'ed their mkstemp file to 0666 & ~umask, which under a private umask 077 overrode the ACL: every
    result was 0600, unreadable by the group that a plain open() lets read it."""
    from phd_lab import atomic
    shared = tmp_path / "shared"
    shared.mkdir()
    everyone = 0xFFFFFFFF  # the id field of the entries that name no user or group
    entries = [(0x01, 0o6, everyone), (0x04, 0o4, everyone), (0x20, 0o0, everyone)]  # user::rw- group::r-- other::---
    try:
        os.setxattr(shared, "system.posix_acl_default",
                    struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries))
    except (OSError, AttributeError) as error:  # no ACLs on this file system or platform
        pytest.skip(f"no default ACL can be set here: {error}")
    previous = os.umask(0o077)
    try:
        atomic.write_text(shared / "result.csv", "a,b\n1,2\n")
        with open(shared / "plain.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(previous)
    plain = stat.S_IMODE((shared / "plain.txt").stat().st_mode)
    assert stat.S_IMODE((shared / "result.csv").stat().st_mode) == plain == 0o640


@pytest.mark.parametrize("umask", [0o002, 0o022])
def test_lock_files_get_the_permissions_of_any_new_file(tmp_path, umask):
    """A run folder's .lock and .probe.lock were made 0644 whatever the umask: under a group's umask 002 on a shared
    cluster every other file of the folder was 0664 but the locks not, so a colleague's probe job or resume could
    not open them for writing (PermissionError). They follow the umask now, like a plain open()."""
    previous = os.umask(umask)
    try:
        with RunLock(tmp_path / ".probe.lock"):
            pass
        with open(tmp_path / "plain.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(previous)
    plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert stat.S_IMODE((tmp_path / ".probe.lock").stat().st_mode) == plain == 0o666 & ~umask


def test_an_atomic_write_keeps_off_another_writers_temp_file_and_names_its_own_as_the_cleanup_finds_it(tmp_path,
                                                                                                      monkeypatch):
    """Another writer's temp file of the same name (its random characters drawn alike) is left whole: the write
    draws another name. Each temp file is named as the cleanup of a killed writer's temps finds them
    (``remove_stale_temps`` of one target: ".<target>." + 8 characters of [a-z0-9_] + ".tmp")."""
    from phd_lab import atomic
    drawn = iter("a" * 8)  # the first name drawn is the other writer's; then secrets' own draws
    monkeypatch.setattr(atomic.secrets, "choice", lambda characters: next(drawn, None) or random.choice(characters))
    other = tmp_path / ".result.csv.aaaaaaaa.tmp"
    other.write_text("another writer's")
    names = set()
    for row in range(20):
        with atomic.atomic_open(tmp_path / "result.csv", "w") as handle:
            handle.write(f"a\n{row}\n")
            names |= {path.name for path in tmp_path.glob(".result.csv.*.tmp")} - {other.name}
    assert other.read_text() == "another writer's" and (tmp_path / "result.csv").read_text() == "a\n19\n"
    assert len(names) == 20
    for name in names:  # as a killed writer would have left them, an hour ago
        (tmp_path / name).write_text("half")
        os.utime(tmp_path / name, (time.time() - 3600,) * 2)
    os.utime(other, (time.time() - 3600,) * 2)
    removed = atomic.remove_stale_temps(tmp_path, only="result.csv")
    assert sorted(path.name for path in removed) == sorted(names | {other.name})


def test_a_failed_atomic_write_leaves_the_previous_file_and_no_temp_file(tmp_path):
    """An error while the content is written, or a rename the file system refuses (a folder in the target's
    place), keeps the previous file as it was and removes the temp file at once, not only at the next start."""
    from phd_lab import atomic
    atomic.write_text(tmp_path / "result.csv", "old")
    with pytest.raises(ValueError, match="failed half-way"):
        with atomic.atomic_open(tmp_path / "result.csv", "w") as handle:
            handle.write("half")
            raise ValueError("failed half-way")
    (tmp_path / "plot.png").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic.write_bytes(tmp_path / "plot.png", b"png")
    assert (tmp_path / "result.csv").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "result.csv"]


@pytest.mark.parametrize("file", ["lock", "log"])
def test_a_folder_where_the_run_lock_or_log_goes_is_named_with_what_to_do(tmp_path, capsys, file):
    """A folder at the run folder's .lock stopped the run with "The run folder '...' cannot be written (Is a
    directory)", which did not say which of its files was in the way; one at its log file with an IsADirectoryError
    traceback and 'failed before its run log was opened (while building its data, model or optimizer)'. Now the
    folder is named, with what to do (exit 2: nothing was trained); once it is gone the same command trains."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False)
    main = Main(progress=False)
    main.load(config)
    rundir = main.executors[0].rundir
    in_the_way = getattr(rundir, file)
    in_the_way.mkdir(parents=True)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 2, err
    err = " ".join(err.split())
    assert f"'{in_the_way}' is a folder, but phd-lab writes a file of that name there" in err, err
    assert "Remove or rename that folder" in err and "Traceback" not in err and "while building" not in err
    assert not rundir.metrics_csv.exists()
    in_the_way.rmdir()
    assert main_in_process(capsys, "--config", str(config), "--no-progress", "-q")[0] == 0


def _make_socket(path: Path) -> None:
    """A unix socket at ``path``, bound from inside its folder: a whole tmp_path path is longer than a socket's
    address may be."""
    subprocess.run([sys.executable, "-c", f"import socket; socket.socket(socket.AF_UNIX).bind({path.name!r})"],
                   cwd=path.parent, check=True)


NOT_REGULAR = {"a FIFO (named pipe)": os.mkfifo, "a socket": _make_socket}


@pytest.mark.parametrize("what", NOT_REGULAR)
def test_a_fifo_at_the_run_lock_is_named_with_what_to_do_and_the_command_does_not_wait_on_it(tmp_path, capsys, what):
    """A FIFO at the run folder's .lock (mkfifo, by a user or a tool) stopped the run with "The run folder '...'
    cannot be written (Invalid argument)", its ftruncate's error, which said neither the file nor what it is; a
    socket there (which no process can open) with "... (No such device or address)". Now the lock file is named as
    what it is with what to do, the real command ends at once (exit 2: nothing trained, no wait for a writer at
    the pipe)."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False)
    main = Main(progress=False)
    main.load(config)
    rundir = main.executors[0].rundir
    rundir.root.mkdir(parents=True)
    NOT_REGULAR[what](rundir.lock)
    kind = stat.S_IFMT(os.lstat(rundir.lock).st_mode)
    code, err = main_in_process(capsys, "--config", str(config), "--no-progress", "-q")
    assert code == 2, err
    err = " ".join(err.split())
    assert (f"The lock file '{rundir.lock}' is {what}, not a regular file: phd-lab did not make it"
            in err), err
    assert f"Remove it (rm {rundir.lock}) and run the same command again" in err and "Traceback" not in err, err
    assert stat.S_IFMT(os.lstat(rundir.lock).st_mode) == kind and not rundir.metrics_csv.exists()


@pytest.mark.parametrize("what", NOT_REGULAR)
def test_a_fifo_at_a_download_lock_is_named_with_what_to_do(tmp_path, what):
    """A FIFO at a data_dir's download lock was opened and locked as if it were the lock file, with no word of it
    (and a socket there said only "No such device or address"); the download now stops before it starts, naming
    the lock file as what it is and the rm that clears it. Nothing serves the URL: it must not be fetched."""
    from phd_lab.datasets.download import download_and_extract
    root = tmp_path / "data"
    root.mkdir()
    NOT_REGULAR[what](root / ".woof.download.lock")
    with pytest.raises(DataError) as refused:
        download_and_extract("http://127.0.0.1:9/woof.tgz", root, "woof")
    lock = root / ".woof.download.lock"
    assert str(refused.value).startswith(f"The lock file '{lock}' is {what}, not a regular file"), refused.value
    assert f"Remove it (rm {lock})" in str(refused.value) and sorted(os.listdir(root)) == [lock.name]


def test_the_report_of_a_run_with_a_fifo_at_its_lock_does_not_wait_on_the_fifo(tmp_path, capsys):
    """The report reads a run's .lock to learn whether a live process holds it: a FIFO there (mkfifo) was opened for
    reading, which waits for a writer for ever, and `python -m phd_lab report` hung at 0 of the runs. Now a lock
    path that is no regular file is read as held by no one (RunLock refuses one), and the report is written."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False)
    assert main_in_process(capsys, "--config", str(config), "--no-progress", "-q")[0] == 0
    [folder] = run_folders(tmp_path / "logs")
    (folder / ".lock").unlink()
    os.mkfifo(folder / ".lock")
    out = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "phd_lab", "report", str(tmp_path / "logs"), "--out", str(out),
                           "--no-progress", "-q"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.is_file() and stat.S_ISFIFO(os.lstat(folder / ".lock").st_mode)


def test_a_full_disk_at_the_run_lock_is_named_with_the_lock_file_and_what_to_do(tmp_path):
    """A disk full to its last byte: the lock file is made, its owner line is refused (ENOSPC), and the run said
    "The run folder '...' cannot be written (No space left on device)" (a bare OSError to RunLock's other callers,
    the probe command's lock). Now the lock file is named, with storage_refusal's words for a full disk, and the
    descriptor is closed."""
    with small_disk(tmp_path / "disk", "64k") as disk:
        with contextlib.suppress(OSError):
            with open(disk / "filler", "wb") as filler:
                while True:
                    filler.write(b"x" * 4096)
                    filler.flush()
        descriptors = len(os.listdir("/proc/self/fd"))
        with pytest.raises(DataError) as refused:
            RunLock(disk / ".lock").acquire()
        assert str(refused.value).startswith(f"The lock file '{disk / '.lock'}' could not be written (No space left "
                                             f"on device): its disk is full: free space on it, then run the same "
                                             f"command again."), refused.value
        assert len(os.listdir("/proc/self/fd")) == descriptors
        (disk / "filler").unlink()
        RunLock(disk / ".lock").acquire().release()  # with room again, the lock is taken


def test_a_folder_where_a_run_writes_a_file_is_named_with_what_to_do_not_a_bare_is_a_directory(tmp_path, capsys):
    """A folder at the path of a file the framework writes (the metrics CSV, the latents' manifest.json,
    .steps.json, diverged.json, the probe table) failed the run with 'IsADirectoryError: [Errno 21] Is a directory:
    '.../.vgg11-Digits-r16-bs128-e1.csv.syqt0573.tmp' -> '...csv'', naming a temp file and no way out, and a
    traceback in the run's log. Now every write and removal of such a file says which folder is in the way and
    to remove or rename it (exit 1, the run and its log named); once it is gone the same command goes on."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=["extract"])
    main = Main(progress=False)
    main.load(config)
    rundir = main.executors[0].rundir
    metrics_csv, manifest = rundir.metrics_csv, rundir.root / "latents" / "manifest.json"
    for in_the_way in (metrics_csv, manifest):
        in_the_way.mkdir(parents=True)
        capsys.readouterr()
        assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 1
        err = " ".join(capsys.readouterr().err.split())
        assert (f"failed: FolderInTheWay: '{in_the_way}' is a folder, but phd-lab writes a file of that name there"
                in err), err
        assert "Remove or rename that folder" in err and f"Its log: {rundir.log}" in err
        assert "IsADirectoryError" not in err and "Traceback" not in err and ".tmp" not in err
        log_text = rundir.log.read_text()
        assert f"Run failed: '{in_the_way}' is a folder" in log_text and "Traceback" not in log_text
        in_the_way.rmdir()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert (rundir.root / "latents" / "manifest.json").is_file() and metrics_csv.is_file()

    from phd_lab import atomic
    from phd_lab.errors import FolderInTheWay
    (tmp_path / "diverged.json").mkdir()
    for write in (lambda: atomic.write_json(tmp_path / "diverged.json", {}),
                  lambda: atomic.remove(tmp_path / "diverged.json", missing_ok=True)):
        with pytest.raises(FolderInTheWay, match="diverged.json' is a folder.*Remove or rename that folder"):
            write()
    assert [p.name for p in tmp_path.glob("*.tmp")] == [] and (tmp_path / "diverged.json").is_dir()


def test_an_analysis_step_that_cannot_write_its_files_fails_the_run(tmp_path, capsys):
    """The analysis step took a write its folder refused (a folder at analysis.json, a full disk) for a report's
    refresh on the side: two warnings, and the run 'finished' with exit 0 without its analysis.json, where every
    other step fails the run (exit 1) naming the file. Its files are the step's result: it fails the same way, and
    once the folder is gone the same command writes them."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=["analysis"])
    main = Main(progress=False)
    main.load(config)
    rundir = main.executors[0].rundir
    rundir.analysis_json.mkdir(parents=True)
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert (f"failed: FolderInTheWay: '{rundir.analysis_json}' is a folder, but phd-lab writes a file of that name "
            f"there") in err and f"Its log: {rundir.log}" in err and "Traceback" not in err, err
    rundir.analysis_json.rmdir()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert json.loads(rundir.analysis_json.read_text())["run"]["status"]["state"] == "finished"


def test_an_atomic_write_syncs_the_file_before_its_rename_and_the_folder_after(tmp_path):
    """Durability across a power cut: the temp file's data reach the disk (fsync) before the rename makes it the
    target, and the folder's new entry after it. The system calls are traced with strace where it can run."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    command = [strace, "-qq", "-e", "trace=openat,fsync,rename,renameat,renameat2"]
    probe = subprocess.run([*command, "true"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:  # e.g. ptrace not permitted in a container
        pytest.skip(f"strace cannot trace here: {probe.stderr.strip()[-300:]}")
    target = tmp_path / "result.csv"
    script = f"from phd_lab import atomic; atomic.write_text({str(target)!r}, 'a,b\\n1,2\\n')"
    traced = subprocess.run([*command, sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert traced.returncode == 0 and target.read_text() == "a,b\n1,2\n", traced.stderr[-2000:]
    calls = traced.stderr.splitlines()

    def position(pattern: str, start: int = 0) -> tuple[int, str]:
        return next((i, line) for i, line in enumerate(calls) if i >= start and re.match(pattern, line))

    opened, line = position(rf'openat\(AT_FDCWD, "{re.escape(str(tmp_path))}/\.result\.csv\.\w+\.tmp", .*= (\d+)$')
    temp_fd = re.search(r"= (\d+)$", line).group(1)
    renamed, _ = position(rf'rename\w*\(.*"{re.escape(str(target))}".*= 0$', opened)
    assert any(re.match(rf"fsync\({temp_fd}\)\s+= 0", call) for call in calls[opened:renamed])
    folder_opened, line = position(rf'openat\(AT_FDCWD, "{re.escape(str(tmp_path))}", .*= (\d+)$', renamed)
    folder_fd = re.search(r"= (\d+)$", line).group(1)
    assert any(re.match(rf"fsync\({folder_fd}\)\s+= 0", call) for call in calls[folder_opened:])


TRACED_RUN = """
import json, sys
from pathlib import Path
from phd_lab.cli import main_cli
from phd_lab.probes.cli import probe_cli
from phd_lab.report.cli import main_report
config, logs = Path(sys.argv[1]), sys.argv[2]
assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
assert probe_cli(["--config", str(config), "-mp", "0", "--solver", "lbfgs", "--no-progress", "-q"]) == 0
assert main_report([logs, "-mp", "0", "--no-progress", "-q"]) == 0
"""
# mkstemp's temp file of atomic.atomic_open: ".<target>." + 8 random characters + ".tmp"
TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")
OPENED = re.compile(r'openat\((?P<dir>[^,]+), "(?P<path>(?:[^"\\]|\\.)*)", (?P<flags>[A-Z0-9_|]+)(?:, \d+)?\) = \d+$')
MOVED = re.compile(r'(?:rename|renameat2?|link|linkat)\((?:[^,"]+, )?"(?P<source>(?:[^"\\]|\\.)*)", '
                   r'(?:[^,"]+, )?"(?P<target>(?:[^"\\]|\\.)*)".*\) = 0$')
WRITING = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"}


def test_training_post_processing_probes_and_report_write_every_result_through_a_renamed_temp_file(tmp_path):
    """A crash must leave each result whole or absent. The atomic helpers are tested on their own above; this
    traces every file a real run creates or writes below logs_dir (training with post-processing, a probe job, a
    report) and finds each written under a temp name and renamed (or linked) onto its final name afterwards: a
    call site that wrote a result in place (pandas' to_csv on the final path) would leave a truncated file."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    command = [strace, "-ff", "-qq", "--seccomp-bpf", "-e", "trace=openat,rename,renameat,renameat2,link,linkat"]
    probe_out = ["-o", str(tmp_path / "probe")]  # -ff: one file per process, <name>.<pid>
    if subprocess.run([*command, *probe_out, "true"], capture_output=True, timeout=60).returncode != 0:
        command.remove("--seccomp-bpf")  # an older strace: every system call stops the process, slower
    probe = subprocess.run([*command, *probe_out, "true"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:  # e.g. ptrace not permitted in a container
        pytest.skip(f"strace cannot trace here: {probe.stderr.strip()[-300:]}")
    logs = tmp_path / "logs"
    config = write_config(tmp_path, epoch=2, resolution=8, batch_size=256,
                          model_args={"width": 0.0625, "batch_norm": False, "head": "linear"},
                          post_processing=["receptive_field", "flops", "extract", "analysis"])
    traces = tmp_path / "trace"
    traces.mkdir()
    run = subprocess.run([*command, "-o", str(traces / "call"), sys.executable, "-c", TRACED_RUN, str(config),
                          str(logs)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    [folder] = run_folders(logs)
    # what writes in place, and why that is safe
    in_place = {
        folder / ".lock": "RunLock (lock.py): flock locks an open file, so the lock needs one file for good; it "
                          "holds only the owner's PID for the message another process gets",
        folder / ".probe.lock": "the probe job's RunLock in the run folder, the same way",
        folder / f"{run_name(folder)}.log": "LogFile (log_file.py) appends records: a crash loses at most the "
                                            "last line, the earlier ones stay",
        folder / "probe.log": "the probe job's LogFile, appended the same way",
    }  # the latents' .npy files (npy_writer.RowWriter) are streamed into an atomic_open temp file and renamed
    written, moved, elsewhere = {}, set(), []
    for trace in traces.iterdir():
        for line in trace.read_text(encoding="utf-8", errors="replace").splitlines():
            if (opened := OPENED.match(line)) is not None:
                flags = set(opened["flags"].split("|"))
                if not flags & WRITING or "O_TMPFILE" in flags:  # a read; an unnamed file, gone when closed
                    continue
                path = opened["path"].encode().decode("unicode_escape")
                if not path.startswith("/"):
                    if opened["dir"] != "AT_FDCWD":
                        elsewhere.append(line)  # relative to a folder descriptor: not to be resolved here
                    continue
                if Path(path).is_relative_to(logs):
                    written.setdefault(Path(path), set()).update(flags)
            elif (renamed := MOVED.match(line)) is not None:
                moved.add(tuple(Path(p.encode().decode("unicode_escape")) for p in (renamed["source"],
                                                                                     renamed["target"])))
    assert not elsewhere
    in_place_seen = {path for path in written if path in in_place}
    assert in_place_seen == set(in_place)  # the run did take its locks and write its logs
    for path in (folder / f"{run_name(folder)}.log", folder / "probe.log"):
        assert "O_APPEND" in written[path] and "O_TRUNC" not in written[path]
    not_temp = sorted(str(path) for path in written if path not in in_place and not TEMP_NAME.fullmatch(path.name))
    assert not not_temp, f"written in place, not through a temp file: {not_temp}"
    unpublished = sorted(str(path) for path in written if path not in in_place
                         and (path, path.with_name(TEMP_NAME.fullmatch(path.name)["target"])) not in moved)
    assert not unpublished, f"temp files never renamed onto their final names: {unpublished}"
    results = {path.name for path in written if path not in in_place}
    assert len(results) > 40 and any(name.startswith(f".{run_name(folder)}.csv.") for name in results)


def test_a_start_removes_its_own_leftovers_but_not_the_temp_files_of_other_writers(tmp_path):
    """The probe job and the report write into a run folder without its lock: their temp file of
    the moment must survive a trainer starting there; the trainer's own leftovers go at once."""
    from phd_lab import atomic
    own = tmp_path / ".run-a.pt.next.x1.tmp"
    other_now = tmp_path / ".probe_performances.csv.x2.tmp"
    other_old = tmp_path / ".analysis.json.x3.tmp"
    for path in (own, other_now, other_old):
        path.write_text("partial")
    long_ago = time.time() - atomic.STALE_AFTER_SECONDS - 60
    os.utime(other_old, (long_ago, long_ago))
    removed = atomic.remove_stale_temps(tmp_path, owned_prefix="run-a")
    assert sorted(p.name for p in removed) == sorted([own.name, other_old.name])
    assert other_now.exists() and not own.exists() and not other_old.exists()


def test_a_temp_file_s_age_is_read_on_the_file_system_s_clock_not_this_node_s(tmp_path, monkeypatch):
    """A node whose clock ran 20 minutes ahead of the shared file system took another writer's temp file of the
    moment (a report's analysis.json, a probe job's cache entry) for a killed writer's and deleted it under that
    writer; one 20 minutes behind kept a killed writer's leftover. Both compare with the folder's own clock now."""
    from phd_lab import atomic
    from phd_lab.probes.cache import ResultCache
    live = tmp_path / ".analysis.json.abcd1234.tmp"
    left = tmp_path / ".analysis.png.abcd1234.tmp"
    cache = tmp_path / "cache"
    (cache / "ab").mkdir(parents=True)
    matrix = cache / "ab" / "ab12-0123456789abcdef.npy"  # a confusion matrix written now, its entry comes next
    for path in (live, left, matrix):
        path.write_text("partial")
    long_ago = time.time() - atomic.STALE_AFTER_SECONDS - 60
    os.utime(left, (long_ago, long_ago))
    real_time = time.time
    with monkeypatch.context() as clock:
        clock.setattr(time, "time", lambda: real_time() + 20 * 60)  # this node runs ahead
        assert atomic.remove_stale_temps(tmp_path) == [left]
        ResultCache(cache).remove_stale_temps()
    assert live.exists() and matrix.exists()
    left.write_text("partial")
    os.utime(left, (long_ago, long_ago))
    with monkeypatch.context() as clock:
        clock.setattr(time, "time", lambda: real_time() - 20 * 60)  # this node runs behind
        assert atomic.remove_stale_temps(tmp_path) == [left]


def test_a_json_file_read_as_an_object_is_none_unless_it_holds_one(tmp_path):
    """The one reader of manifests, previous analyses and probe settings: a file missing, not UTF-8, not JSON,
    nested too deep or holding no object is None (the readers treat it as absent), an object is returned."""
    from phd_lab import atomic
    contents = {"not_utf8": b"\xff{}", "not_json": b"{", "list": b"[1]", "deep": b"[" * 100_000, "object": b'{"a": 1}'}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    assert {name: atomic.read_json_object(tmp_path / name) for name in [*contents, "missing"]} == {
        "not_utf8": None, "not_json": None, "list": None, "deep": None, "object": {"a": 1}, "missing": None}


def test_a_rerun_removes_the_fresh_temp_files_of_its_killed_post_processing_steps(tmp_path):
    """Only main.py (holding the run lock) writes receptive_field.*, computational_info.*, projections.* and the
    steps' stamps (.steps.json): a temp file of theirs is a leftover at once, not only after 15 minutes; a probe
    job's may be live. (A kill while the stamps were written left ``..steps.json.<random>.tmp`` for 15 minutes.)"""
    config = write_config(tmp_path, epoch=1)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    leftovers = [folder / ".receptive_field.png.k1.tmp", folder / ".computational_info.json.k2.tmp",
                 folder / ".projections.csv.k3.tmp", folder / "..steps.json.k5.tmp"]
    live = folder / ".probe_performances.csv.k4.tmp"
    for path in (*leftovers, live):
        path.write_text("partial")
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert not any(path.exists() for path in leftovers) and live.exists()


def test_a_point_locked_by_another_process_does_not_stop_the_rest_of_the_grid(tmp_path, capsys):
    """Two commands sharing a grid: the one that finds a point in use skips it and trains the others."""
    config = write_config(tmp_path, epoch=1, seed=[1, 2])
    main = Main(progress=False)
    main.load(config)
    first = main.executors[0].rundir.create()
    with lock_held_elsewhere(first.lock) as pid:
        assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 1
        err = " ".join(capsys.readouterr().err.split())
        assert f"in use by PID {pid}" in err and "failed" not in err
        assert "1 of 2 run(s) are being run by another process and were not run here" in err
        assert main.executors[1].rundir.metrics_csv.exists() and not first.metrics_csv.exists()


def test_ctrl_c_during_training_exits_130_says_how_to_resume_and_the_rerun_resumes(tmp_path):
    """A real SIGINT after the first checkpoint: one line (no traceback), exit 130, and the rerun continues."""
    config = write_config(tmp_path, epoch=4, cpu_threads=1)
    process = subprocess.Popen([sys.executable, "main.py", "--config", str(config), "--no-progress", "-q"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=sigint_as_in_a_terminal)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "logs").rglob("*.csv")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "training continues after the last completed epoch" in err and "Traceback" not in err
    [folder] = run_folders(tmp_path / "logs")
    done = len(read_metrics(folder))
    assert 1 <= done < 4
    shortened = write_config(tmp_path, name="again.json", epoch=4, cpu_threads=1)
    assert main_cli(["--config", str(shortened), "--no-progress", "-q"]) == 0
    assert "Resuming run" in (folder / f"{run_name(folder)}.log").read_text()
    assert read_metrics(folder)["epoch"].tolist() == list(range(1, 5))



@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_a_checkpoint_write_keeps_the_epoch_that_had_finished(tmp_path, signum):
    """Ctrl-C or a batch system's SIGTERM while the checkpoint was written threw the write away, and with it the
    epoch just trained, although the message said training continues after the last completed epoch."""
    from phd_lab.checkpoint import PAUSE_ENV
    config = write_config(tmp_path, epoch=2, cpu_threads=1)
    process = subprocess.Popen([sys.executable, "main.py", "--config", str(config), "--no-progress", "-q"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, PAUSE_ENV: "1.5"}, preexec_fn=sigint_as_in_a_terminal)
    logs = tmp_path / "logs"
    deadline = time.monotonic() + 120
    while not list(logs.rglob(".*.pt.next.*.tmp")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signum)  # within the first checkpoint's write (it pauses 1.5 s half written)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err
    [folder] = run_folders(logs)
    assert len(read_metrics(folder)) == 1 and (folder / f"{run_name(folder)}.pt").is_file()
    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert "Resuming run" in (folder / f"{run_name(folder)}.log").read_text()
    assert read_metrics(folder)["epoch"].tolist() == [1, 2]


@pytest.mark.parametrize("how", ["deleted", "moved"])
def test_a_run_whose_folder_goes_away_while_it_trains_stops_without_re_creating_it(tmp_path, how):
    """Its next write re-created the folder without config and log, and a second process could lock the new
    folder and train the same run beside it; now the run stops at the next epoch end with exit 1."""
    config = write_config(tmp_path, epoch=40, cpu_threads=1)
    process = subprocess.Popen([sys.executable, "main.py", "--config", str(config), "--no-progress", "-q"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = tmp_path / "logs"
    deadline = time.monotonic() + 120
    while not list(logs.rglob("*.csv")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    [folder] = run_folders(logs)
    if how == "deleted":
        while folder.exists():  # a write in progress may add a file while the tree is removed
            shutil.rmtree(folder, ignore_errors=True)
    else:
        folder.rename(tmp_path / "moved")
    _, err = process.communicate(timeout=120)
    err = " ".join(err.split())
    assert process.returncode == 1, err
    assert f"{folder}' was deleted or moved while this process worked in it" in err
    assert "Its log" not in err and "Traceback" not in err  # the log went with the folder
    assert not folder.exists()
    if how == "moved":
        epochs = len(read_metrics(tmp_path / "moved"))
        assert 1 <= epochs < 40  # the moved folder is left as it was, with its finished epochs
        moved_log = (tmp_path / "moved" / f"{run_name(tmp_path / 'moved')}.log").read_text()
        assert "Run failed: The folder" in moved_log and "Traceback" not in moved_log  # its message, no trace


def test_writes_into_a_run_folder_that_went_away_do_not_re_create_it(tmp_path):
    """Between two checks of the lock, a write (checkpoint, CSV, plot) re-created a deleted run folder."""
    from phd_lab import atomic
    from phd_lab.errors import RunFolderLost
    from phd_lab.kept_folders import existing_folder, make_folder
    folder = tmp_path / "run"
    (folder / "sub").mkdir(parents=True)
    with existing_folder(folder):
        atomic.write_text(folder / "a.txt", "x")
        atomic.write_text(folder / "new" / "b.txt", "x")  # a subfolder is still created inside the folder
        shutil.rmtree(folder)
        for path in (folder / "a.txt", folder / "sub" / "c.txt"):
            with pytest.raises(RunFolderLost, match="was deleted or moved while this process worked in it"):
                atomic.write_text(path, "y")
        with pytest.raises(RunFolderLost):  # a folder made inside it (the extract step's latents folder)
            make_folder(folder / "latents")
        assert not folder.exists()
    folder.mkdir()
    with existing_folder(folder):
        with pytest.raises(RunFolderLost):  # gone while the file was being written
            with atomic.atomic_open(folder / "d.txt", "w") as handle:
                shutil.rmtree(folder)
                handle.write("z")
        assert not folder.exists()
    atomic.write_text(folder / "e.txt", "y")  # outside the block writes create their folders as before
    assert (folder / "e.txt").read_text() == "y"
    with existing_folder(folder):  # moved away, and another command made a new folder of that name
        folder.rename(tmp_path / "moved")
        folder.mkdir()
        with pytest.raises(RunFolderLost, match="another folder of that name took its place"):
            atomic.write_text(folder / "f.txt", "y")
        with pytest.raises(RunFolderLost, match="another folder of that name took its place"):
            make_folder(folder / "latents")
        shutil.rmtree(folder)
        with pytest.raises(RunFolderLost, match="it is gone"):  # a rename inside it (the checkpoint's)
            atomic.replace(folder / "checkpoint.pt.staged", folder / "checkpoint.pt")
        folder.mkdir()
    assert list(folder.iterdir()) == [] and (tmp_path / "moved" / "e.txt").exists()
    with existing_folder(folder):
        with existing_folder(folder):  # kept twice: the inner block's end leaves the outer one's keep
            pass
        shutil.rmtree(folder)
        with pytest.raises(RunFolderLost):
            atomic.write_text(folder / "h.txt", "y")
    folder.mkdir()
    from phd_lab.lock import RunLock
    with RunLock(folder / ".lock", "test") as lock, existing_folder(folder, lock=lock):
        # a folder deleted and made anew may get the old inode back; the held lock file's inode cannot be reused,
        # so the lock tells (here: the lock file alone is gone, and the folder's inode is the same)
        (folder / ".lock").unlink()
        with pytest.raises(RunFolderLost, match="its lock file .lock"):
            atomic.write_text(folder / "g.txt", "y")
    assert list(folder.iterdir()) == []


def test_a_lock_file_replaced_by_another_process_s_is_said_as_lost(tmp_path):
    """The folder deleted and made anew (its inode may come back) and locked by a second process: only the lock
    file tells that the name is another file now, and the run must not write on beside the second one."""
    from phd_lab.errors import RunFolderLost
    folder = tmp_path / "run"
    folder.mkdir()
    with RunLock(folder / ".lock") as lock:
        lock.check_held()
        (folder / ".lock").unlink()
        with RunLock(folder / ".lock"):  # another process's lock (another open file: flock treats it as such)
            with pytest.raises(RunFolderLost, match="its lock file .lock is another file now"):
                lock.check_held()


def test_a_forked_child_that_leaves_the_lock_s_block_releases_nothing_of_its_parent(tmp_path):
    """The child's copy of the lock descriptor was closed at the fork and its number may be reused: the child's
    release must neither truncate nor unlock the file that now has it, nor the parent's lock."""
    folder = tmp_path / "run"
    folder.mkdir()
    data = tmp_path / "data.bin"
    data.write_bytes(b"batch")
    with RunLock(folder / ".lock") as lock:
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            try:
                fd = os.open(data, os.O_RDWR)  # takes the number the lock's descriptor had in the parent
                lock.release()
                with pytest.raises(RunLockedError):  # the parent's lock is still held
                    RunLock(folder / ".lock").acquire()
                os._exit(0 if os.pread(fd, 5, 0) == b"batch" else 1)
            except BaseException:
                os._exit(1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        lock.check_held()
    assert data.read_bytes() == b"batch"


def test_a_kept_folder_whose_parent_became_a_file_is_said_as_lost(tmp_path):
    """stat() of a path through a file raises NotADirectoryError, which came out bare."""
    from phd_lab import atomic
    from phd_lab.errors import RunFolderLost
    from phd_lab.kept_folders import existing_folder
    folder = tmp_path / "logs" / "run"
    folder.mkdir(parents=True)
    with existing_folder(folder):
        shutil.rmtree(tmp_path / "logs")
        (tmp_path / "logs").write_text("not a folder")
        with pytest.raises(RunFolderLost, match="it is gone"):
            atomic.write_text(folder / "a.txt", "x")


def test_a_forked_child_writes_into_a_kept_folder_without_checking_the_parents_lock(tmp_path):
    """A forked child's copy of the lock descriptor is closed at the fork; checking it failed every write of the
    child (EBADF) or, with the number reused, could call a healthy folder lost."""
    from phd_lab import atomic
    from phd_lab.kept_folders import existing_folder
    from phd_lab.lock import RunLock
    folder = tmp_path / "run"
    folder.mkdir()
    with RunLock(folder / ".lock", "test") as lock, existing_folder(folder, lock=lock):
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            try:
                atomic.write_text(folder / "child.txt", "x")
                os._exit(0)
            except BaseException:
                os._exit(1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        atomic.write_text(folder / "parent.txt", "y")  # the parent still holds and checks its lock
    assert (folder / "child.txt").read_text() == "x" and (folder / "parent.txt").read_text() == "y"


def test_sigterm_during_training_is_said_in_the_log_and_the_rerun_resumes(tmp_path):
    """A batch system's time limit (SIGTERM) ended a run without a word in its log or on the console."""
    config = write_config(tmp_path, epoch=4, cpu_threads=1, track_saturation=False)
    process = subprocess.Popen([sys.executable, "main.py", "--config", str(config), "--no-progress", "-q"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "logs").rglob("*.csv")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "terminated (SIGTERM); rerun the same command to resume" in err and "Traceback" not in err
    [folder] = run_folders(tmp_path / "logs")
    assert "Run interrupted (SIGTERM)" in (folder / f"{run_name(folder)}.log").read_text()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert read_metrics(folder)["epoch"].tolist() == list(range(1, 5))


def test_a_read_error_of_the_file_system_sets_no_good_checkpoint_aside(tmp_path, monkeypatch):
    """EIO/ESTALE (NFS) or EACCES while reading says nothing about the file: the run must stop with a clear
    error and leave both generations alone, not resume from the older one and rename the good file
    '.damaged'. (No file system here fails on demand, so torch.load is made to fail as one would.)"""
    import errno

    from phd_lab import checkpoint as checkpoint_module
    from phd_lab.errors import CheckpointError
    store = CheckpointStore(tmp_path / "run.pt", tmp_path / "run.previous.pt")
    store.save(checkpoint_state(1))
    store.save(checkpoint_state(2))

    def unreadable(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(checkpoint_module.torch, "load", unreadable)
    with pytest.raises(CheckpointError, match="not a damaged file, so every checkpoint is left as it is"):
        CheckpointStore(tmp_path / "run.pt", tmp_path / "run.previous.pt").load()
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.previous.pt", "run.pt"]
    assert CheckpointStore(tmp_path / "run.pt", tmp_path / "run.previous.pt").load()["epoch"] == 2


_PEEK_AND_LOAD = """
import json, sys
from pathlib import Path
from phd_lab.checkpoint import CheckpointStore
from phd_lab.errors import CheckpointError
store = CheckpointStore(Path(sys.argv[1]), Path(sys.argv[2]))
peeked = {key: store.peek(key) for key in ("epoch", "cpu_threads")}
try:
    store.load()
    said = None
except CheckpointError as error:
    said = str(error)
print(json.dumps({"peeked": peeked, "said": said}))
"""


def test_a_checkpoint_the_file_system_will_not_read_says_nothing_of_the_run_before_the_load_stops(tmp_path):
    """A current checkpoint that cannot be read (permission 000) made the load stop, rightly, with 'Reading the
    checkpoint ... failed: PermissionError'; but the peek before it went back to the previous checkpoint, so a
    finished 2-epoch run rerun with ATEN_CPU_CAPABILITY=default also warned 'The epochs still to train run under
    another setup than the epochs before them', though nothing was to train and nothing trained. The peek now
    knows nothing where the load refuses. The suite runs as root, which reads any file, so the check runs in a
    process without the capabilities that let root read past permissions."""
    command = [sys.executable, "-c", _PEEK_AND_LOAD]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv, which could make a file unreadable to a process")
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *command]
    current, previous = tmp_path / "run.pt", tmp_path / "run.previous.pt"
    store = CheckpointStore(current, previous)
    store.save(checkpoint_state(1, cpu_threads=1))
    store.save(checkpoint_state(2, cpu_threads=2))
    current.chmod(0)
    try:
        result = subprocess.run([*command, str(current), str(previous)], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
    finally:
        current.chmod(0o644)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert "Reading the checkpoint" in found["said"] and "PermissionError" in found["said"], found
    assert found["peeked"] == {"epoch": None, "cpu_threads": None}, found
    assert CheckpointStore(current, previous).peek("epoch") == 2  # readable again: the current one


def test_resume_with_fewer_visible_gpus_restores_the_states_it_can(caplog):
    """A run checkpointed with two GPUs visible and rescheduled under CUDA_VISIBLE_DEVICES=0 could never
    resume (set_rng_state_all indexed a GPU that was no longer there)."""
    from phd_lab.seeding import restore_cuda_states
    states = [torch.full((4,), 1, dtype=torch.uint8), torch.full((4,), 2, dtype=torch.uint8)]
    restored: list[tuple[int, int]] = []
    restore_cuda_states(states, 1, lambda state, device: restored.append((device, int(state[0]))))
    assert restored == [(0, 1)] and "holds the random states of 2 GPUs and 1 are visible" in caplog.text
    restored.clear()
    restore_cuda_states(states, 4, lambda state, device: restored.append((device, int(state[0]))))
    assert restored == [(0, 1), (1, 2)]


def test_a_resume_keeps_the_thread_count_the_run_was_trained_with(tmp_path):
    """With cpu_threads null the logged config records the count in effect; a resume under another default
    (another node, a Dask worker's share of the cores) must continue with it to end bit-identically."""
    config = write_config(tmp_path, epoch=2, cpu_threads=None)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
        [folder] = run_folders(tmp_path / "logs")
        name = run_name(folder)
        expected = weights(folder)
        (folder / f"{name}.previous.pt").replace(folder / f"{name}.pt")  # as if killed during epoch 2
        torch.set_num_threads(2)
        assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
        assert torch.get_num_threads() == 2  # the process' own setting is given back
    finally:
        torch.set_num_threads(before)
    assert_same_weights(expected, weights(folder))
    log_text = (folder / f"{name}.log").read_text()
    assert "Continuing with the 1 CPU thread(s) this run was trained with" in log_text
    assert "Resuming run" in log_text and "after epoch 1 of 2" in log_text
    assert json.loads((folder / f"{name}_config.json").read_text())["cpu_threads"] == 1


def test_a_resume_with_another_cpu_threads_in_the_config_keeps_the_logged_count(tmp_path):
    """cpu_threads edited between a kill and the resume used to train the rest of the run with the new count:
    weights that neither count gives, under a logged config that kept the old one (so it no longer reproduced
    the run)."""
    config = write_config(tmp_path, epoch=2, cpu_threads=1)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    name = run_name(folder)
    expected = weights(folder)
    (folder / f"{name}.previous.pt").replace(folder / f"{name}.pt")  # as if killed during epoch 2
    edited = write_config(tmp_path, epoch=2, cpu_threads=2)
    assert main_cli(["--config", str(edited), "--no-progress", "-q"]) == 0
    assert_same_weights(expected, weights(folder))
    log_text = (folder / f"{name}.log").read_text()
    assert "Continuing with the 1 CPU thread(s) this run was trained with (cpu_threads: 2)" in log_text
    assert json.loads((folder / f"{name}_config.json").read_text())["cpu_threads"] == 1


def test_a_run_folder_that_cannot_be_written_is_said_in_one_line(tmp_path, capsys):
    """A read-only run folder failed at its lock file with a traceback and 'failed before its run log was opened
    (while building its data, model or optimizer)'. The suite runs as root, which writes anywhere, so the run
    folder is a read-only mount (a tmpfs remounted read-only; a socket at the lock path, used before, is named as
    such now, ``test_a_fifo_at_the_run_lock_is_named_with_what_to_do_and_the_command_does_not_wait_on_it``)."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False)
    main = Main(progress=False)
    main.load(config)
    folder = main.executors[0].rundir.root
    folder.mkdir(parents=True)
    with small_disk(folder, "64k"):
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        capsys.readouterr()
        assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"The run folder '{folder}' cannot be written (Read-only file system)" in err, err
        assert "Traceback" not in err and not os.listdir(folder)


def test_a_disk_that_fills_up_during_a_run_is_said_as_the_run_s_failure(tmp_path):
    """Files may grow to 256 bytes only (a full disk): the run's config write fails, and so does its log. The
    log handler's close raised a second OSError on flush, which replaced the first: the console said the run
    'failed before its run log was opened (while building its data, model or optimizer)'."""
    config = write_config(tmp_path, epoch=1, track_saturation=False)
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(config), "--no-progress"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit(256),
                            env={**os.environ, **OUTSIDE_GIT})
    assert result.returncode == 1, result.stderr
    assert "before its run log was opened" not in result.stderr and "--- Logging error ---" not in result.stderr
    assert "before a run log was opened" not in result.stderr, result.stderr  # nor the summary at the end
    assert ("1 of 1 run(s) failed. 1 of them failed into a run log that could not be written (a full disk or a file "
            "size limit); their tracebacks are above.") in " ".join(result.stderr.split())
    said = " ".join(result.stderr.split())
    [log] = (tmp_path / "logs").rglob("*.log")  # the run folder holds no config: the disk was full before
    # the log file's failure once, then the run's error with its traceback on the console, where it can be read
    assert said.count(f"The log file '{log}' cannot be written (File too large); it takes no more records") == 1
    assert re.search(rf"Run 0 \(\S+\) failed and its log '{re.escape(str(log))}' could not take the traceback: "
                     rf"OSError: \[Errno 27\] File too large: '{re.escape(str(log.parent))}/[^']+' Traceback "
                     rf"\(most recent call last\)", said), said  # the file that could not be written named


@contextlib.contextmanager
def outside_git(monkeypatch: pytest.MonkeyPatch):
    """Runs in this process see phd-lab as no git checkout for the block (``OUTSIDE_GIT``)."""
    def forget() -> None:
        environment._own_checkout.cache_clear()

    try:
        with monkeypatch.context() as patch:
            for name, value in OUTSIDE_GIT.items():
                patch.setenv(name, value)
            forget()
            assert environment.git_dirty() is None  # a git that ignored the setting: the test would depend again
            yield
    finally:
        forget()  # the checkout's own answers again for the tests after


def test_a_run_stopped_by_a_file_size_limit_says_the_cause_and_that_the_same_command_resumes(tmp_path, capsys,
                                                                                                monkeypatch):
    """Files may grow to 3,000 bytes only (``ulimit -f``): the logged config (over 4 kB) cannot be written. The
    console said only 'OSError: [Errno 27] File too large: <config>', neither that a limit of the process is
    at fault nor what to do; it now says both, and that the same command resumes the run. The run sees no git
    checkout: from one with uncommitted changes it wrote its <name>_git.diff before the config, a third file in
    the folder (or the file the limit stopped), and the test failed on a dirty checkout only."""
    config = write_config(tmp_path, epoch=1, track_saturation=False, post_processing=[])
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    with outside_git(monkeypatch):
        file_size_limit(3000)()
        try:
            code = main_cli(["--config", str(config), "--no-progress", "-q"])
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, before)
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    said = " ".join(capsys.readouterr().err.split())
    [log] = (tmp_path / "logs").rglob("*.log")
    assert code == 1 and "Traceback" not in said, said
    assert re.search(rf"OSError: \[Errno 27\] File too large: '{re.escape(str(log.parent))}/[^']+_config\.json'; "
                     rf"the file outgrew this process' file size limit \(`ulimit -f`, or the batch job's\): raise "
                     rf"or lift it, then run the same command again: it resumes the run where it stopped\. Its log: "
                     rf"{re.escape(str(log))}", said), said
    assert sorted(path.name for path in log.parent.iterdir()) == [".lock", log.name]  # no config, no temp file


def test_a_checkpoint_that_cannot_be_written_is_said_as_a_checkpoint_error_naming_its_file(tmp_path):
    """Files may grow to 200 kB only (a full disk): the checkpoint (about 540 kB) failed with torch's
    'RuntimeError: [enforce fail at inline_container.cc:672] ... unexpected pos', the OSError only its context."""
    config = write_config(tmp_path, epoch=1, track_saturation=False)
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(config), "--no-progress"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            preexec_fn=file_size_limit(200_000), env={**os.environ, **OUTSIDE_GIT})
    assert result.returncode == 1, result.stderr
    [folder] = run_folders(tmp_path / "logs")
    said = " ".join(result.stderr.split())
    assert (f"failed: CheckpointError: The checkpoint '{folder / run_name(folder)}.pt' could not be written "
            f"(File too large)") in said, result.stderr
    # the cause and its remedy: 'resumes from there once its disk has room' misled where a limit was at fault
    assert ("is kept; the file outgrew this process' file size limit (`ulimit -f`, or the batch job's): raise or "
            "lift it, then run the same command again: it resumes from there.") in said, said
    assert "once its disk has room" not in said
    assert "unexpected pos" not in result.stderr
    assert not [path.name for path in folder.iterdir() if ".pt" in path.name]  # no checkpoint, no temp file


def test_a_diverged_run_stops_with_its_epoch_named_and_the_rest_of_the_grid_runs(tmp_path, capsys):
    """A learning rate that makes the weights NaN trained every remaining epoch and post-processed a NaN model,
    then reported 'finished' with exit 0. Now the run stops after the epoch that diverged (its row and
    checkpoint kept), the other grid point still runs, the command exits 1, and a rerun stops again at once."""
    config = write_config(tmp_path, epoch=3, cpu_threads=1, optimizer="sgd", optimizer_args={"lr": [1e8, 0.01]},
                          post_processing=["receptive_field"])
    assert main_cli(["--config", str(config), "--no-progress"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "diverged in epoch 1 of 3: its weights are no longer finite (features.0.weight" in err
    assert "1 of 2 run(s) failed" in err and "Traceback" not in err
    assert "Try a smaller learning rate (optimizer_args)." in err and "mixed_precision" not in err  # CPU: no AMP
    diverged, healthy = (folder for folder in run_folders(tmp_path / "logs") if "lr100000000" in folder.name), \
        (folder for folder in run_folders(tmp_path / "logs") if "lr0.01" in folder.name)
    [diverged], [healthy] = list(diverged), list(healthy)
    metrics = read_metrics(diverged)
    assert metrics["epoch"].tolist() == [1] and metrics["test_loss"].isna().all()
    assert not (diverged / "receptive_field.csv").exists(), "a diverged model is not post-processed"
    assert (healthy / "receptive_field.csv").exists() and read_metrics(healthy)["epoch"].tolist() == [1, 2, 3]
    log_text = (diverged / f"{run_name(diverged)}.log").read_text()
    assert "Traceback" not in log_text and "intrinsic_dimension=nan" not in log_text
    assert "Run failed: Run" in log_text and "diverged in epoch 1 of 3" in log_text

    assert main_cli(["--config", str(config), "--no-progress", "--index", "0"]) == 1
    assert "diverged in epoch 1 of 3" in capsys.readouterr().err
    log_text = (diverged / f"{run_name(diverged)}.log").read_text()
    assert "after epoch 1 of 3" in log_text and " epoch 2/3" not in log_text, "the rerun must not train on"
    assert read_metrics(diverged)["epoch"].tolist() == [1]

    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "diverged in epoch 1 of 3" in listing and "finished" in listing


NAN_DATA = '''
import torch
from phd_lab.data import make_bundle


def with_nan(*, batch_size, resolution, data_dir, seed, num_workers):
    """Sample 5 holds a NaN pixel (sample 0, which the bundle check reads, is clean)."""
    images = torch.rand(16, 1, resolution, resolution)
    images[5, 0, 0, 0] = float("nan")
    data = torch.utils.data.TensorDataset(images, torch.arange(16) % 2)
    return make_bundle("with_nan", data, data, data, num_classes=2, in_channels=1, resolution=resolution,
                       batch_size=batch_size, seed=seed, num_workers=num_workers)
'''


def test_a_run_made_non_finite_by_its_data_says_so_rather_than_to_lower_the_learning_rate(tmp_path, capsys):
    """A NaN pixel in a dataset of one's own made the weights NaN in the first batch that held it, and the run was
    said to have diverged with the advice 'Try a smaller learning rate', which cannot help."""
    (tmp_path / "nan_data.py").write_text(NAN_DATA)
    config = write_config(tmp_path, epoch=1, cpu_threads=1, dataset="with_nan", resolution=4, batch_size=4,
                          registries={"datasets": "nan_data.py"}, optimizer_args={"lr": 0.001},
                          model="mlp", model_args={"input_side": 4, "units": [[4]]}, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "diverged in epoch 1 of 1" in err and "Traceback" not in err, err
    assert "held NaN or inf values itself: the data, not the learning rate" in err, err
    assert "smaller learning rate" not in err, err


def test_the_rerun_of_a_run_made_non_finite_by_its_data_still_says_so(tmp_path, capsys):
    """The rerun of such a run (a grid run again) stops at once, but said 'Try a smaller learning rate' and wrote that
    advice over the first attempt's into diverged.json: whether the data made the weights non-finite was not kept in
    the checkpoint."""
    (tmp_path / "nan_data.py").write_text(NAN_DATA)
    config = write_config(tmp_path, epoch=2, cpu_threads=1, dataset="with_nan", resolution=4, batch_size=4,
                          registries={"datasets": "nan_data.py"}, optimizer_args={"lr": 0.001},
                          model="mlp", model_args={"input_side": 4, "units": [[4]]}, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 1
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "diverged in epoch 1 of 2" in err and "the data, not the learning rate" in err, err
    assert "smaller learning rate" not in err, err
    [folder] = run_folders(tmp_path / "logs")
    assert "the data, not the learning rate" in json.loads((folder / "diverged.json").read_text())["message"]


def test_a_diverged_run_rerun_under_another_setup_is_not_said_to_train_its_epochs_under_it(tmp_path, capsys):
    """A rerun of a diverged run stops at once (README), but under other versions it warned that 'the epochs still
    to train run under another setup' and that 'the run will differ from one trained without a break'."""
    config = write_config(tmp_path, epoch=3, cpu_threads=1, optimizer="sgd", optimizer_args={"lr": 1e8})
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 1
    [folder] = run_folders(tmp_path / "logs")
    logged = folder / f"{run_name(folder)}_config.json"
    values = json.loads(logged.read_text())
    values["_meta"]["numpy"] = "0.0.1"  # trained under another numpy
    logged.write_text(json.dumps(values))
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 1
    err = " ".join(capsys.readouterr().err.split())  # -q: warnings and errors
    assert "diverged in epoch 1 of 3" in err
    assert "still to train" not in err and "under another setup" not in err, err
    assert read_metrics(folder)["epoch"].tolist() == [1]


def test_a_diverged_run_trained_on_another_device_type_stops_again_instead_of_being_refused(tmp_path, capsys):
    """A run that diverged on a GPU node, rerun on a CPU node: it trains nothing more (it stops at once, exit 1 with
    the divergence), so the refusal of 'epochs left to train' under another device type (exit 2) did not apply."""
    config = write_config(tmp_path, epoch=3, cpu_threads=1, optimizer="sgd", optimizer_args={"lr": 1e8})
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 1
    [folder] = run_folders(tmp_path / "logs")
    logged = folder / f"{run_name(folder)}_config.json"
    values = json.loads(logged.read_text())
    values["device"], values["_meta"]["device"] = "cuda", "cuda:0"  # as logged by a run on a GPU node
    logged.write_text(json.dumps(values))
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "diverged in epoch 1 of 3" in err and "epochs left to train" not in err, err
    assert read_metrics(folder)["epoch"].tolist() == [1]


def test_a_run_whose_buffers_overflowed_with_finite_losses_is_reported_diverged_not_stopped(tmp_path, capsys):
    """Adam at lr 1e8 overflows BatchNorm's running_var to inf while the losses stay finite (1e17). The trainer
    stopped the run, but the report and --dry-run, which read no checkpoint, decided "diverged" from a NaN test
    loss only: they said "stopped 1/2 epochs", and the report's analysis advised cutting a tail of a broken
    model. diverged.json now says it; a run trained to its end removes an earlier one."""
    from phd_lab.report.cli import write_report
    config = write_config(tmp_path, model_args={"width": 0.125}, resolution=32, batch_size=64, epoch=2, cpu_threads=1,
                          optimizer_args={"lr": 1e8}, track_saturation=False,
                          post_processing=["receptive_field", "analysis"])
    assert main_cli(["--config", str(config), "--no-progress"]) == 1
    assert "diverged in epoch 1 of 2" in capsys.readouterr().err
    [folder] = run_folders(tmp_path / "logs")
    losses = read_metrics(folder)[["train_loss", "test_loss"]].iloc[0]
    assert losses.notna().all() and (losses < float("inf")).all(), "the case the test loss alone missed"
    marker = json.loads((folder / "diverged.json").read_text())
    assert marker["epoch"] == 1 and marker["epochs"] == 2 and "no longer finite" in marker["message"]

    assert main_cli(["--config", str(config), "--dry-run"]) == 0
    assert "diverged in epoch 1 of 2" in capsys.readouterr().out
    write_report(tmp_path / "logs", tmp_path / "report.html")
    analysis = json.loads((folder / "analysis.json").read_text())
    assert analysis["run"]["status"]["label"] == "diverged in epoch 1 of 2"
    assert [a["kind"] for a in analysis["recommendations"]] == ["diverged"]
    assert "diverged in epoch 1 of 2" in (tmp_path / "report.html").read_text()

    (tmp_path / "healthy").mkdir()
    healthy = write_config(tmp_path / "healthy", epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(healthy), "--no-progress", "-q"]) == 0
    [trained] = run_folders(tmp_path / "healthy" / "logs")
    (trained / "diverged.json").write_text(json.dumps(marker))  # as if it diverged before its checkpoints went
    assert main_cli(["--config", str(healthy), "--no-progress", "-q"]) == 0
    assert not (trained / "diverged.json").exists()


def test_a_trained_run_whose_logged_config_cannot_be_read_is_refused_not_logged_anew(tmp_path, capsys):
    """A logged config cut in half (a copy broken off) beside a checkpoint was taken for a new run's: the rerun
    wrote its own values over it (another mixed_precision, device or registries), so the log no longer said what
    the weights were trained with. The damaged file is kept and the run refused, naming it; deleted, it is logged
    anew. A run without a checkpoint has nothing such a config describes: it is written anew, with a warning."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    whole = logged_path.read_bytes()
    log = folder / f"{run_name(folder)}.log"
    for damaged in (whole[: len(whole) // 2], b"[1, 2]\n", whole.replace(b'"epoch": 1', b'"epoch": "1"')):
        logged_path.write_bytes(damaged)
        logged = log.read_bytes()
        capsys.readouterr()
        assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"the logged config {str(logged_path)!r} of the trained run in that folder cannot be read" in err
        assert "Restore it" in err and "Traceback" not in err and logged_path.read_bytes() == damaged
        # "nothing in the folder was changed": the log took three lines of an attempt without an end (a "kill")
        assert log.read_bytes() == logged
        # a dry run called the run 'finished', so a grid checked with it before a batch job failed there (exit 2)
        assert main_cli(["--config", str(config), "--dry-run"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert f"finished; {logged_path.name} cannot be read (" in out, out
        assert "the plain command refuses the run (exit 2)" in out and logged_path.read_bytes() == damaged
    logged_path.unlink()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert json.loads(logged_path.read_text())["epoch"] == 1

    logged_path.write_bytes(whole[: len(whole) // 2])
    for checkpoint in folder.glob("*.pt"):
        checkpoint.unlink()
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert f"The logged config {logged_path} cannot be read" in capsys.readouterr().err
    assert json.loads(logged_path.read_text())["epoch"] == 1


def test_a_logged_config_that_is_a_dangling_link_is_refused_not_replaced(tmp_path, capsys):
    """A logged config that is a symbolic link to a missing file (an archive not mounted) read as no config:
    the rerun of the trained run exited 0 and replaced the link with a new file of its own values, so the link was
    gone and the file no longer said what the weights were trained with. It is refused (exit 2) naming the link
    and its target, before the run's folder is logged into; with the link removed the config is logged anew."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    logged_path.unlink()
    logged_path.symlink_to(tmp_path / "archive" / logged_path.name)
    run_log = (folder / f"{run_name(folder)}.log").read_bytes()
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (f"the logged config {str(logged_path)!r} is a symbolic link to "
            f"{str(tmp_path / 'archive' / logged_path.name)!r}, which does not exist") in err, err
    assert "remove the link to log this config's values anew" in err and "Traceback" not in err
    assert logged_path.is_symlink() and os.readlink(logged_path) == str(tmp_path / "archive" / logged_path.name)
    assert (folder / f"{run_name(folder)}.log").read_bytes() == run_log
    assert main_cli(["--config", str(config), "--dry-run"]) == 0  # it said 'finished'
    out = " ".join(capsys.readouterr().out.split())
    assert (f"finished; {logged_path.name} is a symbolic link to {str(tmp_path / 'archive' / logged_path.name)!r}, "
            "which does not exist: the plain command refuses the run (exit 2)") in out, out
    logged_path.unlink()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert not logged_path.is_symlink() and json.loads(logged_path.read_text())["epoch"] == 1


def test_a_logged_config_with_a_value_of_another_type_is_refused_not_taken_for_another_runs(tmp_path, capsys):
    """A logged config whose JSON is whole but holds a value no config may have (``"epoch": "1"``, edited by hand
    or damaged) was taken for the config of another run: its folder was left to it, and the rerun trained the run
    again from scratch in a new folder with the 16-character digest, without a word. Such a file says nothing
    about which run the folder holds: the trained run is refused (exit 2) naming the file and the key, as one that
    cannot be read, and nothing is trained or written; restored, the run is found in its folder again."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    whole = logged_path.read_text()
    for key, value in (("epoch", "1"), ("batch_size", None), ("model_args", [1])):
        logged_path.write_text(json.dumps({**json.loads(whole), key: value}))
        damaged = logged_path.read_bytes()
        capsys.readouterr()
        assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"the logged config {str(logged_path)!r} of the trained run in that folder cannot be read" in err
        assert f"the key {key!r} must be" in err and "Traceback" not in err, err
        assert logged_path.read_bytes() == damaged and run_folders(tmp_path / "logs") == [folder]
    logged_path.write_text(whole)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert run_folders(tmp_path / "logs") == [folder]


def test_a_logged_config_holding_nan_is_refused_not_taken_for_another_runs(tmp_path, capsys):
    """A hand-edited "optimizer_args": {"lr": NaN} (Python's JSON reader takes it, and the logged config's checks
    let it through) named another run: the rerun trained the run again from scratch in a new folder with the
    16-character digest, exit 0. It is refused as a logged config that cannot be read (exit 2), naming the key."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, track_saturation=False, post_processing=[])
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    logged = json.loads(logged_path.read_text())
    logged_path.write_text(json.dumps({**logged, "optimizer_args": {"lr": float("nan")}}))
    damaged = logged_path.read_bytes()
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"the logged config {str(logged_path)!r} of the trained run in that folder cannot be read" in err
    assert "the key 'optimizer_args.lr' holds nan, which is no finite number" in err and "Traceback" not in err, err
    assert logged_path.read_bytes() == damaged and run_folders(tmp_path / "logs") == [folder]


def test_a_resume_on_another_device_type_is_refused_but_post_processing_there_is_not(tmp_path, capsys):
    """A run begun on a GPU and resumed with device cpu trained its remaining epochs on the CPU under a logged
    config that still said cuda (only a warning), so the log no longer reproduced it. The GPU start is
    written into the logged config here, as a GPU node would have logged it (this machine has none)."""
    config = write_config(tmp_path, epoch=2, cpu_threads=1)  # tracked: a tracking_device to compare on resume
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    original = json.loads(logged_path.read_text())
    logged = json.loads(logged_path.read_text())
    logged.update(device="cuda", mixed_precision=False)
    logged["_meta"].update(device="cuda:0", device_name="NVIDIA H200")
    logged_path.write_text(json.dumps(logged))
    checkpoint_path = folder / f"{run_name(folder)}.pt"
    whole = checkpoint_path.read_bytes()
    flipped = bytearray(whole)
    flipped[len(flipped) // 2] ^= 0xFF
    checkpoint_path.write_bytes(bytes(flipped))  # epoch 2 still to train: a resume goes back to the previous one
    checkpoint = checkpoint_path.read_bytes()
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "has epochs left to train and was trained so far with device cuda (now cpu)" in err
    assert "mixed_precision false (now true)" in err and "new run_id" in err and "Traceback" not in err
    assert (folder / f"{run_name(folder)}.pt").read_bytes() == checkpoint
    assert json.loads(logged_path.read_text())["device"] == "cuda"
    # trained on the CPU, but its covariance sums lived on a GPU: that too is another run
    logged_path.write_text(json.dumps({**original, "tracking_device": "cuda"}))
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "tracking_device cuda (now cpu)" in err and "device cuda" not in err.replace("tracking_device cuda", "")
    assert (folder / f"{run_name(folder)}.pt").read_bytes() == checkpoint
    logged_path.write_text(json.dumps(logged))

    checkpoint_path.write_bytes(whole)  # trained to the end: post-processing may run on another device
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    assert json.loads(logged_path.read_text())["device"] == "cuda"  # what it was trained with stays logged


def test_a_finished_run_whose_csv_lost_its_last_row_is_post_processed_on_another_device_type(tmp_path, capsys):
    """Whether a run had epochs left was read from its metrics CSV, not its checkpoint: a CSV a kill left one row
    short of the checkpoint refused the post-processing of a finished run on another device, saying it had epochs
    left (and a finished run whose last checkpoint was damaged, its CSV whole, trained that epoch again on the other
    device: the test above). The GPU start is written into the logged config, as in the test above."""
    config = write_config(tmp_path, epoch=2, cpu_threads=1, track_saturation=False)
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged_path = folder / f"{run_name(folder)}_config.json"
    logged = json.loads(logged_path.read_text())
    logged.update(device="cuda", mixed_precision=False)
    logged["_meta"].update(device="cuda:0", device_name="NVIDIA H200")
    logged_path.write_text(json.dumps(logged))
    csv_path, checkpoint_path = folder / f"{run_name(folder)}.csv", folder / f"{run_name(folder)}.pt"
    rows, checkpoint = csv_path.read_text(), checkpoint_path.read_bytes()
    csv_path.write_text("".join(rows.splitlines(keepends=True)[:-1]))  # killed after the checkpoint, before the CSV
    capsys.readouterr()
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0, capsys.readouterr().err
    assert csv_path.read_text() == rows and checkpoint_path.read_bytes() == checkpoint  # nothing trained: the row back
    assert json.loads(logged_path.read_text())["device"] == "cuda"


@pytest.mark.parametrize("write", [atomic.write_json, atomic.write_json_once])
def test_a_nan_is_refused_by_the_json_writer_naming_the_file_and_where_it_lies(tmp_path, write):
    """``NaN`` was written as such: a file Python reads back but jq and other strict JSON readers refuse."""
    with pytest.raises(ValueError, match=r"'.*info\.json' was not written: its value at layers\[1\]\.macs is nan, "):
        write(tmp_path / "info.json", {"run": "r", "layers": [{"macs": 1}, {"macs": float("nan")}]})
    assert list(tmp_path.iterdir()) == []  # not even a temp file


def test_a_run_folder_on_a_disk_without_room_for_its_checkpoints_is_warned_about_before_the_first_epoch(
        tmp_path, capsys, monkeypatch):
    """A real 256 kB disk, a checkpoint of about 540 kB: the run trained its first epoch (hours of ImageNet) before
    the checkpoint could not be written, and nothing said so before. Now a warning before the first epoch names the
    checkpoint's size, the folder, the free space and 'logs_dir'; the run still stops with the CheckpointError."""
    logs = tmp_path / "logs"
    with small_disk(logs, "256k"), outside_git(monkeypatch):  # a dirty checkout's patch would take disk room
        config = write_config(tmp_path, epoch=1, track_saturation=False, cpu_threads=1)
        code, err = main_in_process(capsys, "--config", str(config), "--no-progress")
        [folder] = run_folders(logs)
    said = " ".join(err.split())
    assert code == 1
    warned = re.search(rf"WARNING \S+: The checkpoints of this run need at least 4\d\d\.\d kB \([\d,]+ bytes\) more "
                       rf"in {re.escape(str(folder))} \(one holds at least 4\d\d\.\d kB \([\d,]+ bytes\): .*\), but "
                       rf"its disk has 2\d\d\.\d kB .* free: .* set 'logs_dir' to a folder on a disk with room", said)
    assert warned, said
    assert warned.start() < said.index("failed: CheckpointError")


def test_the_checkpoint_size_of_a_lazy_model_counts_its_initialised_tensors_before_its_first_forward_pass():
    """A lazy module's parameter has no size before the first batch (numel() raises): the room check before the
    first epoch failed every run of such a model ('Attempted to use an uninitialized parameter'); it counts what
    is known, the bound staying a lower one."""
    from phd_lab.checkpoint import checkpoint_bytes
    model = torch.nn.Sequential(torch.nn.LazyLinear(4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters())
    known = (4 * 2 + 2) * 4  # the second layer's float32 weight and bias
    assert checkpoint_bytes(model, optimizer) == known + 2 * known  # Adam's two moments of the known parameters
    model(torch.zeros(1, 3))
    assert checkpoint_bytes(model, optimizer) == 3 * ((3 * 4 + 4) * 4 + known)


class _InterruptedWhenRead:
    """An entry whose unpickling runs code that a Ctrl-C stops (as a compiled module's ImportError), as torch.load's
    own imports can be; allowed by torch's safe_globals, since weights_only=True reads only what is allowed."""

    def __init__(self) -> None:
        self.state = 1

    def __setstate__(self, state: dict) -> None:
        from tests.conftest import interrupted_import
        interrupted_import()


@pytest.mark.parametrize("read", ["load", "peek_state", "current_is_damaged"])
def test_a_ctrl_c_while_the_newest_checkpoint_is_read_is_no_damage(tmp_path, read):
    """A Ctrl-C that torch.load's unpickling turned into another error was taken for a damaged file: the resume went
    back to the previous checkpoint ('Checkpoint run.pt is damaged; falling back to the previous one'), an epoch
    lost, and the dry run and the peeks read the previous one."""
    from torch.serialization import safe_globals

    store = CheckpointStore(tmp_path / "run.pt", tmp_path / "run.prev.pt")
    store.save(checkpoint_state(1))
    store.save(checkpoint_state(2))
    # the save reads its file back, which would run the entry's code: the newest is written over it directly
    torch.save({"format": CHECKPOINT_FORMAT, **checkpoint_state(2, callbacks={"lazy": _InterruptedWhenRead()})},
               store.path)
    with safe_globals([_InterruptedWhenRead]), pytest.raises(KeyboardInterrupt):
        getattr(store, read)()
