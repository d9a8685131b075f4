"""A content-addressed result cache for probe records on a (possibly shared) folder.

Like ``joblib.Memory`` it memoises a pure function on disk, but the key is explicit: the
sha256 of the four input files (from the manifest), every resolved solver setting and the
versions of the libraries that compute the fit. An entry is a small JSON file (the record and its sha256)
and, beside it, the layer's confusion matrix as a ``.npy`` file, which the JSON names with its sha256 (inside
JSON a 1000-class matrix took 13 MB and seconds to write and read). Both are written
atomically, the matrix first, so loading never unpickles anything and a killed job leaves
either a whole entry or none; an entry whose matrix is missing or damaged is a miss. The
record keeps the ``seconds`` of the fit that produced it, which makes a resumed job's CSV
identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import platform
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

from phd_lab.atomic import (STALE_AFTER_SECONDS, file_system_now, read_bytes, read_json, remove_stale_temps,
                            write_bytes, write_json, write_json_once)
from phd_lab.environment import installed_version
from phd_lab.errors import NotARegularFile, UsageError
from phd_lab.file_hash import json_digest
from phd_lab.probes.fit import ProbeRecord
from phd_lab.probes.settings import ProbeSettings
from phd_lab.user_paths import dangling_link, nearest_existing, unreachable

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: the confusion matrix in a .npy file beside the JSON entry (format 1 entries are read)
# a solver's version: bump it when fit.py changes what that solver's record means, so that only its records are
# refitted (2: lbfgs-torch's binary objective; lbfgs-torch 3: its converged is lbfgs' gradient test, not 'stopped
# before its budget')
ALGORITHM_VERSIONS = {"saga": 2, "lbfgs": 2, "lbfgs-torch": 3}


def library_versions(solver: str) -> dict[str, str]:
    """Versions that can change a fit's numbers (torch only for the torch solver)."""
    import numpy
    import scipy
    versions = {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__,
                "scikit_learn": installed_version("scikit-learn", "sklearn"),
                "probe_algorithm": str(ALGORITHM_VERSIONS[solver])}
    if solver == "lbfgs-torch":
        import torch
        versions["torch"] = torch.__version__
    return versions


def cache_key(file_sha256: dict[str, str], settings: ProbeSettings, versions: dict[str, str]) -> dict[str, Any]:
    """The full key of one layer's probe: input contents, settings, versions.

    ``file_sha256`` has the sha256 of ``train``, ``eval``, ``train_labels`` and ``eval_labels``.
    The layer's name and index are deliberately absent: identical latents give one entry.
    """
    return {"format": CACHE_FORMAT, "files": dict(sorted(file_sha256.items())), "settings": settings.key(),
            "versions": dict(sorted(versions.items()))}


def read_npy(data: bytes) -> np.ndarray:
    """The array of the .npy file ``data``, no pickle. Its header's shape is checked against the bytes that follow
    first: numpy allocates all that a header declares before it reads, and a cache entry (its sha256 matching) whose
    matrix declared 10^15 values stopped the probe job with a MemoryError traceback instead of a refit (and one in the
    run folder, which ``results_in_place`` compares, instead of writing it again). Values of no bytes (``|V0``,
    ``|S0``) are refused too: they passed that check, and the record's float64 copy of 10^15 of them was that error."""
    handle = io.BytesIO(data)
    version = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(handle)
    if math.prod(shape) * dtype.itemsize > len(data) - handle.tell():
        raise ValueError(f"its header declares shape {shape} of {dtype}, more than the file holds")
    if dtype.itemsize == 0 and math.prod(shape):  # no bytes to check: 10^15 of them became petabytes as float64
        raise ValueError(f"its header declares shape {shape} of {dtype}, values of no bytes")
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


# the names of an entry's files: <digest>.json and <digest>-<sha256[:16]>.npy
_OWN_NAMES = r"[0-9a-f]{64}(?:\.json|-[0-9a-f]{16}\.npy)"


class ResultCache:
    """``get``/``put`` probe records by key in ``<folder>/<digest[:2]>/<digest>.json``, each with its confusion
    matrix in ``<digest>-<sha256[:16]>.npy`` beside it (named by its content: writers of one key never replace
    each other's matrix)."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self._said: set[tuple[Path, str]] = set()  # the unusable entries warned of (``get``), each once
        self._created: list[Path] = []  # the folders ``prepare`` made, the deepest first

    def check(self) -> None:
        """Say why the folder cannot hold the cache, creating nothing: the job checks this before it reads the
        latents, and ``prepare``s the folder (which a full disk can still refuse) once they are found valid."""
        refused = unreachable(self.folder)  # a loop: Path.resolve raised RuntimeError later; a name too long: OSError
        if refused:
            raise UsageError(f"The probe cache folder {str(self.folder)!r} cannot be used: {refused} (--cache-dir).")
        existing, link = nearest_existing(self.folder), dangling_link(self.folder)
        if link is not None:  # mkdir said 'File exists' for it
            reason = f"{str(link)!r} on its path is a symbolic link to {os.readlink(link)!r}, which does not exist"
        elif existing == self.folder and not existing.is_dir():
            reason = "it is a file"
        elif existing != self.folder and not existing.is_dir():
            reason = f"{str(existing)!r} on its path is a file"
        elif not os.access(existing, os.W_OK | os.X_OK):
            reason = "it is not writable" if existing == self.folder else f"{str(existing)!r} is not writable"
        else:
            return
        raise UsageError(f"The probe cache folder {str(self.folder)!r} cannot be used ({reason}); pass --cache-dir "
                         f"with a folder you can write to.")

    def prepare(self) -> None:
        """Create the folder, or say clearly why it cannot hold the cache (before any fit runs); ``remove_unused``
        takes back the folders it made."""
        try:
            self._created = _make_folders(self.folder)  # a file in the way: FileExistsError
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise UsageError(f"The probe cache folder {str(self.folder)!r} cannot be created ({reason}); pass "
                             f"--cache-dir with a folder you can write to.") from None
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise UsageError(f"The probe cache folder {str(self.folder)!r} is not writable; pass --cache-dir with a "
                             f"folder you can write to.")
        self.remove_stale_temps()

    def remove_unused(self) -> None:
        """Remove the folders ``prepare`` made while they are still empty: a job that ends before its first fit
        (every run locked by another job, a run folder that cannot be written) leaves no cache folder behind."""
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:  # another job's entries are in it, or it went
                break
        self._created = []

    def remove_stale_temps(self) -> None:
        """Delete the temp files of entry writes that a killed job left (``.<digest>.json.<random>.tmp``), once they
        are ``atomic.STALE_AFTER_SECONDS`` old: another job sharing the cache may be writing its entries now, and an
        entry takes it milliseconds. So are confusion matrices (``<digest>-<sha256[:16]>.npy``) whose entry was never
        written: a job killed between the two writes left them. A folder of the cache that is a symbolic link is
        left alone: the job never makes one, and in a cache shared with others (a lab's scratch folder) a link
        ``ab -> ~/results`` had every ``*-*.npy`` there without a ``<name>.json`` beside it deleted. Only files of
        the cache's own names go (``_OWN_NAMES``): a cache folder that is a link to a folder of the user's (a
        received run folder's ``.probe_cache``, a mistyped ``--cache-dir``) lost every old ``*-*.npy`` and
        ``.*.tmp`` of its two-hex-digit folders (hash-sharded data). Old matrices that an entry of their digest does
        not name go too (``_remove_unnamed_matrices``)."""
        now = file_system_now(self.folder)  # the clock that stamped the files, read once for the 256 folders
        cutoff = now - STALE_AFTER_SECONDS
        for folder in sorted(self.folder.glob("[0-9a-f][0-9a-f]")):
            if folder.is_symlink():
                log.warning("The probe cache folder %s is a symbolic link, which probe jobs never make; nothing in "
                            "what it names is removed.", folder)
                continue
            try:
                for stale in remove_stale_temps(folder, now=now, shape=_OWN_NAMES):
                    log.info("Removed %s, left half-written by a probe job that was killed.", stale)
                for matrix in folder.glob("*-*.npy"):
                    if not re.fullmatch(_OWN_NAMES, matrix.name):  # (the glob: a .npy, no .json)
                        continue
                    entry = matrix.with_name(f"{matrix.name.split('-')[0]}.json")
                    with contextlib.suppress(FileNotFoundError):  # removed by another job meanwhile
                        if not entry.exists() and matrix.stat().st_mtime < cutoff:
                            matrix.unlink()
                            log.info("Removed %s, a confusion matrix whose cache entry a killed probe job never "
                                     "wrote.", matrix)
                self._remove_unnamed_matrices(folder, cutoff)
            except OSError as error:  # a shared folder whose files another user owns: they stay, the job goes on
                log.warning("The probe cache folder %s holds files of killed jobs that cannot be removed: %s", folder,
                            error)

    def _remove_unnamed_matrices(self, folder: Path, cutoff: float) -> None:
        """Delete the matrices older than ``cutoff`` beside a JSON entry that names another matrix of their digest: a
        job killed after it lost the first-writer race of ``put`` on a shared cache (before it removed its own) left
        one for good, since the entry of its name is there. Only the entries of digests with two or more matrices are
        read. Links are left alone, as is every matrix of an entry that cannot be read or names none (a damaged
        entry: its refit's ``put`` removes the matrix it named)."""
        by_digest: dict[str, list[Path]] = {}
        for matrix in folder.glob("*-*.npy"):
            if re.fullmatch(_OWN_NAMES, matrix.name) and not matrix.is_symlink():
                by_digest.setdefault(matrix.name.split("-")[0], []).append(matrix)
        for digest, matrices in sorted(by_digest.items()):
            named = _matrix_named_by(folder / f"{digest}.json", strict=True) if len(matrices) > 1 else None
            for matrix in matrices if named is not None else ():
                with contextlib.suppress(FileNotFoundError):  # removed by another job meanwhile
                    if matrix.name != named.name and matrix.lstat().st_mtime < cutoff:
                        matrix.unlink()
                        log.info("Removed %s, a confusion matrix that its cache entry does not name (a probe job "
                                 "killed after another job stored the entry).", matrix)

    def path(self, key: dict[str, Any]) -> Path:
        digest = json_digest(key)
        return self.folder / digest[:2] / f"{digest}.json"

    def get(self, key: dict[str, Any]) -> ProbeRecord | None:
        """The stored record, or None on a miss (an unreadable entry counts as a miss). Where the key has no entry,
        one an earlier version stored under the key's format 1 is taken (``_read_format_1``). An unusable entry is
        warned of once: the job looks each layer up when it validates and again when it fits (another job sharing
        the cache may have stored it meanwhile), and said every damaged entry twice."""
        record, problem = self._read(key)
        if problem is not None and (self.path(key), problem) not in self._said:
            self._said.add((self.path(key), problem))
            log.warning("ignoring probe cache entry %s (%s); the layer is refitted", self.path(key), problem)
        if record is None and problem is None and key.get("format") == CACHE_FORMAT:
            record = self._read_format_1(key)
        return record

    def _read_format_1(self, key: dict[str, Any]) -> ProbeRecord | None:
        """The record a job before CACHE_FORMAT 2 stored for the same inputs, settings and versions, its confusion
        matrix inline in the JSON (the same row-normalised matrix): without it an upgrade refitted every layer of
        every run whose fits the cache held. An entry that cannot be used is a miss, as it was for the version
        that wrote it."""
        old_key = {**key, "format": 1}
        entry, _ = self._entry(old_key)
        if entry is None:
            return None
        try:
            fields = dict(entry["record"])
            matrix = np.asarray(fields.pop("confusion"), dtype=np.float64)
            record = ProbeRecord.from_json(fields, matrix)
        except (ValueError, KeyError, TypeError):
            return None
        return record if matrix.shape == (len(record.classes),) * 2 else None

    def _matrix_path(self, key: dict[str, Any], sha256: str) -> Path:
        return _matrix_beside(self.path(key), sha256)

    def _entry(self, key: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """The parsed JSON entry stored under ``key`` if it is one for that key (None where there is none), and what
        is wrong with a file that is no such entry; shared by ``_read`` and ``_read_format_1``."""
        try:
            entry = read_json(self.path(key))
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as error:
            return None, f"unreadable: {error}"
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None, "its key does not match"
        return entry, None

    def _read(self, key: dict[str, Any]) -> tuple[ProbeRecord | None, str | None]:
        """The stored record (None where there is none) and what is wrong with an entry that cannot be used."""
        entry, problem = self._entry(key)
        if entry is None:
            return None, problem
        try:
            fields, sha256 = entry["record"], entry["confusion"]["sha256"]
            if not isinstance(sha256, str) or not re.fullmatch("[0-9a-f]{64}", sha256):
                return None, f"malformed: its confusion matrix's sha256 is {json.dumps(sha256)[:80]}"
            matrix_path = self._matrix_path(key, sha256)
            if entry["confusion"]["file"] != matrix_path.name:
                return None, f"malformed: its confusion matrix is named {entry['confusion']['file']!r}"
        except (KeyError, TypeError) as error:
            return None, f"malformed: {error}"
        try:
            data = read_bytes(matrix_path)  # a FIFO there is refused, not waited on
        except OSError as error:
            why = f"it is {error.what}" if isinstance(error, NotARegularFile) else error.strerror or error
            return None, f"its confusion matrix {matrix_path.name} cannot be read: {why}"
        if hashlib.sha256(data).hexdigest() != sha256:
            return None, f"its confusion matrix {matrix_path.name} is damaged (its sha256 differs)"
        try:
            matrix = read_npy(data)
            record = ProbeRecord.from_json(fields, matrix)
        except (ValueError, KeyError, TypeError) as error:
            return None, f"malformed: {error}"
        if record.confusion_matrix().shape != (len(record.classes),) * 2:
            return None, f"malformed: a confusion matrix of shape {matrix.shape} for {len(record.classes)} classes"
        if "record_sha256" in entry and entry["record_sha256"] != json_digest(fields):  # entries of 2026-12 on
            return None, "its record is damaged (its sha256 differs)"
        return record, None

    def put(self, key: dict[str, Any], record: ProbeRecord) -> ProbeRecord:
        """Store ``record`` unless the cache holds a record for ``key`` already; return the one it holds. The
        first writer wins, also between two jobs sharing the cache (``write_json_once``): two runs with identical
        latents (one key) are both fitted, and the second fit overwrote the first's ``seconds``, so a repeated or
        resumed job rewrote the first run's table. An unusable entry in the way is replaced, and the matrix it named
        removed unless the new entry names it too. The matrix is written first, so that an entry names a matrix
        that is there."""
        buffer = io.BytesIO()
        np.save(buffer, record.confusion_matrix(), allow_pickle=False)
        data = buffer.getvalue()
        sha256 = hashlib.sha256(data).hexdigest()
        matrix_path = self._matrix_path(key, sha256)
        write_bytes(matrix_path, data)
        fields = record.to_json()
        document = {"key": key, "record": fields, "record_sha256": json_digest(fields),
                    "confusion": {"file": matrix_path.name, "sha256": sha256}}
        if write_json_once(self.path(key), document):
            return record
        stored, _ = self._read(key)
        if stored is not None:
            if stored.confusion_matrix().tobytes() != record.confusion_matrix().tobytes():
                with contextlib.suppress(FileNotFoundError):  # another matrix of the same key won: ours is unused
                    matrix_path.unlink()
            return stored
        # the matrix of the entry it replaces: no entry names it afterwards and the cleanup never removes it (a JSON
        # entry of its name is there), so a refit with another matrix left it for good
        replaced = _matrix_named_by(self.path(key))
        write_json(self.path(key), document)
        if replaced is not None and replaced != matrix_path and _matrix_named_by(self.path(key)) != replaced:
            with contextlib.suppress(FileNotFoundError):
                replaced.unlink()
        return record


def _make_folders(folder: Path) -> list[Path]:
    """Make ``folder`` and the missing folders above it as ``mkdir(parents=True)`` does (never an mkdir on a folder
    that is there: a read-only mount may refuse it); those this call made, the deepest first. Only what an mkdir
    made counts: a name that did not resolve beforehand (``new/../existing``, whose ``existing`` a user made) or a
    folder another job made meanwhile is none of this job's to remove."""
    try:
        folder.mkdir()
    except FileNotFoundError:
        if folder.parent == folder:
            raise
        made = _make_folders(folder.parent)
        try:
            folder.mkdir()
        except OSError:
            if not folder.is_dir():
                raise
            return made  # new/.. once new was made, or another job's meanwhile
    except OSError:  # as mkdir(exist_ok=True): a folder there, whatever the error (EEXIST, or EROFS on some mounts)
        if not folder.is_dir():
            raise
        return []
    else:
        return [folder]
    return [folder, *made]


def _matrix_named_by(entry: Path, *, strict: bool = False) -> Path | None:
    """The matrix file that the JSON ``entry`` names by its sha256, or None where it cannot be read or parsed or names
    none; read however damaged the entry is, so that ``put`` removes the matrix of an entry it replaces. ``strict``
    (the cleanup, which removes the other matrices of the digest): also None where the entry is no plain file or its
    ``file`` and its ``sha256`` disagree."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if strict and not stat.S_ISREG(entry.lstat().st_mode):  # a link, or a FIFO that reading would wait on for good
            return None
        confusion = read_json(entry)["confusion"]
        sha256 = confusion["sha256"]
        if isinstance(sha256, str) and re.fullmatch("[0-9a-f]{64}", sha256):
            matrix = _matrix_beside(entry, sha256)
            return matrix if not strict or confusion["file"] == matrix.name else None
    return None


def _matrix_beside(entry: Path, sha256: str) -> Path:
    """The file of the confusion matrix of sha256 ``sha256`` beside the JSON ``entry`` (its digest, a dash, the
    sha256's first 16 digits): one entry's refits of another matrix each have their own."""
    return entry.with_name(f"{entry.stem}-{sha256[:16]}.npy")
