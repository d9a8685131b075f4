"""Exception types and the exit codes they map to.

``UsageError`` (and its subclasses) means the user's input is wrong: the CLI prints the
message as one paragraph and exits with status 2 before anything is written.
``RunFailure`` means something broke while running: exit status 1.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class PhdLabError(Exception):
    """Base class of every error the framework raises on purpose."""

    exit_code = EXIT_FAILURE


class UsageError(PhdLabError):
    """Invalid usage, configuration or input data (exit status 2)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A config file or one of its keys is invalid."""


class RegistryError(UsageError):
    """A registry name is unknown or a registry module is malformed."""


class DataError(UsageError):
    """Input data is missing, incomplete or inconsistent."""


# What a path may be that is no regular file, in words (a lock file, or a file phd-lab reads)
NOT_REGULAR = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
               stat.S_IFSOCK: "a socket"}


class NotARegularFile(DataError, OSError):
    """A FIFO, socket or device node where phd-lab reads one of its files (a manifest, an analysis.json, a table):
    opening a FIFO for reading waits for a writer for ever, and the report and the probe command hung on one. Still
    an OSError, so that readers that take an unreadable file for an absent one go on doing so."""

    def __init__(self, path: object, mode: int) -> None:
        super().__init__(errno.EINVAL, os.strerror(errno.EINVAL), str(path))
        self.mode = mode
        self.what = what = NOT_REGULAR.get(stat.S_IFMT(mode), "no regular file")
        self.message = (f"{str(path)!r} is {what}, not a regular file: phd-lab did not make it (it writes its files "
                        f"whole, as regular files), and reading it could wait for ever. Remove it "
                        f"(rm {shlex.quote(str(path))}) and run the same command again.")

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type, tuple[str, int]]:  # pickled to the client by Dask: path and mode rebuild it
        return type(self), (self.filename, self.mode)


class RunLockedError(UsageError):
    """Another live process is working on the same run folder."""


class ExtractionError(PhdLabError):
    """The extraction could not be carried out (e.g. a layer output of unexpected type)."""


class CheckpointError(PhdLabError):
    """No usable checkpoint could be loaded."""


class ReportError(PhdLabError):
    """The report's page or one of its tables could not be written (a full disk, a file size limit)."""


class RunFolderLost(PhdLabError):
    """A run's folder was deleted or moved while its process worked in it (its lock file is gone or another's)."""

    def __init__(self, folder: object, how: str, advice: str | None = None) -> None:
        advice = advice or "Start the command again to train the run anew."
        super().__init__(f"The folder {str(folder)!r} was deleted or moved while this process worked in it ({how}); "
                         f"stopping before writing anything more, so that the folder is not re-created without its "
                         f"config and log. {advice}")


class FolderInTheWay(PhdLabError, IsADirectoryError):
    """A folder sits where the framework writes (or replaces) one of its files: ``os.replace`` and ``unlink`` fail
    with EISDIR. Still an OSError, so that callers that report or tolerate a failed write go on doing so."""

    def __init__(self, path: object) -> None:
        super().__init__(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        self.message = (f"{str(path)!r} is a folder, but phd-lab writes a file of that name there (it never makes "
                        f"such a folder itself), so it cannot go on. Remove or rename that folder (move anything you "
                        f"keep in it elsewhere), then run the same command again.")

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type, tuple[str]]:  # pickled to the client by Dask: the path alone rebuilds it
        return type(self), (self.filename,)


class RunFailure(PhdLabError):
    """A grid point failed while running; the message names the run and its log."""


class RunDiverged(PhdLabError):
    """Training made the model's weights or buffers non-finite (NaN/inf); they never recover, so the run
    stops there instead of spending its remaining epochs, and its post-processing is skipped."""


class RunStopped(PhdLabError):
    """The command that submitted this run to a Dask cluster was stopped (Ctrl-C, SIGTERM): the task ends at
    the next batch, with the run's last completed epoch in its checkpoint, so that a rerun resumes it."""


class SchedulerLost(PhdLabError):
    """The command lost its Dask scheduler (it stopped, or the network failed) while tasks were unfinished: Dask
    cancels them all, with no error to report, so each was said to have failed with 'NoneType: None'."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's time limit, scancel, kill): raised like Ctrl-C, so that every layer stops
    the same way, and named in the run's log and on the console."""


def brief(error: BaseException) -> str:
    """The console's account of a failure: an exception a DataLoader worker raised carries the worker's whole
    traceback in its message ("Caught X in DataLoader worker process 0. Original Traceback ..."), which the
    run's log keeps; the console gets its first line and the exception's own last line."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{lines[0]} {lines[-1]}"


# Why a file system refused a write, and what frees it: a run that stopped on one resumes once it is fixed
STORAGE_REFUSALS = {
    errno.ENOSPC: "its disk is full: free space on it",
    errno.EDQUOT: "your disk quota there is used up (`quota -s` shows it): free space within it or ask for more",
    errno.EFBIG: "the file outgrew this process' file size limit (`ulimit -f`, or the batch job's): raise or lift it",
    errno.EROFS: "its file system is mounted read-only: make it writable again",
    # a read refused too (a data file): the words must fit both
    errno.EACCES: "this user lacks the permission to it: give it back (on the file and its folder)",
}


def storage_refusal(error: BaseException) -> str | None:
    """What a write refused by the file system means (a full disk, a used-up quota, ``ulimit -f``, a read-only
    mount, a permission taken away) and what to do about it, for a message; None for any other error. The
    system's own words ("File too large") do not say that a limit of the process, not the file, is at fault."""
    if not isinstance(error, OSError) or isinstance(error, FolderInTheWay):
        return None
    return STORAGE_REFUSALS.get(error.errno)


LOG_MARK = ". Its log: "  # where failure_line names the log; the summary's row names the run folder instead


def failure_line(error: BaseException) -> str | None:
    """One line for a run that failed after its run log was opened: the error, and the log that holds its
    traceback (not for a lost run folder: its log went with it). None: it failed before its log was opened,
    so the caller has to show the traceback itself."""
    said = f"{type(error).__name__}: {brief(error).rstrip('.')}"
    refusal = storage_refusal(error)
    if refusal is not None:
        said = f"{said}; {refusal}, then run the same command again: it resumes the run where it stopped"
    if isinstance(error, RunFolderLost):
        return said
    logged_to = getattr(error, "logged_to", None)
    return None if logged_to is None else f"{said}{LOG_MARK}{logged_to}"


def without_log(line: str) -> str:
    """A failure_line for the summary's row, which names the run folder itself: the error without its log, as a
    sequential run's row has it (a Dask run's row said the log a second time, after the error line above)."""
    return line.split(LOG_MARK, 1)[0]


def first_line(error: BaseException) -> str:
    """An exception's message up to its first line break: torch appends C++ stack frames (kilobytes) to some."""
    lines = str(error).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(error).__name__
