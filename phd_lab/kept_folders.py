"""The folders a process keeps while it writes into them: never re-created, and noticed when they go.

A run folder deleted or moved while its process works in it must not come back, by the next write's mkdir,
without its config and log; one that another command made in its place must not receive this process' files.
``existing_folder`` keeps a folder for the length of a block, ``make_folder`` and ``check_kept`` (called by the
atomic writes of ``phd_lab.atomic``) raise ``RunFolderLost`` where a kept folder is gone or was replaced.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Protocol


class HeldLock(Protocol):
    def check_held(self, advice: str | None = None) -> None: ...


# folders a write must find, never create: the folder's identity, the advice of the error, the lock held in it
_KEPT: dict[Path, tuple[tuple[int, int], str | None, HeldLock | None]] = {}


@contextlib.contextmanager
def existing_folder(folder: Path, advice: str | None = None, lock: HeldLock | None = None) -> Iterator[None]:
    """While the block runs, writes into ``folder`` (or below it) never create it: a run folder deleted or moved
    while its process works in it raises ``RunFolderLost`` at the next write (ending with ``advice``; by default,
    to train the run anew), instead of coming back without its config and log. A new folder that took the old
    one's place is noticed too, so no write lands in another command's run: by ``lock`` (the lock file this
    process holds in the folder, whose inode cannot be reused while it is held open), or without a lock by the
    folder's inode (which some file systems, FUSE mounts among them, may renumber under a long run)."""
    folder = Path(folder).absolute()
    outer = _KEPT.get(folder)  # the same folder kept by an enclosing block stays kept after this one
    _KEPT[folder] = (_identity(os.stat(folder)), advice, lock)
    try:
        yield
    finally:
        if outer is None:
            _KEPT.pop(folder, None)
        else:
            _KEPT[folder] = outer


def make_folder(folder: Path) -> None:
    """``folder.mkdir(parents=True, exist_ok=True)``, which never re-creates a folder ``existing_folder`` keeps."""
    check_kept(Path(folder))
    Path(folder).mkdir(parents=True, exist_ok=True)


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def check_kept(parent: Path) -> None:
    """Raise ``RunFolderLost`` if a folder this process keeps (``existing_folder``), ``parent`` itself or one
    above it, is gone or was replaced."""
    if not _KEPT:
        return
    parent = parent.absolute()
    for folder, (identity, advice, lock) in tuple(_KEPT.items()):  # another thread (a Dask worker) may change it
        if folder != parent and folder not in parent.parents:
            continue
        try:
            now = _identity(os.stat(folder))
        except (FileNotFoundError, NotADirectoryError):  # also a folder on its path replaced by a file
            how = "it is gone"
        else:
            if lock is not None:
                lock.check_held(advice)
                continue
            if now == identity:
                continue
            how = "another folder of that name took its place"
        from phd_lab.errors import RunFolderLost
        raise RunFolderLost(folder, how, advice)

