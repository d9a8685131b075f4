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
_Raised = tuple[int, list[tuple[logging.Handler, int]], logging.Handler | None, list[tuple[logging.Logger, int]],
                "CallerLevels | None", list[logging.Handler]]
_raised: _Raised | None = None  # what the first block changed


class CallerLevels(logging.Filter):
    """Drops the records of phd_lab's loggers below the level the caller had set on them (``effective``: each
    logger's effective level when the blocks began, by name): a handler of the caller's shows what it showed
    before, while those loggers pass INFO records on to the log files."""

    def __init__(self, effective: dict[str, int]) -> None:
        super().__init__()
        self.effective = effective

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        while name:  # a logger made during the blocks (a module imported then) goes by its nearest ancestor
            level = self.effective.get(name)
            if level is not None:
                return record.levelno >= level
            name = name.rpartition(".")[0]
        return True


def _framework_loggers() -> list[logging.Logger]:
    """phd_lab's loggers that exist now (``logging.getLogger('phd_lab')`` among them)."""
    logging.getLogger("phd_lab")
    return [logger for name, logger in list(logging.root.manager.loggerDict.items())
            if isinstance(logger, logging.Logger) and (name == "phd_lab" or name.startswith("phd_lab."))]


@contextlib.contextmanager
def info_records_kept() -> Iterator[None]:
    """While the block runs, INFO records reach the root logger's handlers (a run's or probe job's log file) also
    in a process that never configured logging (a notebook, a script calling ``Main``): the root logger's default
    level WARNING dropped them before any handler saw them, and a run's .log file held its warnings only. The
    console shows what it showed before: the root's handlers are raised to its old level for the block, and a
    root without handlers (warnings printed by logging's last resort) gets that handler; all restored after.
    So do phd_lab's own loggers where the caller set them above INFO (``logging.getLogger("phd_lab")
    .setLevel(logging.WARNING)``, a notebook quieting a library), whose runs left an empty .log file: they pass
    INFO for the block, and the handlers the caller had filter out what those levels would have dropped.

    Blocks in threads of one process (a run and a probe job, a Dask task on a cluster of threads in the caller's
    process) share the one raised level, and the last of them to end restores it: the first to end gave the level
    back under the others, whose files lost their INFO lines (epochs, probe results) for the rest of their work."""
    _hold()
    try:
        yield
    finally:
        _release()


def _hold() -> None:
    """One more block of ``info_records_kept``; the root (and phd_lab's loggers) are lowered if they drop INFO
    records and no block lowered them. All or nothing: a Ctrl-C (or a handler's error) halfway left the block
    counted although its ``finally`` never ran, so the last real block never gave the caller its WARNING level
    back, nor its handlers' levels."""
    global _holders, _raised
    root = logging.getLogger()
    with _kept_lock:
        level = root.level
        quieted = [(logger, logger.level) for logger in _framework_loggers() if logger.level > logging.INFO]
        if _raised is None and (level > logging.INFO or quieted):  # NOTSET (0) passes everything too
            raised: list[tuple[logging.Handler, int]] = []
            stand_in = logging.lastResort if not root.handlers and level > logging.INFO else None
            # before any level changes: what the caller's handlers showed of each logger
            callers = CallerLevels({logger.name: logger.getEffectiveLevel()
                                    for logger in _framework_loggers()}) if quieted else None
            filtered: list[logging.Handler] = []
            try:
                if level > logging.INFO:
                    for handler in root.handlers:
                        if handler.level < level:
                            before = handler.level
                            handler.setLevel(level)
                            raised.append((handler, before))
                    if stand_in is not None:
                        root.addHandler(stand_in)
                    root.setLevel(logging.INFO)
                if callers is not None:
                    theirs = [*root.handlers, *(handler for logger, _ in quieted for handler in logger.handlers)]
                    for handler in dict.fromkeys(theirs):
                        handler.addFilter(callers)
                        filtered.append(handler)
                    for logger, _ in quieted:
                        logger.setLevel(logging.INFO)
            except BaseException:
                _give_back((level, raised, stand_in, quieted, callers, filtered))
                raise
            _raised = level, raised, stand_in, quieted, callers, filtered
        _holders += 1


def _give_back(changed: _Raised) -> None:
    """Put back the root's level and its handlers' levels where they are still what ``_hold`` made them (a level
    the caller set during the blocks, DEBUG say, is the caller's and stays), and remove the stand-in handler; the
    same for phd_lab's loggers, and the filter of the caller's handlers goes."""
    level, raised, stand_in, quieted, callers, filtered = changed
    root = logging.getLogger()
    if level > logging.INFO and root.level == logging.INFO:
        root.setLevel(level)
    if stand_in is not None:
        root.removeHandler(stand_in)
    for handler, before in raised:
        if handler.level == level:
            handler.setLevel(before)
    for logger, before in quieted:
        if logger.level == logging.INFO:
            logger.setLevel(before)
    for handler in filtered:
        handler.removeFilter(callers)


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
        changed, _raised = _raised, None
        _give_back(changed)
