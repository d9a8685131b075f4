"""Which content and which file a path names: sha256 of a file and its (inode, size, mtime) stamp.

Shared by training (post-processing stamps, reusable latents) and the probe job (the manifest's hashes), so
that neither imports the other's code.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

_CHUNK = 1 << 22


def json_digest(value: dict[str, Any]) -> str:
    """The sha256 of a JSON object written canonically (sorted keys, no spaces): a probe cache key's name, and the
    checksum of the record an entry stores (a digit changed in the JSON, a bit flipped on a shared file system:
    "eval_acc": 0.98 read as 0.99, is another number of the right type, which no check of the types finds)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def latents_digest(manifest: dict[str, Any]) -> str:
    """Which latents a manifest describes: the digest of its layer and label entries (names, shapes, each file's
    sha256), not of its ``run_dir``, which names the folder the run lies in now (moved, copied) and not its
    content. The probe job records it beside its results; the analysis compares it with the manifest there now."""
    return json_digest({"layers": manifest.get("layers"), "labels": manifest.get("labels")})


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
