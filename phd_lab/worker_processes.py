"""Spawned worker processes for CPU work split over this machine's cores (probe fits, report figures).

Workers are spawned (no forked copies of threads or open handles), run one BLAS/OpenMP thread each so
that ``N`` workers use ``N`` cores, exit as soon as their parent is gone (a killed job must not leave
them computing for nobody), die of SIGINT (which the parent reads as an interruption, ``worker_exit_codes``)
and skip the interpreter's teardown once they are done. ``start_method_context`` is the context of the other
processes phd-lab starts (a run's DataLoader workers, tqdm's lock), which leaves the process' start method
unchosen.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

from phd_lab.environment import THREAD_VARIABLES, ulimits


def start_method_context() -> multiprocessing.context.BaseContext:
    """The context new processes start by, the method chosen in this process or else the platform's
    (``get_all_start_methods()[0]``), without choosing it: the default context's objects (a queue, a lock) fix the
    process' start method, and a caller who ran a grid and then chose its own (``set_start_method("spawn")``)
    stopped with 'context has already been set'."""
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    return multiprocessing.get_context(method)


class _SpawnPool(ProcessPoolExecutor):
    """A pool whose workers' starts leave the process' start method unchosen. Spawning a process asks the default
    context for the method to send the child (``spawn.get_preparation_data`` calls ``get_start_method()``),
    which fixes it: a script that ran a probe job or a report with ``-mp N`` and then chose its own method
    (``set_start_method("spawn")``) stopped with 'context has already been set'. A pool spawns its workers as
    tasks are submitted; a method left unchosen before a submit is unchosen again after it."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        unchosen = multiprocessing.get_start_method(allow_none=True) is None
        try:
            return super().submit(fn, *args, **kwargs)
        finally:
            if unchosen and multiprocessing.get_start_method(allow_none=True) is not None:
                multiprocessing.set_start_method(None, force=True)  # the public way back to unchosen


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes set up by ``init_worker``; leave it with ``stop_pool`` when the
    parent stops early (Ctrl-C, a failure), so that no worker goes on with its task. Starting them chooses no
    start method for the process (``_SpawnPool``)."""
    return _SpawnPool(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                      initializer=init_worker, initargs=(os.getpid(),))


def init_worker(parent: int) -> None:
    """The initializer of every worker: one thread per library, ended by SIGINT, gone with ``parent``, no teardown
    at exit."""
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    die_of_sigint()  # before the thread below starts: tests take that thread for a worker ready to be signalled
    threading.Thread(target=_exit_with_parent, args=(parent,), name="exit-with-parent", daemon=True).start()
    atexit.register(exit_without_teardown)  # registered last, so it runs first


def die_of_sigint() -> None:
    """SIGINT (Ctrl-C) ends this worker at once, by the signal (exit status -2), unless it is ignored (a background
    job's). Python's KeyboardInterrupt came back as the failure of the task the worker had (the report said
    'killed by a signal, e.g. the out-of-memory killer' and went on), or, between tasks, ended the worker with a
    traceback on the console and exit status 0; the parent reads -2 as an interruption (``worker_exit_codes``)."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def exit_without_teardown() -> None:
    """End a worker that has finished its tasks without the interpreter's teardown.

    Freeing the modules of scikit-learn, SciPy, pandas and matplotlib takes about half a second per worker,
    and the parent waits for its workers to end before it goes on. A worker has nothing left to save then:
    its results are sent and multiprocessing has flushed its standard streams, so only the log handlers are
    flushed and closed.
    """
    logging.shutdown()
    os._exit(0)


def _exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """A worker whose parent was killed (SIGKILL, out of memory) must not go on for nobody, holding a core
    and memory: it exits once it has been handed to another parent."""
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def stop_pool(pool: ProcessPoolExecutor, wait: float = 5.0) -> None:
    """Leave ``pool`` now: its workers are terminated (before shutdown, which forgets the processes) and the tasks
    not started are cancelled. Ctrl-C of a terminal reaches the workers too, but a signal to the parent alone (a batch
    system's SIGTERM) would leave them computing, and a plain shutdown waits for their tasks. It returns once the
    workers have ended (those that outlive ``wait`` seconds of SIGTERM are killed) and the pool's own thread has
    reaped them: it returned while they were still alive, and the thread went on in a report that drew on."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    _terminate_workers(pool)
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + wait
    for process in processes:  # the sentinel, not exitcode: the pool's thread may be reaping it meanwhile
        if not multiprocessing.connection.wait([process.sentinel], timeout=max(0.0, deadline - time.monotonic())):
            process.kill()  # SIGTERM held or ignored: it must not go on computing for nobody
    if manager is not None:  # it reaps the workers; it ends once it has seen them all gone
        manager.join(wait)


def worker_exit_codes(pool: ProcessPoolExecutor, wait: float = 5.0) -> list[int]:
    """The exit codes of the workers of ``pool``, which broke (BrokenProcessPool), that have ended: what ended them
    (-2, SIGINT: an interruption; otherwise ``worker_death``). Call it before the pool's shutdown, which forgets its
    processes. Waits up to ``wait`` seconds for the pool's own thread, which terminates the workers left and reaps
    them all: a command that exited while it did so printed an ignored OSError 'Bad file descriptor' traceback
    (Python 3.11's exit hook woke the thread through a pipe the thread was closing)."""
    manager = getattr(pool, "_executor_manager_thread", None)
    if manager is not None:
        manager.join(wait)
    processes = list((getattr(pool, "_processes", None) or {}).values())
    return [process.exitcode for process in processes if process.exitcode is not None]


def worker_death(codes: Sequence[int]) -> str:
    """What ended a worker of a broken pool, and what to do, from the exit codes of its ended workers
    (``worker_exit_codes``): a clause to follow 'A ... worker process ended abruptly: '. Every death was said to be
    'killed by a signal (the out-of-memory killer ...), crashed, or could not start its threads', which left a user
    whose batch system had terminated the job, or whose BLAS had crashed, looking for a memory shortage. Once one
    worker died the pool terminates (SIGTERM) the others, so SIGTERM is the cause only where no worker ended
    otherwise. Workers that died of different causes at once are each said ('Another worker ...'): only the first was,
    so a SIGSEGV beside a SIGKILL went unsaid and the crash unreported."""
    own = [code for code in codes if code != -signal.SIGTERM] or list(codes)
    if not own:  # the pool's processes could not be read
        return (f"it was killed by a signal (the out-of-memory killer does this when the work in hand does not fit "
                f"in memory), crashed, or could not start its threads (a limit of this machine: "
                f"{ulimits('-u', '-v', '-s')}; its own error is on the console then); if memory is short, use fewer "
                f"worker processes (-mp)")
    first, *others = [_death_cause(code) for code in dict.fromkeys(own)]  # each cause once, in the workers' order
    return ". ".join([first, *(f"Another worker {cause.removeprefix('it ')}" for cause in others)])


def _death_cause(code: int) -> str:
    """What ended one worker with exit code ``code`` (not 0), and what to do: a clause beginning with 'it'."""
    if code == -signal.SIGKILL:
        return ("it was killed by SIGKILL: the out-of-memory killer does this when the work in hand does not fit in "
                "memory, and so does a batch system's hard kill (e.g. over the job's memory limit); use fewer worker "
                "processes (-mp) or give the job more memory")
    if code == -signal.SIGTERM:
        return ("it was terminated by SIGTERM, e.g. by a batch system at the job's time limit or by `kill`; nothing "
                "was wrong with the work itself")
    if code < 0:
        return (f"it crashed with {_signal_name(-code)}, in a native library (BLAS, OpenMP, PyTorch) rather than in "
                f"Python; please report it, with the versions of Python and the libraries (`pip list`)")
    return (f"it exited with exit status {code}, e.g. because it could not start its threads (a limit of this "
            f"machine: {ulimits('-u', '-v', '-s')}); its own error is on the console above")


def _signal_name(number: int) -> str:
    """'SIGSEGV' for 11; 'signal 64' for a number without a name here."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    """Stop the pool's worker processes now (Python 3.14 has ``terminate_workers``; before, the
    processes are only reachable through the executor's ``_processes``)."""
    terminate = getattr(pool, "terminate_workers", None)
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
