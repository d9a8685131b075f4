"""The commands' entry (main.py, probe_main.py, ``python -m phd_lab``): their command imported and run under one
guard for a Ctrl-C that lands before the command's own handling of it begins, while its modules are imported or its
options read (it ended the command with a KeyboardInterrupt traceback). Only the standard library is imported here,
so that the guard is in place before the command's modules load."""

import _thread
import importlib
import os
import signal
import sys
import threading
from typing import Any


def run_command(module: str, function: str, *args: Any, **kwargs: Any) -> int:
    """The exit status of ``module.function(*args, **kwargs)``; 130, said in a line, for a Ctrl-C before it handles
    one itself. The command's helper threads have ended when it returns (``stop_progress_monitors``), and a Ctrl-C
    or SIGTERM that lands in a callback Python cannot raise from is raised again after it (``stops_raised_again``)."""
    previous_hook = sys.unraisablehook
    sys.unraisablehook = stops_raised_again(previous_hook)
    try:
        try:
            return getattr(importlib.import_module(module), function)(*args, **kwargs)
        finally:
            stop_progress_monitors()
            sys.unraisablehook = previous_hook
    except KeyboardInterrupt:
        try:
            os.write(2, b"interrupted\n")
        except OSError:  # stderr closed
            pass
        return 130


def stop_progress_monitors() -> None:
    """End and join tqdm's monitor threads. Every tqdm bar starts that daemon thread, and a bar that is disabled
    (``--no-progress``) or left open (a Ctrl-C) leaves it running to the exit, where tqdm only wakes it: it then ended
    while the interpreter was being torn down, and now and then that race aborted the command after its work was done
    (a probe job's Ctrl-C on a busy CI machine: 'Fatal Python error: PyThreadState_Get: ... the GIL is released',
    exit status -6 instead of 130). tqdm starts a new monitor for a bar made later (a command run in-process)."""
    monitor_module = sys.modules.get("tqdm._monitor")  # not imported: no bar was made, no thread to end
    if monitor_module is None:
        return
    for thread in threading.enumerate():
        if isinstance(thread, monitor_module.TMonitor):
            thread.exit()  # wakes it and joins it


def stops_raised_again(previous: Any) -> Any:
    """An unraisable hook that sends a Ctrl-C or SIGTERM that could not be raised to the main thread again, instead of
    printing it. Python runs a signal's handler wherever the main thread is, also in a weakref callback or ``__del__``,
    whose exceptions cannot propagate: they were printed as 'Exception ignored in: ...' with a traceback, and dropped. A
    command imports modules as it goes, and each import ends in such a callback (importlib's module lock, ``cb``): a
    probe job's Ctrl-C that landed there printed a KeyboardInterrupt traceback on busy cores, and where only the command
    got the SIGINT (``kill -INT``) it went on as if none had come. The SIGINT is sent again by a thread of its own,
    which runs once this thread lets go of the GIL, after the hook: sent from here, or with ``interrupt_main`` (which
    wakes no blocked wait either), it raised in the hook, where it was dropped again. A SIGTERM (the commands'
    ``Terminated``) is sent again the same way, once its note is cleared: the commands' handler leaves a SIGTERM alone
    while one is noted (``terminated_noted``), and training alone would have raised the noted one again, at its next
    batch. Where the handler is no longer Python's (the signal ignored or left to the system) nothing is sent. Every
    other unraisable exception goes to ``previous``."""
    def hook(unraisable: Any) -> None:
        signum = _signal_of(unraisable.exc_type)
        if signum is None or not callable(signal.getsignal(signum)):
            previous(unraisable)
            return
        if signum == signal.SIGTERM:
            sys.modules["phd_lab.interrupts"].clear_terminated()  # loaded: its handler raised the Terminated
        _thread.start_new_thread(signal.pthread_kill, (threading.main_thread().ident, signum))  # the last call
    return hook


def _signal_of(exc_type: Any) -> int | None:
    """The signal whose handler raised an exception of ``exc_type``: SIGINT for Python's KeyboardInterrupt, SIGTERM
    for the commands' ``Terminated`` (only where phd-lab's modules raised one), else None."""
    if exc_type is KeyboardInterrupt:
        return signal.SIGINT
    errors = sys.modules.get("phd_lab.errors")
    if errors is not None and "phd_lab.interrupts" in sys.modules and exc_type is errors.Terminated:
        return signal.SIGTERM
    return None
