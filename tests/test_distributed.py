"""The training grid on a real Dask LocalCluster: same files as sequential, failures, killed workers."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Iterator

import pytest

distributed = pytest.importorskip("distributed")

from phd_lab.cli import main_cli  # noqa: E402
from phd_lab.distributed import parse_scheduler  # noqa: E402
from phd_lab.errors import UsageError  # noqa: E402
from tests.conftest import (probe_job_in_process, read_metrics, run_folders, run_name, wait_for,  # noqa: E402
                            write_config)
from tests.test_runs import assert_same_metrics, assert_same_weights, weights  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """A local cluster whose scheduler runs in this process, its INFO records quietened: a command quietens Dask's
    loggers while it uses a cluster and gives them back their levels after, but this scheduler goes on logging on
    its own thread, and a record of it with a traceback ('Batched Comm Closed') that came after the command's
    levels were given back, while the command still wrote stderr, failed a test's 'no traceback' assertion."""
    dask_logger = logging.getLogger("distributed")
    before = dask_logger.level
    dask_logger.setLevel(logging.WARNING)
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
            yield c
    finally:
        dask_logger.setLevel(before)


@contextlib.contextmanager
def _gpu_worker(address: str, *options: str) -> Iterator[None]:
    """A real `dask worker` subprocess that declares one GPU (``--resources GPU=1``), joining the scheduler at
    ``address`` while the block runs."""
    import subprocess
    import sys
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                               "--resources", "GPU=1", "--no-dashboard", *options],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        worker.terminate()
        worker.wait(60)


def _relative_files(logs):
    return sorted(str(p.relative_to(logs)) for p in logs.rglob("*") if p.is_file() and p.name != ".lock")


def _assert_same_runs(logs_a, logs_b):
    assert _relative_files(logs_a) == _relative_files(logs_b)
    folders_a, folders_b = run_folders(logs_a), run_folders(logs_b)
    assert [f.relative_to(logs_a) for f in folders_a] == [f.relative_to(logs_b) for f in folders_b]
    for a, b in zip(folders_a, folders_b):
        assert_same_metrics(read_metrics(a), read_metrics(b))
        assert_same_weights(weights(a), weights(b))
        config_a = json.loads((a / f"{run_name(a)}_config.json").read_text())
        config_b = json.loads((b / f"{run_name(b)}_config.json").read_text())
        for config in (config_a, config_b):
            for key in ("logs_dir", "data_dir"):
                config.pop(key)
        assert config_a == config_b


def test_grid_on_cluster_writes_the_same_files_as_sequential(tmp_path, cluster, capsys):
    grid = dict(epoch=2, cpu_threads=1, model_args={"width": [0.0625, 0.125]})
    (tmp_path / "seq").mkdir()
    (tmp_path / "dask").mkdir()
    sequential = write_config(tmp_path / "seq", **grid)
    clustered = write_config(tmp_path / "dask", **grid)
    assert main_cli(["--config", str(sequential), "--no-progress", "-q"]) == 0
    capsys.readouterr()
    assert main_cli(["--config", str(clustered), "--no-progress", "-q", "--scheduler",
                     cluster.scheduler_address]) == 0
    assert "grid:" not in capsys.readouterr().err  # --no-progress: no bar over the cluster's tasks either
    assert len(run_folders(tmp_path / "dask" / "logs")) == 2
    _assert_same_runs(tmp_path / "seq" / "logs", tmp_path / "dask" / "logs")
    # re-running the same command skips finished points, on this side: each task had a worker import torch and
    # build the run's data and model only for the run to find itself finished
    submitted = _train_tasks(cluster)
    assert len(submitted) == 2
    logs = {folder: (folder / f"{run_name(folder)}.log").read_text() for folder in run_folders(tmp_path / "dask" /
                                                                                                 "logs")}
    capsys.readouterr()
    assert main_cli(["--config", str(clustered), "--no-progress", "--scheduler", cluster.scheduler_address]) == 0
    assert _train_tasks(cluster) == submitted
    summary = capsys.readouterr().err.split("Summary:\n")[1]
    assert [line.split()[:2] for line in summary.splitlines()[1:]] == [[str(i), "finished"] for i in range(2)]
    assert {folder: (folder / f"{run_name(folder)}.log").read_text() for folder in logs} == logs


def _train_tasks(cluster) -> set[str]:
    """The keys of the training tasks the cluster's scheduler (in this process) has seen."""
    return {str(key) for key, *_ in cluster.scheduler.transition_log if str(key).startswith("train-")}


def test_a_model_that_draws_from_python_s_random_trains_the_same_on_the_cluster_as_in_sequence(tmp_path, cluster):
    """Python's random is seeded like numpy's and torch's, but a Dask worker process draws from it too while a run
    trains: dask.sizeof samples large collections of every message it sends (heartbeats, several a second). A model
    or dataset that used random (stochastic depth, an augmentation) trained differently on the cluster than in
    sequence, and differently on every try."""
    (tmp_path / "stoch.py").write_text(
        "import random\n"
        "from torch import nn\n"
        "class Skip(nn.Module):\n"
        "    def __init__(self, width):\n"
        "        super().__init__()\n"
        "        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())\n"
        "    def forward(self, x):\n"
        "        return x if self.training and random.random() < 0.3 else x + self.block(x)\n"
        "def net(*, num_classes, in_channels=3):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), Skip(8), Skip(8), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(8, num_classes))\n")
    overrides = dict(model="net", model_args={}, epoch=2, batch_size=8, cpu_threads=1, track_saturation=False,
                     post_processing=[], registries={"models": str(tmp_path / "stoch.py")})
    (tmp_path / "seq").mkdir()
    (tmp_path / "dask").mkdir()
    assert main_cli(["--config", str(write_config(tmp_path / "seq", **overrides)), "--no-progress", "-q"]) == 0
    assert main_cli(["--config", str(write_config(tmp_path / "dask", **overrides)), "--no-progress", "-q",
                     "--scheduler", cluster.scheduler_address]) == 0
    [sequential], [clustered] = run_folders(tmp_path / "seq" / "logs"), run_folders(tmp_path / "dask" / "logs")
    assert_same_weights(weights(sequential), weights(clustered))
    assert_same_metrics(read_metrics(sequential), read_metrics(clustered))


def test_a_registry_module_of_the_working_directory_reaches_workers_started_elsewhere(tmp_path, cluster, capsys,
                                                                                     monkeypatch):
    """A dotted registry name that only the command's working directory holds ("mymods" for ./mymods.py) went
    to the workers as that name, and a worker started in another folder could not import it."""
    (tmp_path / "mymods.py").write_text(
        "from torch import nn\n"
        "def net(*, num_classes, in_channels=3):\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n")
    monkeypatch.chdir(tmp_path)  # the cluster's workers started in the checkout
    config = write_config(tmp_path, model="net", model_args={}, epoch=1, cpu_threads=1, track_saturation=False,
                          post_processing=[], registries={"models": "mymods"})
    assert main_cli(["--config", str(config), "--no-progress", "-q", "--scheduler", cluster.scheduler_address]) == 0
    [folder] = run_folders(tmp_path / "logs")
    logged = json.loads((folder / f"{run_name(folder)}_config.json").read_text())
    assert logged["registries"] == {"models": str((tmp_path / "mymods.py").resolve())}


def test_failing_point_is_reported_while_the_others_finish(tmp_path, cluster, capsys):
    module = tmp_path / "fragile.py"
    module.write_text(
        "from torch import nn\n"
        "def net(*, num_classes, in_channels=3, hidden=8):\n"
        "    if hidden == 13:\n"
        "        raise RuntimeError('unlucky width')\n"
        "    if hidden == 21:\n"
        "        return Breaks()\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))\n"
        "class Breaks(nn.Linear):\n"
        "    def __init__(self):\n"
        "        super().__init__(4, 10)\n"
        "    def forward(self, x):\n"
        "        raise RuntimeError('broke while training')\n")
    config = write_config(tmp_path, model="net", model_args={"hidden": [8, 13, 16, 21]}, epoch=1, cpu_threads=1,
                          registries={"models": str(module)})
    assert main_cli(["--config", str(config), "--no-progress", "--scheduler", cluster.scheduler_address]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "2 of 4 run(s) failed" in err
    assert "failed" in err and "unlucky width" in err
    # the run whose model factory raised has no log: the summary says where its traceback is instead
    assert ("1 of them failed before a run log was opened (while building the data, model or optimizer); their "
            "tracebacks are in the logs of the Dask workers that ran them (for local:N: above). The other 1: see "
            "their .log files.") in err
    finished = [f for f in run_folders(tmp_path / "logs") if (f / f"{run_name(f)}.csv").exists()]
    assert len(finished) == 2
    # a run that failed after its log was opened is named with that log, as in a sequential run
    [broken] = [f for f in run_folders(tmp_path / "logs") if "hidden21" in f.name]
    log_file = broken / f"{run_name(broken)}.log"
    assert f"RuntimeError: broke while training. Its log: {log_file}" in err
    assert err.count("Its log:") == 1, err  # on the error line; the summary's row names the folder, not the log
    assert "Traceback" in log_file.read_text()


def _epochs_in_csv(logs) -> int:
    """Epoch rows in the metrics CSV of the only run under ``logs`` (0 before it exists)."""
    csvs = list(logs.rglob("*.csv")) if logs.exists() else []
    return len(csvs[0].read_text().splitlines()) - 1 if csvs else 0


def test_killed_worker_is_survived_and_the_run_resumes_from_its_checkpoint(tmp_path, cluster):
    overrides = dict(epoch=6, cpu_threads=1, model_args={"width": 0.125})
    (tmp_path / "seq").mkdir()
    (tmp_path / "dask").mkdir()
    reference = write_config(tmp_path / "seq", **overrides)
    clustered = write_config(tmp_path / "dask", **overrides)
    assert main_cli(["--config", str(reference), "--no-progress", "-q"]) == 0
    logs = tmp_path / "dask" / "logs"
    killed = {}

    def kill_worker_after_two_epochs():
        with distributed.Client(cluster.scheduler_address) as client:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and _epochs_in_csv(logs) < 2:
                time.sleep(0.05)
            processing = client.processing()
            busy = [address for address, keys in processing.items() if keys]
            pids = client.run(os.getpid, workers=busy)
            for address, pid in pids.items():
                os.kill(pid, signal.SIGKILL)
                killed[address] = pid

    killer = threading.Thread(target=kill_worker_after_two_epochs)
    killer.start()
    code = main_cli(["--config", str(clustered), "--no-progress", "-q", "--scheduler", cluster.scheduler_address])
    killer.join()
    assert killed, "no worker was killed"
    assert code == 0
    [folder] = run_folders(logs)
    log_text = (folder / f"{run_name(folder)}.log").read_text()
    assert "Resuming run" in log_text
    _assert_same_runs(tmp_path / "seq" / "logs", logs)


def test_a_run_whose_worker_processes_died_is_said_to_have_died_with_its_log_not_to_have_failed_unlogged(
        tmp_path, cluster, capsys):
    """A run whose worker processes were killed (SIGKILL, the OOM killer) as often as the scheduler allows was
    summarised as failed "before a run log was opened (while building the data, model or optimizer)", its
    traceback "in the logs of the Dask workers": it had started training, its log was open, and no traceback
    exists anywhere. The summary says now that its workers died, names its log and says that a rerun resumes it."""
    module = tmp_path / "deadly.py"
    module.write_text(
        "import os, signal\n"
        "from torch import nn\n"
        "class Dies(nn.Linear):\n"
        "    def forward(self, x):\n"
        "        try:  # only in a Dask worker: the checks before the grid runs build and call it here\n"
        "            from distributed import get_worker\n"
        "            get_worker()\n"
        "        except ValueError:\n"
        "            return super().forward(x)\n"
        "        if x.is_meta:  # the worker's own check of the data's channels, before the run folder\n"
        "            return super().forward(x)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "def net(*, num_classes, in_channels=3):\n"
        "    return nn.Sequential(nn.Flatten(), Dies(in_channels * 16 * 16, num_classes))\n")
    config = write_config(tmp_path, model="net", model_args={}, epoch=1, cpu_threads=1, track_saturation=False,
                          post_processing=[], registries={"models": str(module)})
    scheduler = cluster.scheduler  # in this process: one death gives the task up (Dask's default: the 4th)
    allowed, scheduler.allowed_failures = scheduler.allowed_failures, 0
    try:
        code = main_cli(["--config", str(config), "--no-progress", "-q", "--scheduler", cluster.scheduler_address])
    finally:
        scheduler.allowed_failures = allowed
    err = " ".join(capsys.readouterr().err.split())
    [folder] = run_folders(tmp_path / "logs")
    assert code == 1
    assert "before a run log was opened" not in err and "Traceback" not in err
    assert "the Dask worker process running it died 1 time" in err
    assert f"rerun this command to resume it. Its log: {folder / f'{run_name(folder)}.log'}" in err
    assert err.count("Its log:") == 1, err  # on the error line; the summary's row names the folder, not the log
    assert ("1 of 1 run(s) failed; see each failed run's .log file. 1 of them ended with their Dask worker processes "
            "(no traceback exists; the same command resumes them).") in err


def test_ctrl_c_stops_the_command_s_runs_on_the_cluster_so_that_the_rerun_resumes_them(tmp_path, cluster):
    """Ctrl-C ended the command, but its task went on training on the worker and held the run folder, so the
    rerun the message asked for was refused ("in use by PID ..." of a worker process)."""
    import subprocess
    import sys

    from tests.conftest import ROOT, sigint_as_in_a_terminal
    config = write_config(tmp_path, epoch=5, cpu_threads=1)
    command = [sys.executable, str(ROOT / "main.py"), "--config", str(config), "--no-progress",
               "--scheduler", cluster.scheduler_address]
    # started by a background job (CI), the command would inherit SIGINT ignored and train on to the end
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=sigint_as_in_a_terminal)
    assert wait_for(lambda: _epochs_in_csv(tmp_path / "logs") >= 1, process, timeout=240)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Stopping 1 running task(s) on the cluster" in err and "did not stop within" not in err
    assert "queued" not in err
    [folder] = run_folders(tmp_path / "logs")
    assert f"on the cluster (train-0-{folder.name}): " in " ".join(err.split()), err  # which run is stopping
    assert "Run interrupted (its command was stopped)" in (folder / f"{run_name(folder)}.log").read_text()
    epochs_at_stop = len(read_metrics(folder))
    assert 1 <= epochs_at_stop < 5
    time.sleep(1.5)  # more than a task's polling interval: nothing trains on
    assert len(read_metrics(folder)) == epochs_at_stop
    assert main_cli(["--config", str(config), "--no-progress", "-q", "--scheduler", cluster.scheduler_address]) == 0
    assert len(read_metrics(folder)) == 5
    assert "Resuming run" in (folder / f"{run_name(folder)}.log").read_text()


def test_ctrl_c_in_a_terminal_stops_the_runs_of_a_local_cluster_after_their_batch(tmp_path):
    """A terminal's Ctrl-C reaches the whole foreground process group, the local workers too: each cancelled its
    task, whose training went on unreachable by the stop Event until the cluster killed it mid-epoch, and the
    command ended in a TimeoutError traceback (distributed.wait raised it where the code expected a return)."""
    import subprocess
    import sys

    from tests.conftest import ROOT, sigint_as_in_a_terminal
    config = write_config(tmp_path, epoch=200, cpu_threads=1, post_processing=[])
    process = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--config", str(config), "--no-progress",
                                "--scheduler", "local:1"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=sigint_as_in_a_terminal)
    try:
        assert wait_for(lambda: _epochs_in_csv(tmp_path / "logs") >= 1, process, timeout=240)
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C: the command and its cluster's worker processes
        _, err = process.communicate(timeout=120)
    finally:  # its own session: a failed wait (or a stopped test run) left 200 epochs training on after the test
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "did not stop within" not in err
    [folder] = run_folders(tmp_path / "logs")
    assert "Run interrupted (its command was stopped)" in (folder / f"{run_name(folder)}.log").read_text()
    assert 1 <= len(read_metrics(folder)) < 200


def test_ctrl_c_in_a_terminal_while_a_local_cluster_starts_stops_the_command_without_a_traceback(tmp_path):
    """A terminal's Ctrl-C while ``--scheduler local:N`` started its cluster reached the worker processes that were
    still importing, each of which printed the traceback of its KeyboardInterrupt, and the cluster cut short in its
    construction was closed at exit with distributed's 'AssertionError: Status.init'. The command now takes it once
    the cluster is up, and closes the cluster."""
    from tests.conftest import ROOT, sigint_as_in_a_terminal, spawned_children
    config = write_config(tmp_path, epoch=1, post_processing=[])
    process = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--config", str(config), "--no-progress",
                                "--scheduler", "local:2"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=sigint_as_in_a_terminal)
    try:
        assert wait_for(lambda: spawned_children(process.pid), process, timeout=120), process.communicate()
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C, while the first worker process imports
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Exception ignored" not in err, err
    assert "interrupted; rerun the same command" in err
    assert not run_folders(tmp_path / "logs")  # no task was handed over: nothing to resume, nothing half-written


def _runs_until_stopped(started: str, stop: str) -> str:
    """A task that says it started (Dask Event ``started``) and runs until its command sets ``stop``."""
    client = distributed.get_client()
    distributed.Event(started, client=client).set()
    distributed.Event(stop, client=client).wait(120)  # a bound only: an unfixed command never sets it
    return "stopped"


def _runs_unless_stopped(started: str, stop: str) -> str:
    """``_runs_until_stopped``, but a task that starts after its command was stopped ends at once, as train_point."""
    if distributed.Event(stop, client=distributed.get_client()).is_set():
        return "not started"
    return _runs_until_stopped(started, stop)


def test_a_command_stopped_while_it_hands_tasks_to_the_cluster_stops_those_handed_over(tmp_path):
    """A Ctrl-C (or SIGTERM) while the grid's runs were still being handed to the cluster left the runs handed over
    already running on the workers, for nobody (holding their run folders): the tasks were submitted outside the
    handling that stops them."""
    from phd_lab.distributed import submit_and_collect
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as local, distributed.Client(local) as client:
        def handed_over():
            yield "first", _runs_until_stopped, ("first-started", "stop-command"), None
            assert distributed.Event("first-started", client=client).wait(120), "the first task never started"
            raise KeyboardInterrupt  # Ctrl-C before the second is handed over

        try:
            with pytest.raises(KeyboardInterrupt):
                submit_and_collect(client, handed_over(), "grid", progress=False, stop_event="stop-command")
            assert distributed.Event("stop-command", client=client).is_set()
        finally:
            distributed.Event("stop-command", client=client).set()  # the task ends either way


def test_a_stopped_command_cancels_its_queued_tasks_and_waits_only_for_the_running_one(tmp_path, caplog):
    """A stopped command said "Stopping 3 task(s) on the cluster: each run ends after its current batch" where one
    ran and two waited behind it; those two then started after the stop, only to end at once. Now they are
    cancelled before the stop is signalled, and the message counts each kind. (A task that a worker was handed
    already may still start once cancelled: the worker learns of it later than of the stop. It ends at once, as
    train_point does for a point queued behind a stopped command, and as the task here does.)"""
    from phd_lab.distributed import submit_and_collect
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as local, distributed.Client(local) as client:
        def handed_over():  # one task group ("point"), as a grid's: the scheduler queues what no thread takes
            for index in range(3):
                yield f"point-{index}", _runs_unless_stopped, (f"started-{index}", "stop-queue"), None
            assert distributed.Event("started-0", client=client).wait(120), "the first task never started"
            deadline = time.monotonic() + 60
            while len(local.scheduler.tasks) < 3:  # Ctrl-C once the scheduler has all: not within their handing over
                assert time.monotonic() < deadline, "the scheduler never got the three tasks"
                time.sleep(0.01)
            raise KeyboardInterrupt  # Ctrl-C with one task running and two queued

        try:
            with pytest.raises(KeyboardInterrupt):
                submit_and_collect(client, handed_over(), "grid", progress=False, stop_event="stop-queue")
            time.sleep(0.5)  # a worker given a queued task would have started it by now
            assert not distributed.Event("started-1", client=client).is_set()
            assert not distributed.Event("started-2", client=client).is_set()
        finally:
            distributed.Event("stop-queue", client=client).set()
    said = " ".join(caplog.text.split())
    assert "Stopping 1 running task(s) on the cluster (point-0): " in said, said  # named, as the runs of a grid
    assert "; 2 queued task(s) cancelled." in said, said
    assert "did not stop within" not in said


def test_a_point_queued_behind_a_stopped_command_does_not_start(tmp_path):
    """A task that a worker takes up only after its command was stopped ends at once: no run folder, no data or
    model built for a run that would stop at its first batch."""
    from phd_lab.distributed import train_point
    from phd_lab.grid import Grid
    config = write_config(tmp_path, epoch=1)
    [point] = Grid(json.loads(config.read_text()))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as local, distributed.Client(local) as client:
        distributed.Event("stopped-command", client=client).set()
        future = client.submit(train_point, point.values, str(config), {}, "stopped-command", pure=False)
        assert future.result() == ("stopped", "not started: its command was stopped")
    assert not (tmp_path / "logs").exists()


def test_a_grid_on_a_cluster_of_threads_leaves_the_callers_root_logger_as_it_found_it(tmp_path):
    """A task set the root logger of the process it ran in to INFO for good: on a cluster of threads in the caller's
    process (LocalCluster(processes=False)) the caller's console printed every INFO line of its process after the
    grid. The level and the handlers are the caller's again after the task, and the run's log still has its INFO
    lines."""
    import logging

    from phd_lab.distributed import train_point
    from phd_lab.grid import Grid
    config = write_config(tmp_path, epoch=1, resolution=8, batch_size=256, track_saturation=False, post_processing=[])
    [point] = Grid(json.loads(config.read_text()))
    root, console = logging.getLogger(), logging.StreamHandler(sys.stderr)
    level = root.level
    root.setLevel(logging.WARNING)
    root.addHandler(console)
    try:
        before = root.level, list(root.handlers), [handler.level for handler in root.handlers]
        with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                      dashboard_address=":0") as local, distributed.Client(local) as client:
            outcome = client.submit(train_point, point.values, str(config), {}, pure=False).result()
            after = root.level, list(root.handlers), [handler.level for handler in root.handlers]
    finally:
        root.removeHandler(console)
        root.setLevel(level)
    assert outcome[0] == "finished", outcome
    assert after == before
    [folder] = run_folders(tmp_path / "logs")
    assert " INFO " in (folder / f"{run_name(folder)}.log").read_text()


OTHER_THREAD_MODELS = '''import logging
import threading

from torch import nn


def warns(*, num_classes, in_channels=3):
    """A tiny net whose factory warns, while another thread of its process (the caller's) warns too."""
    logging.getLogger("my_models").warning("planted warning")
    other = threading.Thread(target=logging.getLogger("caller").warning, args=("the caller's warning",))
    other.start()
    other.join()
    return nn.Sequential(nn.Conv2d(in_channels, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, num_classes))
'''


def _warning_point_on_threads(tmp_path, console: logging.Handler | None) -> tuple[list[str], list[str]]:
    """Train a point whose factory warns (``OTHER_THREAD_MODELS``) on a cluster of threads in this process, the root
    logger at WARNING with ``console`` as its one handler (pytest's own taken off for the task); the lines the
    console (stderr) got and the WARNING lines of the run's log."""
    from phd_lab.distributed import train_point
    from phd_lab.grid import Grid
    (tmp_path / "thread_models.py").write_text(OTHER_THREAD_MODELS)
    config = write_config(tmp_path, model="warns", model_args={}, epoch=1, resolution=8, batch_size=256,
                          track_saturation=False, post_processing=[],
                          registries={"models": str(tmp_path / "thread_models.py")})
    [point] = Grid(json.loads(config.read_text()))
    root = logging.getLogger()
    kept, level = list(root.handlers), root.level
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as local, distributed.Client(local) as client:
        root.handlers[:] = [console] if console else []
        root.setLevel(logging.WARNING)
        try:
            outcome = client.submit(train_point, point.values, str(config), {}, pure=False).result()
        finally:
            root.handlers[:] = kept
            root.setLevel(level)
    assert outcome[0] == "finished", outcome
    [folder] = run_folders(tmp_path / "logs")
    logged = (folder / f"{run_name(folder)}.log").read_text(encoding="utf-8").splitlines()
    return sys.stderr.getvalue().splitlines(), [line for line in logged if " WARNING " in line]


def test_the_callers_other_threads_warnings_still_show_while_a_task_runs_on_its_cluster_of_threads(tmp_path, capsys):
    """A caller without a root handler has its warnings printed by logging's last resort; while a task ran on a
    cluster of threads in its process (LocalCluster(processes=False)), the task's console handler (taking its own
    thread's records only) stood on the root, so logging used no last resort and the warnings of the caller's other
    threads were lost. They show as without the task now, and the run's warnings show once, named with the run."""
    said, logged = _warning_point_on_threads(tmp_path, None)
    planted = [line for line in said if "planted warning" in line]
    assert said.count("the caller's warning") == len(planted) == len(logged) >= 1, said
    [folder] = run_folders(tmp_path / "logs")
    assert all(line.endswith(f" WARNING my_models (run {run_name(folder)}): planted warning") for line in planted), said


def test_a_run_warning_shows_once_on_the_callers_console_on_a_cluster_of_threads(tmp_path, capsys):
    """With its own console handler on the root, a caller whose cluster of threads ran a task saw each of the run's
    warnings twice: from its handler and from the task's console handler, which names the run. Once now, named
    with the run; the caller's other threads' warnings still reach its handler, and the run's log has them all."""
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("CALLER %(name)s: %(message)s"))
    said, logged = _warning_point_on_threads(tmp_path, console)
    planted = [line for line in said if "planted warning" in line]
    assert said.count("CALLER caller: the caller's warning") == len(planted) == len(logged) >= 1, said
    assert all("(run " in line and not line.startswith("CALLER") for line in planted), said
    assert all(line.endswith(" WARNING my_models: planted warning") for line in logged), logged
    assert console.filters == []  # the caller's handler is as it was


FLAG_SETTING_METRICS = '''import torch

from phd_lab.metrics import TopKAccuracy


def strict_accuracy():
    """Accuracy, set up "for reproducibility" as some factories do."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_float32_matmul_precision("medium")
    return TopKAccuracy(k=1, name="strict_accuracy")
'''


def test_a_factory_that_sets_torch_flags_while_a_worker_checks_its_point_leaves_them_to_no_later_task(tmp_path):
    """On a worker, the point's checks (check_data, the metric factories) ran outside the guard that puts torch's
    flags back: a factory's deterministic algorithms and matmul precision stayed set for the worker's later tasks,
    which a sequential grid (its checks guarded) never trained under."""
    import torch

    from phd_lab.distributed import train_point
    from phd_lab.grid import Grid
    (tmp_path / "flag_metrics.py").write_text(FLAG_SETTING_METRICS)
    config = write_config(tmp_path, epoch=1, resolution=8, batch_size=256, track_saturation=False, post_processing=[],
                          metrics=["strict_accuracy"], registries={"metrics": str(tmp_path / "flag_metrics.py")})
    [point] = Grid(json.loads(config.read_text()))
    before = torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision()
    assert before == (False, "highest")
    try:
        with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                      dashboard_address=":0") as local, distributed.Client(local) as client:
            outcome = client.submit(train_point, point.values, str(config), {}, pure=False).result()
            assert outcome[0] == "finished", outcome
            assert (torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision()) == before
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.set_float32_matmul_precision(before[1])


WAITING_MODELS = """import torch
from torch import nn

import {gate} as gate


class Waiting(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(4, num_classes))

    def forward(self, x):
        if not x.is_meta and not gate.started.is_set():  # training: the worker's next task arrives now
            gate.started.set()
            gate.next_task.start()
            gate.reached.wait(60)
            gate.seen.append((list(gate.checked), torch.are_deterministic_algorithms_enabled()))
            gate.recorded.set()
        return self.net(x)


def waiting(*, num_classes, in_channels=3):
    return Waiting(num_classes, in_channels)
"""

GATED_METRICS = """import torch

import {gate} as gate
from phd_lab.metrics import TopKAccuracy


def strict_accuracy():
    torch.use_deterministic_algorithms(True, warn_only=True)
    gate.checked.append("strict_accuracy")
    gate.reached.set()
    gate.recorded.wait(60)
    return TopKAccuracy(k=1, name="strict_accuracy")
"""


def test_a_workers_next_task_checks_its_point_only_once_the_run_in_progress_has_ended(tmp_path):
    """A worker with several threads checked a task's point (imported its registry files, ran its factories) while
    another task's run trained: the import took the other registry folders' helpers out of sys.modules and their
    folders off sys.path (that run's dataset could not be pickled for its DataLoader workers: 'import of module
    failed'), and a factory's flags (deterministic algorithms) held for the run in progress, which the guard of
    the checks then set back under it. The next task waits for its turn before its checks now."""
    import logging
    import types

    import torch

    from phd_lab.distributed import train_point
    from phd_lab.grid import Grid
    name = f"gate_{tmp_path.name}"
    gate = types.ModuleType(name)
    gate.started, gate.reached, gate.recorded = threading.Event(), threading.Event(), threading.Event()
    gate.checked, gate.seen, outcomes = [], [], []
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    (tmp_path / "a" / "models.py").write_text(WAITING_MODELS.format(gate=name))
    (tmp_path / "b" / "metrics.py").write_text(GATED_METRICS.format(gate=name))
    first = write_config(tmp_path / "a", epoch=1, resolution=8, batch_size=256, track_saturation=False,
                         post_processing=[], model="waiting", model_args={},
                         registries={"models": str(tmp_path / "a" / "models.py")})
    second = write_config(tmp_path / "b", epoch=1, resolution=8, batch_size=256, track_saturation=False,
                          post_processing=[], metrics=["strict_accuracy"],
                          registries={"metrics": str(tmp_path / "b" / "metrics.py")})
    [point_a], [point_b] = Grid(json.loads(first.read_text())), Grid(json.loads(second.read_text()))
    gate.next_task = threading.Thread(target=lambda: outcomes.append(train_point(point_b.values, str(second), {})))

    class Waits(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "Another training run is in progress" in record.getMessage():
                gate.reached.set()

    turn_log, root = logging.getLogger("phd_lab.lock"), logging.getLogger()
    levels, waits = (turn_log.level, root.level), Waits()
    turn_log.setLevel(logging.INFO), turn_log.addHandler(waits)
    sys.modules[name] = gate
    try:
        outcome = train_point(point_a.values, str(first), {})
        gate.next_task.join(120)
        root_level = root.level  # the caller's again, though the task that raised it ended first
    finally:
        turn_log.removeHandler(waits)
        turn_log.setLevel(levels[0]), root.setLevel(levels[1])
        del sys.modules[name]
        torch.use_deterministic_algorithms(False)
    assert outcome[0] == "finished" and [result[0] for result in outcomes] == ["finished"], (outcome, outcomes)
    assert gate.seen == [([], False)]
    assert root_level == levels[1]


def test_scheduler_spec_errors():
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("tcp://127.0.0.1:8786") == ("address", "tcp://127.0.0.1:8786")
    with pytest.raises(UsageError, match="neither a scheduler address"):
        parse_scheduler("nonsense")
    with pytest.raises(UsageError, match="at least one worker"):
        parse_scheduler("local:0")
    for host in ("localhost:8786", "localhost.cluster:8786", "tcp://localhost:8786"):
        assert parse_scheduler(host) == ("address", host)
    for spec in ("local:x", "local:-1", "local:2.5", "LOCAL:3"):  # were a traceback / a 20 s connection attempt
        with pytest.raises(UsageError, match="whole number N ≥ 1"):
            parse_scheduler(spec)
    for spec in ("http://127.0.0.1:8787", "https://cluster:8787/status"):  # the dashboard's address: a traceback
        with pytest.raises(UsageError, match="is a web address, probably the dashboard's"):
            parse_scheduler(spec)
    for spec in ("tcp://127.0.0.1:abc", "localhost:", "tcp://host:99999"):  # were "invalid literal for int() ..."
        with pytest.raises(UsageError, match="is not a number from 1 to 65535"):
            parse_scheduler(spec)
    for spec in ("tcp://[::1]:8786", "tcp://[::1]", "tcp://scheduler"):
        assert parse_scheduler(spec) == ("address", spec)
    for spec in ("tcp://", "tcp://:8786", ":8786", "tcp://[]:8786"):  # tcp:// passed the dry run
        with pytest.raises(UsageError, match="names no host"):
            parse_scheduler(spec)


def test_a_local_cluster_beyond_reason_is_refused_before_it_fills_the_memory(tmp_path):
    """local:99999999999 passed the check (N ≥ 1 only) and LocalCluster built the specs of every worker: the
    command grew by about a gigabyte a second until killed. Under an address-space limit it now gets exit 2, and
    1024 workers are still allowed by the check."""
    import resource

    from tests.conftest import ROOT
    assert parse_scheduler("local:1024") == ("local", 1024)
    config = write_config(tmp_path, epoch=1, post_processing=[])
    limit = 8 * 2**30  # what the command may take at most: without the check it ran into this limit
    result = subprocess.run([sys.executable, "main.py", "--config", str(config), "--scheduler", "local:99999999999",
                             "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert result.returncode == 2, result.stderr[-2000:]
    assert ("error: --scheduler 'local:99999999999': a local cluster takes at most 1024 worker processes"
            in " ".join(result.stderr.split())), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "logs").exists()


def test_plain_local_starts_one_worker_per_core_this_process_may_use(tmp_path):
    """Under taskset (or a cgroup's CPU set) plain ``local`` counted the machine's cores, not the usable ones."""
    code = ("import logging; logging.basicConfig(level=logging.WARNING)\n"
            "from phd_lab.distributed import parse_scheduler\n"
            "print(parse_scheduler('local', warn=True), parse_scheduler('local:3', warn=True))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "('local', 1) ('local', 3)"
    assert "--scheduler local:3 starts 3 worker processes on 1 core(s)" in result.stderr
    assert "--scheduler local starts" not in result.stderr


@pytest.mark.parametrize("command", ["main.py", "probe_main.py"])
def test_a_command_warns_of_more_workers_than_cores_once(tmp_path, command):
    """Each check of --scheduler warned again: main.py said it twice (at the cluster's start and where it asked
    the workers for GPUs), probe_main.py five times."""
    from tests.conftest import ROOT
    from tests.probe_latents import blob_layers, make_latents
    if command == "main.py":
        source = ["--config", str(write_config(tmp_path, epoch=1, post_processing=[]))]
    else:
        source = ["--latents", str(make_latents(tmp_path, *blob_layers(n_layers=1))[1]),
                  "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run([sys.executable, command, *source, "--scheduler", "local:2", "--no-progress"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("--scheduler local:2 starts 2 worker processes on 1 core(s)") == 1, result.stderr


@pytest.mark.parametrize("spec", ["tls://127.0.0.1:1"])
def test_a_malformed_scheduler_address_is_a_usage_error(spec):
    """distributed raises ValueError/TypeError for these (a traceback, exit 1)."""
    from phd_lab.distributed import dask_client
    with pytest.raises(UsageError, match="cannot reach a Dask scheduler there"):
        with dask_client(spec):
            pass


@pytest.mark.parametrize("extra, spec", [(["--dry-run"], "x"), (["--dry-run"], "local:0"), (["--dry-run"], ""),
                                         ([], ""), (["--dry-run"], "tcp://")])
def test_a_malformed_scheduler_is_refused_by_the_dry_run_and_an_empty_one_by_the_run(tmp_path, capsys, extra, spec):
    """The dry run printed the grid for --scheduler x (only the run refused it), and the run took an empty
    --scheduler for none and trained on this machine."""
    config = write_config(tmp_path, epoch=1)
    assert main_cli(["--config", str(config), "--scheduler", spec, "--no-progress", "-q", *extra]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(f"error: --scheduler {spec!r}") and "Traceback" not in err, err
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("spec", ["local:1", "local"])
def test_a_device_missing_here_is_refused_before_a_local_cluster_starts(tmp_path, capsys, spec):
    """local:N trains on this machine, which lacks the device: refused up front as in a sequential run (only the
    workers of a remote scheduler check their devices themselves). Plain 'local' (one worker per core) was taken
    for a remote scheduler: its cluster started and its worker failed the run before the command said exit 2."""
    config = write_config(tmp_path, device="cuda:99")
    assert main_cli(["--config", str(config), "--scheduler", spec, "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'cuda:99'" in err and "Traceback" not in err and "Local Dask cluster" not in err  # none started
    assert not (tmp_path / "logs").exists()


def test_probe_tasks_name_their_files_by_absolute_path(tmp_path, monkeypatch):
    """A Dask worker in another working directory looked for relative latents paths from its own folder, and
    the job blamed a re-extraction ("changed after the probe job verified its sha256")."""
    from phd_lab.probes.discovery import jobs_from_latents
    from phd_lab.probes.job import build_tasks, validate_jobs
    from phd_lab.probes.runner import run_task
    from tests.probe_latents import blob_layers, make_latents
    make_latents(tmp_path, *blob_layers(n_layers=1))
    monkeypatch.chdir(tmp_path)
    jobs, _ = jobs_from_latents("run/latents")  # relative, as with the default logs_dir ./logs
    [task] = build_tasks(jobs, validate_jobs(jobs)[0])
    assert all(os.path.isabs(path) for path in (task.train, task.eval, task.train_labels, task.eval_labels))
    assert all(os.path.isabs(path) for path in task.stamps) and len(task.stamps) == 4
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the worker's own folder
    assert run_task(task).layer == "block0.conv"


def test_ctrl_c_of_a_probe_job_on_a_local_cluster_lets_the_running_fit_finish_and_be_cached(tmp_path):
    """The README promises that probe tasks already running finish their layer; a Ctrl-C cancelled them all
    (and the terminal's reached the workers too), so the layer a worker was seconds from finishing was lost."""
    import subprocess
    import sys

    from phd_lab.probes.runner import TEST_DELAY_ENV
    from tests.conftest import ROOT, sigint_as_in_a_terminal
    from tests.probe_latents import digits_layers, make_latents
    layers = 5
    _, latents = make_latents(tmp_path, *digits_layers(n_layers=layers, width=16))
    cache = tmp_path / "cache"
    process = subprocess.Popen([sys.executable, "probe_main.py", "--latents", str(latents), "--cache-dir", str(cache),
                                "--scheduler", "local:1", "--no-progress"], cwd=ROOT,
                               env={**os.environ, TEST_DELAY_ENV: "4"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=sigint_as_in_a_terminal)
    assert wait_for(lambda: len(list(cache.rglob("*.json"))) >= 1, process, timeout=240)  # the next one runs now
    os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C: the job and its cluster's worker process
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    said = " ".join(err.split())
    stopping = r"Stopping: 1 layer fit\(s\) running on the cluster \(probe-\d+-features\.\d+\) finish and are cached"
    assert re.search(stopping, said), said  # the running fit named by its layer
    assert len(list(cache.rglob("*.json"))) == 2  # the running one is kept, the queued ones were cancelled


class _InterruptedWhileHandedOver(list):
    """Probe tasks, the last of which, when it is handed to the cluster (the job's client holds a probe future then),
    is met with a Ctrl-C once the first one runs on the cluster."""

    def __init__(self, tasks: list, client) -> None:
        super().__init__(tasks)
        self.client, self.interrupted = client, False

    def __getitem__(self, position):
        handing_over = any(str(key).startswith("probe-") for key in distributed.default_client().futures)
        if position == len(self) - 1 and handing_over and not self.interrupted:
            self.interrupted = True
            deadline = time.monotonic() + 120
            while not any(self.client.run(_executing_keys).values()):
                assert time.monotonic() < deadline, "the first fit never ran"
                time.sleep(0.02)
            raise KeyboardInterrupt
        return super().__getitem__(position)


def _executing_keys(dask_worker) -> list[str]:
    return [task.key for task in dask_worker.state.executing]


def test_ctrl_c_while_a_probe_job_hands_layers_to_the_cluster_lets_the_running_fit_finish_and_be_cached(tmp_path,
                                                                                                      monkeypatch):
    """A Ctrl-C while the layers were still being handed to the cluster came before the handling that lets the fits
    running there finish and be cached: the layer a worker was fitting was lost, and the rerun fitted it again."""
    from dataclasses import replace

    from phd_lab.probes.cache import ResultCache
    from phd_lab.probes.discovery import jobs_from_latents
    from phd_lab.probes.job import build_tasks, validate_jobs
    from phd_lab.probes.runner import TEST_DELAY_ENV, run_probes
    from tests.probe_latents import digits_layers, make_latents
    _, latents = make_latents(tmp_path, *digits_layers(n_layers=2, width=8))
    jobs, _ = jobs_from_latents(latents)
    first, last = (replace(task, size=size) for task, size in zip(build_tasks(jobs, validate_jobs(jobs)[0]), (1, 0)))
    cache = ResultCache(tmp_path / "cache")
    monkeypatch.setenv(TEST_DELAY_ENV, "2")  # the first fit still runs when the Ctrl-C comes
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  dashboard_address=":0") as local, distributed.Client(local) as client:
        tasks = _InterruptedWhileHandedOver([first, last], client)
        with pytest.raises(KeyboardInterrupt):
            run_probes(tasks, cache, progress=False, scheduler=local.scheduler_address)
    assert tasks.interrupted
    assert cache.get(first.key) is not None and cache.get(last.key) is None


def test_a_stop_while_one_fit_is_handled_keeps_a_fit_that_finished_on_the_cluster_meanwhile(tmp_path):
    """A stop (here a Ctrl-C) while the job handled one layer's result lost a fit that had finished on the cluster
    meanwhile, not yet handed over by as_completed: only the fits still running were waited for and cached, so the
    rerun fitted that layer again (hours on a big one). It is cached and written now."""
    from phd_lab.probes.cache import ResultCache
    from phd_lab.probes.discovery import jobs_from_latents
    from phd_lab.probes.job import build_tasks, validate_jobs
    from phd_lab.probes.runner import run_probes
    from tests.probe_latents import digits_layers, make_latents
    _, latents = make_latents(tmp_path, *digits_layers(n_layers=2, width=8))
    jobs, _ = jobs_from_latents(latents)
    tasks = build_tasks(jobs, validate_jobs(jobs)[0])
    cache = ResultCache(tmp_path / "cache")
    written: list[str] = []

    def on_record(task, record, cached) -> None:
        written.append(task.layer)
        if len(written) > 1:
            return
        # the job's own client holds the probe futures; wait until the other layer's fit has finished there
        futures = distributed.default_client().futures
        other = next(key for key in futures if str(key).startswith("probe-") and task.key_digest() not in str(key))
        deadline = time.monotonic() + 120
        while futures[other].status != "finished":
            assert time.monotonic() < deadline, "the other fit never finished"
            time.sleep(0.02)
        raise KeyboardInterrupt  # the stop arrives while the first layer's record is written

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  dashboard_address=":0") as local:
        with pytest.raises(KeyboardInterrupt):
            run_probes(tasks, cache, progress=False, scheduler=local.scheduler_address, on_record=on_record)
    assert sorted(written) == sorted(task.layer for task in tasks)
    assert all(cache.get(task.key) is not None for task in tasks)  # the rerun fits none of them again


def test_probe_job_on_cluster_gives_the_same_csv_as_local(tmp_path, cluster, capsys):
    import pandas as pd

    from tests.probe_latents import make_latents

    local_run, local_latents = make_latents(tmp_path / "local")
    dask_run, dask_latents = make_latents(tmp_path / "dask")

    def probe(latents, *extra) -> tuple[int, str]:  # in this process: the job, not its process, is compared
        return probe_job_in_process(capsys, "--latents", str(latents), "--no-progress", *extra)

    assert probe(local_latents, "-mp", "0")[0] == 0
    code, err = probe(dask_latents, "--scheduler", cluster.scheduler_address, "--cache-dir", str(tmp_path / "cache"))
    assert code == 0, err
    local = pd.read_csv(local_run / "probe_performances.csv").drop(columns="seconds")
    clustered = pd.read_csv(dask_run / "probe_performances.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(local, clustered, check_exact=True)
    assert len(clustered) == 3
    # restarted on the cluster, every layer comes from the shared cache
    code, err = probe(dask_latents, "--scheduler", cluster.scheduler_address, "--cache-dir", str(tmp_path / "cache"))
    assert code == 0 and "3 found in the cache" in err, err


def test_gpu_probe_fits_go_to_the_workers_that_declare_a_gpu(tmp_path, cluster, capsys):
    """lbfgs-torch fits on CUDA asked for no GPU resource, so on a cluster of CPU and GPU workers they also landed on
    CPU workers (and failed there). They now go to GPU workers only, as training runs do; CPU fits anywhere."""
    import socket

    import torch

    from tests.probe_latents import blob_layers, make_latents

    _, latents = make_latents(tmp_path, *blob_layers(n_layers=4))
    with distributed.Client(cluster) as client:  # the module's two CPU workers, and a GPU worker for this test
        with _gpu_worker(cluster.scheduler_address, "--name", "gpu-worker"):
            client.wait_for_workers(3, timeout=120)
            gpu_address = next(address for address, info in client.scheduler_info()["workers"].items()
                               if info.get("resources", {}).get("GPU"))
            ran_on: dict[str, set[str]] = {}
            for device in ("cuda", "cpu"):
                with distributed.get_task_stream(client=client) as stream:  # the job in this process: its tasks
                    code, stderr = probe_job_in_process(
                        capsys, "--latents", str(latents), "--no-progress", "--solver", "lbfgs-torch", "--probe-device",
                        device, "--scheduler", cluster.scheduler_address,
                        "--cache-dir", str(tmp_path / f"cache-{device}"))
                fails = device == "cuda" and not torch.cuda.is_available()  # no CUDA for the fits here
                assert code == (1 if fails else 0), stderr
                probes = [record for record in stream.data if record["key"].startswith("probe-")]
                ran_on[device] = {record["worker"] for record in probes}
                # every fit ran, except where the CUDA fits fail: a failure cancels the fits still queued
                assert len({record["key"] for record in probes}) == 4 if not fails else probes
                if fails:  # the worker without CUDA says so (torch said "Found no NVIDIA driver")
                    said = " ".join(stderr.split())
                    assert "to be probed on probe_device 'cuda', but torch sees no CUDA device in the process " \
                           f"that got the fit (host {socket.gethostname()})" in said, said
                    assert "--resources GPU=1" in said and "Traceback" not in said, said
        deadline = time.monotonic() + 60  # the GPU worker has left before the next test uses the cluster
        while len(client.scheduler_info()["workers"]) > 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert ran_on["cuda"] == {gpu_address}  # CPU fits may go to any worker (Dask decides)


def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()


@pytest.mark.parametrize("workers", [1, 2])
def test_local_cluster_workers_share_the_cores(workers):
    """local:N gives every worker process an equal share of the cores for torch (Dask's nanny
    would start each with one thread and leave the other cores idle)."""
    from phd_lab.distributed import dask_client
    from phd_lab.environment import available_cores
    with dask_client(f"local:{workers}") as client:
        threads = client.run(_torch_threads)
    assert len(threads) == workers
    assert set(threads.values()) == {max(1, available_cores() // workers)}


def test_a_task_on_a_local_cluster_may_start_processes():
    """Dask started local:N workers as daemonic processes, which may have no children: every run with
    num_workers > 0 failed with 'AssertionError: daemonic processes are not allowed to have children'."""
    from phd_lab.distributed import dask_client
    # as a DataLoader with num_workers > 0 does; exec, a builtin, spares the worker an import of this test file
    start_a_child = ("import multiprocessing, os\nchild = multiprocessing.Process(target=os.getpid)\nchild.start()\n"
                     "child.join()\nassert child.exitcode == 0\n")
    with dask_client("local:1") as client:
        assert list(client.run(exec, start_a_child).values()) == [None]


def test_gpu_runs_ask_for_a_gpu_resource_only_where_workers_declare_one():
    """A task asking for GPU=1 on a cluster whose workers declare no GPU resource (local:N) would
    wait forever: no worker could take it."""
    from phd_lab.distributed import task_resources
    assert task_resources("cuda", gpus_on_cluster=True) == {"GPU": 1}
    assert task_resources("cuda:1", gpus_on_cluster=True) == {"GPU": 1}
    assert task_resources("auto", gpus_on_cluster=True) == {"GPU": 1}
    assert task_resources("cpu", gpus_on_cluster=True) is None
    assert task_resources("cuda", gpus_on_cluster=False) is None
    assert task_resources("auto", gpus_on_cluster=False) is None


def test_a_run_that_tracks_saturation_on_cuda_needs_a_gpu_even_when_it_trains_on_the_cpu():
    """``"device": "cpu", "tracking_device": "cuda"`` sums the covariances on a GPU: such a run asked for no GPU
    resource, so it could land on a CPU-only worker and fail there, and it was left out of the sharing warning."""
    from phd_lab.distributed import gpu_device, task_resources
    assert gpu_device("cpu", "cuda") == "cuda" and gpu_device("cpu", "cuda:1") == "cuda:1"
    assert task_resources(gpu_device("cpu", "cuda:1"), gpus_on_cluster=True) == {"GPU": 1}
    for device, tracking in (("cpu", None), ("cpu", "cpu"), ("cuda:1", "cpu"), ("auto", None), ("auto", "cuda"),
                             ("cuda", "cuda:1")):
        assert gpu_device(device, tracking) == device  # the model's device decides whenever it may be a GPU
    assert task_resources(gpu_device("cpu", "cpu"), gpus_on_cluster=True) is None


def test_a_cluster_has_gpus_only_where_a_worker_declares_the_resource():
    """A local:N cluster (workers without resources) must not be taken for one with GPUs: its GPU runs would ask
    for GPU=1 and wait forever."""
    from phd_lab.distributed import cluster_has_gpus, task_resources
    for resources, gpus in ((None, False), ({"GPU": 0}, False), ({"GPU": 1}, True)):
        with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0",
                                      resources=resources) as local, distributed.Client(local) as client:
            assert cluster_has_gpus(client) is gpus
            assert task_resources("cuda", cluster_has_gpus(client)) == ({"GPU": 1} if gpus else None)


def test_a_gpu_worker_that_joins_after_five_others_is_seen(tmp_path):
    """distributed 2025.7 to 2026.6 list only the first five workers unless asked for all: a GPU worker beyond them
    went unseen, so the GPU runs asked for no GPU and landed on CPU workers."""
    from phd_lab.distributed import cluster_has_gpus, cluster_workers
    with distributed.LocalCluster(n_workers=5, threads_per_worker=1, processes=False, protocol="tcp",
                                  dashboard_address=":0") as cpus, \
            distributed.Client(cpus) as client:
        client.wait_for_workers(5, timeout=60)
        assert not cluster_has_gpus(client)
        with _gpu_worker(cpus.scheduler_address, "--no-nanny"):
            client.wait_for_workers(6, timeout=120)
            assert len(cluster_workers(client)) == 6
            assert cluster_has_gpus(client)


def test_runs_that_would_share_a_gpu_are_warned_about_with_the_per_gpu_setup():
    """local:N workers on a GPU machine all trained on its first GPU without a word (a grid of four took as
    long as in sequence on an H200); the old advice for remote clusters (`dask worker --resources GPU=1`)
    still let every worker of a multi-GPU node use the first GPU."""
    from phd_lab.distributed import gpu_sharing_warning
    per_gpu = "dask cuda worker ADDRESS --resources GPU=1"
    for devices in (["cuda", "cuda"], ["cpu", "cuda:1", "cuda:1"], ["auto", "auto"]):  # where workers declare GPUs
        assert gpu_sharing_warning(devices, True, 4, True) is None
        assert gpu_sharing_warning(devices, True, None, True) is None
    remote = gpu_sharing_warning(["cpu", "cuda:1", "cuda"], False, None, False)
    assert remote.startswith("No worker of the cluster declares a GPU resource, so GPU runs are not limited")
    assert per_gpu in remote
    assert gpu_sharing_warning(["cpu", "cpu"], False, None, True) is None
    assert gpu_sharing_warning(["auto", "auto"], False, None, True) is None  # 'auto' trains where the workers are
    assert gpu_sharing_warning(["cuda", "cpu"], False, None, True) is None  # one GPU run shares with no one
    local = gpu_sharing_warning(["auto", "cpu", "auto"], False, 2, True)
    assert local.startswith("The 2 workers of local:2 would run their CUDA runs on the same GPU at once")
    assert per_gpu in local and '"device": "cpu"' in local
    assert gpu_sharing_warning(["cuda", "cuda:0"], False, 2, False) is not None  # both the default device
    assert gpu_sharing_warning(["cuda:0", "cuda:1"], False, 2, True) is None  # distinct GPUs
    assert gpu_sharing_warning(["auto", "auto"], False, 2, False) is None  # 'auto' is the CPU without CUDA
    assert gpu_sharing_warning(["cuda", "cuda"], False, 1, True) is None  # one worker runs one at a time
    assert gpu_sharing_warning(["auto", "cpu"], False, 4, True) is None  # a single GPU run
    probes = gpu_sharing_warning(["cuda", "cuda"], False, 2, False, device_key="probe_device", tasks="probe fits")
    assert "their CUDA probe fits on the same GPU" in probes and '"probe_device": "cpu"' in probes


def test_gpu_runs_on_a_cluster_without_gpu_resources_are_warned_about(tmp_path, cluster, capfd):
    """The warning reaches the user of a real cluster whose workers declare no GPU (the runs then fail on these
    CPU-only workers with the device's own error)."""
    config = write_config(tmp_path, epoch=1, cpu_threads=1, device="cuda", seed=[1, 2])
    main_cli(["--config", str(config), "--no-progress", "--scheduler", cluster.scheduler_address])
    err = " ".join(capfd.readouterr().err.split())
    assert "No worker of the cluster declares a GPU resource, so GPU runs are not limited to one per GPU" in err
    assert "dask cuda worker ADDRESS --resources GPU=1" in err
    (tmp_path / "tracked").mkdir()
    config = write_config(tmp_path / "tracked", epoch=1, cpu_threads=1, device="cpu", tracking_device="cuda",
                          seed=[1, 2])
    main_cli(["--config", str(config), "--no-progress", "--scheduler", cluster.scheduler_address])
    err = " ".join(capfd.readouterr().err.split())  # the covariances of both runs would share one GPU
    assert "No worker of the cluster declares a GPU resource, so GPU runs are not limited to one per GPU" in err


def test_a_point_in_use_by_another_process_is_reported_as_such_without_a_traceback(tmp_path, cluster, capfd):
    """On a cluster the lock refusal was a failed task with the worker's traceback, and its exit code differed
    from a sequential run's; now it is 'in use' as there (exit 1 for a grid, 2 when it was the only point)."""
    from phd_lab.experiment import Main
    from tests.test_recovery import lock_held_elsewhere
    config = write_config(tmp_path, epoch=1, cpu_threads=1, seed=[1, 2])
    main = Main(progress=False)
    main.load(config)
    first = main.executors[0].rundir.create()
    with lock_held_elsewhere(first.lock) as pid:
        assert main_cli(["--config", str(config), "--no-progress", "--scheduler", cluster.scheduler_address]) == 1
        err = capfd.readouterr().err
        assert f"in use by PID {pid}" in err and "Traceback" not in err
        assert "1 of 2 run(s) are being run by another process" in err and "run(s) failed" not in err
        assert main.executors[1].rundir.metrics_csv.exists() and not first.metrics_csv.exists()
        assert main_cli(["--config", str(config), "--index", "0", "--no-progress", "--scheduler",
                         cluster.scheduler_address]) == 2  # as `--index 0` without a cluster
        assert f"in use by PID {pid}" in capfd.readouterr().err


def test_a_port_that_accepts_but_never_answers_is_a_usage_error_not_a_hang(tmp_path, capsys):
    """distributed's connect waits for the scheduler's handshake without a time limit: a command given the
    port of another service waited forever without a word. Dask's connect timeout now bounds it."""
    import socket

    import dask
    silent = socket.create_server(("127.0.0.1", 0))
    accepted = []
    threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
    address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
    try:
        with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
            code = main_cli(["--config", str(write_config(tmp_path)), "--scheduler", address])
        assert code == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "sent no Dask handshake within 2 s" in err and address in err and "Traceback" not in err
    finally:
        silent.close()


def test_an_address_where_nothing_listens_is_said_to_refuse_not_to_be_another_service(tmp_path, capsys):
    import socket
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free again once closed: nothing listens there
    code = main_cli(["--config", str(write_config(tmp_path)), "--scheduler", f"tcp://127.0.0.1:{port}"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "nothing listens at that port (connection refused)" in err and "handshake" not in err
    assert not (tmp_path / "logs").exists()


def test_another_service_s_banner_is_a_usage_error_not_a_traceback(tmp_path, capsys):
    """A port that speaks first (an SSH server's banner): distributed read its bytes as a frame length and
    failed with a MemoryError of exbibytes, which came out as a traceback and exit 1."""
    import socket
    banner = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        while True:
            try:
                connection, _ = banner.accept()
            except OSError:  # closed by the test
                return
            connection.sendall(b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.6\r\n")
            connection.close()

    threading.Thread(target=answer, daemon=True).start()
    address = f"tcp://127.0.0.1:{banner.getsockname()[1]}"
    try:
        code = main_cli(["--config", str(write_config(tmp_path)), "--scheduler", address])
    finally:
        banner.close()
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "cannot reach a Dask scheduler there (the port answered, but not as a Dask scheduler" in err
    assert "Traceback" not in err and not (tmp_path / "logs").exists()


def test_a_probe_job_with_an_unreachable_scheduler_writes_nothing(tmp_path, capsys):
    """The probe job connected only after it had locked the run folders, opened their probe logs and made the
    cache folder: its exit 2 left all of them behind."""
    import socket

    from phd_lab.probes.cli import probe_cli
    from tests.probe_latents import make_latents
    run_dir, latents = make_latents(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free again once closed: nothing listens there
    code = probe_cli(["--latents", str(latents), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
                      "--scheduler", f"tcp://127.0.0.1:{port}"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "nothing listens at that port (connection refused)" in err and "probe.log" not in err
    assert not (tmp_path / "cache").exists()
    assert not {".probe.lock", "probe.log"} & {path.name for path in run_dir.iterdir()}


def test_a_scheduler_without_workers_is_said_and_its_first_worker_awaited(caplog):
    """Whether GPU tasks ask for GPU workers is read from the workers: read from none, GPU runs submitted before the
    GPU workers had joined asked for no GPU, so they could land on CPU workers (the tasks wait for a worker anyway)."""
    seen: list[bool] = []
    with distributed.LocalCluster(n_workers=0, dashboard_address=":0") as empty:
        with caplog.at_level("WARNING", logger="phd_lab.distributed"):
            connected = threading.Thread(target=lambda: seen.extend(_gpus_seen(empty.scheduler_address)))
            connected.start()
            deadline = time.monotonic() + 60
            while "has no workers yet" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            assert connected.is_alive() and not seen  # nothing is submitted to a scheduler without workers
            with _gpu_worker(empty.scheduler_address, "--no-nanny"):
                connected.join(120)
    assert seen == [True]
    assert f"The scheduler at {empty.scheduler_address} has no workers yet; waiting for the first" in caplog.text


def _gpus_seen(address: str) -> list[bool]:
    """Whether the command's connection to ``address`` sees GPU workers, once ``dask_client`` lets it go on."""
    from phd_lab.distributed import cluster_has_gpus, dask_client
    with dask_client(address) as client:
        return [cluster_has_gpus(client)]


def test_diverged_latents_on_the_cluster_fail_their_run_only(tmp_path, cluster):
    """The NaN check of the probe fits runs in the Dask tasks too: the diverged run's failure names its file,
    the healthy run of the same job is probed and written."""
    import numpy as np
    import pandas as pd

    from phd_lab.errors import RunFailure
    from phd_lab.probes.discovery import jobs_from_latents
    from phd_lab.probes.job import run_jobs
    from tests.probe_latents import blob_layers, make_latents
    layers, y_train, y_eval = blob_layers(n_layers=2)
    healthy_run, healthy = make_latents(tmp_path, layers, y_train, y_eval, name="healthy")
    train, eval_ = layers["block1.conv"]
    train = train.copy()
    train[3, 0] = np.nan
    _, diverged = make_latents(tmp_path, {**layers, "block1.conv": (train, eval_)}, y_train, y_eval,
                               name="diverged")
    jobs = jobs_from_latents(diverged)[0] + jobs_from_latents(healthy)[0]
    with pytest.raises(RunFailure) as failure:
        run_jobs(jobs, tmp_path / "cache", progress=False, scheduler=cluster.scheduler_address)
    message = " ".join(str(failure.value).split())
    assert f"Latents file {str(diverged / 'train-block1.conv.npy')!r}" in message and "The run diverged" in message
    assert pd.read_csv(healthy_run / "probe_performances.csv")["layer"].tolist() == ["block0.conv", "block1.conv"]


def test_two_commands_on_one_scheduler_do_not_share_tasks(tmp_path, cluster):
    """Task keys held only the grid index and the run folder's name, so a second command with another logs_dir,
    submitted while the first one's task was in flight, got that task's result and exited 0 with its own
    logs_dir empty."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    commands = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        config = write_config(tmp_path / name, epoch=2, cpu_threads=1, track_saturation=False)
        commands.append(subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--config", str(config),
                                          "--no-progress", "-q", "--scheduler", cluster.scheduler_address],
                                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for command in commands:
        _, err = command.communicate(timeout=300)
        assert command.returncode == 0, err
    first, second = (run_folders(tmp_path / name / "logs") for name in ("first", "second"))
    assert len(first) == len(second) == 1 and first[0].name == second[0].name
    assert read_metrics(second[0])["epoch"].tolist() == [1, 2]
    assert_same_metrics(read_metrics(first[0]), read_metrics(second[0]))


def test_two_local_clusters_at_once_do_not_compete_for_the_dashboard_port(recwarn):
    """dashboard_address=None still took port 8787, so a second local cluster (two commands on one node, or
    two test processes) warned "Port 8787 is already in use"; each now takes a free port."""
    from phd_lab.distributed import dask_client
    with dask_client("local:1") as first, dask_client("local:1") as second:
        assert first.dashboard_link != second.dashboard_link
    assert not [w for w in recwarn if "already in use" in str(w.message)]


def test_a_closed_local_cluster_s_scheduler_is_freed():
    """distributed's unbounded cache of its servers' handlers (``distributed.core._expects_comm``) kept every
    local:N scheduler alive after its cluster closed: +1 log handler on distributed.scheduler and ~4 MB each
    grid or probe job on a local cluster in one process (a notebook)."""
    import gc
    import logging
    from phd_lab.distributed import dask_client
    gc.collect()

    def schedulers() -> list:
        """The live schedulers (by type(): isinstance asks each object's __class__, which warns for torch's
        deprecated torch.distributed.reduce_op)."""
        return [o for o in gc.get_objects() if issubclass(type(o), distributed.Scheduler)]

    before = {id(o) for o in schedulers()}  # of other tests, if any
    handlers = len(logging.getLogger("distributed.scheduler").handlers)
    with dask_client("local:1") as client:
        total = client.submit(sum, [1, 2]).result()  # outside an assert, whose rewriting keeps the future
    del client
    gc.collect()
    assert total == 3
    assert not [o for o in schedulers() if id(o) not in before]
    assert len(logging.getLogger("distributed.scheduler").handlers) <= handlers


@contextlib.contextmanager
def _scheduler_with_a_worker(tmp_path, with_worker: bool = True) -> Iterator[tuple[subprocess.Popen, str]]:
    """A real `dask scheduler` subprocess (killed by the test) and a `dask worker` of one thread joined to it."""
    file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", str(file)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        assert wait_for(lambda: file.exists() and file.stat().st_size > 0, scheduler, timeout=60)
        address = json.loads(file.read_text())["address"]
        if with_worker:
            worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                                       "1", "--no-dashboard", "--no-nanny", "--death-timeout", "5"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield scheduler, address
    finally:
        for process in (worker, scheduler):
            if process is not None:
                process.kill()
                process.wait(60)


def test_a_scheduler_that_dies_while_the_command_waits_is_said_in_one_paragraph(tmp_path, caplog):
    """The tasks of a command whose scheduler died (SIGKILL) were cancelled by Dask without an error: each was said
    to have failed with 'NoneType: None', its run 'failed before a run log was opened', and distributed's client
    logged the traceback of its reconnection; the command now ends with one paragraph saying what happened."""
    from phd_lab.distributed import dask_client, submit_and_collect
    from phd_lab.errors import SchedulerLost
    with _scheduler_with_a_worker(tmp_path) as (scheduler, address):
        with pytest.raises(SchedulerLost) as caught, dask_client(address) as client:
            client.wait_for_workers(1, timeout=60)
            threading.Timer(2.0, scheduler.kill).start()
            started = time.monotonic()
            submit_and_collect(client, [("sleeps-a", time.sleep, (120,), None)], "grid", progress=False)
    assert time.monotonic() - started < 60
    said = str(caught.value)
    assert said.startswith(f"--scheduler {address}: The connection to the Dask scheduler was lost")
    assert "1 of 1 run(s) were unfinished" in said and "rerun the same command" in said
    assert not [record for record in caplog.records if record.name.startswith("distributed")
                and record.levelno >= logging.ERROR]


def test_a_probe_job_whose_scheduler_dies_says_so_in_one_paragraph_and_keeps_its_finished_fits(
        tmp_path, capsys, monkeypatch):
    """The probe job's own wait for its layers (not the grid's) meets a scheduler killed while fits are left: one
    paragraph and exit 1, the fit that finished before is cached, so the rerun fits only the others."""
    from phd_lab.probes.cli import probe_cli
    from phd_lab.probes.runner import TEST_DELAY_ENV
    from tests.probe_latents import digits_layers, make_latents
    run_dir, latents = make_latents(tmp_path, *digits_layers(n_layers=4, width=8))
    cache = tmp_path / "cache"
    monkeypatch.setenv(TEST_DELAY_ENV, "1.5")  # read by the worker process, started below
    with _scheduler_with_a_worker(tmp_path) as (scheduler, address):
        def kill_after_the_first_fit() -> None:
            if wait_for(lambda: any(cache.rglob("*.json")), scheduler, timeout=240):
                scheduler.kill()

        killer = threading.Thread(target=kill_after_the_first_fit, daemon=True)
        killer.start()
        started = time.monotonic()
        code = probe_cli(["--latents", str(latents), "--cache-dir", str(cache), "--no-progress",
                          "--scheduler", address])
        killer.join(60)
    said = " ".join(capsys.readouterr().err.split())
    assert code == 1 and time.monotonic() - started < 120, said[-2000:]
    assert f"--scheduler {address}: The connection to the Dask scheduler was lost" in said, said[-2000:]
    assert "of 4 layer fit(s) were unfinished; the finished ones are kept" in said and "Traceback" not in said
    assert 1 <= len(list(cache.rglob("*.json"))) < 4
    assert not (run_dir / "probe_performances.csv").exists()


def test_a_scheduler_that_dies_while_the_command_waits_for_its_first_worker_is_said_in_one_paragraph(tmp_path,
                                                                                                     caplog):
    """distributed's OSError ('Timed out trying to connect') ended the command with a traceback, exit 1."""
    import dask

    from phd_lab.distributed import dask_client
    from phd_lab.errors import SchedulerLost
    with _scheduler_with_a_worker(tmp_path, with_worker=False) as (scheduler, address), \
            dask.config.set({"distributed.comm.timeouts.connect": "3s"}):
        threading.Timer(2.0, scheduler.kill).start()
        with pytest.raises(SchedulerLost, match="while the command waited for its first worker; nothing was "
                                                "submitted"), dask_client(address):
            pass
    assert not [record for record in caplog.records if record.name.startswith("distributed")
                and record.levelno >= logging.ERROR]
