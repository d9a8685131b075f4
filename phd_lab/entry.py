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
import time
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
            restore_handlers()
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
    got the SIGINT (``kill -INT``) it went on as if none had come. The signal is sent again, by a thread of its own,
    until its handler has run (``ResentStop``). A SIGTERM (the commands' ``Terminated``) is sent again the same way,
    once its note is cleared: the commands' handler leaves a SIGTERM alone while one is noted (``terminated_noted``).
    Where the handler is no longer Python's (the signal ignored or left to the system) nothing is sent. Every other
    unraisable exception goes to ``previous``."""
    def hook(unraisable: Any) -> None:
        signum = _signal_of(unraisable.exc_type)
        in_main_thread = threading.current_thread() is threading.main_thread()  # where handlers run and are set
        if signum is None or not in_main_thread or not callable(signal.getsignal(signum)):
            previous(unraisable)
            return
        while True:  # the thread's first copy can reach the handler before the hook returns, and raise in it
            if signum == signal.SIGTERM:
                sys.modules["phd_lab.interrupts"].clear_terminated()  # loaded: its handler raised the Terminated
            try:
                ResentStop.start(signum)
                return
            except BaseException as raised:  # noqa: BLE001 - the stop itself, raised where it would be dropped
                if _signal_of(type(raised)) != signum:
                    raise
    return hook


class ResentStop:
    """A Ctrl-C or SIGTERM sent to the main thread again, every ``RESEND_SECONDS``, until the handler in place has
    run once. It is sent from a thread of its own, which runs once the main thread lets go of the GIL, after the hook:
    sent from the hook, or with ``interrupt_main`` (which wakes no blocked wait either), it raised in the hook, where
    it was dropped again. Sent once, it was lost now and then on busy cores: the main thread lets go of the GIL as it
    begins a blocking wait, and a signal that lands after its last check for signals but before the wait is handled
    only when the wait ends (a probe job's wait for its workers; a minute in a CI run). A copy that arrives within
    ``GRACE_SECONDS`` after the handler ran was sent before the thread saw it run, and is left alone; later ones
    reach the handler (a second Ctrl-C). While another handler stands in (``deferred_interrupts``) nothing is sent;
    ``restore_handlers`` ends the sending and puts the handlers back when the command ends."""

    RESEND_SECONDS = 0.2
    GRACE_SECONDS = 1.0

    def __init__(self, signum: int, handler: Any) -> None:
        self.signum, self.handler = signum, handler
        self.handled_at: float | None = None
        self.stop_sending = _thread.allocate_lock()  # held while copies are to be sent
        self.stop_sending.acquire()

    @classmethod
    def start(cls, signum: int) -> None:
        """Put a resending handler in place of ``signum``'s (from the main thread) and start the thread that sends
        the signal."""
        handler = signal.getsignal(signum)
        resent = cls(signum, handler.__self__.handler if _is_resending(handler) else handler)
        signal.signal(signum, resent.handle)
        _resending.append(resent)
        _thread.start_new_thread(resent.send_until_handled, ())

    def handle(self, signum: int, frame: Any) -> Any:
        if self.handled_at is not None and time.monotonic() - self.handled_at < self.GRACE_SECONDS:
            return None  # a copy the thread sent before it saw the first one handled
        if self.handled_at is None:
            self.handled_at = time.monotonic()
            self.stop_sending.release()
        return self.handler(signum, frame)

    def withdraw(self) -> None:
        """Send no more copies; the handler it stood in for is back in place where it still stood."""
        if self.stop_sending.locked():
            self.stop_sending.release()
        if signal.getsignal(self.signum) == self.handle:
            signal.signal(self.signum, self.handler)

    def send_until_handled(self) -> None:
        main = threading.main_thread().ident
        while True:
            if signal.getsignal(self.signum) == self.handle:
                signal.pthread_kill(main, self.signum)
            if self.stop_sending.acquire(timeout=self.RESEND_SECONDS):
                return


_resending: list[ResentStop] = []  # in place since the command began


def _is_resending(handler: Any) -> bool:
    return isinstance(getattr(handler, "__self__", None), ResentStop)


def restore_handlers() -> None:
    """End every ``ResentStop`` of this command: no more copies are sent, and the handlers they stood in for are back
    in place (the main thread only, where they were set)."""
    if threading.current_thread() is not threading.main_thread():
        return
    while _resending:
        _resending.pop().withdraw()


def _signal_of(exc_type: Any) -> int | None:
    """The signal whose handler raised an exception of ``exc_type``: SIGINT for Python's KeyboardInterrupt, SIGTERM
    for the commands' ``Terminated`` (only where phd-lab's modules raised one), else None."""
    if exc_type is KeyboardInterrupt:
        return signal.SIGINT
    errors = sys.modules.get("phd_lab.errors")
    if errors is not None and "phd_lab.interrupts" in sys.modules and exc_type is errors.Terminated:
        return signal.SIGTERM
    return None
