"""What the parent tells of a pool worker that died, from real spawned workers' exit codes."""

from __future__ import annotations

import os
import signal
from concurrent.futures.process import BrokenProcessPool

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


def test_the_cause_is_the_signal_of_the_worker_that_died_and_sigterm_only_where_every_worker_got_it():
    assert worker_death([-signal.SIGTERM, -signal.SIGKILL]).startswith("it was killed by SIGKILL")
    assert worker_death([-signal.SIGTERM, -signal.SIGTERM]).startswith("it was terminated by SIGTERM")
    assert worker_death([-signal.SIGABRT, -signal.SIGTERM]).startswith("it crashed with SIGABRT, in a native library")
    assert "could not start its threads" in worker_death([])  # nothing read: every possibility, as before
