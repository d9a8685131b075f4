"""SIGKILL real training processes at random moments (some inside a checkpoint write), resume,
and demand weights and metrics bit-identical to an uninterrupted run."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest

from phd_lab.checkpoint import PAUSE_ENV
from phd_lab.cli import main_cli
from tests.conftest import main_in_process, read_metrics, run_folders, run_name, write_config
from tests.test_determinism import _main_in_child, _wait
from tests.test_runs import assert_same_metrics, assert_same_weights, weights

EPOCHS = 11  # margin for kill timings that drift when other tests share the cores
KILLS = 4  # every other one inside a checkpoint write; at most 2 × 2.5 + 2 × 1 epochs pass before the last


def _start(config: Path, env: dict[str, str]) -> multiprocessing.process.BaseProcess:
    """main.py's command on ``config`` in a forked child process: a real process, killed for real, that spares the
    seconds a fresh interpreter spends importing torch (as test_determinism.py's kills; its child takes tqdm locks
    of its own)."""
    process = multiprocessing.get_context("fork").Process(target=_main_in_child, args=(config, env))
    process.start()
    return process


def _epoch_seconds(logs: Path) -> float:
    """Seconds per epoch after the first, off a finished run's log."""
    from datetime import datetime
    [log] = logs.rglob("*.log")
    stamp = lambda line: datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")  # noqa: E731
    epochs = [stamp(line) for line in log.read_text().splitlines()
              if " epoch " in line and "/" in line.split(" epoch ")[1][:8]]
    return (epochs[-1] - epochs[0]).total_seconds() / (len(epochs) - 1)


def _epochs_written(logs: Path) -> int:
    """Rows in the run's metrics CSV so far (0 before its first epoch)."""
    csvs = [path for path in logs.rglob("*.csv") if (path.parent / f"{path.stem}_config.json").exists()]
    return sum(len(path.read_text().splitlines()) - 1 for path in csvs)


def _log_starts(logs: Path) -> int:
    return sum(p.read_text().count("Run folder") for p in logs.rglob("*.log"))


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, capsys):
    rng = random.Random(20261128)
    overrides = dict(epoch=EPOCHS, resolution=16, batch_size=128, model_args={"width": 0.0625}, cpu_threads=1,
                     optimizer="sgd", optimizer_args={"lr": 0.02, "step_size": 5})
    (tmp_path / "ref").mkdir()
    reference = write_config(tmp_path / "ref", **overrides)
    (tmp_path / "crash").mkdir()
    crashing = write_config(tmp_path / "crash", **overrides)
    assert main_cli(["--config", str(reference), "--no-progress", "-q"]) == 0  # in this process: no imports
    epoch_seconds = _epoch_seconds(tmp_path / "ref" / "logs")

    logs = tmp_path / "crash" / "logs"
    kills, kills_in_checkpoint_write = 0, 0
    while kills < KILLS:
        in_write = kills % 2 == 1
        env = {PAUSE_ENV: "1.5"} if in_write else {}
        starts = _log_starts(logs) if logs.exists() else 0
        process = _start(crashing, env)
        started = _wait(lambda: logs.exists() and _log_starts(logs) > starts, process)
        assert started, "training process ended before it started training"
        if in_write:
            folder = next(logs.rglob("*_config.json")).parent
            if not _wait(lambda: any(folder.glob(".*.pt.next.*.tmp")), process):
                break  # the run finished before another checkpoint was written
            time.sleep(rng.uniform(0.0, 0.5))
        else:  # anywhere from the end of this attempt's first epoch to one and a half epochs later; waiting
            # for the epoch's row (not a time measured on the reference run) keeps this right on busy cores
            written = _epochs_written(logs)
            if not _wait(lambda: _epochs_written(logs) > written, process):
                break
            time.sleep(rng.uniform(0.0, 1.5) * epoch_seconds)
        if not process.is_alive():
            break  # finished before the kill
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        kills += 1
        kills_in_checkpoint_write += in_write
    assert kills >= KILLS, f"only {kills} kills happened before the run finished; make the run longer"
    assert kills_in_checkpoint_write >= KILLS // 2
    [folder] = run_folders(logs)
    completed_before_final = len(read_metrics(folder))
    assert completed_before_final >= 2, "the kills must land while training makes progress"

    # the resume after the kills in this process: the resume is tested here, the kills needed real processes
    code, err = main_in_process(capsys, "--config", str(crashing), "--no-progress")
    assert code == 0, err
    [ref_folder] = run_folders(tmp_path / "ref" / "logs")
    assert not list(folder.glob(".*.tmp")), "stale temp files must be cleaned on resume"
    metrics = read_metrics(folder)
    assert metrics["epoch"].tolist() == list(range(1, EPOCHS + 1))
    assert_same_metrics(read_metrics(ref_folder), metrics)
    assert_same_weights(weights(ref_folder), weights(folder))
    # the CSV row of an epoch is written just after its checkpoint: a kill in between leaves the CSV one
    # epoch behind, and the resumed run rewrites it from the checkpoint's history (compared above)
    log_text = (folder / f"{run_name(folder)}.log").read_text()
    assert any(f"after epoch {done} of {EPOCHS}" in log_text
               for done in (completed_before_final, completed_before_final + 1)), log_text[-2000:]
