"""Checks of a user's path before anything is written there, and the words for what is wrong with one.

A folder a config or an option names is checked before any run starts: a ``~user`` that names no home folder
(``check_home``), a loop of symbolic links on the way (``runs_into_a_loop``, ``unreachable``) or a link that leads
nowhere (``dangling_link``), a path or a name too long for the system, a file where a folder would be made or a
folder that cannot be written (``check_writable_dir``); ``os_refusal`` and ``shown_path`` word the messages, and
``nearest_existing`` finds where a folder made for a path would begin.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


NAME_MAX = 255  # bytes per file or folder name on the common file systems
LOOP = ("it runs into a loop of symbolic links (a link that leads, through others, back to itself); remove the "
        "loop or choose another folder")


def shown_path(path: Path | str, limit: int = 100) -> str:
    """``path`` for a message: a long one with its middle left out."""
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit - 40]}...{text[-37:]}"


def os_refusal(path: Path | str, error: OSError) -> str:
    """Why the operating system refused ``path`` (``error`` from a stat of it), with what to do, for a message;
    a path too long says whether one name or the whole path is."""
    if error.errno == errno.ENAMETOOLONG:
        longest = max((name_bytes(part) for part in Path(path).parts), default=0)
        if longest > NAME_MAX:
            return (f"path too long: one of its names is {longest} bytes, and file systems allow {NAME_MAX} per "
                    f"name; choose a shorter folder name")
        return (f"path too long: {name_bytes(str(path))} bytes, more than this system "
                f"allows for a whole path; choose a shorter folder path")
    if error.errno == errno.ELOOP:
        return LOOP
    return f"{error.strerror or error}; choose a folder you can reach"


def unreachable(path: Path | str) -> str | None:
    """Why the operating system refuses ``path`` itself (a loop of symbolic links, a name too long), as
    ``os_refusal`` says it; None where it exists or merely does not exist (yet). pathlib's ``exists()`` says False
    for a loop, and its ``is_dir()`` and ``resolve()`` raised OSError or RuntimeError on such paths: a traceback."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        return os_refusal(path, error)
    return None


def check_home(path: str, subject: str, where: str) -> None:
    """Raise a ConfigError where the ``~`` or ``~user`` that starts ``path`` names no home folder:
    ``os.path.expanduser`` leaves such a path as written, and pathlib raises RuntimeError on it."""
    if not path.startswith("~") or os.path.expanduser(path) != path:
        return
    user = path[1:].split(os.sep, 1)[0]
    problem = f"no user {user}" if user else "the home folder is unknown (HOME is not set)"
    from phd_lab.errors import ConfigError
    raise ConfigError(f"{where}: {subject} is {path!r}, but {path.split(os.sep, 1)[0]!r} names no home folder "
                      f"({problem}); write the folder's full path.")


def runs_into_a_loop(path: Path | str) -> bool:
    """Whether the way to ``path`` passes a loop of symbolic links (a -> b -> a). ``exists()`` says False for such a
    path, as for one not made yet, and ``Path.resolve`` raised RuntimeError (before Python 3.13; later ones return
    a path that is no folder), so the loop is looked for first: the stat of any path through it fails with
    ELOOP, whether or not the rest of the path exists."""
    try:
        os.stat(path)
    except OSError as error:
        return error.errno == errno.ELOOP
    return False


def name_bytes(name: str) -> int:
    """The bytes a file or folder name takes on disk: its bytes as this process names them (a byte that is no UTF-8,
    such as a Latin-1 'é' below a UTF-8 locale, is held as its escape and is one byte); UTF-8's count where the
    locale cannot encode the name. Counting UTF-8 alone raised UnicodeEncodeError on such an escape."""
    try:
        return len(os.fsencode(name))
    except UnicodeEncodeError:
        return len(name.encode("utf-8", "surrogatepass"))


def nearest_existing(path: Path) -> Path:
    """``path``, or its nearest parent that exists (the root at worst): where a folder made for it would begin."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def dangling_link(path: Path | str) -> Path | None:
    """The symbolic link on the way to ``path`` whose target does not exist (a logs link into a scratch space since
    purged), or None. The check of the folder followed it to the root, the nearest folder that exists, and passed;
    the run then failed to make its folder with 'cannot be created (File exists)', naming no link."""
    for step in (Path(os.path.abspath(path)), *Path(os.path.abspath(path)).parents):
        if os.path.lexists(step):
            return step if step.is_symlink() and not step.exists() else None
    return None


def link_target(link: Path) -> str:
    """Where the symbolic link ``link`` leads, a relative target taken from the link's folder (whether or not it
    exists)."""
    return os.path.normpath(os.path.join(link.parent, os.readlink(link)))


def gone_link_target(link: Path, path: Path | str) -> str:
    """What a message on ``path`` says of ``dangling_link``'s link on its way: where it points (as written, and
    resolved where relative) and why a folder can be missing there."""
    written, resolved = os.readlink(link), link_target(link)
    shown = repr(written) if resolved == written else f"{written!r} ({resolved})"
    which = "it is" if Path(os.path.abspath(path)) == link else f"{str(link)!r} on its way is"
    return (f"{which} a symbolic link to {shown}, which does not exist (deleted, e.g. a scratch space purged, or on a "
            f"file system not mounted on this machine)")


def check_writable_dir(path: str, key: str, where: str, subject: str | None = None) -> None:
    """Fail early if ``path`` cannot be created or written, without leaving anything behind.
    Messages name ``the key 'key'``, or ``subject`` (e.g. a command-line option) when given."""
    subject = subject or f"the key {key!r}"
    from phd_lab.errors import ConfigError
    check_home(path, subject, where)
    if runs_into_a_loop(os.path.expanduser(path)):
        raise ConfigError(f"{where}: {subject} is {shown_path(path)!r}, which cannot be used: {LOOP}.")
    link = dangling_link(os.path.expanduser(path))
    if link is not None:
        raise ConfigError(f"{where}: {subject} is {shown_path(path)!r}, but {str(link)!r} on the way is a symbolic "
                          f"link to {os.readlink(link)!r}, which does not exist, so no folder can be made through "
                          f"it; create the folder it points to, or remove the link.")
    try:
        probe = nearest_existing(Path(os.path.expanduser(path)).resolve())
        is_dir = probe.is_dir()
    except OSError as error:  # e.g. a path longer than the system allows
        raise ConfigError(f"{where}: {subject} is {shown_path(path)!r}, which cannot be used: "
                          f"{os_refusal(os.path.expanduser(path), error)}.") from None
    if not is_dir:
        raise ConfigError(f"{where}: {subject} is {path!r}, but {str(probe)!r} is a file, so that folder "
                          f"cannot be created; choose a folder path.")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise ConfigError(f"{where}: {subject} is {path!r}, but {str(probe)!r} is not writable "
                          f"({error.strerror}); choose a folder you can write to.") from None
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{where}: {subject} is {path!r}, but {str(probe)!r} is not writable; choose a "
                          f"folder you can write to.")
