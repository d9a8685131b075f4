"""Each probed run's ``probe.log``: what the probe job did to that run, kept beside its results.

A probe job often runs for hours on a CPU node, and its console goes to a batch system's file that
is gone years later. So every run folder it writes to gets an appended log: the job's own messages,
one line per layer (fitted or from the cache, with its accuracy and time), and, when a fit or the job
fails, the traceback (the console gets one paragraph). Messages that concern one run only carry
``extra={PROBE_JOB: position}`` and reach that run's log alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Sequence

from phd_lab import __version__
from phd_lab.environment import installed_version
from phd_lab.errors import PhdLabError, Terminated
from phd_lab.interrupts import interruption_behind
from phd_lab.log_file import LogFile, info_records_kept

log = logging.getLogger(__name__)

PROBE_JOB = "probe_job"  # LogRecord attribute: the position of the run a message is about
PROBE_JOBS = "probe_jobs"  # attribute of a failure: the positions of the runs it concerns
# a log's last line when the job's fits and writes ended well: of this run, not the job, whose exit status also
# reports the runs it left out or could not lock ("probe job finished" read as a success of a job that exited 1)
FINISHED = "this run's probes finished (the probe job's console and exit status report on its other runs)"


class _ForOneRun(logging.Filter):
    """The messages of the jobs at ``positions`` (one run folder: its default latents set and any others)."""

    def __init__(self, positions: Sequence[int]) -> None:
        super().__init__()
        self.positions = frozenset(positions)

    def filter(self, record: logging.LogRecord) -> bool:
        # other libraries' chatter (a Dask client's connection notes) stays out unless it is a warning
        ours = record.name.startswith("phd_lab") or record.levelno >= logging.WARNING
        position = getattr(record, PROBE_JOB, None)
        return ours and (position is None or position in self.positions)


class ProbeLogs:
    """Open while the probe job fits and writes: one file handler per run folder on the root logger (jobs that
    probe several latents sets of one run share its log)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.handlers: list[LogFile] = []
        self._handler_of: list[int] = []  # job position → its handler
        self._levels = info_records_kept()  # the job's INFO records in the files, however the caller set up logging

    def __enter__(self) -> "ProbeLogs":
        files: dict[Path, list[int]] = {}
        for position, path in enumerate(self.paths):
            files.setdefault(Path(path), []).append(position)
        handler_of = {}
        self._levels.__enter__()  # before the files are added: it raises the caller's handlers, not these
        try:
            for path, positions in files.items():
                handler = LogFile(path)  # appended: every job that probed the run
                handler.addFilter(_ForOneRun(positions))
                handler_of.update(dict.fromkeys(positions, len(self.handlers)))
                self.handlers.append(handler)
                logging.getLogger().addHandler(handler)
        except BaseException:  # a log that cannot be opened: nothing of this job stays on the root logger
            self._remove_handlers()
            raise
        self._handler_of = [handler_of[position] for position in range(len(self.paths))]
        self._say_started()
        return self

    def _say_started(self) -> None:
        """Open the job's part of each log with its command line, process, host and the versions that fit the
        probes: the line named the command alone, so a job's lines in a log appended by jobs on several nodes (a
        killed one, its resume, a colleague's) could not be told apart, nor matched to a lock's holder."""
        self.write(logging.INFO, "probe job started in process %d on %s (phd-lab %s, scikit-learn %s): %s",
                   os.getpid(), socket.gethostname(), __version__, installed_version("scikit-learn", "sklearn"),
                   " ".join(sys.argv) or "(no command line)")

    def write(self, level: int, message: str, *args: object, position: int | None = None,
              exc_info: BaseException | None = None) -> None:
        """A line for the files only (not the console): all runs' logs, or the run at ``position``."""
        record = log.makeRecord(log.name, level, __file__, 0, message, args,
                                (type(exc_info), exc_info, exc_info.__traceback__) if exc_info else None)
        for index, handler in enumerate(self.handlers):
            if position is None or index == self._handler_of[position]:
                handler.handle(record)

    def _failed(self, error: BaseException) -> None:
        """The message in the logs of the runs it concerns, with the traceback where there is one to read (an
        unexpected error, or a worker's); the other runs' logs say that the job ended on another run."""
        concerned = getattr(error, PROBE_JOBS, None)  # () when only runs whose folders (and logs) went
        concerned = range(len(self.paths)) if concerned is None else concerned
        detailed = error.__cause__ is not None or not isinstance(error, PhdLabError)
        written = set()
        for position in concerned:
            if self._handler_of[position] in written:
                continue
            written.add(self._handler_of[position])
            if detailed:
                self.write(logging.ERROR, "probe job failed", position=position, exc_info=error)
            else:
                self.write(logging.ERROR, "probe job failed: %s", error, position=position)
        about = str(self.paths[concerned[0]]) if concerned else str(error)
        for position in range(len(self.paths)):
            if self._handler_of[position] not in written:
                written.add(self._handler_of[position])
                self.write(logging.WARNING, "probe job failed on another run: %s", about, position=position)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        try:
            # a worker's own Ctrl-C that came back as its layer's failure: the command ends as interrupted
            stop = None if error is None else interruption_behind(error)
            if error is None:  # the job may still exit 1 for runs it left out (a grid's dead extraction)
                self.write(logging.INFO, FINISHED)
            elif stop is not None:
                how = "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
                self.write(logging.WARNING, "probe job interrupted (%s); the layers fitted so far are cached", how)
            else:
                self._failed(error)
        finally:
            self._remove_handlers()

    def _remove_handlers(self) -> None:
        """Take the job's files off the root logger and close them, and give the caller its levels back."""
        for handler in self.handlers:
            logging.getLogger().removeHandler(handler)
            with contextlib.suppress(OSError):  # a full disk: the error that ended the job is the one to report
                handler.close()
        self._levels.__exit__(None, None, None)
