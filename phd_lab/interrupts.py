"""Ctrl-C and SIGTERM held back while a group of files is written, so that a stop never cuts it in two; SIGTERM
raised again at the next batch should something swallow it, and kept from DataLoader workers being forked."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Callable, Iterator

from phd_lab.errors import RunStopped, Terminated

DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM are only noted; the first one noted is raised again
    once the block is done, and the handlers in place before (KeyboardInterrupt, the commands'
    ``Terminated``) act on it then. Outside the main thread, where handlers cannot be set, the
    block runs as it is; a signal the process ignores (a background job's SIGINT) stays ignored.
    SIGKILL cannot be held back: readers must still cope with a cut group."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def note(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {signum: signal.signal(signum, note) for signum in DEFERRED
                if signal.getsignal(signum) is not signal.SIG_IGN}  # an ignored signal stays ignored
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if received:
            signal.raise_signal(received[0])


_stop_requests = threading.local()  # per thread: a Dask worker runs several tasks at once
STOP_POLL_SECONDS = 1.0  # how often a task asks whether its command was stopped (one scheduler round trip)


@contextlib.contextmanager
def stop_requests(is_requested: Callable[[], bool], poll_seconds: float = STOP_POLL_SECONDS) -> Iterator[None]:
    """While the block runs in this thread, ``raise_if_stop_requested`` asks ``is_requested`` (at most once
    per ``poll_seconds``) and raises RunStopped once it says yes. Signals cannot reach a task on a Dask
    worker, so the command that submitted it sets a flag that this polls instead."""
    previous = getattr(_stop_requests, "check", None)
    _stop_requests.check, _stop_requests.next_poll = is_requested, 0.0
    _stop_requests.poll_seconds = poll_seconds
    try:
        yield
    finally:
        _stop_requests.check = previous


_terminated = threading.Event()  # SIGTERM arrived (set by the commands' handler, cleared when a command ends)


def note_terminated() -> None:
    """Remember that SIGTERM arrived: the ``Terminated`` its handler raises lands wherever the main thread is, and
    in a ``__del__`` or a library's catch-all (a DataLoader being started or shut down) it was swallowed, so the
    run trained on to the end and exited 0; ``raise_if_stop_requested`` raises it again at the next batch."""
    _terminated.set()


def terminated_noted() -> bool:
    return _terminated.is_set()


def clear_terminated() -> None:
    _terminated.clear()


def raise_if_stop_requested() -> None:
    """Called between batches: raise Terminated again when SIGTERM arrived (``note_terminated``) and RunStopped when
    the block of ``stop_requests`` around it was asked to stop. Costs a flag and a thread-local lookup outside such
    a block and between polls."""
    if _terminated.is_set():
        raise Terminated()
    check = getattr(_stop_requests, "check", None)
    if check is None:
        return
    now = time.monotonic()
    if now < _stop_requests.next_poll:
        return
    _stop_requests.next_poll = now + _stop_requests.poll_seconds
    if check():
        raise RunStopped("the command that submitted this run was stopped; the run ends after its last completed "
                         "epoch and resumes from there when the command runs again.")


def interruption_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that ``error`` was raised from, if any: one that lands while a compiled module is
    first imported (matplotlib's, as the probe job draws its first confusion matrix) comes out of the import as
    ``ImportError: initialization failed`` raised from the KeyboardInterrupt, which stopped the job with a
    traceback and exit 1 instead of 130, and a grid's run with it was taken for a failed run. The chain is followed
    as Python prints it: the cause, else the error being handled when ``error`` was raised (a clean-up that failed
    while the Ctrl-C unwound, whose RuntimeError ended the command with a traceback and exit 1), unless ``raise ...
    from None`` hid that one."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        hidden = error.__suppress_context__ and error.__cause__ is None
        error = None if hidden else error.__cause__ or error.__context__
    return None


def raise_interruption_behind(error: BaseException) -> None:
    """Raise the Ctrl-C or SIGTERM behind ``error`` (``interruption_behind``), if any. For the catch-alls that turn a
    failure into a warning, a fallback or an error of their own: a stop that a compiled module's import turned into
    its ImportError was taken there for the failure, so the command went on (or failed) instead of stopping."""
    stop = interruption_behind(error)
    if stop is not None:
        raise stop from None


@contextlib.contextmanager
def sigterm_held_while_forking() -> Iterator[None]:
    """SIGTERM blocked while DataLoader workers are forked: a batch system's SIGTERM to the whole job that came
    while they started ran this process's ``Terminated`` handler in a half-made worker (a traceback on the
    console). A child inherits the blocked signal until its ``worker_init_fn`` sets what SIGTERM does there
    (``leave_quietly_on_sigterm``); here it takes effect once the workers are started."""
    if not hasattr(signal, "pthread_sigmask"):  # no POSIX signal masks (Windows)
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def interrupts_held_while_processes_start() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back (``deferred_interrupts``) while a local Dask cluster starts, SIGINT blocked in
    this thread as well: the threads the cluster starts inherit it blocked, and so do the worker processes they
    spawn (a blocked signal stays blocked across fork and exec), which ignore the terminal's Ctrl-C anyway
    (``dask_worker_signals``). A Ctrl-C in that window reached the half-started workers, each of which printed the
    traceback of its interrupted imports, and the cluster cut short in its construction was closed at exit with
    distributed's ``AssertionError: Status.init``; now it takes effect once the cluster is up, which closes it.
    multiprocessing's resource tracker is started first: starting it unblocks SIGINT in the thread that does,
    which was the cluster's event loop, the parent of every worker."""
    with deferred_interrupts():
        if not hasattr(signal, "pthread_sigmask"):  # no POSIX signal masks (Windows)
            yield
            return
        from multiprocessing import resource_tracker
        resource_tracker.ensure_running()  # a no-op once it runs
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:  # a Ctrl-C pending meanwhile is noted here, and raised once the handlers are back
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def leave_quietly_on_sigterm() -> None:
    """In a DataLoader worker: SIGTERM ends it at once with exit 0. torch's own handler let a SIGTERM sent to the
    whole job (not by the loader) kill the worker by the signal, which the loader then raised in this process as
    'DataLoader worker (pid N) is killed by signal: Terminated' (a traceback while the run stopped); the run's own
    process stops the run on the same SIGTERM."""
    signal.signal(signal.SIGTERM, _leave)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _leave(signum: int, frame: object) -> None:
    os._exit(0)
