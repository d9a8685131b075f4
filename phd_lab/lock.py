"""An exclusive lock on a run folder, held by one live process.

Uses ``fcntl.flock``: the kernel drops the lock when its process dies (even by SIGKILL), so
a stale lock file of a dead process is simply taken over. The file holds the owner's PID
and host for the error message. Forked children (DataLoader workers) close their inherited
copies of the lock's descriptor at once, so a killed trainer's lock does not live on in them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shlex
import socket
import stat
import threading
from pathlib import Path
from typing import Iterator

from phd_lab.atomic import open_no_follow
from phd_lab.errors import NOT_REGULAR, DataError, RunFolderLost, RunLockedError, storage_refusal

log = logging.getLogger(__name__)

_HELD: set[int] = set()  # descriptors of the locks this process holds
PROBE_LOCK = ".probe.lock"  # held in a run folder while a probe job writes its results there


def _close_inherited_locks() -> None:
    """In a forked child: drop its copies of the parent's lock descriptors. The lock belongs to the
    open file, which the parent's descriptor keeps; a child holding a copy (a DataLoader worker that
    takes seconds to notice its parent died) would otherwise keep a killed run locked."""
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


def write_all(fd: int, data: bytes, offset: int = 0) -> None:
    """``os.pwrite`` every byte of ``data`` at ``offset``: a write may be cut short (a file size limit or a full disk
    reached part-way, a network file system), and the write of the rest then succeeds or raises why it cannot."""
    rest = memoryview(data)
    while rest:
        written = os.pwrite(fd, rest, offset)
        if written == 0:  # no progress and no error: stop instead of spinning
            raise OSError(errno.EIO, f"{os.strerror(errno.EIO)}: no byte of the lock's owner line was written")
        rest, offset = rest[written:], offset + written


def lock_refused(path: Path, error: OSError) -> DataError:
    """The error for a lock file whose file system refused ``flock`` (ENOLCK: an NFS mount without its lock service;
    EOPNOTSUPP, ENOSYS: some FUSE or network mounts): a bare "OSError: [Errno 37] No locks available" named neither
    the file nor what to do."""
    name = errno.errorcode.get(error.errno or 0, "an error")
    return DataError(f"The lock file {str(path)!r} could not be locked: the file system of its folder refused the "
                     f"lock ({error.strerror or error}, {name}); this file system does not support locks, as some "
                     f"NFS mounts without their lock service and some FUSE mounts do not. phd-lab locks it so that "
                     f"two processes never write the same folder at once; put the folder on a file system with locks "
                     f"(a local disk, or a network mount with locking enabled), then run the same command again.")


def not_a_lock_file(path: Path, mode: int) -> DataError:
    """The error for a lock path that holds no regular file (a FIFO, socket or device node someone made there): its
    ftruncate failed, and the run said only "run folder cannot be written (Invalid argument)"."""
    what = NOT_REGULAR.get(stat.S_IFMT(mode), "no regular file")
    return DataError(f"The lock file {str(path)!r} is {what}, not a regular file: phd-lab did not make it (its lock "
                     f"files are regular files holding their owner's PID). Remove it (rm {shlex.quote(str(path))}) "
                     f"and run the same command again: phd-lab makes a new one.")


def _mode_if(wanted: bool, path: Path) -> int | None:
    """The mode of ``path`` itself (links not followed) when ``wanted`` and it can be read, else None."""
    if not wanted:
        return None
    try:
        return os.lstat(path).st_mode
    except OSError:
        return None


def open_lock_file(path: Path, flags: int) -> int:
    """A descriptor of the regular file at ``path`` (``open_no_follow``; made where missing), else the error of
    ``not_a_lock_file``: a FIFO there opens (for reading and writing, without waiting for a writer) and a device
    node too, so its mode is checked on the descriptor; a socket cannot be opened at all, and its ENXIO said
    only "No such device or address"."""
    try:
        fd = open_no_follow(path, flags, "lock file")  # a folder there: FolderInTheWay
    except OSError as error:
        mode = _mode_if(error.errno == errno.ENXIO, path)
        if mode is not None and not stat.S_ISREG(mode):
            raise not_a_lock_file(Path(path), mode) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise not_a_lock_file(Path(path), mode)
    return fd


def lock_unwritable(path: Path, error: OSError) -> DataError:
    """The error for a lock file whose owner line could not be written (a full disk, a used-up quota, a file size
    limit): a bare OSError, or "run folder cannot be written (No space left on device)", named no file."""
    remedy = storage_refusal(error) or "the file system refused to write it"
    return DataError(f"The lock file {str(path)!r} could not be written ({error.strerror or error}): {remedy}, then "
                     f"run the same command again. phd-lab writes its owner's PID there before it writes anything "
                     f"else in the folder.")


class RunLock:
    """``flock`` on ``path``; ``refusal`` ends the message another process gets (what must not happen twice)."""

    def __init__(self, path: Path, refusal: str = "Two processes must not train the same run") -> None:
        self.path = Path(path)
        self.refusal = refusal
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        # the umask shapes its mode as any new file's: a group's colleague (umask 002) must open it for writing too
        fd = open_lock_file(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown process"
            os.close(fd)
            raise RunLockedError(
                f"The run folder {str(self.path.parent)!r} is in use by {owner}. {self.refusal}; wait for it "
                f"to finish (or stop it) and start again — a lock left by a process that died is taken over "
                f"automatically.") from None
        except BaseException as error:  # ENOLCK, EOPNOTSUPP: the descriptor went on open, once per try
            os.close(fd)
            if isinstance(error, OSError):
                raise lock_refused(self.path, error) from None
            raise
        try:
            os.ftruncate(fd, 0)
            write_all(fd, f"PID {os.getpid()} on host {socket.gethostname()}\n".encode())
            os.fsync(fd)
        except BaseException as error:  # a full disk: closing drops the lock, which no one would release otherwise
            os.close(fd)
            if isinstance(error, OSError):
                raise lock_unwritable(self.path, error) from None
            raise
        self._fd = fd
        _HELD.add(fd)
        return self

    def check_held(self, advice: str | None = None) -> None:
        """Raise ``RunFolderLost`` unless ``path`` is still the file this process locked.

        ``flock`` locks an open file, not a name: when the folder is deleted or moved, this process keeps its
        lock on a file no one else can see, its next write would re-create the folder without config and
        log, and a second process could lock the new one and train the same run beside it. Callers check
        before they write; ``advice`` ends the error's message (by default: train the run anew).
        """
        if self._fd is None or self._fd not in _HELD:  # not locked, or a forked child's copy (closed at the fork)
            return
        held = os.fstat(self._fd)
        try:
            now = os.stat(self.path)
        except OSError as error:  # gone, a stale NFS handle, a path component that is no folder any more
            raise RunFolderLost(self.path.parent, f"its lock file {self.path.name}: {error.strerror}",
                                advice) from None
        if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise RunFolderLost(self.path.parent, f"its lock file {self.path.name} is another file now", advice)

    def release(self) -> None:
        """Let go of the lock. A refused ftruncate or unlock (an NFS mount that lost its lock service meanwhile) is
        a warning, not an error: it failed a run that had trained and written its results, and left the descriptor,
        and with it the lock, open for the rest of the process."""
        if self._fd is not None and self._fd not in _HELD:  # a forked child: its copy was closed at the fork
            self._fd = None
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _HELD.discard(fd)
            try:
                os.ftruncate(fd, 0)  # no owner line left: readers elsewhere need not guess (see run_tables)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError as error:  # the close lets go of the lock all the same
                log.warning("The lock file %s could not be emptied or unlocked (%s); it is let go by closing it, "
                            "and what was written under it is kept.", self.path, error.strerror or error)
            finally:
                os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``, waiting while another process holds it (``RunLock`` refuses
    instead); the kernel drops it when its process dies. A symbolic link at ``path`` is refused, not followed
    (``open_no_follow``): in a data_dir shared with others, one planted at a download's lock made an empty file of
    whatever name it gave, in a folder of the user's, and locked it; a FIFO or socket there is refused as at a run's
    lock (``open_lock_file``). A refused unlock is a warning: it failed a download that had completed (or replaced
    the error of one that had not)."""
    with os.fdopen(open_lock_file(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC), "r+b") as handle:
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("Waiting for another process that holds %s ...", path)
                fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as error:
            raise lock_refused(Path(path), error) from None
        try:
            yield
        finally:
            try:
                fcntl.flock(handle, fcntl.LOCK_UN)
            except OSError as error:  # the close just below lets go of it all the same
                log.warning("The lock file %s could not be unlocked (%s); it is let go by closing it.", path,
                            error.strerror or error)


class ProcessTurn:
    """Tasks of one kind take turns within a process.

    A run sets process-wide state: the random seeds, torch's and the BLAS libraries' thread counts,
    warning filters, the log handler. A Dask worker with several threads runs several tasks in one
    process at once, and two runs there would draw from each other's random streams and thread
    settings, so their results would no longer be reproducible. Such tasks wait for their turn
    (parallelism comes from worker processes: start workers with ``--nthreads 1``)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if not self._lock.acquire(blocking=False):
            log.info("Another %s is in progress in this process (a worker with several threads); waiting for it, "
                     "because the two would share random seeds and thread settings.", self.what)
            self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()
