"""The log file handler of a run and of a probe job: escaped bytes, and one warning instead of a traceback per
record once the file cannot be written (a full disk); a symbolic link in the log's place is refused, not followed."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from phd_lab.atomic import open_no_follow, regular_file_descriptor

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger(__name__)


class Formatter(logging.Formatter):
    """The framework's line format, its time stamps with their UTC offset ("2026-12-03 16:48:50,264+0100"):
    a run resumed on a node of another time zone, or read years later on another machine, had local times that
    said nothing of where they were taken, so the order of its attempts and their durations could not be told."""

    def __init__(self, fmt: str = FORMAT) -> None:
        super().__init__(fmt)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return super().formatTime(record, datefmt) + time.strftime("%z", self.converter(record.created))


def this_thread_only(handler: logging.Handler) -> logging.Handler:
    """``handler``, taking from now on only the records of the thread that calls this: a run's (several runs of a
    Dask worker share its process and its root logger, each in a thread of its own)."""
    thread = threading.get_ident()
    handler.addFilter(lambda record: record.thread == thread)
    handler.only_thread = thread  # type: ignore[attr-defined]  # for ``thread_only``
    return handler


def thread_only(handler: logging.Handler) -> bool:
    """Whether ``handler`` takes one thread's records only (``this_thread_only``): it shows nothing of the others'."""
    return getattr(handler, "only_thread", None) is not None


class LogFile(logging.FileHandler):
    """A ``FileHandler`` appending to ``path`` with the framework's line format.

    A path byte that is no UTF-8 (a lone surrogate in the str) is written escaped: strict UTF-8 printed
    "--- Logging error ---" for each record naming the file and lost the record. A write that fails with an
    OSError (a full disk, a lost mount) is said once as a warning, and the file takes no more records: logging's
    default printed a "--- Logging error ---" traceback for every record after it, burying the run's own error.
    """

    def __init__(self, path: Path | str) -> None:
        super().__init__(path, encoding="utf-8", errors="backslashreplace")
        self.setFormatter(Formatter())
        self.broken = False

    def _open(self):  # type: ignore[no-untyped-def]
        """The file opened for appending, refused where it is a symbolic link (``refuse_link``): a link planted in a
        received run folder had every log line appended to the file it named, outside the folder."""
        # a FIFO there was opened waiting for a reader for ever: the probe job hung at a `mkfifo probe.log`
        fd = regular_file_descriptor(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                     lambda path, flags: open_no_follow(path, flags, "log file"))
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
            return
        self.broken = True  # before the warning, which reaches this handler too
        log.warning("The log file %r cannot be written (%s); it takes no more records, so the console is where "
                    "the rest of this process' messages are.", self.baseFilename, error.strerror or error)


_kept_lock = threading.Lock()
_holders = 0  # blocks of ``info_records_kept`` running in this process, in any thread
_raised: tuple[int, list[tuple[logging.Handler, int]], logging.Handler | None] | None = None  # what the first changed


@contextlib.contextmanager
def info_records_kept() -> Iterator[None]:
    """While the block runs, INFO records reach the root logger's handlers (a run's or probe job's log file) also
    in a process that never configured logging (a notebook, a script calling ``Main``): the root logger's default
    level WARNING dropped them before any handler saw them, and a run's .log file held its warnings only. The
    console shows what it showed before: the root's handlers are raised to its old level for the block, and a
    root without handlers (warnings printed by logging's last resort) gets that handler; all restored after.

    Blocks in threads of one process (a run and a probe job, a Dask task on a cluster of threads in the caller's
    process) share the one raised level, and the last of them to end restores it: the first to end gave the level
    back under the others, whose files lost their INFO lines (epochs, probe results) for the rest of their work."""
    _hold()
    try:
        yield
    finally:
        _release()


def _hold() -> None:
    """One more block of ``info_records_kept``; the root is raised if it drops INFO records and no block raised it.
    All or nothing: a Ctrl-C (or a handler's error) halfway left the block counted although its ``finally`` never
    ran, so the last real block never gave the caller its WARNING level back, nor its handlers' levels."""
    global _holders, _raised
    root = logging.getLogger()
    with _kept_lock:
        level = root.level
        if _raised is None and level > logging.INFO:  # NOTSET (0) passes everything too
            raised: list[tuple[logging.Handler, int]] = []
            stand_in = logging.lastResort if not root.handlers else None
            try:
                for handler in root.handlers:
                    if handler.level < level:
                        before = handler.level
                        handler.setLevel(level)
                        raised.append((handler, before))
                if stand_in is not None:
                    root.addHandler(stand_in)
                root.setLevel(logging.INFO)
            except BaseException:
                _give_back(level, raised, stand_in)
                raise
            _raised = level, raised, stand_in
        _holders += 1


def _give_back(level: int, raised: list[tuple[logging.Handler, int]], stand_in: logging.Handler | None) -> None:
    """Put back the root's level and its handlers' levels where they are still what ``_hold`` made them (a level
    the caller set during the blocks, DEBUG say, is the caller's and stays), and remove the stand-in handler."""
    root = logging.getLogger()
    if root.level == logging.INFO:
        root.setLevel(level)
    if stand_in is not None:
        root.removeHandler(stand_in)
    for handler, before in raised:
        if handler.level == level:
            handler.setLevel(before)


def _reset_lock_in_child() -> None:
    """A process forked while another thread held the lock (a DataLoader's workers, a pool forked beside a probe
    job in a thread) inherited it held by a thread it does not have, and its first block waited for ever."""
    global _kept_lock
    _kept_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_in_child)


def _release() -> None:
    """One block of ``info_records_kept`` fewer; the last gives back what ``_hold`` changed."""
    global _holders, _raised
    with _kept_lock:
        _holders -= 1
        if _holders or _raised is None:
            return
        (level, raised, stand_in), _raised = _raised, None
        _give_back(level, raised, stand_in)
