"""Which content and which file a path names: sha256 of a file and its (inode, size, mtime) stamp.

Shared by training (post-processing stamps, reusable latents) and the probe job (the manifest's hashes), so
that neither imports the other's code.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

_CHUNK = 1 << 22


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks (hashlib releases the GIL, so threads help)."""
    return hash_and_stamp(path)[0]


def file_stamp(path: Path | str) -> tuple[int, int, int]:
    """(inode, size, mtime_ns): which file a path names now (a re-extraction replaces it). No device
    number: clients of a shared file system (the Dask workers) may number the same mount differently."""
    return _stamp(os.stat(path))


def _stamp(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_ino, info.st_size, info.st_mtime_ns


def hash_and_stamp(path: Path | str, read: Callable[[int], None] | None = None) -> tuple[str, tuple[int, int, int]]:
    """sha256 of a file and the stamp of the very file that was read (taken from the open handle); ``read`` is
    told the size of each chunk read (a progress bar)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            if read is not None:
                read(len(chunk))
        stamp = _stamp(os.fstat(handle.fileno()))
    return digest.hexdigest(), stamp
