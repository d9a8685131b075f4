"""What the parent tells of a pool worker that died, from real spawned workers' exit codes."""

from __future__ import annotations

import multiprocessing.connection
import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from phd_lab.worker_processes import spawn_pool, stop_pool, worker_death, worker_exit_codes


def test_a_worker_that_exited_by_itself_is_told_by_its_exit_status_not_by_the_pools_sigterm_of_the_others():
    """A worker that exits (status 3) breaks the pool, which then terminates the others (SIGTERM): the message names
    the exit status, not a batch system's SIGTERM or the out-of-memory killer."""
    pool = spawn_pool(2)
    try:
        with pytest.raises(BrokenProcessPool):
            pool.submit(os._exit, 3).result(timeout=60)
        codes = worker_exit_codes(pool)
    finally:
        stop_pool(pool)
    assert 3 in codes and set(codes) <= {3, -signal.SIGTERM}, codes
    said = worker_death(codes)
    assert said.startswith("it exited with exit status 3, e.g. because it could not start its threads"), said
    assert "SIGTERM" not in said and "memory" not in said


def test_a_pools_workers_leave_the_callers_start_method_unchosen():
    """Spawning a worker asked the default context for its start method, which fixes it: a script that ran a probe
    job or a report with -mp N and then chose its own (``set_start_method("spawn")``) stopped with 'context has
    already been set', where the README promises that no call chooses it."""
    import multiprocessing
    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method(None, force=True)  # as in a fresh script, whatever this process did before
    try:
        pool = spawn_pool(2)
        try:
            futures = [pool.submit(abs, -1), pool.submit(abs, -2)]
            assert sorted(future.result(timeout=60) for future in futures) == [1, 2]
            assert multiprocessing.get_start_method(allow_none=True) is None
        finally:
            stop_pool(pool)
        assert multiprocessing.get_start_method(allow_none=True) is None
    finally:
        multiprocessing.set_start_method(before, force=True)


def test_the_cause_is_the_signal_of_the_worker_that_died_and_sigterm_only_where_every_worker_got_it():
    assert worker_death([-signal.SIGTERM, -signal.SIGKILL]).startswith("it was killed by SIGKILL")
    assert worker_death([-signal.SIGTERM, -signal.SIGTERM]).startswith("it was terminated by SIGTERM")
    assert worker_death([-signal.SIGABRT, -signal.SIGTERM]).startswith("it crashed with SIGABRT, in a native library")
    assert "could not start its threads" in worker_death([])  # nothing read: every possibility, as before


def _busy(ready: str, ignore_sigterm: bool) -> None:
    """A task that says it has started (a file at ``ready``) and then computes for a minute, SIGTERM ignored or not."""
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(ready).touch()
    time.sleep(60)


def test_a_stopped_pool_has_no_worker_left_alive_once_stop_pool_returns(tmp_path):
    """stop_pool returned right after sending SIGTERM: its busy workers were still alive then (every try), one that
    ignored SIGTERM computed on for a minute, and the pool's thread lived on. It returns once every worker has
    ended (the one that ignores SIGTERM is killed) and the pool's thread is gone."""
    pool = spawn_pool(2)
    ready = [tmp_path / "plain", tmp_path / "ignores-sigterm"]
    for path, ignore in zip(ready, (False, True)):
        pool.submit(_busy, str(path), ignore)
    processes = []
    try:
        deadline = time.monotonic() + 60
        while not all(path.exists() for path in ready) and time.monotonic() < deadline:
            time.sleep(0.05)
        processes, manager = list(pool._processes.values()), pool._executor_manager_thread
        assert len(processes) == 2 and manager is not None
        stop_pool(pool, wait=1.0)
        alive = [process.pid for process in processes
                 if not multiprocessing.connection.wait([process.sentinel], timeout=0)]
        assert alive == [] and not manager.is_alive(), (alive, manager)
        assert sorted(process.exitcode for process in processes) == sorted([-signal.SIGKILL, -signal.SIGTERM])
    finally:
        for process in processes:
            process.kill()


def _die_together(ready: str, others: list[str], signum: int) -> None:
    """A task that says it has started, waits for the ``others`` to have started too, and then dies of ``signum``:
    SIGTERM ignored, so that the pool's SIGTERM to the rest once one died cannot come first; no core file."""
    import resource
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    Path(ready).touch()
    deadline = time.monotonic() + 60
    while not all(Path(other).exists() for other in others) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(os.getpid(), signum)


def test_workers_that_died_of_different_causes_at_once_are_each_said(tmp_path):
    """Two workers died at once, one killed (SIGKILL: the out-of-memory killer) and one crashed (SIGSEGV): the message
    named the first cause only, so the crash, which wants a report, went unsaid (or the memory advice did)."""
    ready = [str(tmp_path / "killed"), str(tmp_path / "crashed")]
    pool = spawn_pool(2)
    try:
        futures = [pool.submit(_die_together, path, ready, signum)
                   for path, signum in zip(ready, (signal.SIGKILL, signal.SIGSEGV))]
        with pytest.raises(BrokenProcessPool):
            futures[0].result(timeout=60)
        codes = worker_exit_codes(pool)
    finally:
        stop_pool(pool)
    assert sorted(codes) == sorted([-signal.SIGKILL, -signal.SIGSEGV]), codes
    said = worker_death(codes)
    assert "was killed by SIGKILL: the out-of-memory killer" in said, said
    assert "crashed with SIGSEGV, in a native library" in said, said
    assert said.startswith("it ") and "Another worker " in said, said
