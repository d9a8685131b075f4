"""Atomic file writes: temp file in the target folder, fsync, ``os.replace``.

Every file the framework writes goes through these helpers, so a crash leaves either the
old complete file or the new complete file, never a truncated one. Files get the permissions
any new file gets in their folder: the process umask, or the folder's default ACL where it has one
(``mkstemp`` alone would make them private, 0600), so results on a shared file system stay readable
by the group, the report or Dask workers.

A write never re-creates a folder the process keeps (``phd_lab.kept_folders``); the checks of a user's path
before anything is written there are ``phd_lab.user_paths``.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import math
import os
import re
import secrets
import shlex
import stat
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from phd_lab.kept_folders import check_kept, make_folder

log = logging.getLogger(__name__)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entry table so a completed rename survives a power loss."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace(source: Path, target: Path) -> None:
    """``os.replace`` within one folder; a folder that went meanwhile is said as ``RunFolderLost`` where the
    process keeps it (``existing_folder``), instead of a bare FileNotFoundError, and a folder where ``target``
    should be as ``FolderInTheWay`` (what to do), instead of a bare IsADirectoryError."""
    try:
        os.replace(source, target)
    except IsADirectoryError:
        from phd_lab.errors import FolderInTheWay
        raise FolderInTheWay(target) from None
    except (FileNotFoundError, NotADirectoryError):
        check_kept(Path(target).parent)
        raise


def remove(path: Path, missing_ok: bool = False) -> None:
    """``path.unlink()`` of a file the framework writes; a folder in its place is said as ``FolderInTheWay``."""
    try:
        Path(path).unlink(missing_ok=missing_ok)
    except IsADirectoryError:
        from phd_lab.errors import FolderInTheWay
        raise FolderInTheWay(path) from None


def refuse_link(path: Path | str, what: str) -> None:
    """Raise a ``DataError`` where ``path``, a file the framework appends to or locks in place (a log, a lock file)
    or a folder whose files it removes, is a symbolic link. phd-lab never makes one there, and following it would
    change what lies outside the run folder: a run folder received from someone else with ``.lock`` linked to
    ``~/thesis.tex`` had that file emptied by the next run's lock, a linked ``<name>.log`` took the run's log lines,
    and a ``probe_confusion`` linked to a folder of figures had every .png in it deleted by the probe job. Files
    written whole are swapped in by ``os.replace``, which replaces a link instead of following it."""
    if not os.path.islink(path):
        return
    from phd_lab.errors import DataError
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    raise DataError(f"The {what} {str(path)!r} is a symbolic link (to {target!r}), which phd-lab never makes: "
                    f"writing there would change what it names instead, outside its folder (a run folder received "
                    f"from someone else, or a folder shared with others, may carry such a link). Nothing was written "
                    f"to it; delete the link (rm {shlex.quote(str(path))}) and start the command again.")


def open_no_follow(path: Path | str, flags: int, what: str, mode: int = 0o666) -> int:
    """``os.open(path, flags | O_NOFOLLOW)``: a file descriptor of ``path`` itself, never of a file a symbolic link
    there names (``refuse_link`` says why, also when the link appears after a check). A folder at ``path`` is said
    as ``FolderInTheWay`` (what to do): a bare IsADirectoryError of a run's log file read as a failure 'while
    building its data, model or optimizer', with a traceback."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except IsADirectoryError:
        from phd_lab.errors import FolderInTheWay
        raise FolderInTheWay(path) from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            refuse_link(path, what)
        raise


def link_once(source: Path, target: Path) -> None:
    """Publish ``source`` as ``target`` unless ``target`` exists (then FileExistsError), with no moment in which
    two writers both see it missing: a hard link fails on an existing name, where a rename replaces it. A file
    system without hard links falls back to a check and a rename."""
    try:
        os.link(source, target)
    except OSError as error:  # FileExistsError (EEXIST) goes on as it is
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if Path(target).exists():
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
        replace(source, target)
        return
    os.unlink(source)


_TEMP_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def temp_name(name: str, random_part: str = "x" * 8) -> str:
    """The name of the temp file an atomic write of the file ``name`` goes through (``_new_temp``), with
    ``random_part`` for its 8 random characters: what has to fit the file systems' 255 bytes, not ``name`` alone."""
    return f".{name}.{random_part}.tmp"


def _new_temp(path: Path) -> tuple[int, Path]:
    """A new temp file beside ``path``, in mkstemp's name shape (``.<name>.`` + 8 random characters + ``.tmp``),
    created with mode 0666 so that the system gives it what any new file gets there: the umask, or the folder's
    default ACL. mkstemp makes 0600, and a chmod afterwards to 0666 & ~umask overrode a default ACL (a lab's
    project folder that grants its group read access gave every result 0600 under a private umask 077)."""
    for _ in range(100):
        name = "".join(secrets.choice(_TEMP_CHARACTERS) for _ in range(8))
        tmp = path.parent / temp_name(path.name, name)
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temp file name", str(path))


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "wb", *, publish: Callable[[Path, Path], None] = replace,
                **kwargs: Any) -> Iterator[IO]:
    """Open a temp file beside ``path``; on clean exit fsync it and rename it over ``path`` (or ``publish`` it:
    ``link_once`` keeps an existing ``path``)."""
    path = Path(path)
    make_folder(path.parent)
    fd, tmp = _new_temp(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        publish(tmp, path)
        fsync_dir(path.parent)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(error, OSError):
            name_the_file(error, path)
        raise


def name_the_file(error: OSError, path: Path | str) -> None:
    """Give ``error`` the file ``path`` when it names none: a write that fails (EFBIG, ENOSPC on a full disk)
    says only 'File too large', and its message should say which file was lost."""
    if error.filename is None:
        error.filename = str(path)


STALE_AFTER_SECONDS = 15 * 60


def file_system_now(folder: Path | str) -> float:
    """The time the file system of ``folder`` gives a file written now: the modification time of a temp file made
    there. A file's age must be read on the clock that stamped it. On a shared file system the server's clock (or
    that of the node that wrote) stamps files, and a node whose own clock ran 20 minutes ahead took another node's
    temp file of the moment for one a killed writer left 15 minutes ago and deleted it under its writer (whose
    result was lost); one behind kept a killed writer's leftovers. Where no file can be made there (a folder of
    another user, which nothing can be removed from either), this machine's clock is taken."""
    try:
        with tempfile.TemporaryFile(dir=folder) as probe:
            return os.fstat(probe.fileno()).st_mtime
    except OSError:
        return time.time()


def remove_stale_temps(folder: Path | str, owned_prefix: str | tuple[str, ...] | None = None,
                       only: str | None = None, now: float | None = None, shape: str | None = None) -> list[Path]:
    """Delete temp files that a killed writer left in ``folder``: every one of the caller's own
    files (targets starting with ``owned_prefix``: only the lock holder writes those), and any other
    not modified for ``STALE_AFTER_SECONDS``. Other processes write into a run folder without its
    lock (the probe job, the report); their temp files of the moment must survive. ``only``
    restricts the removal to the temp files of that one target name (a folder that is not ours).
    ``now``: ``file_system_now`` of the folder's file system, where the caller cleans many of its folders.
    ``shape``: a regular expression the target names must match in full (the names the caller writes there).
    A folder of a temp file's name is none of ours and stays (a run folder received from someone else with a
    folder ``.<name>.log.abcd1234.tmp`` ended the rerun, the probe job and the report with IsADirectoryError);
    a symbolic link of such a name goes, not what it names."""
    removed, kept = [], []
    # measured at the first temp file that is not the caller's (most calls find none)
    cutoff = None if now is None else now - STALE_AFTER_SECONDS
    owned_prefixes = (owned_prefix,) if isinstance(owned_prefix, str) else tuple(owned_prefix or ())
    # mkstemp's shape: ".<target>." + 8 random characters + ".tmp" (not the temps of a sibling "<target>.gz")
    pattern = ".*.tmp" if only is None else f".{glob.escape(only)}." + "[a-z0-9_]" * 8 + ".tmp"
    for stale in Path(folder).glob(pattern):
        try:
            if (stale.is_dir() and not stale.is_symlink()
                    or shape is not None and not re.fullmatch(rf"\.(?:{shape})\.[a-z0-9_]+\.tmp", stale.name)):
                continue
            owned = any(stale.name.startswith(f".{prefix}") for prefix in owned_prefixes)
            if not owned:
                cutoff = file_system_now(folder) - STALE_AFTER_SECONDS if cutoff is None else cutoff
                if stale.lstat().st_mtime > cutoff:  # a link's own age, not that of what it names
                    continue
            stale.unlink()
        except FileNotFoundError:  # finished (renamed) meanwhile
            continue
        except OSError as error:
            if error.errno not in _NOT_OURS_TO_REMOVE:
                raise
            kept.append((stale, error))
            continue
        removed.append(stale)
    if kept:
        _say_kept(Path(folder), kept)
    return removed


# unlink's errors where a temp file cannot be removed by this user: a shared folder with the sticky bit (mode 1777)
# and the file another user's, a folder without write permission, a read-only mount
_NOT_OURS_TO_REMOVE = (errno.EPERM, errno.EACCES, errno.EROFS)


def _say_kept(folder: Path, kept: list[tuple[Path, OSError]]) -> None:
    """Warn once that the temp files ``kept`` of killed writers stay in ``folder``: ``remove_stale_temps`` stopped the
    report with a PermissionError traceback where another user's killed report had left one in a shared folder."""
    first, error = kept[0]
    log.warning("%d temp file(s) that a killed process left in %s cannot be removed by this user and stay (%s: %s); "
                "they do no harm, and their owner (or the folder's) may delete them.", len(kept), folder,
                first.name, error.strerror or error)


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text(path: Path | str, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _json_text(obj: Any, path: Path | str) -> str:
    """``obj`` as strict JSON: a NaN or infinity (which Python would write as ``NaN``/``Infinity``, a file jq and
    other readers refuse) is a ``ValueError`` naming ``path`` and where in ``obj`` it lies; nothing is written."""
    try:
        return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except ValueError:
        where = non_finite_at(obj)
        if where is None:
            raise
        raise ValueError(f"{str(path)!r} was not written: its value at {where[0]} is {where[1]}, which strict JSON has "
                         f"no number for (jq and other readers refuse NaN and Infinity)") from None


def non_finite_at(obj: Any, where: str = "the top") -> tuple[str, float] | None:
    """Where in ``obj`` (a key path such as ``record.eval_acc`` or ``layers[2]``) the first NaN or infinity lies,
    and the value; None where there is none. Readers of a file this module wrote refuse one the same way."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where, obj
    if isinstance(obj, dict):
        items = ((f"{key}" if where == "the top" else f"{where}.{key}", value) for key, value in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{'' if where == 'the top' else where}[{i}]", value) for i, value in enumerate(obj))
    else:
        return None
    return next((found for key, value in items if (found := non_finite_at(value, key)) is not None), None)


def open_regular(path: Path | str) -> IO[bytes]:
    """``path`` opened for reading in binary mode where it is a regular file. A FIFO, socket or device node there is
    ``NotARegularFile`` (an OSError): ``open`` of a FIFO waits for a writer for ever, and the report hung at a FIFO in
    a run folder (analysis.json, probe_performances.csv, the run's log, the page --out names). The file is opened
    without waiting (O_NONBLOCK) and its mode checked on the open file, so a FIFO put there after a check of the path
    is refused too; a socket cannot be opened at all (ENXIO). A file under another process's lease (an oplock of a
    Samba server, a delegation of an NFS server) refuses an open without waiting (EAGAIN) where ``open`` waits for the
    lease to be given back: only a regular file takes a lease, so it is opened again waiting, as ``open`` does (the
    report said it could not be read, the training took its checkpoint for a file system failing). A folder there is
    IsADirectoryError naming the path, and no descriptor is left open on any refusal."""
    return os.fdopen(regular_file_descriptor(path, os.O_RDONLY | os.O_CLOEXEC), "rb")


def regular_file_descriptor(path: Path | str, flags: int, opener: Callable[[Any, int], int] = os.open) -> int:
    """A descriptor of ``path`` opened by ``opener`` with ``flags`` where it is a regular file (``open_regular``
    says why, and the run's and the probe job's log files open through it for appending: a FIFO at probe.log hung
    the job): opened without waiting, then blocking again; a FIFO, socket or device node is ``NotARegularFile``, a
    folder IsADirectoryError, and no descriptor is left open on any refusal."""
    from phd_lab.errors import NotARegularFile
    try:
        fd = opener(path, flags | os.O_NONBLOCK)
    except BlockingIOError:
        fd = opener(path, flags)
    except OSError as error:
        mode = None
        if error.errno == errno.ENXIO:
            with contextlib.suppress(OSError):
                mode = os.stat(path).st_mode
        if mode is not None and not stat.S_ISREG(mode):
            raise NotARegularFile(path, mode) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):  # os.fdopen's own error named the descriptor's number and left it open
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise NotARegularFile(path, mode)
        os.set_blocking(fd, True)  # a regular file ignores O_NONBLOCK; what reads or writes it later need not know
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(path: Path | str) -> bytes:
    """The bytes of the regular file ``path`` (``open_regular``: a FIFO or device there is ``NotARegularFile``)."""
    with open_regular(path) as handle:
        return handle.read()


def read_json(path: Path | str) -> Any:
    """The JSON value of a UTF-8 file. Nesting too deep for Python's parser (a crafted file in a run folder received
    from someone else, or runaway brackets) raises a ``ValueError`` like any other invalid JSON, which every reader
    handles: its ``RecursionError`` stopped the probe job with a traceback. A FIFO there is refused (``read_bytes``)."""
    text = read_bytes(path).decode("utf-8")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{str(path)!r} nests lists or objects too deep to be read as JSON") from None


def read_json_object(path: Path | str) -> dict[str, Any] | None:
    """The JSON object of a file, or None where it is missing, unreadable, not JSON or not an object: for the files
    a reader treats as absent then (a manifest, a previous analysis, a probe job's settings)."""
    try:
        value = read_json(path)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as strict JSON (no NaN or infinity: ``_json_text``)."""
    write_text(path, _json_text(obj, path))


def write_json_once(path: Path | str, obj: Any) -> bool:
    """``write_json`` unless ``path`` exists (``link_once``): whether this call wrote it. Of two processes
    writing the same new file, exactly one does."""
    text = _json_text(obj, path)
    try:
        with atomic_open(path, "w", encoding="utf-8", publish=link_once) as handle:
            handle.write(text)
    except FileExistsError:
        return False
    return True


def write_csv(path: Path | str, frame: "Any", **to_csv_kwargs: Any) -> None:
    """Write a pandas DataFrame as CSV atomically (``index=False`` unless given)."""
    to_csv_kwargs.setdefault("index", False)
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, **to_csv_kwargs)


def write_with(path: Path | str, writer: Callable[[IO], None], mode: str = "wb") -> None:
    """Let ``writer`` fill a binary handle (torch.save, np.save, savefig), then swap it in."""
    with atomic_open(path, mode) as handle:
        writer(handle)


def save_figure(fig: "Any", path: Path | str, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically; the format follows the file suffix."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    kwargs.setdefault("bbox_inches", "tight")
    write_with(path, lambda handle: fig.savefig(handle, format=fmt, **kwargs))
