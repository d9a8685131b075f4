"""Each probed run's ``probe.log``: what the probe job did to that run, kept beside its results.

A probe job often runs for hours on a CPU node, and its console goes to a batch system's file that
is gone years later. So every run folder it writes to gets an appended log: the job's own messages,
one line per layer (fitted or from the cache, with its accuracy and time), and, when a fit or the job
fails, the traceback (the console gets one paragraph). Messages that concern one run only carry
``extra={PROBE_JOB: position}`` and reach that run's log alone.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

from phd_lab.errors import PhdLabError, Terminated

log = logging.getLogger(__name__)

PROBE_JOB = "probe_job"  # LogRecord attribute: the position of the run a message is about
PROBE_JOBS = "probe_jobs"  # attribute of a failure: the positions of the runs it concerns
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _ForOneRun(logging.Filter):
    def __init__(self, position: int) -> None:
        super().__init__()
        self.position = position

    def filter(self, record: logging.LogRecord) -> bool:
        # other libraries' chatter (a Dask client's connection notes) stays out unless it is a warning
        ours = record.name.startswith("phd_lab") or record.levelno >= logging.WARNING
        return ours and getattr(record, PROBE_JOB, self.position) == self.position


class ProbeLogs:
    """Open while the probe job fits and writes: one file handler per run on the root logger."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.handlers: list[logging.FileHandler] = []

    def __enter__(self) -> "ProbeLogs":
        for position, path in enumerate(self.paths):
            handler = logging.FileHandler(path, encoding="utf-8")  # appended: every job that probed the run
            handler.setFormatter(logging.Formatter(FORMAT))
            handler.addFilter(_ForOneRun(position))
            self.handlers.append(handler)
            logging.getLogger().addHandler(handler)
        self.write(logging.INFO, "probe job started: %s", " ".join(sys.argv) or "(no command line)")
        return self

    def write(self, level: int, message: str, *args: object, position: int | None = None,
              exc_info: BaseException | None = None) -> None:
        """A line for the files only (not the console): all runs' logs, or the run at ``position``."""
        record = log.makeRecord(log.name, level, __file__, 0, message, args,
                                (type(exc_info), exc_info, exc_info.__traceback__) if exc_info else None)
        for index, handler in enumerate(self.handlers):
            if position is None or index == position:
                handler.handle(record)

    def _failed(self, error: BaseException) -> None:
        """The message in the logs of the runs it concerns, with the traceback where there is one to read (an
        unexpected error, or a worker's); the other runs' logs say that the job ended on another run."""
        concerned = getattr(error, PROBE_JOBS, None)  # () when only runs whose folders (and logs) went
        concerned = range(len(self.handlers)) if concerned is None else concerned
        detailed = error.__cause__ is not None or not isinstance(error, PhdLabError)
        for position in concerned:
            if detailed:
                self.write(logging.ERROR, "probe job failed", position=position, exc_info=error)
            else:
                self.write(logging.ERROR, "probe job failed: %s", error, position=position)
        about = str(self.paths[concerned[0]]) if concerned else str(error)
        for position in set(range(len(self.handlers))) - set(concerned):
            self.write(logging.WARNING, "probe job failed on another run: %s", about, position=position)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        try:
            if error is None:
                self.write(logging.INFO, "probe job finished")
            elif isinstance(error, KeyboardInterrupt):
                how = "SIGTERM" if isinstance(error, Terminated) else "Ctrl-C"
                self.write(logging.WARNING, "probe job interrupted (%s); the layers fitted so far are cached", how)
            else:
                self._failed(error)
        finally:
            for handler in self.handlers:
                logging.getLogger().removeHandler(handler)
                handler.close()
