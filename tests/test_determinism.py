"""Determinism end to end (README "Reproducibility and crash recovery"): every file a run and a probe job write is
bit-identical between an uninterrupted run, a run killed with SIGKILL (mid-epoch, inside a post-processing step)
and resumed, and a rerun of the logged config in a fresh logs_dir; a probe job's results are the same with -mp 0,
-mp 1, -mp 2, on a Dask LocalCluster and after a SIGKILL and resume.

Weights and metrics after kills during training and inside checkpoint writes are also tested at random moments in
test_fault_injection.py; these tests compare every other file as well. The files and values allowed to differ are
listed in ``RUN_VARYING`` and ``PROBE_VARYING`` with the reason; every other file must be equal byte for byte (after
the logs folder's path is replaced by a placeholder where a file names it)."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from phd_lab.cli import main_cli
from phd_lab.extraction import PAUSE_ENV as EXTRACT_PAUSE_ENV
from phd_lab.probes.cli import probe_cli
from phd_lab.probes.runner import TEST_DELAY_ENV
from phd_lab.steps.analysis import PAUSE_ENV as ANALYSIS_PAUSE_ENV
from tests.conftest import ROOT, TINY, run_folders, run_name, wait_for
from tests.probe_latents import digits_layers, make_latents

EPOCHS = 3
STEPS = ["receptive_field", "flops", "extract", {"name": "project", "deltas": [0.9, 0.99]}, "analysis"]
CONFIG = {**TINY, "resolution": 8, "batch_size": 256, "epoch": EPOCHS, "cpu_threads": 1, "post_processing": STEPS}

# What legitimately differs between two runs of one config and seed, and why: file (``<name>`` the run's name) →
# (the column, key or history entry that may differ, None for the whole file; the reason). Every other file of a
# run folder, and everything else of these, is compared byte for byte (value for value in a checkpoint).
_EPOCH_SECONDS = "wall time of the epoch (README: the only column of the metrics that may differ)"
RUN_VARYING: dict[str, tuple[str | None, str]] = {
    "<name>.log": (None, "local times, process ids, seconds and the lines each attempt adds"),
    ".lock": (None, "the run-folder lock's owner line (its pid and host while held)"),
    ".steps.json": (None, "the stamps of each step's inputs: inode, size and time of the checkpoint, and its sha256, "
                          "which covers the epoch_seconds in its history"),
    "<name>.csv": ("epoch_seconds", _EPOCH_SECONDS),
    "<name>.pt": ("epoch_seconds", f"in the checkpoint's history: {_EPOCH_SECONDS}"),
    "<name>.previous.pt": ("epoch_seconds", f"in the checkpoint's history: {_EPOCH_SECONDS}"),
    "analysis.json": ("figure_key", "a digest over the metrics CSV (its epoch_seconds) and the logged config (its "
                                    "logs_dir): when analysis.png is drawn again; analysis.png itself is compared"),
}
# The same for the files a probe job writes into a run folder (its cache lies in a folder of its own)
PROBE_VARYING: dict[str, tuple[str | None, str]] = {
    "probe.log": (None, "local times, process ids and seconds"),
    ".probe.lock": (None, "the run's probe lock (its owner while held)"),
    "probe_performances.csv": ("seconds", "wall time of each layer's fit"),
    "probe_settings.json": ("results_sha256", "the sha256 of probe_performances.csv, whose seconds differ"),
}


def _plain(value: Any) -> Any:
    """A checkpoint entry as values ``==`` compares exactly: tensors and arrays as dtype, shape and bytes."""
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), tuple(value.shape), value.detach().cpu().contiguous().numpy().tobytes())
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.shape, value.tobytes())
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return value


def _checkpoint(path: Path, varying: str) -> Any:
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert all(varying in row for row in state["history"])
    state["history"] = [{k: v for k, v in row.items() if k != varying} for row in state["history"]]
    return _plain(state)


def _csv_without(text: str, column: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    drop = rows[0].index(column)
    return [row[:drop] + row[drop + 1:] for row in rows]


def _json_without(text: str, key: str) -> Any:
    document = json.loads(text)
    assert key in document
    return {k: v for k, v in document.items() if k != key}


def run_files(folder: Path, logs: Path) -> dict[str, Any]:
    """Every file of a run folder as it must be equal in another run of its config and seed (RUN_VARYING)."""
    name = run_name(folder)
    files: dict[str, Any] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = str(path.relative_to(folder)).replace(name, "<name>")
        files[relative] = _comparable(path, RUN_VARYING.get(relative, (False, ""))[0], logs)
    return {relative: content for relative, content in files.items() if content is not None}


def _comparable(path: Path, varying: str | None | bool, logs: Path | None = None) -> Any:
    """What of a file must be equal: None (nothing) where ``varying`` is None, else its content less
    ``varying`` (a column, key or history entry; False for none) and with ``logs`` as a placeholder."""
    if varying is None:
        return None
    if path.suffix == ".pt":
        return _checkpoint(path, varying) if varying else _plain(torch.load(path, weights_only=True))
    data = path.read_bytes()
    if path.suffix not in (".json", ".csv"):
        return data
    text = data.decode() if logs is None else data.decode().replace(str(logs), "<logs>")
    if not varying:
        return text
    return _csv_without(text, varying) if path.suffix == ".csv" else _json_without(text, varying)


def assert_same_files(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert sorted(actual) == sorted(expected)
    differ = [name for name in expected if actual[name] != expected[name]]
    assert not differ, f"files that differ: {differ}"


def _config(folder: Path, data: Path, **overrides: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "exp.json"
    path.write_text(json.dumps({**CONFIG, "logs_dir": str(folder / "logs"), "data_dir": str(data), **overrides}))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def reference_folder(tmp_path_factory, data_dir) -> Path:
    """The run folder of one uninterrupted run (in this process: it spares a subprocess's imports)."""
    root = tmp_path_factory.mktemp("reference")
    assert main_cli(["--config", str(_config(root, data_dir)), "--no-progress", "-q"]) == 0
    [folder] = run_folders(root / "logs")
    return folder


@pytest.fixture(scope="module")
def reference(reference_folder) -> dict[str, Any]:
    """The files of the uninterrupted run."""
    files = run_files(reference_folder, reference_folder.parents[3])
    # the outputs of every step are there, so that the comparisons below cover them
    assert {"receptive_field.csv", "computational_info.json", "computational_info.csv", "latents/manifest.json",
            "latents/train-labels.npy", "projections.csv", "projections_layers.csv", "analysis.json",
            "analysis.png", "<name>.csv", "<name>.pt", "<name>.previous.pt", "<name>_config.json"} <= set(files)
    assert any(column.endswith("_train_saturation") for column in files["<name>.csv"][0])  # saturation columns
    return files


def _log_text(logs: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in logs.rglob("*.log"))


def _rows(logs: Path) -> int:
    """Rows in the run's metrics CSV so far."""
    return sum(len(path.read_text().splitlines()) - 1 for path in logs.rglob("*.csv")
               if (path.parent / f"{path.stem}_config.json").exists())


def _step_started(step: str) -> Callable[[Path], bool]:
    return lambda logs: f"Post-processing step {step} of " in _log_text(logs)


def _main_in_child(config: Path, env: dict[str, str]) -> None:
    # A forked child shares the parent's tqdm locks, the multiprocessing one a semaphore of both: killed while a
    # bar held it (every tqdm, even a disabled one, takes it when made), the child left it taken and the test's
    # next run in this process waited for it for ever. The child takes locks of its own.
    from tqdm import tqdm
    from tqdm.std import TqdmDefaultWriteLock
    TqdmDefaultWriteLock.th_lock = threading.RLock()
    TqdmDefaultWriteLock.mp_lock = multiprocessing.get_context("fork").RLock()
    tqdm.set_lock(TqdmDefaultWriteLock())
    os.environ.update(env)
    os._exit(main_cli(["--config", str(config), "--no-progress", "-q"]))


def _wait(predicate: Callable[[], bool], process: multiprocessing.process.BaseProcess, timeout: float = 120) -> bool:
    """Poll until ``predicate()`` holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if not process.is_alive():
            return False
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the run")


def _kill(config: Path, when: Callable[[], bool], env: dict[str, str]) -> None:
    """Start main.py's command on ``config`` in a forked child process (a real process, killed for real; forked,
    it spares the seconds a fresh interpreter spends importing torch) and SIGKILL it once ``when()`` holds."""
    process = multiprocessing.get_context("fork").Process(target=_main_in_child, args=(config, env))
    process.start()
    try:
        assert _wait(when, process), "the run ended before the kill point"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    assert process.exitcode == -signal.SIGKILL


KILL_POINTS = {
    # when to kill, the environment of the killed attempt, and what must not have happened yet (the kill landed
    # where it was meant to)
    "mid-epoch": (lambda logs: _rows(logs) >= 1, {}, "epoch 3/3"),
    "receptive_field": (_step_started("receptive_field"), {}, "Post-processing step flops of "),
    "extract": (lambda logs: any(logs.rglob("latents/.*")) or any(logs.rglob("latents/*.npy")),
                {EXTRACT_PAUSE_ENV: "0.3"}, "Extracted "),
    "project": (_step_started("project"), {}, "Post-processing step analysis of "),
    "analysis": (lambda logs: any(logs.rglob("analysis.json")), {ANALYSIS_PAUSE_ENV: "60"}, " finished: "),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_every_file_of_a_run_killed_and_resumed_is_that_of_an_uninterrupted_run(tmp_path, data_dir, reference,
                                                                                 point):
    when, env, not_yet = KILL_POINTS[point]
    config = _config(tmp_path, data_dir)
    logs = tmp_path / "logs"
    _kill(config, lambda: logs.exists() and when(logs), env)
    assert not_yet not in _log_text(logs), f"the kill came too late: {not_yet!r} is in the log"
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [folder] = run_folders(logs)
    if point == "mid-epoch":
        assert "Resuming" in _log_text(logs)
    assert_same_files(reference, run_files(folder, logs))


NOISY_DIGITS = """
import random

import numpy as np
import torch
from torch.utils.data import Dataset

from phd_lab.data import make_bundle
from phd_lab.datasets.digits import digits_tensors


class Noisy(Dataset):
    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        image, label = self.base[index]
        return image + torch.rand(image.shape) * 0.3 + np.random.uniform(0, 0.1) + random.uniform(0, 0.1), label


def NoisyDigits(*, batch_size, resolution, data_dir, seed, num_workers):
    \"\"\"Digits plus uniform noise drawn from torch's, numpy's and python's generators.\"\"\"
    train, test = digits_tensors(resolution)
    return make_bundle("NoisyDigits", Noisy(train), test, train, num_classes=10, in_channels=1,
                       resolution=resolution, batch_size=batch_size, seed=seed, num_workers=num_workers)
"""


@pytest.mark.slow
def test_a_run_augmented_in_dataloader_workers_killed_mid_epoch_resumes_to_the_same_files(tmp_path, data_dir):
    """A random augmentation drawn in 2 DataLoader worker processes (seeded from the loader's generator, which
    the checkpoint keeps): the epochs after a resume draw what an uninterrupted run draws."""
    registry = tmp_path / "noisy.py"
    registry.write_text(NOISY_DIGITS.lstrip())
    overrides = {"dataset": "NoisyDigits", "num_workers": 2, "registries": {"datasets": str(registry)},
                 "post_processing": []}
    reference, killed = (_config(tmp_path / name, data_dir, **overrides) for name in ("reference", "killed"))
    assert main_cli(["--config", str(reference), "--no-progress", "-q"]) == 0
    logs = tmp_path / "killed" / "logs"
    _kill(killed, lambda: logs.exists() and _rows(logs) >= 1, {})
    assert "epoch 3/3" not in _log_text(logs)
    assert main_cli(["--config", str(killed), "--no-progress", "-q"]) == 0
    [expected], [folder] = run_folders(tmp_path / "reference" / "logs"), run_folders(logs)
    assert_same_files(run_files(expected, tmp_path / "reference" / "logs"), run_files(folder, logs))


PIXELWISE = [{"name": "extract", "downsampling": "pixelwise", "sizes": [2], "methods": ["nearest"],
              "layers": ["features.4", "classifier.6"]}]


@pytest.mark.slow
def test_a_pixelwise_extraction_of_several_sets_killed_at_each_stage_resumes_to_the_same_files(tmp_path, data_dir):
    """Pixelwise latents are written as scratch files of whole maps, then split into a file per position; further
    sets ('sizes') follow in folders of their own. Killed while the scratch files are written, while they are
    split, and in the next set, the resumed run has the latents (and manifests) of an uninterrupted one."""
    reference, killed = (_config(tmp_path / name, data_dir, epoch=1, post_processing=PIXELWISE)
                         for name in ("reference", "killed"))
    assert main_cli(["--config", str(reference), "--no-progress", "-q"]) == 0
    logs = tmp_path / "killed" / "logs"
    # the run's folder: the relative one of the reference run (the same config in another logs_dir)
    [expected] = run_folders(tmp_path / "reference" / "logs")
    folder = logs / expected.relative_to(tmp_path / "reference" / "logs")
    stages = [lambda: any((folder / "latents").glob("..scratch-train-*.tmp")),
              lambda: (folder / "latents" / "train-features.4@0_0.npy").exists(),
              lambda: any((folder / "latents_2x2_nearest").glob(".*.tmp"))]
    for stage in stages:
        _kill(killed, stage, {EXTRACT_PAUSE_ENV: "0.05"})
        assert " finished: " not in _log_text(logs)
    assert main_cli(["--config", str(killed), "--no-progress", "-q"]) == 0
    files = run_files(expected, tmp_path / "reference" / "logs")
    assert {"latents/train-features.4@3_3.npy", "latents/manifest.json", "latents_2x2_nearest/eval-features.4.npy",
            "latents_2x2_nearest/manifest.json"} <= set(files)
    assert_same_files(files, run_files(folder, logs))


@pytest.mark.parametrize("where", ["edited", "moved"])
def test_the_logged_config_rerun_in_a_fresh_logs_dir_writes_the_same_files(tmp_path, reference_folder, reference,
                                                                            where):
    """The logged config copied out of its run folder with its logs_dir set to an empty folder (edited), or alone
    into its run folder's place in an empty logs tree (moved: the README's rerun of a run whose tree moved)."""
    folder = reference_folder
    logged = folder / f"{run_name(folder)}_config.json"
    fresh = tmp_path / "logs"
    relative = folder.relative_to(folder.parents[3])
    if where == "edited":
        config = tmp_path / "rerun.json"
        config.write_text(json.dumps({**json.loads(logged.read_text()), "logs_dir": str(fresh)}))
    else:
        config = fresh / relative / logged.name
        config.parent.mkdir(parents=True)
        config.write_bytes(logged.read_bytes())
    assert main_cli(["--config", str(config), "--no-progress", "-q"]) == 0
    [again] = run_folders(fresh)
    assert again.relative_to(fresh) == relative
    assert_same_files(reference, run_files(again, fresh))


# ------------------------------------------------------------------------------------------------ probe job
def probe_files(folder: Path) -> dict[str, Any]:
    """Every file the probe job wrote into a run folder as it must be equal in another job (PROBE_VARYING)."""
    files: dict[str, Any] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = str(path.relative_to(folder))
        if not relative.startswith("latents/"):  # the job's input
            files[relative] = _comparable(path, PROBE_VARYING.get(relative, (False, ""))[0])
    return {relative: content for relative, content in files.items() if content is not None}


PROBED_LAYERS = 3


def _probed_run(root: Path) -> tuple[Path, Path]:
    """Latents of a few layers (Digits pixels through random ReLU layers) in ``root/0/run``: every job's run has one
    name and one variant (run id / variant folder), which head its figures' titles."""
    return make_latents(root / "0", *digits_layers(n_layers=PROBED_LAYERS, width=16))
# saga draws from its seed, and a stratified training subsample is drawn too
PROBE_OPTIONS = ["--solver", "saga", "--train-samples", "600", "--no-progress", "-q"]


@pytest.fixture(scope="module")
def probe_reference(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("probe-reference")
    run, latents = _probed_run(root)
    assert probe_cli(["--latents", str(latents), "-mp", "0", "--cache-dir", str(root / "cache"), *PROBE_OPTIONS]) == 0
    files = probe_files(run)
    assert {"probe_performances.csv", "probe_performances.png", "probe_settings.json",
            "probe_confusion/001-features.0.npy", "probe_confusion/003-features.2.png"} <= set(files)
    return files


@pytest.mark.parametrize("how", [["-mp", "1"], ["-mp", "2"], ["--scheduler", "local:2"]], ids=" ".join)
def test_a_probe_job_writes_the_same_files_however_its_layers_are_fitted(tmp_path, probe_reference, how):
    run, latents = _probed_run(tmp_path)
    assert probe_cli(["--latents", str(latents), *how, "--cache-dir", str(tmp_path / "cache"), *PROBE_OPTIONS]) == 0
    assert_same_files(probe_reference, probe_files(run))


@pytest.mark.slow
def test_a_probe_job_killed_and_resumed_writes_the_same_files(tmp_path, probe_reference):
    run, latents = _probed_run(tmp_path)
    cache = tmp_path / "cache"
    process = subprocess.Popen([sys.executable, "probe_main.py", "--latents", str(latents), "-mp", "1",
                                "--cache-dir", str(cache), *PROBE_OPTIONS], cwd=ROOT,
                               env={**os.environ, TEST_DELAY_ENV: "1.0", "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: any(cache.rglob("*.json")), process, timeout=120), "the job ended before the kill"
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the job and its worker, like a node failure
        process.wait()
    assert not (run / "probe_performances.csv").exists() and len(list(cache.rglob("*.json"))) < PROBED_LAYERS
    assert probe_cli(["--latents", str(latents), "-mp", "0", "--cache-dir", str(cache), *PROBE_OPTIONS]) == 0
    assert_same_files(probe_reference, probe_files(run))

