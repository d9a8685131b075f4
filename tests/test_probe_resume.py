"""Crash safety: a probe job killed with SIGKILL resumes from its cache and writes the same CSV."""

from __future__ import annotations

import collections.abc
import contextlib
import csv
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phd_lab.probes.runner import TEST_DELAY_ENV
from tests.conftest import probe_job_in_process, ready_pool_workers, sigint_as_in_a_terminal
from tests.probe_latents import digits_layers, make_latents

ROOT = Path(__file__).resolve().parents[1]
LAYERS = 5


def _probe(latents: Path, cache: Path | None, delay: float = 0.0, workers: int = 1) -> subprocess.Popen:
    """probe_main.py --latents in a subprocess; ``cache`` None: the default cache, inside the run folder."""
    env = {**os.environ, TEST_DELAY_ENV: str(delay), "PYTHONPATH": str(ROOT)}
    cache_option = [] if cache is None else ["--cache-dir", str(cache)]
    return subprocess.Popen([sys.executable, "probe_main.py", "--latents", str(latents), "-mp", str(workers),
                             *cache_option, "--no-progress"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=sigint_as_in_a_terminal)


def _probe_here(capsys: pytest.CaptureFixture, latents: Path, cache: Path | None, workers: int = 1) -> tuple[int, str]:
    """``_probe`` run to its end in this process (where the job's process is not what a test is about: it spares a
    fresh interpreter's imports): exit code and stderr."""
    cache_option = [] if cache is None else ["--cache-dir", str(cache)]
    return probe_job_in_process(capsys, "--latents", str(latents), "-mp", str(workers), *cache_option, "--no-progress")


def _rows_without_seconds(path: Path) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    seconds = rows[0].index("seconds")
    return [row[:seconds] + row[seconds + 1:] for row in rows]


def _entries(cache: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in cache.rglob("*.json")}


def _wait_for_cached_layers(process: subprocess.Popen, cache: Path, count: int = 1) -> None:
    """Until the running job has ``count`` finished layers in its cache."""
    deadline = time.monotonic() + 90
    while len(list(cache.rglob("*.json"))) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the job never finished a layer"
        time.sleep(0.05)


def test_sigkill_mid_job_then_resume_fits_only_the_rest_and_writes_the_same_csv(tmp_path, capsys):
    layers, y_train, y_eval = digits_layers(n_layers=LAYERS, width=16)
    killed_run, killed = make_latents(tmp_path, layers, y_train, y_eval, name="killed")
    clean_run, clean = make_latents(tmp_path, layers, y_train, y_eval, name="clean")
    cache = tmp_path / "cache"

    # a real job (probe_main.py with one worker process), slowed down and killed after 2 finished layers
    process = _probe(killed, cache, delay=1.0)
    _wait_for_cached_layers(process, cache, 2)
    os.killpg(process.pid, signal.SIGKILL)  # the job and its worker, like a node failure
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not (killed_run / "probe_performances.csv").exists()
    before = _entries(cache)
    assert 2 <= len(before) < LAYERS

    code, err = _probe_here(capsys, killed, cache)  # the resume: in this process
    assert code == 0, err
    assert f"probing {LAYERS - len(before)} layer(s), {len(before)} found in the cache" in err
    after = _entries(cache)
    assert len(after) == LAYERS
    assert all(after[path] == entry for path, entry in before.items())  # finished layers were not refitted

    code, err = _probe_here(capsys, clean, tmp_path / "clean-cache", workers=0)
    assert code == 0, err
    assert _rows_without_seconds(killed_run / "probe_performances.csv") == \
        _rows_without_seconds(clean_run / "probe_performances.csv")
    # the seconds of resumed layers are those of the fit that produced them (kept in the cache)
    cached_seconds = sorted(json.loads(entry[1])["record"]["seconds"] for entry in before.values())
    table = list(csv.DictReader(io.StringIO((killed_run / "probe_performances.csv").read_text())))
    assert set(cached_seconds) <= {float(row["seconds"]) for row in table}


def _children(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def test_workers_of_a_killed_job_exit_instead_of_fitting_for_nobody(tmp_path):
    """Only the job's own process is killed (as the OOM killer or `kill -9 PID` does); its worker
    processes must not live on, each holding a core and a layer in memory."""
    _, latents = make_latents(tmp_path, *digits_layers(n_layers=4, width=16))
    process = _probe(latents, tmp_path / "cache", delay=30.0, workers=2)
    deadline = time.monotonic() + 60
    workers: set[int] = set()
    while len(workers) < 3:  # two workers and the resource tracker
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.1)
        workers = _children(process.pid)
    time.sleep(1.0)  # the workers are inside their (delayed) fits
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)  # not communicate(): surviving workers would hold its pipes open
    process.stdout.close()
    process.stderr.close()
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in workers):
        assert time.monotonic() < deadline, f"workers still running: {sorted(workers)}"
        time.sleep(0.2)


def _spawned_workers(pid: int) -> set[int]:
    """The job's pool workers (spawned ``multiprocessing`` children, not its resource tracker)."""
    return {child for child in _children(pid)
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()}


def test_a_worker_killed_alone_is_said_as_such_and_the_rerun_completes_the_job(tmp_path, capsys):
    """The OOM killer takes one worker, not the job: every unfinished layer then fails with the pool's
    BrokenProcessPool, and the job blamed whichever layer surfaced first as if its fit had failed."""
    layers, y_train, y_eval = digits_layers(n_layers=4, width=16)
    run_dir, latents = make_latents(tmp_path, layers, y_train, y_eval)
    cache = tmp_path / "cache"
    process = _probe(latents, cache, delay=30.0, workers=2)
    deadline = time.monotonic() + 60
    while len(workers := _spawned_workers(process.pid)) < 2:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.1)
    os.kill(min(workers), signal.SIGKILL)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    said = " ".join(err.split())
    assert "A probe worker process ended abruptly while layers were being fitted" in said
    assert "it was killed by SIGKILL: the out-of-memory killer does this" in said and "Traceback" not in said
    assert "use fewer worker processes (-mp) or give the job more memory" in said
    assert "The probe of layer" not in said  # no layer is blamed: which one the worker had is unknown
    code, err = _probe_here(capsys, latents, cache, workers=2)  # the rerun: in this process
    assert code == 0, err
    assert len(_rows_without_seconds(run_dir / "probe_performances.csv")) == 1 + 4


@pytest.mark.parametrize("signum, told", [
    (signal.SIGTERM, "it was terminated by SIGTERM, e.g. by a batch system at the job's time limit or by `kill`"),
    (signal.SIGSEGV, "it crashed with SIGSEGV, in a native library (BLAS, OpenMP, PyTorch) rather than in Python; "
                     "please report it, with the versions of Python and the libraries (`pip list`)")],
    ids=["SIGTERM", "SIGSEGV"])
def test_a_worker_ended_by_a_signal_is_said_to_be_ended_by_that_signal(tmp_path, signum, told):
    """A worker terminated (a batch system's SIGTERM) or crashed (SIGSEGV in a native library) was said to be 'killed
    by a signal (the out-of-memory killer ...), crashed, or could not start its threads', with advice about memory."""
    _, latents = make_latents(tmp_path, *digits_layers(n_layers=4, width=16))
    process = _probe(latents, tmp_path / "cache", delay=30.0, workers=2)
    os.kill(ready_pool_workers(process, 2)[0], signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    said = " ".join(err.split())
    assert f"A probe worker process ended abruptly while layers were being fitted: {told}" in said
    assert "out-of-memory" not in said and "memory" not in said and "Traceback" not in said, said
    assert "The layers fitted before are cached; run the job again to fit the rest" in said


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"


def test_ctrl_c_mid_job_exits_130_and_says_the_cache_keeps_the_finished_layers(tmp_path, capsys):
    """Ctrl-C in a terminal signals the whole process group: the job and its worker stop, one line on stderr."""
    layers, y_train, y_eval = digits_layers(n_layers=LAYERS, width=16)
    _, latents = make_latents(tmp_path, layers, y_train, y_eval)
    cache = tmp_path / "cache"
    process = _probe(latents, cache, delay=1.0)
    _wait_for_cached_layers(process, cache)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "the layers already fitted come from the cache" in err and "Traceback" not in err
    code, err = _probe_here(capsys, latents, cache)  # the resume: in this process
    assert code == 0 and "found in the cache" in err, err


def test_a_worker_interrupted_alone_stops_the_job_as_ctrl_c_does(tmp_path):
    """A SIGINT sent to one worker ends it by the signal (workers die of SIGINT): the job stops with exit 130 as on
    Ctrl-C, not with 'killed by a signal (the out-of-memory killer ...)' and exit 1 for the broken pool."""
    _, latents = make_latents(tmp_path, *digits_layers(n_layers=4, width=16))
    process = _probe(latents, tmp_path / "cache", delay=30.0, workers=2)
    os.kill(ready_pool_workers(process, 2)[0], signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "the layers already fitted come from the cache" in err
    assert "out-of-memory" not in err and "Traceback" not in err, err


def _take_once_a_layer_is_cached(cache: Path, run_dir: Path, how: str) -> None:
    """Delete ``run_dir``, or put another folder of its name in its place (``how``), once the job that probes it
    (in this process) has a finished layer in ``cache``, as another command would."""
    deadline = time.monotonic() + 90
    while not list(cache.rglob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    if how == "replaced":
        run_dir.rename(run_dir.parent / "old-run")
        run_dir.mkdir()  # another command's new run folder of the same name
    else:
        shutil.rmtree(run_dir)


def test_a_run_folder_deleted_or_replaced_while_it_is_probed_gets_no_probe_files(tmp_path, capsys, monkeypatch):
    """A probe job wrote its results into a run folder that had been deleted meanwhile: the folder came back
    holding only the probe files. Worse, a new run folder of the same name received the old run's results. (The
    job runs in this process, its run folder taken by a thread: what it does with the folder is tested here, not
    its process; it spares three fresh interpreters' imports.)"""
    import threading

    from phd_lab.probes.synthetic import write_latents
    layers, y_train, y_eval = digits_layers(n_layers=3, width=16)
    monkeypatch.setenv(TEST_DELAY_ENV, "1.0")  # read by the job's worker process
    for how in ("deleted", "replaced", "deleted with its cache"):
        run_dir = tmp_path / how / "run"
        run_dir.mkdir(parents=True)
        latents = write_latents(tmp_path / how / "latents", layers, y_train, y_eval, run_dir, 0.9)
        cache = run_dir / ".probe_cache" if how == "deleted with its cache" else tmp_path / how / "cache"
        taking = threading.Thread(target=_take_once_a_layer_is_cached, args=(cache, run_dir, how))
        taking.start()
        try:
            code, err = _probe_here(capsys, latents, None if how == "deleted with its cache" else cache)
        finally:
            taking.join()
        err = " ".join(err.split())
        assert code == 1, err
        assert f"{run_dir}' was deleted or moved while this process worked in it" in err, err
        assert ("its lock file .probe.lock" if how == "replaced" else "it is gone") in err
        if how == "deleted with its cache":
            assert "Its probe results were not written, and its probe cache, which lay inside it, went with it" in err
        else:
            assert (f"Its probe results were not written; the layers fitted so far stay in the probe cache "
                    f"{cache}.") in err
            assert len(list(cache.rglob("*.json"))) == 3  # every fit finished is kept for the next job
        assert "Traceback" not in err and "Details" not in err  # the probe log went with the folder
        assert list(run_dir.iterdir()) == [] if how == "replaced" else not run_dir.exists()


@pytest.mark.parametrize("layout", ["latents inside the run folders", "latents elsewhere", "cache in the lost one"])
def test_a_run_folder_that_goes_while_several_runs_are_probed_fails_alone(tmp_path, monkeypatch, layout):
    """One run folder deleted during a grid's probe job stopped the whole job, and the healthy runs' probe logs
    blamed themselves. With the grid's layout (latents inside the run folder) the deleted latents stopped it."""
    import threading

    from phd_lab.errors import RunFailure
    from phd_lab.probes.discovery import jobs_from_latents
    from phd_lab.probes.job import run_jobs
    from phd_lab.probes.synthetic import write_latents
    layers, y_train, y_eval = digits_layers(n_layers=3, width=16)
    jobs = []
    for name in ("lost", "kept"):  # the lost run's layers come first (same sizes, the order of the jobs)
        if layout == "latents inside the run folders":
            latents = make_latents(tmp_path, layers, y_train, y_eval, name=name)[1]
        else:
            (tmp_path / name).mkdir()
            latents = write_latents(tmp_path / f"{name}-latents", layers, y_train, y_eval, tmp_path / name, 0.9)
        jobs += jobs_from_latents(latents)[0]
    cache = tmp_path / "lost" / "cache" if layout == "cache in the lost one" else tmp_path / "cache"
    monkeypatch.setenv(TEST_DELAY_ENV, "0.3")

    def delete_after_the_first_fit() -> None:
        deadline = time.monotonic() + 60
        while not list(cache.rglob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.02)
        shutil.rmtree(tmp_path / "lost")

    deleting = threading.Thread(target=delete_after_the_first_fit)
    deleting.start()
    try:
        with pytest.raises(RunFailure) as failure:
            run_jobs(jobs, cache, workers=0, progress=False)
    finally:
        deleting.join()
    message = " ".join(str(failure.value).split())
    assert f"{tmp_path / 'lost'}' was deleted or moved while this process worked in it" in message
    assert not (tmp_path / "lost").exists()
    kept = tmp_path / "kept"
    if layout == "cache in the lost one":  # every run needs the cache: the job stops
        assert f"The probe cache {cache} lay inside a run folder that went while the job ran" in message
        assert not (kept / "probe_performances.csv").exists()
        return
    assert "1 run(s) could not be probed" in message and "the results of the other 1 run(s) are written" in message
    assert "Details" not in message  # the lost run's log went with its folder
    assert len((kept / "probe_performances.csv").read_text().splitlines()) == 1 + 3
    assert "probe job failed on another run" in (kept / "probe.log").read_text()



def test_a_background_job_ignoring_sigint_keeps_its_workers_fitting_through_a_sigint_to_its_group(tmp_path):
    """A job started in the background by a non-interactive shell inherits SIGINT ignored, and its workers must
    keep ignoring it (they die of SIGINT only where it is not ignored): a SIGINT to the whole group leaves the job
    and its two workers fitting, and it fits and writes every layer."""
    signalled_run, signalled = make_latents(tmp_path, *digits_layers(n_layers=4, width=16))
    process = subprocess.Popen([sys.executable, "probe_main.py", "--latents", str(signalled), "-mp", "2",
                                "--cache-dir", str(tmp_path / "cache"), "--no-progress"], cwd=ROOT,
                               env={**os.environ, TEST_DELAY_ENV: "0.5", "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    ready_pool_workers(process, 2)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and "Traceback" not in err and "interrupted" not in err, err
    rows = _rows_without_seconds(signalled_run / "probe_performances.csv")
    assert len(rows) == 1 + 4 and len(list((tmp_path / "cache").rglob("*.json"))) == 4


def _open_for_writing_once_read(fifo: Path) -> int:
    """A write end of ``fifo``, opened once a process has opened it to read (ENXIO until then); holding it open
    without writing keeps that reader waiting for data."""
    deadline = time.monotonic() + 90
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:
                raise
        assert time.monotonic() < deadline, f"no worker ever opened {fifo}"
        time.sleep(0.02)


def _fitted_results_handed_back(but: str, timeout: float = 60) -> None:
    """Until the pool of this process has handed back the results of every task it holds but the one of layer
    ``but`` (its thread reads them from the workers' queue): sleeping half a second assumed it had, which on busy
    cores it may not have done yet."""
    import gc
    from concurrent.futures import ProcessPoolExecutor, wait
    gc.collect()  # the pools of jobs run before in this process (in reference cycles until collected)
    # spawn_pool's subclass of it (17de9b8) too; type() reads no attribute of the objects
    (pool,) = [thing for thing in gc.get_objects() if issubclass(type(thing), ProcessPoolExecutor)]
    futures = [item.future for item in list(pool._pending_work_items.values()) if item.args[0].layer != but]
    _, not_done = wait(futures, timeout)
    assert not not_done, f"{len(not_done)} fitted layer(s) never came back from the pool"


def _reader_of(fifo: Path) -> int:
    """The pid of this process's child that holds ``fifo`` open (a pool worker loading it; its open returns once
    a writer opened the pipe)."""
    deadline = time.monotonic() + 60
    while True:
        for child in _children(os.getpid()):
            with contextlib.suppress(OSError):
                if any(os.readlink(link) == str(fifo) for link in Path(f"/proc/{child}/fd").iterdir()):
                    return child
        assert time.monotonic() < deadline, f"no child process holds {fifo} open"
        time.sleep(0.02)


def test_layers_finished_in_the_same_wake_up_as_a_worker_interrupted_alone_are_cached(tmp_path):
    """A worker interrupted alone (SIGINT) breaks the pool: the layers fitted meanwhile and the broken ones came back
    in one wake-up, and the job stopped at the first broken one it met, so the fitted layers after it in that set
    were neither cached nor written and a rerun fitted them again. One worker fits layer 0 (delivered: the parent
    waits there), then layers 1-4, then waits on a named pipe while 10 layers are queued; its SIGINT then breaks
    the pool, and the 4 fitted layers and the 11 broken ones are handed back together. Each of them is cached."""
    from dataclasses import replace

    from phd_lab.probes.cache import ResultCache
    from phd_lab.probes.discovery import jobs_from_latents
    from phd_lab.probes.job import build_tasks, validate_jobs
    from phd_lab.probes.runner import run_probes
    _, latents = make_latents(tmp_path, *digits_layers(n_layers=5, width=8))
    jobs, _ = jobs_from_latents(latents)
    fitted = [replace(task, size=100 - task.index) for task in build_tasks(jobs, validate_jobs(jobs)[0])]
    fifo = tmp_path / "never-written.npy"
    os.mkfifo(fifo)
    waiting = [replace(fitted[0], layer=f"waiting.{n}", train=str(fifo), stamps={}, size=0,
                       key={**fitted[0].key, "test": n}) for n in range(11)]
    cache = ResultCache(tmp_path / "cache")
    delivered = []

    def on_record(task, record, cached) -> None:
        delivered.append(task.layer)
        if len(delivered) == 1:  # the worker goes on with layers 1-4, then opens the pipe and waits
            writer = _open_for_writing_once_read(fifo)
            try:
                worker = _reader_of(fifo)
                os.kill(worker, signal.SIGINT)
                deadline = time.monotonic() + 60
                while Path(f"/proc/{worker}").exists():  # reaped once the pool marked the queued layers broken
                    assert time.monotonic() < deadline, "the interrupted worker was never reaped"
                    time.sleep(0.02)
            finally:
                os.close(writer)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # the workers' SIGINT as in a terminal
    try:
        with pytest.raises(KeyboardInterrupt):
            run_probes(fitted + waiting, cache, workers=1, progress=False, on_record=on_record)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sorted(delivered) == [task.layer for task in fitted]
    assert all(cache.get(task.key) is not None for task in fitted)


def test_layers_fitted_in_the_same_wake_up_as_one_whose_results_cannot_be_written_are_cached(tmp_path, caplog):
    """A fitted layer whose results cannot be written ends the job, and the layers fitted in the same wake-up after
    it were neither cached nor written, so the rerun fitted them again; a job on Dask kept them. One worker fits layer
    0 (delivered: the parent waits there), then layers 1-4, and waits on a named pipe; the parent then takes layers
    1-4 in one wake-up, and the first of them cannot be written. The job ends with that error, and every fitted
    layer is cached."""
    from dataclasses import replace

    from phd_lab.errors import RunFailure
    from phd_lab.probes.cache import ResultCache
    from phd_lab.probes.discovery import jobs_from_latents
    from phd_lab.probes.job import build_tasks, validate_jobs
    from phd_lab.probes.runner import run_probes
    _, latents = make_latents(tmp_path, *digits_layers(n_layers=5, width=8))
    jobs, _ = jobs_from_latents(latents)
    fitted = [replace(task, size=100 - task.index) for task in build_tasks(jobs, validate_jobs(jobs)[0])]
    fifo = tmp_path / "never-written.npy"
    os.mkfifo(fifo)
    waiting = replace(fitted[0], layer="waiting", train=str(fifo), stamps={}, size=0, key={**fitted[0].key, "t": 1})
    cache = ResultCache(tmp_path / "cache")
    delivered, writer = [], []

    def on_record(task, record, cached) -> None:
        delivered.append(task.layer)
        if len(delivered) == 1:  # the worker fits layers 1-4, then opens the pipe and waits
            writer.append(_open_for_writing_once_read(fifo))
            _reader_of(fifo)
            _fitted_results_handed_back(but="waiting")
        elif len(delivered) == 2:
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "probe_performances.csv"))

    try:
        with pytest.raises(RunFailure, match="Probe results could not be written"):
            run_probes([*fitted, waiting], cache, workers=1, progress=False, on_record=on_record)
    finally:
        for end in writer:
            os.close(end)
    assert sorted(delivered) == [task.layer for task in fitted]
    assert all(cache.get(task.key) is not None for task in fitted)


class _KilledWhileHandedOver(collections.abc.Sequence):
    """A job's tasks, the last of which, when it is handed to the pool (a pool worker runs then), is given only once
    the worker fitted the first layer and waits on ``fifo`` (the second): the worker is then killed (SIGKILL, as the
    out-of-memory killer does) and the pool has marked itself broken (the worker reaped)."""

    def __init__(self, tasks: list, fifo: Path) -> None:
        self.tasks, self.fifo, self.killed = tasks, fifo, False

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, position):
        if position == len(self.tasks) - 1 and not self.killed and _spawned_workers(os.getpid()):
            self.killed = True
            writer = _open_for_writing_once_read(self.fifo)
            try:
                worker = _reader_of(self.fifo)
                os.kill(worker, signal.SIGKILL)
                deadline = time.monotonic() + 60
                while Path(f"/proc/{worker}").exists():
                    assert time.monotonic() < deadline, "the killed worker was never reaped"
                    time.sleep(0.02)
            finally:
                os.close(writer)
        return self.tasks[position]


def test_a_worker_killed_while_the_layers_are_handed_to_the_pool_is_said_and_the_fitted_layers_are_cached(tmp_path):
    """A worker that died while the job was still handing layers to the pool (killed early, e.g. by the
    out-of-memory killer) made the pool's submit raise BrokenProcessPool, which came out as a traceback, and the
    layers fitted before were not cached. Now it is the failure of a worker that died later: said, and those kept."""
    from dataclasses import replace

    from phd_lab.errors import RunFailure
    from phd_lab.probes.cache import ResultCache
    from phd_lab.probes.discovery import jobs_from_latents
    from phd_lab.probes.job import build_tasks, validate_jobs
    from phd_lab.probes.runner import run_probes
    _, latents = make_latents(tmp_path, *digits_layers(n_layers=1, width=8))
    jobs, _ = jobs_from_latents(latents)
    fitted = replace(build_tasks(jobs, validate_jobs(jobs)[0])[0], size=100)
    fifo = tmp_path / "never-written.npy"
    os.mkfifo(fifo)
    waiting = [replace(fitted, layer=f"waiting.{n}", train=str(fifo), stamps={}, size=0,
                       key={**fitted.key, "test": n}) for n in range(3)]
    cache = ResultCache(tmp_path / "cache")
    tasks = _KilledWhileHandedOver([fitted, *waiting], fifo)
    with pytest.raises(RunFailure) as raised:
        run_probes(tasks, cache, workers=1, progress=False)
    assert tasks.killed
    said = " ".join(str(raised.value).split())
    assert "A probe worker process ended abruptly while layers were being fitted: it was killed by SIGKILL" in said
    assert cache.get(fitted.key) is not None  # the layer fitted before is kept: a rerun does not fit it again


def test_results_refitted_under_other_library_versions_say_that_they_replace_the_earlier_ones(tmp_path, capsys):
    """A probe job rerun under other versions of scikit-learn, SciPy or NumPy (the run's probes reproduced years
    later) refitted the layers and replaced the run's table and its probe_settings.json, the record of the versions
    the earlier results were fitted under, without a word: only other settings were said."""
    from phd_lab.probes.cli import probe_cli
    from phd_lab.probes.cache import library_versions
    run_dir, latents = make_latents(tmp_path, accuracy=0.8)
    command = ["--latents", str(latents), "-mp", "0", "--solver", "lbfgs", "--no-progress"]
    assert probe_cli(command) == 0
    assert probe_cli(command) == 0  # the same settings and versions: nothing said
    assert "replace" not in capsys.readouterr().err
    settings = run_dir / "probe_settings.json"
    document = json.loads(settings.read_text())
    document["library_versions"]["scikit_learn"] = "0.0.1"  # as an older installation wrote it
    settings.write_text(json.dumps(document))
    assert probe_cli(command) == 0
    said = " ".join(capsys.readouterr().err.split())
    now = library_versions("lbfgs")["scikit_learn"]
    assert ("these results replace the run's earlier probe results, fitted with the same settings under other "
            f"library versions (scikit_learn: \"0.0.1\" -> \"{now}\")") in said, said
    assert json.loads(settings.read_text())["library_versions"]["scikit_learn"] == now
